"""MLIP's model: token merging, frequency view, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mindpipe.exceptions import MindpipeError, ParamsError
from mindpipe.models.losses import token_alignment_loss, token_similarity
from mindpipe.models.mlip import (
    build_mlip,
    build_vocab,
    load_config,
    load_mlip,
    preprocess_images,
    save_mlip,
    tokenize,
)
from mindpipe.recipes.mlip import MLIPParams

CAPTIONS = ["a small red solid star at the top", "a large blue striped circle on the left"]


def tiny(**overrides):
    return load_config("mlip-tiny", vocab=build_vocab(CAPTIONS), **overrides)


def pixels(n: int = 3) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return preprocess_images(list(rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)), tiny())


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5])
def test_token_merging_removes_the_requested_share_of_tokens(ratio):
    cfg = tiny(merge_ratio=ratio)
    torch.manual_seed(0)
    pooled, tokens, _ = build_mlip(cfg).encode_image_views(pixels())
    assert pooled.shape == (3, cfg.embed_dim)
    assert tokens.shape == (3, round(cfg.grid**2 * (1 - ratio)), cfg.embed_dim)
    assert sum(cfg.tokens_removed()) == round(ratio * cfg.grid**2)


def test_encode_image_unmerges_tokens_into_grid_order():
    torch.manual_seed(0)
    model = build_mlip(tiny(merge_ratio=0.5)).eval()
    with torch.no_grad():
        pooled, merged, _ = model.encode_image_views(pixels())
        same_pooled, grid = model.encode_image(pixels())
    torch.testing.assert_close(pooled, same_pooled)
    assert grid.shape == (3, model.config.grid**2, model.config.embed_dim)
    for image in range(3):  # every patch holds one of the image's merged tokens...
        distance = (grid[image][:, None] - merged[image][None]).abs().amax(dim=-1)
        assert bool((distance.min(dim=1).values == 0).all())
        # ...and every merged token stands for at least one patch
        assert len(torch.unique(distance.argmin(dim=1))) == merged.shape[1]
    plain = build_mlip(tiny()).eval()
    with torch.no_grad():
        unmerged, tokens = plain.encode_image(pixels())[1], plain.encode_image_views(pixels())[1]
    torch.testing.assert_close(unmerged, tokens)


def test_conv_stem_keeps_the_patch_grid():
    torch.manual_seed(0)
    model = build_mlip(tiny(stem="conv"))
    _, tokens = model.encode_image(pixels())
    assert tokens.shape == (3, model.config.grid**2, model.config.embed_dim)
    with pytest.raises(ValueError, match="stem must be"):
        tiny(stem="resnet")


def test_frequency_view_gives_its_own_embedding_and_plain_clip_has_none():
    torch.manual_seed(0)
    *_, frequency = build_mlip(tiny()).encode_image_views(pixels())
    assert frequency[0].shape == (3, 32) and frequency[1].shape == (3, 64, 32)
    assert build_mlip(tiny(frequency_view=False)).encode_image_views(pixels())[2] is None


def test_tokenizer_marks_unknown_words_and_ends_with_eos():
    cfg = tiny()
    ids = tokenize(["a red ufo"], cfg)[0].tolist()
    vocab = cfg.vocab
    assert [vocab[i] for i in ids[:4]] == ["a", "red", "<unk>", "<eos>"]
    assert set(ids[4:]) == {0}


def test_token_similarity_ignores_padding():
    img = torch.randn(2, 5, 8)
    txt = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    i2t, t2i = token_similarity(img, txt, mask)
    txt_changed = txt.clone()
    txt_changed[0, 2:] = 100.0  # padded positions of caption 0
    i2t2, t2i2 = token_similarity(img, txt_changed, mask)
    torch.testing.assert_close(i2t[:, 0], i2t2[:, 0])
    torch.testing.assert_close(t2i[:, 0], t2i2[:, 0])


def test_checkpoint_round_trip_and_same_seed_same_weights(tmp_path):
    torch.manual_seed(0)
    model = build_mlip(tiny(merge_ratio=0.25)).eval()
    torch.manual_seed(0)
    again = build_mlip(tiny(merge_ratio=0.25)).eval()
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    save_mlip(model, tmp_path / "model")
    loaded = load_mlip(tmp_path / "model")
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(pixels())[0], loaded.encode_image(pixels())[0]
        )
        ids = tokenize(CAPTIONS, model.config)
        torch.testing.assert_close(model.encode_text(ids)[0], loaded.encode_text(ids)[0])


def test_missing_or_corrupt_checkpoint_names_the_file(tmp_path):
    with pytest.raises(MindpipeError, match=r"config\.json' is missing"):
        load_mlip(tmp_path / "nowhere")
    save_mlip(build_mlip(tiny()), tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(MindpipeError, match=r"model\.safetensors' cannot be read"):
        load_mlip(tmp_path / "model")
    with pytest.raises(MindpipeError, match="unknown MLIP config"):
        load_config("mlip-huge")


def test_grouped_token_loss_equals_the_full_loss_when_one_group_holds_the_batch():
    torch.manual_seed(0)
    img, txt = torch.randn(6, 5, 8), torch.randn(6, 4, 8)
    mask = torch.ones(6, 4, dtype=torch.bool)
    scale = torch.tensor(10.0)
    full = token_alignment_loss(img, txt, mask, scale)
    torch.testing.assert_close(token_alignment_loss(img, txt, mask, scale, group=6), full)
    assert not torch.isclose(token_alignment_loss(img, txt, mask, scale, group=3), full)


def test_stage_model_is_registered_as_challenger_with_lineage(tmp_path, monkeypatch):
    import mlflow

    from mindpipe.stages import get_stage
    from mindpipe.tracking import log_stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")
    torch.manual_seed(0)
    model = build_mlip(tiny()).eval()
    save_mlip(model, tmp_path / "out" / get_stage("mlip").model)
    tags = {"mindpipe.seed": "0", "mindpipe.data_hash": "abc"}
    for _ in range(2):
        run_id = log_stage_run(
            stage="mlip",
            params={},
            metrics={"m": 1.0},
            tags=tags,
            artifacts=[],
            model=tmp_path / "out" / "model",
        )
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    version = client.get_model_version_by_alias("mindpipe-mlip", "challenger")
    assert str(version.version) == "2" and version.run_id == run_id
    assert version.tags == tags
    local = mlflow.artifacts.download_artifacts(
        "models:/mindpipe-mlip@challenger",
        dst_path=str(tmp_path / "dl"),
        tracking_uri=f"sqlite:///{tmp_path}/mlruns.db",
    )
    with torch.no_grad():
        torch.testing.assert_close(
            load_mlip(Path(local)).encode_image(pixels())[0], model.encode_image(pixels())[0]
        )


def test_caption_detail_out_of_range_is_named():
    with pytest.raises(ParamsError, match=r"mlip\.caption_detail"):
        MLIPParams(caption_detail=0.0)
