"""Generators of tiny files in real-dataset layouts (nilearn-style fakes), for tests only."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def make_nsd_betas(
    path: Path, n_images: int = 30, n_test: int = 6, n_voxels: int = 40, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """NSD-like betas HDF5: each image seen 3 times, signal = image pattern + noise.

    Returns (trial_stim, test_ids).
    """
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(n_images, n_voxels))
    trial_stim = rng.permutation(np.repeat(np.arange(n_images), 3))
    betas = patterns[trial_stim] + 0.5 * rng.normal(size=(trial_stim.size, n_voxels))
    with h5py.File(path, "w") as handle:
        handle.create_dataset("betas", data=betas.astype(np.float16), chunks=(8, n_voxels))
    return trial_stim, np.arange(n_test)
