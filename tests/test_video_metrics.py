"""Video metrics on hand-made inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from mindpipe.evaluate.image_metrics import resize_images, ssim
from mindpipe.evaluate.video_metrics import (
    PSNR_CAP_DB,
    clip_pcc,
    frame_psnr,
    frame_ssim,
    frame_ssim_per_clip,
    frames_at_fps,
    n_way_chance,
    n_way_features,
    n_way_top1,
    st_ssim,
    st_ssim_per_clip,
)


def _moving_clips(n: int, frames: int = 16, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random images panned one pixel per frame: structured in space and time."""
    big = resize_images(np.random.default_rng(seed).random((n, 12, 12, 3)), 2 * size)
    clips = [big[:, t : t + size, t : t + size] for t in range(frames)]
    return np.stack(clips, axis=1).clip(0, 1)


@pytest.fixture
def clips() -> np.ndarray:
    return _moving_clips(3)


def test_identical_videos_score_perfectly(clips):
    assert frame_ssim(clips, clips) == pytest.approx(1.0)
    assert st_ssim(clips, clips) == pytest.approx(1.0)
    assert frame_psnr(clips, clips) == PSNR_CAP_DB  # skimage would say inf


def test_noisy_copy_ranks_above_an_unrelated_video(clips):
    noisy = (clips + np.random.default_rng(1).normal(0, 0.1, clips.shape)).clip(0, 1)
    other = _moving_clips(3, seed=5)
    assert frame_ssim(other, clips) < frame_ssim(noisy, clips) < 1.0
    assert st_ssim(other, clips) < st_ssim(noisy, clips) < 1.0
    assert frame_psnr(other, clips) < frame_psnr(noisy, clips) < PSNR_CAP_DB


def test_per_clip_ssim_scores_each_clip_alone_and_averages_to_the_metric(clips):
    pred = clips.copy()
    pred[1] = _moving_clips(1, seed=7)[0]  # only clip 1 is wrong
    for per_clip, mean in ((frame_ssim_per_clip, frame_ssim), (st_ssim_per_clip, st_ssim)):
        scores = per_clip(pred, clips)
        assert scores.shape == (3,)
        assert scores[[0, 2]] == pytest.approx(1.0)
        assert scores[1] < 0.9
        assert scores.mean() == pytest.approx(mean(pred, clips))


def test_unrelated_noise_videos_have_ssim_near_zero():
    rng = np.random.default_rng(2)
    a, b = rng.random((2, 4, 12, 32, 32, 3))
    # seeds 0-4 give |SSIM| <= 0.035; a noisy copy scores ~0.6, an unrelated smooth clip ~0.15
    assert abs(frame_ssim(a, b)) < 0.05
    assert abs(st_ssim(a, b)) < 0.05


def test_frame_ssim_is_the_2d_image_ssim_per_frame_index(clips):
    noisy = (clips + np.random.default_rng(3).normal(0, 0.1, clips.shape)).clip(0, 1)
    per_index = [ssim(noisy[:, f], clips[:, f], size=32) for f in range(clips.shape[1])]
    assert frame_ssim(noisy, clips) == pytest.approx(np.mean(per_index))


def test_psnr_matches_skimage_and_caps_identical_frames(clips):
    noisy = (clips + np.random.default_rng(4).normal(0, 0.05, clips.shape)).clip(0, 1)
    expected = [
        [peak_signal_noise_ratio(t, p, data_range=1.0) for p, t in zip(pv, tv, strict=True)]
        for pv, tv in zip(noisy, clips, strict=True)
    ]
    assert frame_psnr(noisy, clips) == pytest.approx(np.mean(expected))
    offset = clips * 0.8 + 0.1
    assert frame_psnr(offset + 0.1, offset) == pytest.approx(20.0)  # MSE 0.01 -> 20 dB
    half = offset + 0.1
    half[:, :8] = offset[:, :8]  # first 8 frames identical: (cap + 20) / 2, not inf
    assert frame_psnr(half, offset) == pytest.approx((PSNR_CAP_DB + 20.0) / 2)
    assert frame_psnr(offset * 255 + 25.5, offset * 255, data_range=255) == pytest.approx(20.0)


def test_temporal_order_counts_only_in_st_ssim():
    """Flicker: the frames of a smoothly brightening copy, shuffled in time, score the same per
    frame against a static truth, but the 3-D window sees the flicker and st_ssim drops."""
    img = resize_images(np.random.default_rng(5).random((2, 8, 8, 3)), 32)
    truth = np.repeat(img[:, None], 16, axis=1)  # static clips
    ramp = np.linspace(-0.15, 0.15, 16)[None, :, None, None, None]
    smooth = truth * 0.7 + 0.15 + ramp  # brightness drifts slowly, stays in [0, 1]
    flicker = smooth[:, np.random.default_rng(6).permutation(16)]
    assert frame_ssim(flicker, truth) == pytest.approx(frame_ssim(smooth, truth), rel=1e-12)
    assert st_ssim(flicker, truth) < st_ssim(smooth, truth) - 0.2  # measured 0.53 vs 0.84


def test_shuffling_both_videos_alike_changes_only_st_ssim(clips):
    """Frame SSIM is a mean over frame indices, so a shared permutation leaves it unchanged. The
    3-D score changes; here it rises, because the shuffled truth gains temporal contrast that the
    noisy copy shares (measured 0.68 ordered vs 0.79 shuffled)."""
    noisy = (clips + np.random.default_rng(1).normal(0, 0.1, clips.shape)).clip(0, 1)
    perm = np.random.default_rng(1).permutation(16)
    assert frame_ssim(noisy[:, perm], clips[:, perm]) == pytest.approx(frame_ssim(noisy, clips))
    assert st_ssim(noisy[:, perm], clips[:, perm]) > st_ssim(noisy, clips) + 0.05


def test_clip_pcc_known_answers():
    static = np.repeat(np.random.default_rng(7).normal(size=(2, 1, 8)), 5, axis=1)
    assert clip_pcc(static) == pytest.approx(1.0)
    assert clip_pcc(static, pairs="all") == pytest.approx(1.0)
    orthogonal = np.eye(4)[None] * 3.0  # frame t is the t-th basis vector
    assert clip_pcc(orthogonal) == pytest.approx(0.0)
    assert clip_pcc(orthogonal, pairs="all") == pytest.approx(0.0)


def test_clip_pcc_adjacent_vs_all_on_a_three_frame_example():
    # cos(e0, e1) = cos(e1, e2) = 1/sqrt(2), cos(e0, e2) = 0
    emb = np.array([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    assert clip_pcc(emb) == pytest.approx(1 / math.sqrt(2))
    assert clip_pcc(emb, pairs="all") == pytest.approx((2 / math.sqrt(2) + 0.0) / 3)


def test_clip_pcc_is_a_cosine_not_a_pearson_correlation():
    emb = np.array([[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]])  # Pearson r = -1
    assert clip_pcc(emb) == pytest.approx(10 / 14)


def test_n_way_top1_perfect_and_chance():
    rng = np.random.default_rng(8)
    probs = rng.dirichlet(np.ones(288), size=50)
    assert n_way_top1(probs, probs, n=50) == 1.0
    pred, truth = rng.random((2, 1500, 288))  # seeds 0-5 land within 0.011 (2-way), 0.009 (50)
    assert n_way_chance(2) == pytest.approx(0.75)
    assert n_way_chance(50) == pytest.approx(3 / 52)
    assert n_way_top1(pred, truth, n=2) == pytest.approx(n_way_chance(2), abs=0.03)
    assert n_way_top1(pred, truth, n=50) == pytest.approx(n_way_chance(50), abs=0.015)


def test_n_way_chance_formula_matches_simulation():
    """k exchangeable targets, n - 1 distractors: the maximum is a target w.p. k / (n + k - 1)."""
    rng = np.random.default_rng(9)
    for n, k in [(2, 3), (50, 3), (5, 1)]:
        scores = rng.random((100_000, n + k - 1))
        hit_rate = np.mean(scores[:, :k].max(1) > scores[:, k:].max(1))
        assert hit_rate == pytest.approx(n_way_chance(n, truth_top=k), abs=0.005)
    assert n_way_chance(10, truth_top=1) == pytest.approx(0.1)


def test_n_way_top1_hit_rate_on_a_hand_made_sample():
    """Targets 0-2; exactly one of the 7 other classes beats them, so a 2-way trial fails
    only when that class is the distractor: expected hit rate 6/7."""
    truth = np.array([[0.3, 0.25, 0.2, 0.05, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01]])
    pred = np.array([[0.2, 0.1, 0.1, 0.4, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01]])
    assert n_way_top1(pred, truth, n=2, trials=7000) == pytest.approx(6 / 7, abs=0.015)
    assert n_way_top1(pred, truth, n=8) == 0.0  # all 7 others drawn: the 0.4 class always wins
    flat = np.full_like(pred, 0.1)
    assert n_way_top1(flat, truth, n=2) == 0.0  # ties are misses
    assert n_way_top1(pred, truth, n=2, seed=3) == n_way_top1(pred, truth, n=2, seed=3)


def test_n_way_features_known_answers():
    rng = np.random.default_rng(10)
    truth = rng.normal(size=(200, 16))
    assert n_way_features(truth, truth, n=10) == 1.0
    assert n_way_features(np.ones((5, 3)), np.ones((5, 3)), n=2) == 0.0  # ties are misses
    pred = rng.normal(size=(200, 16))
    assert n_way_features(pred, truth, n=2, trials=50) == pytest.approx(0.5, abs=0.04)
    assert n_way_features(pred, truth, n=10, trials=50) == pytest.approx(0.1, abs=0.03)


def test_frames_at_fps_picks_the_documented_indices():
    video = np.arange(16.0)[:, None, None, None] * np.ones((16, 2, 2, 3))
    picked = frames_at_fps(video, src_fps=8, dst_fps=3)
    assert picked.shape == (6, 2, 2, 3)
    assert picked[:, 0, 0, 0].tolist() == [0, 3, 5, 8, 11, 13]
    batch = frames_at_fps(np.stack([video, video]), 8, 3)
    assert batch.shape == (2, 6, 2, 2, 3)
    assert frames_at_fps(video, 8, 8).shape == video.shape


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda v: frame_ssim(v, v[:, :-1]), "differ in shape"),
        (lambda v: frame_psnr(v[0], v[0]), r"'pred' must be a video array .* got shape \(16,"),
        (lambda v: frame_ssim(v, np.where(v > 0.5, np.nan, v)), "'truth' contains NaN"),
        (lambda v: st_ssim(v[:, :6], v[:, :6]), r"FHW >= 11 .*'F': 6"),
        (lambda v: frame_ssim(v[:, :, :, :20], v[:, :, :, :20]), "must be square"),
        (lambda v: clip_pcc(np.ones((2, 1, 4))), r"\(N, F >= 2, D\); got shape \(2, 1, 4\)"),
        (lambda v: clip_pcc(np.ones((2, 3, 4)), pairs="pairs"), "'pairs' must be one of"),
        (lambda v: clip_pcc(np.zeros((1, 2, 4))), "all-zero vectors"),
        (lambda v: n_way_top1(np.ones((4, 10)), np.ones((4, 10)), n=9), "only 7 non-target"),
        (lambda v: n_way_top1(np.ones((4, 10)), np.ones((4, 9)), n=2), "differ in shape"),
        (lambda v: n_way_features(np.ones((4, 3)), np.ones((4, 3)), n=5), "only 3 other"),
        (lambda v: frames_at_fps(v[0], 3, 8), "dst_fps <= src_fps"),
    ],
)
def test_bad_input_raises(clips, call, match):
    with pytest.raises(ValueError, match=match):
        call(clips)
