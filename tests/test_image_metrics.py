"""Image metrics on hand-made inputs with known answers."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mindpipe.evaluate.image_metrics import (
    correlation_distance,
    pixcorr,
    resize_images,
    ssim,
    two_way_identification,
)


@pytest.fixture
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = rng.random((6, 8, 8, 3))
    return resize_images(smooth, 32).clip(0, 1)  # structured images, not white noise


def test_identical_images_score_perfectly(images):
    assert pixcorr(images, images, size=32) == pytest.approx(1.0)
    assert ssim(images, images, size=32) == pytest.approx(1.0)


def test_noise_and_mismatch_lower_the_scores(images):
    rng = np.random.default_rng(1)
    noisy = (images + rng.normal(0, 0.1, images.shape)).clip(0, 1)
    shuffled = images[::-1]
    assert 0.5 < pixcorr(noisy, images, size=32) < 0.99
    assert pixcorr(shuffled, images, size=32) < 0.3
    assert ssim(shuffled, images, size=32) < ssim(noisy, images, size=32) < 1.0


def test_inverted_image_has_pixcorr_minus_one(images):
    assert pixcorr(1.0 - images, images, size=32) == pytest.approx(-1.0)


def test_ssim_uses_grayscale_luma():
    """Swapping red and blue changes luma, so SSIM < 1 even though the structure is equal."""
    rng = np.random.default_rng(2)
    img = resize_images(rng.random((2, 8, 8, 3)), 32)
    swapped = img[..., ::-1]
    assert ssim(swapped, img, size=32) < 0.999
    gray = np.repeat(img[..., :1], 3, axis=-1)  # equal channels: a channel swap changes nothing
    assert ssim(gray[..., ::-1], gray, size=32) == pytest.approx(1.0)


def test_two_way_identification_known_answers():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(50, 20))
    assert two_way_identification(truth, truth) == 1.0
    assert two_way_identification(-truth, truth) < 0.2  # anti-correlated: always loses
    shuffled = [two_way_identification(truth[rng.permutation(50)], truth) for _ in range(20)]
    assert np.mean(shuffled) == pytest.approx(0.5, abs=0.03)  # shuffled pairs: chance


def test_two_way_matches_the_exhaustive_definition():
    rng = np.random.default_rng(4)
    truth = rng.normal(size=(7, 5))
    pred = truth + rng.normal(size=(7, 5))
    r = lambda a, b: np.corrcoef(a, b)[0, 1]  # noqa: E731
    per_recon = [
        np.mean([r(truth[i], pred[j]) < r(truth[j], pred[j]) for i in range(7) if i != j])
        for j in range(7)
    ]
    assert two_way_identification(pred, truth) == pytest.approx(np.mean(per_recon))


def test_correlation_distance_known_answers():
    x = np.random.default_rng(5).normal(size=(4, 10))
    assert correlation_distance(x, x) == pytest.approx(0.0)
    assert correlation_distance(-x, x) == pytest.approx(2.0)
    assert correlation_distance(3 * x + 1, x) == pytest.approx(0.0)  # scale/offset invariant


def test_shape_mismatch_is_an_error(images):
    with pytest.raises(ValueError, match="image arrays"):
        pixcorr(images, images[:3])


def test_reconstruction_table_scores_exact_and_shuffled_reconstructions(twin_tiny, tmp_path):
    from mindpipe.evaluate.report import (
        EvaluateParams,
        _image_markdown,
        _image_summary,
        score_reconstructions,
    )
    from mindpipe.io import read_stimuli
    from mindpipe.io.images import load_images

    test = read_stimuli(twin_tiny).query("split == 'test'").head(12)
    truth = load_images(twin_tiny, test)
    (tmp_path / "recon" / "exact").mkdir(parents=True)
    np.savez(tmp_path / "recon/exact/sub-01.npz", stim_id=test["stim_id"], images=truth)
    params = EvaluateParams(image_extractors=("alexnet2",), device="cpu")
    (tmp_path / "fewshot" / "one_subject").mkdir(parents=True)
    np.savez(tmp_path / "fewshot/one_subject/sub-02.npz", stim_id=test["stim_id"], images=truth)
    folders = [tmp_path / "recon", tmp_path / "fewshot"]
    scores, pretrained = score_reconstructions(twin_tiny, folders, params)
    exact, control = scores["exact"]["sub-01"], scores["exact_shuffled"]["sub-01"]
    assert exact["pixcorr"] == pytest.approx(1.0) and exact["ssim"] == pytest.approx(1.0)
    assert exact["alexnet2"] == 1.0
    assert control["alexnet2"] < 0.8 and control["pixcorr"] < 0.5
    summary = _image_summary(scores, pretrained)
    assert all(re.fullmatch(r"[\w\-. :/]+", key) for key in summary)  # valid MLflow names
    table = _image_markdown(summary, scores)
    assert "| exact | 1.000 | 1.000 | 1.000 |" in table
    assert "| one_subject (sub-02) | 1.000 |" in table  # scored on fewer subjects: named
    assert "| exact (shuffled) |" in table
    assert "seed-0 random networks" in table  # the fallback is stated, not hidden


def test_two_reconstruct_stages_writing_one_source_is_an_error(twin_tiny, tmp_path):
    from mindpipe.evaluate.report import EvaluateParams, score_reconstructions
    from mindpipe.exceptions import DataError
    from mindpipe.io import read_stimuli
    from mindpipe.io.images import load_images

    test = read_stimuli(twin_tiny).query("split == 'test'").head(4)
    for stage in ("a", "b"):
        (tmp_path / stage / "litemind").mkdir(parents=True)
        np.savez(
            tmp_path / stage / "litemind/sub-01.npz",
            stim_id=test["stim_id"],
            images=load_images(twin_tiny, test),
        )
    params = EvaluateParams(image_extractors=(), device="cpu")
    with pytest.raises(DataError, match="'litemind'"):
        score_reconstructions(twin_tiny, [tmp_path / "a", tmp_path / "b"], params)


def test_a_weights_folder_without_the_network_is_an_error(twin_tiny, tmp_path):
    from mindpipe.evaluate.reconstructions import ReconstructionScorer
    from mindpipe.exceptions import DataError

    with pytest.raises(DataError, match=r"alexnet5\.safetensors"):
        ReconstructionScorer(twin_tiny, ("alexnet5",), weights_dir=tmp_path)
