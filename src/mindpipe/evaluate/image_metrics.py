"""Image reconstruction metrics, defined as MindEye2's evaluation computes them.

Inputs are float images in [0, 1] shaped ``(N, H, W, 3)`` or feature arrays ``(N, D)``; feature
networks (AlexNet, Inception, CLIP, ...) run upstream (``evaluate/extractors.py``). Definitions and
the version traps behind them are in shared/notes/metric_definitions.md:

* PixCorr: bilinear resize to ``size`` (MindEye2: 425), per-image Pearson r over all channel-first
  values, mean over images.
* SSIM: resize to ``size``, ITU-R 709 luma (``skimage.color.rgb2gray``), 2-D Gaussian SSIM
  (sigma 1.5, population covariance, data range 1), mean over images; this is what MindEye2's call
  computes under scikit-image >= 0.20, where its ``multichannel=True`` is ignored.
* two-way identification: for each reconstruction, the fraction of other ground truths that
  correlate less with it than its own ground truth (exhaustive, strict, chance 0.5).
* correlation distance (EffNet-B1, SwAV): mean ``1 - r`` between paired features (lower is better).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

MINDEYE2_SIZE = 425


def _check_images(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected two (N, H, W, 3) image arrays, got {a.shape} and {b.shape}")


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize as torchvision tensors do (align_corners=False, antialias to shrink)."""
    if images.shape[1:3] == (size, size):
        return np.asarray(images, dtype=np.float64)
    x = torch.as_tensor(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    antialias = size < max(images.shape[1:3])
    x = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
    )
    return x.permute(0, 2, 3, 1).double().numpy()


def pixcorr(recon: np.ndarray, truth: np.ndarray, size: int = MINDEYE2_SIZE) -> float:
    """Mean per-image Pearson correlation of pixel values (higher is better, 1 = identical)."""
    _check_images(recon, truth)
    a = resize_images(recon, size).transpose(0, 3, 1, 2).reshape(len(recon), -1)
    b = resize_images(truth, size).transpose(0, 3, 1, 2).reshape(len(truth), -1)
    return float(np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)]))


def ssim(recon: np.ndarray, truth: np.ndarray, size: int = MINDEYE2_SIZE) -> float:
    """Mean 2-D Gaussian SSIM of the grayscale images at ``size`` x ``size`` (1 = identical)."""
    return float(np.mean(ssim_per_image(recon, truth, size)))


def ssim_per_image(recon: np.ndarray, truth: np.ndarray, size: int = MINDEYE2_SIZE) -> np.ndarray:
    """Each pair's SSIM as :func:`ssim` scores it, shape ``(N,)``."""
    _check_images(recon, truth)
    a, b = rgb2gray(resize_images(recon, size)), rgb2gray(resize_images(truth, size))
    return np.array(
        [
            structural_similarity(
                x,
                y,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            for x, y in zip(a, b, strict=True)
        ]
    )


def two_way_identification(pred: np.ndarray, truth: np.ndarray) -> float:
    """MindEye2's two-way identification from paired features (chance 0.5, perfect 1)."""
    pred, truth = pred.reshape(len(pred), -1), truth.reshape(len(truth), -1)
    if pred.shape != truth.shape or len(pred) < 2:
        raise ValueError(f"need >= 2 paired feature rows, got {pred.shape} and {truth.shape}")
    n = len(pred)
    r = np.corrcoef(truth, pred)[:n, n:]  # r[i, j] = corr(truth_i, pred_j)
    wins = (r < np.diag(r)[None, :]).sum(axis=0)  # per reconstruction j, strict
    return float(wins.mean() / (n - 1))


def correlation_distance(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean ``1 - Pearson r`` between paired feature rows (0 = identical, lower is better)."""
    pred, truth = pred.reshape(len(pred), -1), truth.reshape(len(truth), -1)
    if pred.shape != truth.shape:
        raise ValueError(f"paired features differ in shape: {pred.shape} vs {truth.shape}")
    pc = pred - pred.mean(axis=1, keepdims=True)
    tc = truth - truth.mean(axis=1, keepdims=True)
    r = (pc * tc).sum(1) / np.maximum(
        np.linalg.norm(pc, axis=1) * np.linalg.norm(tc, axis=1), 1e-12
    )
    return float(np.mean(1.0 - r))
