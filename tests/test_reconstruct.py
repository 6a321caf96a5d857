"""The reconstruct stage: reconstructions resemble their stimuli more than shuffled pairs do."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from fakes import tiny_unclip_pipeline
from mindpipe.exceptions import DataError, MissingWeightsError, ParamsError
from mindpipe.io import read_stimuli
from mindpipe.io.betas import load_betas
from mindpipe.io.images import load_images
from mindpipe.models.unclip_sampler import sample_pretrained_unclip
from mindpipe.params import BaseParams
from mindpipe.recipes.reconstruct import (
    PretrainedImage,
    ReconstructParams,
    fit_blurry_decoder,
    generate,
    reconstruct,
    score,
    stimulus_thumbnails,
    to_uint8,
    to_unit_range,
    train_generator,
    unit_rows,
)


def pixel_embeddings(images: np.ndarray, dim: int = 32) -> np.ndarray:
    """A stand-in image encoder: a fixed random projection of 8x8 thumbnails."""
    thumbs = to_unit_range(images, 8).reshape(len(images), -1).numpy()
    proj = np.random.default_rng(0).standard_normal((thumbs.shape[1], dim))
    return (thumbs @ proj).astype(np.float32)


def test_score_prefers_the_right_pairing():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    scores = score(truth, truth)
    assert scores["pixcorr"] == pytest.approx(1.0)
    assert scores["ssim"] == pytest.approx(1.0)
    assert scores["pixcorr_shuffled"] < 0.2
    assert scores["ssim_shuffled"] < 0.2


@pytest.fixture(scope="module")
def tiny_split(twin_tiny):
    stimuli = read_stimuli(twin_tiny)
    train, test = (stimuli[stimuli["split"] == s] for s in ("train", "test"))
    return load_images(twin_tiny, train), load_images(twin_tiny, test)


@pytest.fixture(scope="module")
def recon_scores(twin_tiny, tiny_split, tmp_path_factory):
    """Train on the tiny twin's 48 train images (~150 s on 2 busy CPU cores), score the test.

    Sampling starts from the blurry decode of fake betas that encode the thumbnails, as the
    stage does with real betas.
    """
    train, test = tiny_split
    params = ReconstructParams(steps=150, batch_size=16, sample_steps=4)
    model = train_generator(
        to_unit_range(train, params.image_size),
        unit_rows(pixel_embeddings(train)),
        params,
        torch.device("cpu"),
        seed=0,
    )
    stimuli = read_stimuli(twin_tiny)
    images = load_images(twin_tiny, stimuli)
    betas = fake_betas(tmp_path_factory.mktemp("betas"), stimuli, images, ("sub-01",))
    thumbnails = stimulus_thumbnails(images, stimuli, params.image_size)
    blurry, _ = fit_blurry_decoder(load_betas(betas, "sub-01"), thumbnails, params.blurry_alphas)
    embeddings = unit_rows(pixel_embeddings(test))
    recon = generate(model, embeddings, params, test.shape[1], seed=0, blurry=blurry)
    again = generate(model, embeddings, params, test.shape[1], seed=0, blurry=blurry)
    np.testing.assert_array_equal(recon, again)
    from_noise = generate(model, embeddings, params, test.shape[1], seed=0)
    return {
        "blurry_start": score(recon, test),
        "noise_start": score(from_noise, test),
        "blurry_alone": score(to_uint8(blurry, test.shape[1]), test),
    }


@pytest.mark.slow
def test_reconstructions_beat_shuffled_pairs_on_pixcorr(recon_scores):
    # measured (tiny twin, seed 0): blurry start 0.203 vs 0.065 shuffled, noise start 0.175 vs
    # 0.077, the blurry decode alone higher still; the margin leaves room for BLAS noise
    for source, scores in recon_scores.items():
        assert scores["pixcorr"] > scores["pixcorr_shuffled"] + 0.05, (source, recon_scores)
    assert recon_scores["blurry_start"]["pixcorr"] > recon_scores["noise_start"]["pixcorr"]


@pytest.mark.slow
def test_blurry_decode_beats_shuffled_pairs_on_ssim(recon_scores):
    scores = recon_scores["blurry_alone"]  # measured: 0.394 vs 0.335
    assert scores["ssim"] > scores["ssim_shuffled"] + 0.03, recon_scores


@pytest.mark.slow
@pytest.mark.xfail(
    reason="the generator's images tie the shuffled control on SSIM (measured 0.3816 vs 0.3814 "
    "from the blurry start, 0.3828 vs 0.3812 at strength 0.5): it renders the twin's shared "
    "background texture, which is identical in every stimulus and dominates SSIM",
    strict=False,
)
def test_generated_reconstructions_beat_shuffled_pairs_on_ssim(recon_scores):
    scores = recon_scores["blurry_start"]
    assert scores["ssim"] > scores["ssim_shuffled"] + 0.02, recon_scores


def fake_betas(folder, stimuli, images, subjects, noise=0.5):
    """Betas in the preprocess layout that encode each image's 8x8 thumbnail linearly + noise."""
    thumbs = to_unit_range(images, 8).reshape(len(images), -1).numpy()
    encoding = np.random.default_rng(2).standard_normal((thumbs.shape[1], 64))
    rng = np.random.default_rng(3)
    for subject in subjects:
        out = folder / subject
        out.mkdir(parents=True)
        for split in ("train", "val", "test"):
            rows = np.flatnonzero(stimuli["split"].to_numpy() == split)
            rows = np.repeat(rows, 2) if split == "train" else rows  # two train repeats
            clean = thumbs[rows] @ encoding
            betas = clean + noise * clean.std() * rng.standard_normal(clean.shape)
            np.save(out / f"betas_{split}.npy", betas.astype(np.float32))
            np.save(out / f"stim_{split}.npy", stimuli["stim_id"].to_numpy()[rows])
        np.save(out / "voxel_index.npy", np.arange(64))
    return folder


def fake_stage_inputs(tmp_path, data_dir, train_images, test_images) -> dict:
    """The stage's folders: features.h5, litemind predictions with pixel embeddings (decoded =
    true + noise), betas, and an empty out_dir."""
    stimuli = read_stimuli(data_dir)
    images = load_images(data_dir, stimuli)
    features = tmp_path / "features"
    features.mkdir()
    with h5py.File(features / "features.h5", "w") as f:
        f["stim_id"] = stimuli["stim_id"].to_numpy()
        f["image_pooled"] = pixel_embeddings(images)
        f.attrs.update(encoder="pixels", fingerprint="x", categories="[]", prompts="[]")
    test_ids = stimuli.loc[stimuli["split"] == "test", "stim_id"].to_numpy()
    true = pixel_embeddings(test_images)
    preds = tmp_path / "litemind" / "litemind" / "predictions"
    preds.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for subject in ("sub-01", "sub-02"):
        noisy = true + 0.3 * true.std() * rng.standard_normal(true.shape).astype(np.float32)
        n = len(test_ids)
        np.savez(preds / f"{subject}.npz", stim_id=test_ids, similarity=np.eye(n), embedding=noisy)
    betas = fake_betas(tmp_path / "preprocess", stimuli, images, ("sub-01", "sub-02"))
    (tmp_path / "out").mkdir()
    return {
        "data_dir": data_dir,
        "betas_dir": betas,
        "features_dir": features,
        "decoder_dir": tmp_path / "litemind",
        "out_dir": tmp_path / "out",
    }


def test_stage_writes_reconstructions_grid_and_metrics(twin_tiny, tiny_split, tmp_path):
    stage = fake_stage_inputs(tmp_path, twin_tiny, *tiny_split)
    params = ReconstructParams(steps=10, batch_size=16, sample_steps=2, grid_images=4)
    metrics = reconstruct(
        **stage,
        params=params,
        base=BaseParams(profile="tiny"),
    )
    n_test, size = len(tiny_split[1]), tiny_split[1].shape[1]
    for source in ("litemind", "blurry"):
        with np.load(stage["out_dir"] / "recon" / source / "sub-02.npz") as npz:
            assert npz["images"].shape == (n_test, size, size, 3)
            assert npz["images"].dtype == np.uint8
    with Image.open(stage["out_dir"] / "plots" / "grid.png") as grid:
        assert grid.size[1] == 4 * 66 + 2  # 4 rows (of 4 columns)
        assert grid.size[0] > 4 * 66 + 2  # and a margin with the rows' labels
    assert (stage["out_dir"] / "model" / "model.safetensors").is_file()
    for key in ("ceiling.pixcorr", "ceiling.ssim_shuffled", "litemind.sub-01.pixcorr"):
        assert np.isfinite(metrics[key]), key
    # the low-level decode of betas that encode the thumbnails looks like its own stimulus
    assert metrics["blurry.pixcorr"] > metrics["blurry.pixcorr_shuffled"] + 0.2, metrics
    assert metrics["blurry.sub-01.alpha"] in params.blurry_alphas
    json.dumps(metrics)  # flat scalars only


def test_predictions_out_of_the_betas_test_order_are_refused(twin_tiny, tiny_split, tmp_path):
    stage = fake_stage_inputs(tmp_path, twin_tiny, *tiny_split)
    stim = stage["betas_dir"] / "sub-02" / "stim_test.npy"
    np.save(stim, np.load(stim)[::-1])
    with pytest.raises(DataError, match="not in the test order"):
        reconstruct(
            **stage,
            params=ReconstructParams(steps=2, batch_size=4, sample_steps=1),
            base=BaseParams(profile="tiny"),
        )


def test_local_stable_unclip_renders_the_reconstructions(twin_tiny, tiny_split, tmp_path):
    stage = fake_stage_inputs(tmp_path, twin_tiny, *tiny_split)
    pipe = tiny_unclip_pipeline(tmp_path / "parts", embed_dim=32)  # pixel_embeddings' width
    pipe.save_pretrained(tmp_path / "unclip")
    unclip = PretrainedImage(unclip=str(tmp_path / "unclip"), guidance_scale=3.0)
    params = ReconstructParams(steps=2, batch_size=16, sample_steps=2, pretrained=unclip)
    metrics = reconstruct(
        **stage,
        params=params,
        base=BaseParams(),
    )
    assert metrics["pretrained_unclip"] == 1.0
    test = tiny_split[1]
    with np.load(stage["out_dir"] / "recon" / "true_embedding.npz") as npz:
        ids, ceiling = npz["stim_id"], npz["images"]
    with h5py.File(stage["features_dir"] / "features.h5") as f:
        row = {int(s): i for i, s in enumerate(f["stim_id"][:])}
        true = f["image_pooled"][:][[row[int(i)] for i in ids]]
    expected = sample_pretrained_unclip(
        pipe,
        torch.as_tensor(true),
        steps=2,
        strength=0.7,
        seed=0,
        size=test.shape[1],
        guidance_scale=3.0,
    )
    np.testing.assert_array_equal(ceiling, to_uint8(expected, test.shape[1]))
    with np.load(stage["out_dir"] / "recon" / "litemind" / "sub-01.npz") as npz:
        assert npz["images"].shape == test.shape and npz["images"].dtype == np.uint8
    # NeuroClips still draws keyframes with the small generator
    assert (stage["out_dir"] / "model" / "model.safetensors").is_file()


def test_stable_unclip_of_another_embedding_width_is_refused(twin_tiny, tiny_split, tmp_path):
    stage = fake_stage_inputs(tmp_path, twin_tiny, *tiny_split)
    tiny_unclip_pipeline(tmp_path / "parts", embed_dim=12).save_pretrained(tmp_path / "unclip")
    params = ReconstructParams(steps=2, pretrained=PretrainedImage(unclip=str(tmp_path / "unclip")))
    with pytest.raises(ParamsError, match=r"pretrained\.unclip.*12-wide.*32 wide"):
        reconstruct(
            **stage,
            params=params,
            base=BaseParams(),
        )


def test_a_missing_stable_unclip_stops_the_stage_before_training(twin_tiny, tiny_split, tmp_path):
    stage = fake_stage_inputs(tmp_path, twin_tiny, *tiny_split)
    params = ReconstructParams(pretrained=PretrainedImage(unclip=str(tmp_path / "nowhere")))
    with pytest.raises(MissingWeightsError, match=r"nowhere.*reconstruct\.pretrained\.unclip"):
        reconstruct(**stage, params=params, base=BaseParams())
    assert not any(stage["out_dir"].iterdir())


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: ReconstructParams(blurry_strength=0.0), "reconstruct.blurry_strength"),
        (lambda: PretrainedImage(guidance_scale=-1.0), "reconstruct.pretrained.guidance_scale"),
        (lambda: PretrainedImage(noise_level=1000), "reconstruct.pretrained.noise_level"),
        (lambda: PretrainedImage(render_size=100), "reconstruct.pretrained.render_size"),
    ],
)
def test_bad_params_name_the_parameter(make, name):
    with pytest.raises(ParamsError, match=name.replace(".", r"\.")):
        make()
