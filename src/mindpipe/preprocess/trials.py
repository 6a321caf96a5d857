"""``preprocess`` on pre-estimated responses (NSD, GOD, CC2017): the same outputs, no GLM.

A subject's betas (``data/sub-XX/betas/``, :mod:`mindpipe.io.trials`) are read in row blocks,
so memory is bounded by a block plus the kept voxels' val/test image means, whatever the
number of trials (30,000 x 15,724 for an NSD subject):

1. every voxel's mean and sd within each session (:meth:`SessionZScorer.partial_fit`);
2. the z-scored train trials of repeated images, a batch of images at a time: NCSNR from the
   within-image variance, as the GLM route (:func:`~mindpipe.preprocess.voxels.noise_variance`);
3. the voxels kept by the same rule (:func:`~mindpipe.preprocess.voxels.select_reliable`);
   the z-scored train rows' kept columns appended to ``betas_train.npy``; val/test trials
   averaged per image.

The output is ``artifacts/preprocess/`` of docs/data-format.md with its summary and gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mindpipe.exceptions import DataError
from mindpipe.io.trials import NpyRowWriter, TrialBetas, open_trial_betas
from mindpipe.preprocess.outputs import (
    average_repeats,
    expected_rows,
    no_reliable_voxel,
    publish,
    save_split,
    start_outputs,
    subject_metrics,
)
from mindpipe.preprocess.voxels import (
    SessionZScorer,
    ncsnr_from_noise,
    noise_variance,
    select_reliable,
)
from mindpipe.utils import progress, write_json

logger = logging.getLogger(__name__)

MAX_VALUES = 1 << 22  # values per block read (16 MiB of float32)


def preprocess_trials(data_dir: Path, out_dir: Path, params) -> dict[str, float]:
    """Write ``artifacts/preprocess/`` for one dataset of pre-estimated responses.

    Parameters
    ----------
    params : PreprocessParams
        ``min_ncsnr`` and ``n_voxels`` select voxels; the GLM settings do not apply.

    Raises
    ------
    DataError
        Bad or disagreeing files, stimulus ids missing from ``stimuli.tsv``, a selection that
        needs repeated training images when there are none, no reliable voxel.
    ValidationError
        The betas gate on ``summary.tsv`` failed.
    """
    start = time.perf_counter()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    stimuli, subjects = start_outputs(data_dir, out_dir)
    split_of = dict(zip(stimuli["stim_id"].tolist(), stimuli["split"].tolist(), strict=True))
    rows: list[dict] = []
    metrics: dict[str, float] = {}
    reliability: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for subject in progress(subjects, desc="preprocess: subjects"):
        tb = open_trial_betas(data_dir, subject)
        split = _splits(tb, split_of, data_dir)
        zscorer = SessionZScorer()
        for first, block in tb.row_chunks(MAX_VALUES):
            zscorer.partial_fit(block, sessions=tb.session[first : first + block.shape[0]])
        snr, n_images = _train_ncsnr(tb, zscorer, split)
        keep = _choose(subject, snr, n_images, params)
        if n_images:  # no repeated training image (GOD): nothing to plot
            reliability[subject] = (snr, np.isin(np.arange(snr.size), keep))
        sub_dir = out_dir / subject
        sub_dir.mkdir()
        expected = expected_rows(split, tb.stim)
        rows.append(_write_train(tb, zscorer, split, keep, sub_dir, expected["train"]))
        for name in ("val", "test"):
            means, ids = _image_means(tb, zscorer, np.flatnonzero(split == name), keep)
            rows.append(save_split(sub_dir, subject, name, means, ids, tb.tr, expected[name]))
        np.save(sub_dir / "voxel_index.npy", tb.voxel_index[keep])
        np.save(sub_dir / "ncsnr.npy", snr[keep].astype(np.float32))
        write_json(sub_dir / "meta.json", _meta(tb, split, keep, n_images, params))
        metrics |= subject_metrics(subject, snr, keep, expected["train"])
        logger.info(
            "%s: %d trials, kept %d/%d voxels (mean NCSNR %.3f)",
            subject,
            tb.shape[0],
            keep.size,
            tb.shape[1],
            metrics[f"{subject}.mean_ncsnr"],
        )
    metrics = publish(out_dir, rows, reliability, params.min_ncsnr, metrics, subjects)
    logger.info("preprocess: %d subjects in %.1f s", len(subjects), time.perf_counter() - start)
    return metrics


def _splits(tb: TrialBetas, split_of: dict[int, str], data_dir: Path) -> np.ndarray:
    unknown = sorted(set(tb.stim.tolist()) - set(split_of))
    if unknown:
        raise DataError(
            f"{tb.subject}: {len(unknown)} stim_id(s) of its trial table are not in "
            f"'{data_dir / 'stimuli' / 'stimuli.tsv'}': {unknown[:10]}"
        )
    return np.array([split_of[s] for s in tb.stim.tolist()])


def image_batches(rows: np.ndarray, stim: np.ndarray, max_rows: int) -> Iterator[np.ndarray]:
    """Sorted row indices in batches that keep every image's rows together.

    Parameters
    ----------
    rows : ndarray, (n,)
        Row indices to cover.
    stim : ndarray, (n_trials,)
        Stimulus id of every row of the file.
    max_rows : int
        Batch size to aim for (an image with more rows gets a batch of its own).
    """
    order = rows[np.lexsort((rows, stim[rows]))]
    images = stim[order]
    bounds = np.flatnonzero(np.diff(images)) + 1  # where a new image starts
    starts = np.concatenate([[0], bounds])
    begin = 0
    for i, s in enumerate(starts):
        end = starts[i + 1] if i + 1 < starts.size else order.size
        if end - begin > max_rows and s > begin:
            yield np.sort(order[begin:s])
            begin = s
    if begin < order.size:
        yield np.sort(order[begin:])


def _zscored(tb: TrialBetas, zscorer: SessionZScorer, rows: np.ndarray) -> np.ndarray:
    return zscorer.transform(tb.rows(rows), sessions=tb.session[rows])


def _max_rows(tb: TrialBetas) -> int:
    return max(1, MAX_VALUES // max(tb.shape[1], 1))


def _train_ncsnr(
    tb: TrialBetas, zscorer: SessionZScorer, split: np.ndarray
) -> tuple[np.ndarray, int]:
    """NCSNR of every voxel on the train trials of repeated images (NaN when none repeat)."""
    train = np.flatnonzero(split == "train")
    ids, counts = np.unique(tb.stim[train], return_counts=True)
    rows = train[np.isin(tb.stim[train], ids[counts >= 2])]
    if rows.size == 0:
        return np.full(tb.shape[1], np.nan), 0
    total, n_images = np.zeros(tb.shape[1]), 0
    for batch in image_batches(rows, tb.stim, _max_rows(tb)):
        noise, n = noise_variance(_zscored(tb, zscorer, batch), tb.stim[batch])
        total += noise * n
        n_images += n
    return ncsnr_from_noise(total / n_images), n_images


def _choose(subject: str, snr: np.ndarray, n_images: int, params) -> np.ndarray:
    """Indices of the kept voxels (all of them when no selection is asked for)."""
    select = params.min_ncsnr is not None or params.n_voxels is not None
    if n_images == 0:
        if select:
            raise DataError(
                f"{subject}: no training image is shown twice, so voxel reliability (NCSNR) "
                "cannot be estimated for preprocess.min_ncsnr / preprocess.n_voxels; set both "
                "to null to keep every voxel of the dataset's ROI (GOD shows each training "
                "image once)"
            )
        return np.arange(snr.size)
    keep = np.flatnonzero(select_reliable(snr, params.min_ncsnr, params.n_voxels))
    if keep.size == 0:
        raise no_reliable_voxel(subject, params.min_ncsnr, snr, n_images)
    return keep


def _write_train(
    tb: TrialBetas,
    zscorer: SessionZScorer,
    split: np.ndarray,
    keep: np.ndarray,
    folder: Path,
    expected: int,
) -> dict:
    """Append the z-scored train trials' kept columns to ``betas_train.npy``; summary row."""
    train = np.flatnonzero(split == "train")
    writer = NpyRowWriter(folder / "betas_train.npy", (train.size, keep.size))
    moments = _Moments()
    step = _max_rows(tb)
    for first in range(0, train.size, step):
        z = _zscored(tb, zscorer, train[first : first + step])[:, keep]
        writer.write(z)
        moments.add(z)
    writer.close()
    np.save(folder / "stim_train.npy", tb.stim[train])
    return moments.row(tb.subject, "train", keep.size, tb.tr, expected)


def _image_means(
    tb: TrialBetas, zscorer: SessionZScorer, rows: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image means of the z-scored kept columns, images in ascending stim_id order."""
    ids = np.unique(tb.stim[rows])
    means = np.zeros((ids.size, keep.size), dtype=np.float32)
    for batch in image_batches(rows, tb.stim, _max_rows(tb)) if rows.size else ():
        mean, images = average_repeats(_zscored(tb, zscorer, batch)[:, keep], tb.stim[batch])
        means[np.searchsorted(ids, images)] = mean
    return means, ids


class _Moments:
    """Streaming count, NaN count, mean, sd, min and max of the finite values seen."""

    def __init__(self) -> None:
        self.n_rows = self.n = self.n_bad = 0
        self.total = self.squares = 0.0
        self.low, self.high = np.inf, -np.inf

    def add(self, x: np.ndarray) -> None:
        finite = x[np.isfinite(x)].astype(np.float64)
        self.n_rows += x.shape[0]
        self.n_bad += x.size - finite.size
        self.n += finite.size
        self.total += float(finite.sum())
        self.squares += float((finite**2).sum())
        if finite.size:
            self.low, self.high = min(self.low, finite.min()), max(self.high, finite.max())

    def row(self, subject: str, split: str, n_voxels: int, tr: float, expected: int) -> dict:
        """A ``summary.tsv`` row (the columns of :func:`preprocess.outputs.summary_row`)."""
        mean = self.total / self.n if self.n else np.nan
        std = np.sqrt(max(self.squares / self.n - mean**2, 0.0)) if self.n else np.nan
        return {
            "subject": subject,
            "split": split,
            "n_rows": self.n_rows,
            "n_voxels": n_voxels,
            "n_nonfinite": int(self.n_bad),
            "mean": mean,
            "std": std,
            "min": float(self.low) if self.n else np.nan,
            "max": float(self.high) if self.n else np.nan,
            "tr": float(tr),
            "expected_rows": int(expected),
        }


def _meta(tb: TrialBetas, split: np.ndarray, keep: np.ndarray, n_images: int, params) -> dict:
    sessions = sorted(set(tb.session.tolist()))
    return {
        "subject": tb.subject,
        "dataset": tb.meta.get("Dataset"),
        "source": tb.meta.get("Source"),
        "grid": tb.meta.get("Grid"),
        "tr": tb.tr,
        "n_sessions": len(sessions),
        "sessions": sessions,
        "n_mask_voxels": tb.shape[1],
        "n_voxels": int(keep.size),
        "n_trials": {k: int((split == k).sum()) for k in ("train", "val", "test")},
        "n_repeated_train_images": n_images,
        "units": f"{tb.meta.get('Units')}, then z-scored per voxel within each session",
        "selection": {
            "min_ncsnr": params.min_ncsnr,
            "n_voxels": params.n_voxels,
            "fit_on": "train repeats",
        },
    }
