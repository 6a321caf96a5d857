"""NSD (MindEye2 release layout) single-trial betas -> the internal betas layout.

The betas file is read in row chunks through h5py so memory stays bounded by the chunk, not
by the (trials x voxels) file, which is ~1 GB per subject in the real release.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from mindpipe.exceptions import DataError
from mindpipe.utils import write_json

BETAS_KEY = "betas"


def _open_betas(path: Path) -> h5py.Dataset:
    """The 2-D betas dataset; a missing file/key or bad shape names what was found."""
    if not path.is_file():
        raise DataError(f"NSD betas file not found: '{path}'")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"cannot read NSD betas '{path}' (truncated?): {err}") from err
    if BETAS_KEY not in handle:
        raise DataError(f"expected key '{BETAS_KEY}' in '{path}', found {sorted(handle)}")
    data = handle[BETAS_KEY]
    if data.ndim != 2:
        raise DataError(
            f"expected 2-D (trials, voxels) '{BETAS_KEY}' in '{path}', got {data.shape}"
        )
    return data


def _split_images(
    trial_stim: np.ndarray, test_ids: np.ndarray, n_val: int, seed: int
) -> dict[str, np.ndarray]:
    """Image ids per split: shared test ids, then val carved from training images by seed."""
    train_pool = np.setdiff1d(np.unique(trial_stim), test_ids)
    if n_val >= train_pool.size:
        raise DataError(f"n_val={n_val} leaves no training images (only {train_pool.size})")
    val = np.sort(np.random.default_rng(seed).choice(train_pool, size=n_val, replace=False))
    return {
        "train": np.setdiff1d(train_pool, val),
        "val": val,
        "test": np.intersect1d(np.unique(trial_stim), test_ids),
    }


def _stream_rows(
    data: h5py.Dataset, rows: np.ndarray, chunk: int, out: np.ndarray | None = None
) -> np.ndarray:
    """float32 copy of ``data[rows]`` read ``chunk`` sorted rows at a time into ``out``.

    Passing a memmap as ``out`` keeps memory bounded by one chunk for the big train split.
    """
    if out is None:
        out = np.empty((rows.size, data.shape[1]), dtype=np.float32)
    for start in range(0, rows.size, chunk):
        sel = rows[start : start + chunk]
        out[start : start + sel.size] = data[np.sort(sel)][np.argsort(np.argsort(sel))]
    return out


def _averaged(
    data: h5py.Dataset, trial_stim: np.ndarray, images: np.ndarray, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image repeat-averaged betas (as the papers do) and the within-image noise variance."""
    means = np.empty((images.size, data.shape[1]), dtype=np.float32)
    noise = np.zeros(data.shape[1], dtype=np.float64)
    n_rep_images = 0
    for i, image in enumerate(images):
        reps = _stream_rows(data, np.flatnonzero(trial_stim == image), chunk)
        means[i] = reps.mean(axis=0)
        if reps.shape[0] > 1:
            noise += reps.var(axis=0, ddof=1)
            n_rep_images += 1
    return means, noise / max(n_rep_images, 1)


def convert_nsd(
    *,
    betas_h5: Path,
    trial_stim: np.ndarray,
    test_ids: np.ndarray,
    out_dir: Path,
    subject: str,
    n_val: int,
    seed: int,
    chunk: int = 512,
) -> dict[str, float]:
    """Write ``out_dir/subject`` betas_*/stim_*/voxel_index/ncsnr/meta in the internal layout.

    ``trial_stim`` gives the image id of each row of the betas file; ``test_ids`` are the
    shared1000 images (repeats averaged), val images are carved from training by ``seed``.
    """
    data = _open_betas(Path(betas_h5))
    trial_stim = np.asarray(trial_stim, dtype=np.int64)
    if trial_stim.shape != (data.shape[0],):
        raise DataError(
            f"expected {data.shape[0]} trial stimulus ids for '{betas_h5}', got {trial_stim.shape}"
        )
    splits = _split_images(trial_stim, np.asarray(test_ids, dtype=np.int64), n_val, seed)
    folder = Path(out_dir) / subject
    folder.mkdir(parents=True, exist_ok=True)
    train_rows = np.flatnonzero(np.isin(trial_stim, splits["train"]))
    train = np.lib.format.open_memmap(
        folder / "betas_train.npy",
        mode="w+",
        dtype=np.float32,
        shape=(train_rows.size, data.shape[1]),
    )
    _stream_rows(data, train_rows, chunk, out=train)
    train.flush()
    del train
    np.save(folder / "stim_train.npy", trial_stim[train_rows])
    noise_var = np.zeros(data.shape[1])
    for split in ("val", "test"):
        means, noise = _averaged(data, trial_stim, splits[split], chunk)
        np.save(folder / f"betas_{split}.npy", means)
        np.save(folder / f"stim_{split}.npy", splits[split])
        if split == "test":
            noise_var = noise
    signal_var = np.var(np.load(folder / "betas_test.npy"), axis=0) - noise_var
    ncsnr = np.sqrt(np.clip(signal_var, 0, None) / np.maximum(noise_var, 1e-12))
    np.save(folder / "ncsnr.npy", ncsnr.astype(np.float32))
    np.save(folder / "voxel_index.npy", np.arange(data.shape[1], dtype=np.int64))
    write_json(
        folder / "meta.json",
        {"dataset": "nsd", "source": str(betas_h5), "n_trials": int(data.shape[0]), "seed": seed},
    )
    n_voxels = data.shape[1]
    data.file.close()
    return {f"n_{split}": float(ids.size) for split, ids in splits.items()} | {
        "n_voxels": float(n_voxels),
        "mean_ncsnr": float(ncsnr.mean()),
    }
