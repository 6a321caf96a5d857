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
import time
from pathlib import Path

import numpy as np

from mindpipe.exceptions import DataError, ParamsError
from mindpipe.io import bids
from mindpipe.io.trials import BETAS_DATASETS, check_dataset_kind
from mindpipe.params import BaseParams
from mindpipe.preprocess.glm import HRF_MODELS, run_betas
from mindpipe.preprocess.outputs import (
    average_repeats,
    expected_rows,
    no_reliable_voxel,
    publish,
    save_split,
    start_outputs,
    subject_metrics,
)
from mindpipe.preprocess.voxels import SessionZScorer, VoxelSelector
from mindpipe.utils import progress, write_json

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
    """Run the stage on the dataset and on its video paradigm (``out_dir/video``), if any.

    ``base.dataset`` picks the route: BOLD runs through the GLM (twin, bids) or pre-estimated
    responses (nsd, god, cc2017: :func:`mindpipe.preprocess.trials.preprocess_trials`).
    """
    from mindpipe.preprocess.trials import preprocess_trials

    check_dataset_kind(data_dir, base.dataset)
    route = preprocess_trials if base.dataset in BETAS_DATASETS else preprocess_dataset
    return bids.for_each_paradigm(lambda data, out: route(data, out, params), data_dir, out_dir)


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
    stimuli, subjects = start_outputs(data_dir, out_dir)
    split_of = dict(zip(stimuli["stim_id"].tolist(), stimuli["split"].tolist(), strict=True))

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
            raise no_reliable_voxel(subject, params.min_ncsnr, selector.ncsnr_, selector.n_images_)
        selected = selector.transform(zbetas)
        voxel_index = np.flatnonzero(raw.mask.ravel(order="C"))[selector.indices_]
        reliability[subject] = (selector.ncsnr_, selector.support_)

        sub_dir = out_dir / subject
        sub_dir.mkdir()
        outputs = {"train": (selected[train], raw.stim[train])}
        for name in ("val", "test"):
            outputs[name] = average_repeats(selected[split == name], raw.stim[split == name])
        expected = expected_rows(split, raw.stim)
        for name, (x, stim) in outputs.items():
            rows.append(save_split(sub_dir, subject, name, x, stim, raw.tr, expected[name]))
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
        metrics |= subject_metrics(subject, selector.ncsnr_, selector.indices_, expected["train"])
        logger.info(
            "%s: %d runs, %d trials, kept %d/%d voxels (mean NCSNR %.3f)",
            subject,
            raw.n_runs,
            raw.stim.size,
            selector.indices_.size,
            raw.mask.sum(),
            metrics[f"{subject}.mean_ncsnr"],
        )

    metrics = publish(out_dir, rows, reliability, params.min_ncsnr, metrics, subjects)
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
