"""The features stage: cache reuse and invalidation, the store, local open_clip weights."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch

from mindpipe.exceptions import MindpipeError
from mindpipe.features.encoders import MLIPEncoder, OpenCLIPEncoder
from mindpipe.features.stage import FeaturesParams, cache_features
from mindpipe.features.store import FeatureStore
from mindpipe.io import read_stimuli
from mindpipe.io.images import load_images
from mindpipe.models.mlip import build_mlip, build_vocab, load_config, save_mlip
from mindpipe.params import BaseParams


@pytest.fixture
def mlip_dir(tmp_path, twin_tiny):
    captions = list(read_stimuli(twin_tiny)["caption"])
    torch.manual_seed(0)
    save_mlip(
        build_mlip(load_config("mlip-tiny", vocab=build_vocab(captions))),
        tmp_path / "mlip" / "model",
    )
    return tmp_path / "mlip"


def run(twin_tiny, mlip_dir, out, cache, **params):
    out.mkdir(parents=True)
    return cache_features(
        data_dir=twin_tiny,
        mlip_dir=mlip_dir,
        out_dir=out,
        params=FeaturesParams(cache_dir=str(cache), batch_size=16, **params),
        base=BaseParams(profile="tiny"),
    )


def test_unchanged_model_reuses_the_cache(twin_tiny, mlip_dir, tmp_path, monkeypatch):
    first = run(twin_tiny, mlip_dir, tmp_path / "a", tmp_path / "cache")
    n = len(read_stimuli(twin_tiny))
    assert first["n_encoded"] == n and first["cache_hit_fraction"] == 0.0

    def refuse(*_):
        raise AssertionError("encoder called although everything is cached")

    monkeypatch.setattr(MLIPEncoder, "encode_images", refuse)
    second = run(twin_tiny, mlip_dir, tmp_path / "b", tmp_path / "cache")
    assert second["n_encoded"] == 0 and second["cache_hit_fraction"] == 1.0
    a, b = FeatureStore(tmp_path / "a"), FeatureStore(tmp_path / "b")
    ids = a.stim_id[::-3]
    np.testing.assert_array_equal(a.image_tokens(ids), b.image_tokens(ids))


def test_changed_model_is_recomputed(twin_tiny, mlip_dir, tmp_path):
    run(twin_tiny, mlip_dir, tmp_path / "a", tmp_path / "cache")
    weights = mlip_dir / "model" / "model.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    state["logit_scale"] = state["logit_scale"] + 1.0
    save_file(state, str(weights))
    again = run(twin_tiny, mlip_dir, tmp_path / "b", tmp_path / "cache")
    assert again["n_encoded"] == again["n_stimuli"]
    assert FeatureStore(tmp_path / "a").fingerprint != FeatureStore(tmp_path / "b").fingerprint


def test_store_rows_match_direct_encoding(twin_tiny, mlip_dir, tmp_path):
    run(twin_tiny, mlip_dir, tmp_path / "a", tmp_path / "cache")
    store = FeatureStore(tmp_path / "a")
    stimuli = read_stimuli(twin_tiny)
    picked = stimuli.iloc[[5, 2, 2, 9]]
    encoder = MLIPEncoder(mlip_dir / "model", torch.device("cpu"))
    pooled, tokens = encoder.encode_images(list(load_images(twin_tiny, picked)))
    np.testing.assert_allclose(store.image_pooled(picked["stim_id"]), pooled, atol=1e-5)
    np.testing.assert_allclose(store.image_tokens(picked["stim_id"]), tokens, atol=1e-5)
    text, _ = encoder.encode_texts(list(picked["caption"]))
    np.testing.assert_allclose(store.text_pooled(picked["stim_id"]), text, atol=1e-5)
    assert store.prompt_pooled().shape == (len(store.categories), store.dim)


def test_a_failed_run_leaves_no_partial_cache(twin_tiny, mlip_dir, tmp_path, monkeypatch):
    calls = []

    def fail_on_second_batch(self, images):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return MLIPEncoder.__dict__["_original"](self, images)

    monkeypatch.setattr(MLIPEncoder, "_original", MLIPEncoder.encode_images, raising=False)
    monkeypatch.setattr(MLIPEncoder, "encode_images", fail_on_second_batch)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(twin_tiny, mlip_dir, tmp_path / "a", tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


@pytest.fixture
def tiny_open_clip(tmp_path):
    """A tiny open_clip architecture saved as a local checkpoint file (nothing downloaded)."""
    config = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    (tmp_path / "mindpipe-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "mindpipe-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("mindpipe-tiny-clip")
    path = tmp_path / "tiny-clip.pt"
    torch.save(model.state_dict(), path)
    return path


def test_local_open_clip_weights_give_pooled_and_token_features(
    tiny_open_clip, twin_tiny, tmp_path
):
    encoder = OpenCLIPEncoder("mindpipe-tiny-clip", tiny_open_clip, torch.device("cpu"))
    images = list(load_images(twin_tiny, read_stimuli(twin_tiny).iloc[:2]))
    pooled, tokens = encoder.encode_images(images)
    assert pooled.shape == (2, 16) and tokens.shape == (2, 16, 16)
    text_pooled, text_tokens = encoder.encode_texts(["a red star", "a blue circle"])
    assert text_pooled.shape == (2, 16) and text_tokens.shape == (2, 16, 16)
    metrics = run(
        twin_tiny,
        tmp_path / "unused",
        tmp_path / "out",
        tmp_path / "cache",
        encoder="open_clip",
        open_clip_model="mindpipe-tiny-clip",
        open_clip_weights=str(tiny_open_clip),
    )
    assert metrics["dim"] == 16 and FeatureStore(tmp_path / "out").encoder.startswith("open_clip")


def test_missing_or_corrupt_open_clip_weights_name_the_file(tiny_open_clip, tmp_path):
    with pytest.raises(MindpipeError, match=r"nope\.pt"):
        OpenCLIPEncoder("mindpipe-tiny-clip", tmp_path / "nope.pt", torch.device("cpu"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(tiny_open_clip.read_bytes()[:1000])
    with pytest.raises(MindpipeError, match=r"bad\.pt"):
        OpenCLIPEncoder("mindpipe-tiny-clip", bad, torch.device("cpu"))


def test_changed_open_clip_weights_change_the_fingerprint(tiny_open_clip, tmp_path):
    cpu = torch.device("cpu")
    same = OpenCLIPEncoder("mindpipe-tiny-clip", tiny_open_clip, cpu).fingerprint
    assert OpenCLIPEncoder("mindpipe-tiny-clip", tiny_open_clip, cpu).fingerprint == same
    state = torch.load(tiny_open_clip, weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1.0
    changed = tmp_path / "changed.pt"
    torch.save(state, changed)
    assert OpenCLIPEncoder("mindpipe-tiny-clip", changed, cpu).fingerprint != same
