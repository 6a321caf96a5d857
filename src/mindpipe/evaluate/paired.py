"""Paired comparison of two methods scored on the same items (e.g. per-clip SSIM).

A difference of means over a few hundred clips says little on its own when it is small; pairing
each clip's two scores removes the clip-to-clip spread that both methods share. Reported: the
mean difference, the share of items the first method wins, and a percentile bootstrap interval
of the mean difference (items resampled with replacement, the pairs kept together).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    mean: float  # mean of a - b
    win_rate: float  # share of items with a > b (ties count as losses)
    ci_low: float  # bootstrap interval of the mean difference
    ci_high: float

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}.{k}": v for k, v in dataclasses.asdict(self).items()}


def paired_difference(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> PairedDifference:
    """Compare per-item scores ``a`` and ``b`` (same items, same order), higher = better."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"need two 1-D score arrays of one length >= 2; got {a.shape}, {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired scores contain NaN or inf")
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1; got {n_boot}, {level}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return PairedDifference(float(diff.mean()), float(np.mean(diff > 0)), float(low), float(high))
