"""What both routes of ``preprocess`` write: splits, summary rows, the gate, the plot.

The GLM route (:mod:`mindpipe.preprocess.stage`) and the pre-estimated route
(:mod:`mindpipe.preprocess.trials`) produce the same ``artifacts/preprocess/`` layout
(docs/data-format.md) through these helpers.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from mindpipe.exceptions import DataError
from mindpipe.io import bids
from mindpipe.validate.betas import SUMMARY_COLUMNS, check_betas_summary

logger = logging.getLogger(__name__)


def start_outputs(data_dir: Path, out_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Read and check ``stimuli.tsv``, find the subjects, copy the table into ``out_dir``."""
    stimuli = bids.read_stimuli(data_dir)
    bids.check_stimuli(stimuli, data_dir / "stimuli" / "stimuli.tsv")
    subjects = bids.discover_subjects(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_dir / "stimuli" / "stimuli.tsv", out_dir / "stimuli.tsv")
    return stimuli, subjects


def save_split(
    folder: Path,
    subject: str,
    split: str,
    x: np.ndarray,
    stim: np.ndarray,
    tr: float,
    expected: int,
) -> dict:
    """Save ``betas_<split>.npy`` (float32) and ``stim_<split>.npy``; return the summary row."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    np.save(folder / f"betas_{split}.npy", x)
    np.save(folder / f"stim_{split}.npy", np.asarray(stim).astype(np.int64))
    return summary_row(subject, split, x, tr, expected)


def expected_rows(split: np.ndarray, stim: np.ndarray) -> dict[str, int]:
    """Rows each split must have: every train trial, one per val/test image."""
    return {
        "train": int((split == "train").sum()),
        "val": int(np.unique(stim[split == "val"]).size),
        "test": int(np.unique(stim[split == "test"]).size),
    }


def no_reliable_voxel(
    subject: str, min_ncsnr: float | None, ncsnr: np.ndarray, n_images: int
) -> DataError:
    """The error when the NCSNR threshold leaves a subject without voxels."""
    return DataError(
        f"{subject}: no voxel reaches NCSNR >= {min_ncsnr} (best {np.nanmax(ncsnr):.3f} over "
        f"{ncsnr.size} mask voxels, {n_images} repeated train images); lower "
        "preprocess.min_ncsnr"
    )


def subject_metrics(
    subject: str, ncsnr: np.ndarray, indices: np.ndarray, n_train: int
) -> dict[str, float]:
    """The stage's per-subject metrics: kept voxels, their NCSNR and the mask's."""
    return {
        f"{subject}.n_voxels": float(indices.size),
        f"{subject}.mean_ncsnr": finite_mean(ncsnr[indices]),
        f"{subject}.mean_ncsnr_mask": finite_mean(ncsnr),
        f"{subject}.n_train": float(n_train),
    }


def publish(
    out_dir: Path,
    rows: list[dict],
    reliability: dict[str, tuple[np.ndarray, np.ndarray]],
    min_ncsnr: float | None,
    metrics: dict[str, float],
    subjects: list[str],
) -> dict[str, float]:
    """Write ``summary.tsv`` and the reliability plot, run the betas gate, add dataset means.

    Raises
    ------
    ValidationError
        The betas gate on ``summary.tsv`` failed.
    """
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    summary.to_csv(out_dir / "summary.tsv", sep="\t", index=False, float_format="%.6g")
    plot_reliability(reliability, out_dir / "plots" / "reliability.png", min_ncsnr)
    check_betas_summary(summary)
    metrics["n_subjects"] = float(len(subjects))
    metrics["mean_ncsnr"] = float(np.mean([metrics[f"{s}.mean_ncsnr"] for s in subjects]))
    metrics["mean_n_voxels"] = float(np.mean([metrics[f"{s}.n_voxels"] for s in subjects]))
    return metrics


def finite_mean(values: np.ndarray) -> float:
    """Mean over finite values (NCSNR is inf for a voxel without noise); 0.0 if none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else 0.0


def average_repeats(betas: np.ndarray, stim_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the rows of each image.

    Parameters
    ----------
    betas : ndarray, (n_trials, n_voxels)
    stim_ids : ndarray, (n_trials,)

    Returns
    -------
    betas : ndarray, (n_images, n_voxels) float32
        One row per image, images in ascending stim_id order.
    stim_ids : ndarray, (n_images,) int64
    """
    unique, inverse, counts = np.unique(stim_ids, return_inverse=True, return_counts=True)
    onehot = sparse.csr_matrix(
        (np.ones(stim_ids.size), (inverse.ravel(), np.arange(stim_ids.size))),
        shape=(unique.size, stim_ids.size),
    )
    mean = (onehot @ np.asarray(betas, dtype=np.float64)) / counts[:, None]
    return mean.astype(np.float32), unique.astype(np.int64)


def summary_row(subject: str, split: str, x: np.ndarray, tr: float, expected: int) -> dict:
    finite = x[np.isfinite(x)]
    has = finite.size > 0
    return {
        "subject": subject,
        "split": split,
        "n_rows": int(x.shape[0]),
        "n_voxels": int(x.shape[1]),
        "n_nonfinite": int(x.size - finite.size),
        "mean": float(finite.mean(dtype=np.float64)) if has else np.nan,
        "std": float(finite.std(dtype=np.float64)) if has else np.nan,
        "min": float(finite.min()) if has else np.nan,
        "max": float(finite.max()) if has else np.nan,
        "tr": float(tr),
        "expected_rows": int(expected),
    }


def plot_reliability(
    reliability: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    min_ncsnr: float | None = None,
) -> None:
    """Histogram of every mask voxel's NCSNR per subject, the kept ones highlighted.

    Parameters
    ----------
    reliability : dict
        ``subject -> (ncsnr (n_mask,), kept (n_mask,) bool)``.
    path : Path
        PNG to write (parent folders are created).
    min_ncsnr : float, optional
        Drawn as a vertical threshold line.
    """
    # The Agg canvas directly: no pyplot state, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(reliability), 1)
    fig = Figure(figsize=(3.2 * n, 3.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False, sharey=True)
    for ax, (subject, (snr, kept)) in zip(axes[0], reliability.items(), strict=False):
        finite = np.isfinite(snr)
        top = float(np.percentile(snr[finite], 99.5)) if finite.any() else 1.0
        bins = np.linspace(0.0, max(top, 1e-3), 40)
        clipped = np.clip(snr, 0.0, bins[-1])
        ax.hist(clipped, bins=bins, color="0.75", label="mask")
        ax.hist(clipped[kept], bins=bins, color="tab:blue", label=f"kept ({int(kept.sum())})")
        if min_ncsnr is not None:
            ax.axvline(min_ncsnr, color="tab:red", linestyle="--", label=f"min {min_ncsnr:g}")
        ax.set_title(subject)
        ax.set_xlabel("NCSNR (train repeats)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("number of voxels")
    fig.suptitle("Voxel reliability")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
