"""The ``preprocess`` stage: raw BOLD runs -> z-scored, reliability-selected single-trial betas.

Per subject, one run in memory at a time:

1. load the run's visual-mask voxels (float32) and check it against its events and sidecar;
2. % signal change of the run mean, DCT high-pass (constant + cosines slower than
   ``high_pass_cutoff``) projected out of data and design, single-trial betas by LSS with the
   canonical HRF (:mod:`mindpipe.preprocess.glm`);
3. after all runs: z-score every voxel within each session (over all of the session's trials,
   as NSD does), estimate NCSNR on the *train* split's repeats only and keep the reliable voxels
   (:class:`~mindpipe.preprocess.voxels.VoxelSelector`);
4. write train betas one row per trial, val/test betas averaged over repeats, then
   ``summary.tsv`` and the reliability plot, and run the betas gate on the summary.

The output layout is ``artifacts/preprocess/`` in docs/data-format.md.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from mindpipe.exceptions import DataError, ParamsError
from mindpipe.io import bids
from mindpipe.params import BaseParams
from mindpipe.preprocess.glm import HRF_MODELS, run_betas
from mindpipe.preprocess.voxels import SessionZScorer, VoxelSelector
from mindpipe.utils import progress, write_json
from mindpipe.validate.betas import SUMMARY_COLUMNS, check_betas_summary

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreprocessParams:
    """The ``preprocess:`` section of params.yaml.

    Attributes
    ----------
    high_pass_cutoff : float
        DCT high-pass cutoff period in seconds (SPM default 128 s).
    hrf_model : str
        ``spm`` (canonical SPM HRF) or ``glover``.
    min_ncsnr : float or None
        Keep voxels whose NCSNR on the train repeats is at least this.
    n_voxels : int or None
        Keep at most this many voxels, those of highest NCSNR. With both set, the threshold
        applies first and then the top ``n_voxels`` of the survivors are kept (so a subject may
        keep fewer); with neither, every mask voxel is kept.
    """

    high_pass_cutoff: float = 128.0
    hrf_model: str = "spm"
    min_ncsnr: float | None = 0.2
    n_voxels: int | None = None

    def __post_init__(self) -> None:
        if not self.high_pass_cutoff > 0:
            raise ParamsError(
                f"'high_pass_cutoff' must be > 0 seconds; got {self.high_pass_cutoff} "
                "(preprocess.high_pass_cutoff)"
            )
        if self.hrf_model not in HRF_MODELS:
            raise ParamsError(
                f"'hrf_model' must be one of {list(HRF_MODELS)}; got {self.hrf_model!r} "
                "(preprocess.hrf_model)"
            )
        if self.min_ncsnr is not None and self.min_ncsnr < 0:
            raise ParamsError(
                f"'min_ncsnr' must be >= 0 or null; got {self.min_ncsnr} (preprocess.min_ncsnr)"
            )
        if self.n_voxels is not None and self.n_voxels < 1:
            raise ParamsError(
                f"'n_voxels' must be >= 1 or null; got {self.n_voxels} (preprocess.n_voxels)"
            )


@dataclasses.dataclass
class _SubjectBetas:
    """Unselected betas of one subject, rows in (session, run, onset) order."""

    betas: np.ndarray  # (n_trials, n_mask) float32, % signal change
    stim: np.ndarray  # (n_trials,) int64
    session: np.ndarray  # (n_trials,) str
    mask: np.ndarray  # (x, y, z) bool
    shape: tuple[int, int, int, int]
    affine: np.ndarray
    tr: float
    n_runs: int


def preprocess(
    *, data_dir: Path, out_dir: Path, params: PreprocessParams, base: BaseParams
) -> dict[str, float]:
    """Run the stage on the dataset and on its video paradigm (``out_dir/video``), if any."""
    return bids.for_each_paradigm(
        lambda data, out: preprocess_dataset(data, out, params), data_dir, out_dir
    )


def preprocess_dataset(data_dir: Path, out_dir: Path, params: PreprocessParams) -> dict[str, float]:
    """Write ``artifacts/preprocess/`` for one dataset into ``out_dir``; return flat metrics.

    Raises
    ------
    DataError
        Any bad input (see :mod:`mindpipe.io.bids`), no reliable voxel left, ...
    ValidationError
        The betas gate on ``summary.tsv`` failed.
    """
    start = time.perf_counter()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    stimuli = bids.read_stimuli(data_dir)
    bids.check_stimuli(stimuli, data_dir / "stimuli" / "stimuli.tsv")
    split_of = dict(zip(stimuli["stim_id"].tolist(), stimuli["split"].tolist(), strict=True))
    subjects = bids.discover_subjects(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_dir / "stimuli" / "stimuli.tsv", out_dir / "stimuli.tsv")

    rows: list[dict] = []
    metrics: dict[str, float] = {}
    reliability: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for subject in progress(subjects, desc="preprocess: subjects"):
        raw = _subject_betas(data_dir, subject, stimuli["stim_id"].to_numpy(), params)
        split = np.array([split_of[s] for s in raw.stim.tolist()])
        zbetas = SessionZScorer().fit_transform(raw.betas, sessions=raw.session)
        train = split == "train"
        selector = VoxelSelector(min_ncsnr=params.min_ncsnr, n_voxels=params.n_voxels)
        selector.fit(zbetas[train], raw.stim[train])
        if selector.indices_.size == 0:
            raise DataError(
                f"{subject}: no voxel reaches NCSNR >= {params.min_ncsnr} (best "
                f"{np.nanmax(selector.ncsnr_):.3f} over {selector.ncsnr_.size} mask voxels, "
                f"{selector.n_images_} repeated train images); lower preprocess.min_ncsnr"
            )
        selected = selector.transform(zbetas)
        voxel_index = np.flatnonzero(raw.mask.ravel(order="C"))[selector.indices_]
        reliability[subject] = (selector.ncsnr_, selector.support_)

        sub_dir = out_dir / subject
        sub_dir.mkdir()
        outputs = {"train": (selected[train], raw.stim[train])}
        for name in ("val", "test"):
            outputs[name] = average_repeats(selected[split == name], raw.stim[split == name])
        expected = {
            "train": int(train.sum()),
            "val": int(np.unique(raw.stim[split == "val"]).size),
            "test": int(np.unique(raw.stim[split == "test"]).size),
        }
        for name, (x, stim) in outputs.items():
            x = np.ascontiguousarray(x, dtype=np.float32)
            np.save(sub_dir / f"betas_{name}.npy", x)
            np.save(sub_dir / f"stim_{name}.npy", stim.astype(np.int64))
            rows.append(_summary_row(subject, name, x, raw.tr, expected[name]))
        np.save(sub_dir / "voxel_index.npy", voxel_index.astype(np.int64))
        np.save(sub_dir / "ncsnr.npy", selector.ncsnr_[selector.indices_].astype(np.float32))
        sessions = sorted(set(raw.session.tolist()))
        write_json(
            sub_dir / "meta.json",
            {
                "subject": subject,
                "bold_shape": list(raw.shape),
                "affine": raw.affine,
                "tr": raw.tr,
                "n_runs": raw.n_runs,
                "n_sessions": len(sessions),
                "sessions": sessions,
                "n_mask_voxels": int(raw.mask.sum()),
                "n_voxels": int(selector.indices_.size),
                "n_trials": {k: int((split == k).sum()) for k in ("train", "val", "test")},
                "n_repeated_train_images": selector.n_images_,
                "glm": {
                    "method": "lss",
                    "hrf_model": params.hrf_model,
                    "high_pass_cutoff": params.high_pass_cutoff,
                    "units": "peak % signal change of the run mean, then z-scored per voxel "
                    "within each session (over all of the session's trials)",
                },
                "selection": {
                    "min_ncsnr": params.min_ncsnr,
                    "n_voxels": params.n_voxels,
                    "fit_on": "train repeats",
                },
            },
        )
        snr_kept = selector.ncsnr_[selector.indices_]
        metrics[f"{subject}.n_voxels"] = float(selector.indices_.size)
        metrics[f"{subject}.mean_ncsnr"] = _finite_mean(snr_kept)
        metrics[f"{subject}.mean_ncsnr_mask"] = _finite_mean(selector.ncsnr_)
        metrics[f"{subject}.n_train"] = float(expected["train"])
        logger.info(
            "%s: %d runs, %d trials, kept %d/%d voxels (mean NCSNR %.3f)",
            subject,
            raw.n_runs,
            raw.stim.size,
            selector.indices_.size,
            raw.mask.sum(),
            metrics[f"{subject}.mean_ncsnr"],
        )

    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    summary.to_csv(out_dir / "summary.tsv", sep="\t", index=False, float_format="%.6g")
    plot_reliability(reliability, out_dir / "plots" / "reliability.png", params.min_ncsnr)
    check_betas_summary(summary)

    metrics["n_subjects"] = float(len(subjects))
    metrics["mean_ncsnr"] = float(np.mean([metrics[f"{s}.mean_ncsnr"] for s in subjects]))
    metrics["mean_n_voxels"] = float(np.mean([metrics[f"{s}.n_voxels"] for s in subjects]))
    logger.info("preprocess: %d subjects in %.1f s", len(subjects), time.perf_counter() - start)
    return metrics


def _subject_betas(
    data_dir: Path, subject: str, stim_ids: np.ndarray, params: PreprocessParams
) -> _SubjectBetas:
    """LSS betas of every run of one subject, restricted to the visual mask."""
    runs = bids.discover_runs(data_dir, subject)
    shape, affine, tr = bids.load_bold_header(runs[0])
    mask = bids.load_mask(data_dir, subject, shape, affine)
    mask_file = bids.mask_path(data_dir, subject)
    betas, stims, sessions = [], [], []
    for run in progress(runs, desc=f"preprocess: {subject} runs"):
        bold = bids.load_bold(run, mask)
        bids.check_same_grid(run, bold.shape, bold.affine, shape, affine, mask_file)
        if not np.isclose(bold.tr, tr, rtol=1e-3):
            raise DataError(
                f"TR of '{run.bold}' is {bold.tr:g} s but {tr:g} s in '{runs[0].bold}'; "
                "all runs of a subject must share one TR"
            )
        events = bids.read_events(run)
        bids.check_events(events, run.events, bold.duration, stim_ids)
        betas.append(
            run_betas(
                bold.data,
                events["onset"].to_numpy(),
                events["duration"].to_numpy(),
                bold.tr,
                params.high_pass_cutoff,
                params.hrf_model,
                where=run.name,
            )
        )
        stims.append(events["stim_id"].to_numpy(np.int64))
        sessions.append(np.full(len(events), run.session))
    return _SubjectBetas(
        betas=np.concatenate(betas),
        stim=np.concatenate(stims),
        session=np.concatenate(sessions),
        mask=mask,
        shape=shape,
        affine=affine,
        tr=tr,
        n_runs=len(runs),
    )


def _finite_mean(values: np.ndarray) -> float:
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


def _summary_row(subject: str, split: str, x: np.ndarray, tr: float, expected: int) -> dict:
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
