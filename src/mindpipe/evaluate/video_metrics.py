"""Video reconstruction metrics of NeuroClips' table, as its evaluation lineage computes them.

NeuroClips (NeurIPS'24) reports Mind-Video's metrics plus CLIP-pcc; its own repository has no
metric code, so the definitions follow Mind-Video (``jqin4749/MindVideo``, ``eval_metrics.py``)
and a NeuroClips-style eval script whose origin is unconfirmed (see
shared/notes/metric_definitions.md, "Video metrics" and "Definitions that differ between sources").

Videos are float arrays in [0, 1] shaped ``(N, F, H, W, 3)`` (clips, frames, height, width, RGB).
Frame-level metrics are taken per frame index over the N clips and then averaged over the F
indices (with equal N per index this equals the pooled mean). Classifiers (ViT, VideoMAE) and CLIP
run upstream; the functions here take the probabilities and embeddings they produce.

* ``frame_ssim``: 2-D grayscale Gaussian SSIM per frame at native resolution.
  ``frame_ssim_per_clip`` and ``st_ssim_per_clip`` give each clip's score, for paired comparisons.
* ``frame_psnr``: per-frame PSNR over all pixels and channels, capped at ``PSNR_CAP_DB``.
* ``st_ssim``: the same Gaussian SSIM over each grayscale clip as one (F, H, W) volume.
* ``clip_pcc``: "CLIP-pcc", the mean cosine of CLIP embeddings of adjacent predicted frames.
* ``n_way_top1`` / ``n_way_chance``: classifier-based N-way top-1 with the truth's top-3 classes.
* ``n_way_features``: feature-based N-way (Mind-Video ``n_way_scores``), chance 1/n.
* ``frames_at_fps``: nearest-frame resampling, e.g. 16 frames at 8 FPS -> 6 frames at 3 FPS.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from mindpipe.evaluate import image_metrics

PSNR_CAP_DB = 100.0
"""Upper bound on per-frame PSNR (dB) so that identical frames (infinite PSNR) keep means finite."""

# Gaussian SSIM (sigma 1.5) uses skimage's window of 2 * int(3.5 * sigma + 0.5) + 1 = 11 samples
# per axis: it crops 5 samples from every border, so each axis must be >= 11 long. skimage's own
# error message says "at least 7x7", which is the uniform-window default and wrong for this case.
_SSIM_SIGMA = 1.5
SSIM_MIN_EXTENT = 2 * int(3.5 * _SSIM_SIGMA + 0.5) + 1
_SSIM_KWARGS = {
    "gaussian_weights": True,
    "sigma": _SSIM_SIGMA,
    "use_sample_covariance": False,
    "data_range": 1.0,
}
_PAIRS = ("adjacent", "all")


def _check_finite(name: str, x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"'{name}' contains NaN or inf values (shape {x.shape})")


def _check_videos(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return both videos as float arrays after checking shape (N, F, H, W, 3) and finiteness."""
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    for name, v in (("pred", pred), ("truth", truth)):
        if v.ndim != 5 or v.shape[-1] != 3 or 0 in v.shape:
            raise ValueError(f"'{name}' must be a video array (N, F, H, W, 3); got shape {v.shape}")
        _check_finite(name, v)
    if pred.shape != truth.shape:
        raise ValueError(f"'pred' and 'truth' differ in shape: {pred.shape} vs {truth.shape}")
    return pred, truth


def _check_ssim_extent(shape: tuple[int, ...], axes: str) -> None:
    sizes = dict(zip("NFHW", shape, strict=False))
    short = {a: sizes[a] for a in axes if sizes[a] < SSIM_MIN_EXTENT}
    if short:
        raise ValueError(
            f"Gaussian SSIM (sigma {_SSIM_SIGMA}) needs {axes} >= {SSIM_MIN_EXTENT} each; "
            f"'pred'/'truth' have shape {shape} (too short: {short})"
        )


def frame_ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    """Frame-level SSIM: the mean of :func:`frame_ssim_per_clip` (equal frames per clip)."""
    return float(np.mean(frame_ssim_per_clip(pred, truth)))


def frame_ssim_per_clip(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Frame-level SSIM of each clip: 2-D grayscale Gaussian SSIM per frame, mean over frames.

    Each frame is converted to ITU-R 709 luma (``skimage.color.rgb2gray``) and scored with
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1)`` at its native resolution, i.e. ``image_metrics.ssim`` without a resize (the
    MindEye2 / NEURONS variant).

    The sources disagree on frame SSIM and only this variant is implemented. The others are:
    Mind-Video's ``ssim(img1, img2, data_range=255, channel_axis=-1)`` on RGB (per-channel 2-D SSIM,
    uniform 7x7 window, sample covariance, mean over R, G, B), and the NeuroClips-style eval
    script's ``rgb2gray`` followed by ``channel_axis=-1``, which makes skimage score every pixel
    column of the gray image as a separate 1-D signal (column-wise SSIM). Numbers from the three
    are not comparable.

    Parameters
    ----------
    pred, truth : np.ndarray
        Videos in [0, 1], shape ``(N, F, H, W, 3)``. Frames must be square (``H == W``, as the
        256 x 256 NeuroClips frames are) with ``H >= 11``.

    Returns
    -------
    np.ndarray
        ``(N,)`` mean SSIM over each clip's frames (1 = identical).
    """
    pred, truth = _check_videos(pred, truth)
    _check_ssim_extent(pred.shape[:4], "HW")
    size = pred.shape[2]
    if pred.shape[3] != size:
        # image_metrics.ssim resizes to a square; a non-square frame would be distorted, not scored
        raise ValueError(f"'pred'/'truth' frames must be square (H == W); got shape {pred.shape}")
    per_index = [
        image_metrics.ssim_per_image(p, t, size=size)
        for p, t in zip(pred.swapaxes(0, 1), truth.swapaxes(0, 1), strict=True)
    ]
    return np.mean(per_index, axis=0)


def frame_psnr(pred: np.ndarray, truth: np.ndarray, data_range: float = 1.0) -> float:
    """Frame-level PSNR, as ``skimage.metrics.peak_signal_noise_ratio`` per RGB frame.

    Per frame, ``10 log10(data_range**2 / MSE)`` with the MSE over all pixels and channels; mean
    over clips, then over frame indices. The eval script uses ``data_range=255`` on uint8 frames,
    which is the same number as ``data_range=1`` on the frames divided by 255.

    skimage returns inf for identical frames, and one inf makes the whole mean inf. Each frame's
    PSNR is therefore capped at ``PSNR_CAP_DB`` (100 dB). For data range 1 the smallest non-zero
    error of an 8-bit 256 x 256 RGB frame (one channel of one pixel off by one level) is about
    101 dB, so the cap only changes identical or near-identical frames; real reconstructions
    score around 10-20 dB.

    Parameters
    ----------
    pred, truth : np.ndarray
        Videos in [0, 1], shape ``(N, F, H, W, 3)``.
    data_range : float
        Peak-to-peak range of the pixel values.

    Returns
    -------
    float
        Mean PSNR in dB (higher is better, at most ``PSNR_CAP_DB``).
    """
    pred, truth = _check_videos(pred, truth)
    if not data_range > 0:
        raise ValueError(f"'data_range' must be > 0; got {data_range}")
    mse = np.mean((pred - truth) ** 2, axis=(2, 3, 4))  # (N, F)
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(data_range**2 / mse)
    return float(np.mean(np.minimum(psnr, PSNR_CAP_DB).mean(axis=0)))


def st_ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    """Spatiotemporal SSIM: the mean of :func:`st_ssim_per_clip`."""
    return float(np.mean(st_ssim_per_clip(pred, truth)))


def st_ssim_per_clip(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Spatiotemporal SSIM: Gaussian SSIM over each grayscale clip as one (F, H, W) volume.

    Each clip is converted to luma and scored by ``structural_similarity`` on the 3-D array with
    ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1``, so the
    Gaussian window also spans time (sigma 1.5 frames) and temporal structure counts.

    skimage 0.26 uses an 11-sample window on every axis and averages only over positions at least 5
    samples from each border, so F, H and W must each be >= 11; with fewer frames it raises (its
    message wrongly says 7). A 6-frame 3-FPS NeuroClips clip is therefore too short: score the
    full-rate clip (e.g. 16 frames at 8 FPS), where the 6 central frames are window centres.
    Shorter clips raise ValueError here rather than being padded or scored with a narrower
    window, which would change the definition.

    Parameters
    ----------
    pred, truth : np.ndarray
        Videos in [0, 1], shape ``(N, F, H, W, 3)`` with F, H, W >= 11.

    Returns
    -------
    np.ndarray
        ``(N,)`` SSIM of each clip (1 = identical).
    """
    pred, truth = _check_videos(pred, truth)
    _check_ssim_extent(pred.shape[:4], "FHW")
    return np.array(
        [
            structural_similarity(rgb2gray(p), rgb2gray(t), **_SSIM_KWARGS)
            for p, t in zip(pred, truth, strict=True)
        ]
    )


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    """L2-normalise the last axis; a zero vector has no direction, so it is an error."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"'{name}' contains all-zero vectors; cosine similarity is undefined")
    return x / norms


def clip_pcc(frame_embeddings: np.ndarray, pairs: str = "adjacent") -> float:
    """NeuroClips' "CLIP-pcc": cosine similarity of CLIP embeddings of predicted frames.

    Despite its name this is a cosine similarity, not a Pearson correlation: the eval script
    compares raw (uncentred) CLIP ViT-B/32 ``image_embeds``, and the two differ whenever the
    embedding mean is non-zero, as it is for CLIP features.

    Parameters
    ----------
    frame_embeddings : np.ndarray
        Shape ``(N, F, D)``: one embedding per frame of each **predicted** video, F >= 2.
    pairs : {"adjacent", "all"}
        ``"adjacent"`` (the reported CLIP-pcc): the mean cosine of frames (t, t+1), pooled over all
        N * (F - 1) pairs. ``"all"`` (the script's "CLIP-pcc new", which uses ViT-L/14 features):
        the mean over all off-diagonal frame pairs of each video, then the mean over videos.

    Returns
    -------
    float
        Mean cosine similarity in [-1, 1] (1 = all compared frames point the same way).
    """
    if pairs not in _PAIRS:
        raise ValueError(f"'pairs' must be one of {list(_PAIRS)}; got {pairs!r}")
    emb = np.asarray(frame_embeddings, dtype=np.float64)
    if emb.ndim != 3 or emb.shape[0] == 0 or emb.shape[1] < 2 or emb.shape[2] == 0:
        raise ValueError(f"'frame_embeddings' must be (N, F >= 2, D); got shape {emb.shape}")
    _check_finite("frame_embeddings", emb)
    unit = _unit_rows(emb, "frame_embeddings")
    if pairs == "adjacent":
        return float(np.mean(np.sum(unit[:, :-1] * unit[:, 1:], axis=-1)))
    n_frames = unit.shape[1]
    sims = unit @ unit.transpose(0, 2, 1)  # (N, F, F); the diagonal is 1 and is left out
    off_diag_sum = sims.sum(axis=(1, 2)) - np.trace(sims, axis1=1, axis2=2)
    return float(np.mean(off_diag_sum / (n_frames * (n_frames - 1))))


def _check_pair_matrices(
    a: np.ndarray, b: np.ndarray, names: tuple[str, str], what: str
) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    for name, x in zip(names, (a, b), strict=True):
        if x.ndim != 2 or 0 in x.shape:
            raise ValueError(f"'{name}' must be {what}; got shape {x.shape}")
        _check_finite(name, x)
    if a.shape != b.shape:
        raise ValueError(f"'{names[0]}' and '{names[1]}' differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _check_n_way(n: int, trials: int, pool: int, pool_name: str) -> None:
    if n < 2:
        raise ValueError(f"'n' must be >= 2; got {n}")
    if trials < 1:
        raise ValueError(f"'trials' must be >= 1; got {trials}")
    if n - 1 > pool:
        raise ValueError(f"'n' = {n} needs n - 1 = {n - 1} distractors but only {pool} {pool_name}")


def _random_subsets(rng: np.random.Generator, pool: int, size: int, trials: int) -> np.ndarray:
    """``trials`` uniform draws of ``size`` distinct indices below ``pool``: (trials, size)."""
    return np.argsort(rng.random((trials, pool)), axis=1)[:, :size]


def n_way_top1(
    pred_probs: np.ndarray,
    truth_probs: np.ndarray,
    n: int,
    trials: int = 100,
    seed: int = 0,
    truth_top: int = 3,
) -> float:
    """Classifier-based N-way top-1 (Mind-Video ``n_way_top_k_acc``, as NeuroClips runs it).

    Per sample: the ``truth_top`` classes the classifier ranks highest on the ground truth are the
    targets. Each trial draws n - 1 distractor classes without replacement from the other classes;
    it is a hit if any target's predicted probability is strictly above every distractor's (ties
    count as misses, as with the reference's ascending ``argsort``). Sample score = hits / trials;
    the result is the mean over samples. Chance is ``n_way_chance(n, truth_top)``, not 1/n
    (0.75 for 2-way, 0.0577 for 50-way with three targets).

    Frame-based NeuroClips numbers use ``google/vit-base-patch16-224`` on frames, video-based ones
    ``MCG-NJU/videomae-base-finetuned-kinetics`` on clips; both run upstream. Only the ranking of
    each row matters, so logits give the same result as softmax probabilities.

    The reference draws distractors from the unseeded global ``np.random``, so its numbers vary
    from run to run; here they come from ``np.random.default_rng(seed)`` and are reproducible, but
    they are not the reference's draws.

    Parameters
    ----------
    pred_probs, truth_probs : np.ndarray
        Shape ``(N, C)``: class probabilities of each reconstruction and of its ground truth from
        the same classifier.
    n : int
        Number of candidates per trial (one target plus n - 1 distractors); n - 1 <= C - truth_top.
    trials : int
        Trials per sample (NeuroClips: 100).
    seed : int
        Seed of the distractor draws.
    truth_top : int
        Number of target classes taken from the ground truth's ranking (reference: 3).

    Returns
    -------
    float
        Mean hit rate in [0, 1].
    """
    names = ("pred_probs", "truth_probs")
    pred, truth = _check_pair_matrices(pred_probs, truth_probs, names, "(N, C)")
    n_classes = pred.shape[1]
    if not 1 <= truth_top < n_classes:
        raise ValueError(f"'truth_top' must be in [1, {n_classes - 1}] (C - 1); got {truth_top}")
    _check_n_way(n, trials, n_classes - truth_top, "non-target classes exist")
    rng = np.random.default_rng(seed)
    targets = np.argsort(truth, axis=1, kind="stable")[:, -truth_top:]
    scores = []
    for probs, target in zip(pred, targets, strict=True):
        others = np.delete(probs, target)
        picks = _random_subsets(rng, len(others), n - 1, trials)
        # "any target ranks first among {target} + distractors" == the best target beats them all
        scores.append(np.mean(probs[target].max() > others[picks].max(axis=1)))
    return float(np.mean(scores))


def n_way_chance(n: int, truth_top: int = 3) -> float:
    """Chance level of ``n_way_top1``: ``truth_top / (n + truth_top - 1)``, i.e. 3 / (n + 2).

    With predictions independent of the truth, the ``truth_top`` target scores and the n - 1
    distractor scores are n + truth_top - 1 exchangeable values; a trial is a hit exactly when the
    largest of them is a target, which happens with probability truth_top / (n + truth_top - 1).
    With one target this is the familiar 1/n.
    """
    if n < 2 or truth_top < 1:
        raise ValueError(f"need 'n' >= 2 and 'truth_top' >= 1; got n={n}, truth_top={truth_top}")
    return truth_top / (n + truth_top - 1)


def n_way_features(
    pred_feats: np.ndarray,
    truth_feats: np.ndarray,
    n: int,
    trials: int = 10,
    seed: int = 0,
) -> float:
    """Feature-based N-way identification (Mind-Video ``n_way_scores``), chance 1/n.

    For each reconstruction i, the cosine to its own ground truth is compared with the cosines to
    n - 1 other ground truths drawn without replacement from the N - 1 others; a trial is a hit if
    the own truth scores strictly highest (ties are misses). Sample score = hits / trials; the
    result is the mean over samples. Mind-Video uses CLIP ViT-B/32 ``image_embeds`` of frames,
    10 trials and an unseeded global RNG (here: ``np.random.default_rng(seed)``).

    Parameters
    ----------
    pred_feats, truth_feats : np.ndarray
        Shape ``(N, D)``: paired features of reconstructions and ground truths.
    n : int
        Candidates per trial (the own truth plus n - 1 others); n <= N.
    trials, seed : int
        Trials per sample and the seed of the distractor draws.

    Returns
    -------
    float
        Mean hit rate in [0, 1].
    """
    names = ("pred_feats", "truth_feats")
    pred, truth = _check_pair_matrices(pred_feats, truth_feats, names, "(N, D)")
    _check_n_way(n, trials, len(pred) - 1, "other samples exist")
    # sims[i, j] = cos(pred_i, truth_j)
    sims = _unit_rows(pred, "pred_feats") @ _unit_rows(truth, "truth_feats").T
    rng = np.random.default_rng(seed)
    scores = []
    for i, row in enumerate(sims):
        others = np.delete(row, i)
        picks = _random_subsets(rng, len(others), n - 1, trials)
        scores.append(np.mean(row[i] > others[picks].max(axis=1)))
    return float(np.mean(scores))


def frame_indices(n_frames: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Indices of the frames nearest to times i / dst_fps that fall inside the clip."""
    # the clip lasts n_frames / src_fps seconds; keep sample times t_i = i / dst_fps below that
    n_out = math.ceil(n_frames * dst_fps / src_fps - 1e-9)
    positions = np.arange(n_out) * (src_fps / dst_fps)
    # round half up (np.round rounds half to even, which would make the spacing uneven)
    return np.minimum(np.floor(positions + 0.5).astype(int), n_frames - 1)


def frames_at_fps(video: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Resample a video to ``dst_fps`` by taking the frame nearest to each sample time.

    Sample times are t_i = i / dst_fps for every t_i inside the clip (``F / src_fps`` seconds);
    frame ``floor(i * src_fps / dst_fps + 0.5)`` is kept. NeuroClips scores 2-s clips at 3 FPS: from
    16 frames at 8 FPS this keeps the 6 frames with indices 0, 3, 5, 8, 11, 13 (round of i * 8/3).
    The frame choice of NeuroClips' own pipeline is not in its repository; this rule is ours.

    Parameters
    ----------
    video : np.ndarray
        Shape ``(F, H, W, C)`` or ``(N, F, H, W, C)``; frames are on axis -4.
    src_fps, dst_fps : float
        Frame rate of ``video`` and the target rate; ``0 < dst_fps <= src_fps`` (upsampling would
        only repeat frames).

    Returns
    -------
    np.ndarray
        The selected frames, same layout as ``video`` with ``ceil(F * dst_fps / src_fps)`` frames.
    """
    video = np.asarray(video)
    if video.ndim not in (4, 5) or video.shape[-4] == 0:
        raise ValueError(f"'video' must be (F, H, W, C) or (N, F, H, W, C); got {video.shape}")
    if not 0 < dst_fps <= src_fps:
        raise ValueError(f"need 0 < dst_fps <= src_fps; got src_fps={src_fps}, dst_fps={dst_fps}")
    return np.take(video, frame_indices(video.shape[-4], src_fps, dst_fps), axis=-4)
