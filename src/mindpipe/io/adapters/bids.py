"""A lab's own BIDS dataset -> the internal raw layout, for the GLM route of ``preprocess``.

Read: ``sub-<label>/[ses-<label>/]func/sub-<label>[_ses-<label>]_task-<label>[_run-<index>]
_bold.nii[.gz]`` with its ``_events.tsv`` (``onset``, ``duration``, optional ``trial_type``,
and ``stim_file`` naming the image under ``stimuli/``, as BIDS specifies) and its
``RepetitionTime`` from the run's ``_bold.json`` or, by BIDS inheritance, the top-level
``task-<label>_bold.json``. Rows without a stimulus file (fixation, responses) are dropped.

Written (docs/data-format.md): every run under the internal name
``sub-XX_ses-YY_task-ZZ_run-NN_bold.nii.gz`` (hard-linked, so no second copy; ``ses-01`` and
run numbers in order when the dataset has none), events with ``stim_id``, a sidecar, the
subject's mask (``base.source.roi``, or an EPI brain mask from nilearn) and the stimulus set
(PNG; category = the first ``trial_type`` shown with it; train/val/test drawn by
``base.seed``). Alignment to MNI152 is the ``align`` stage's (issue 6), not this adapter's.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from mindpipe.exceptions import DataError
from mindpipe.io.adapters.common import (
    NIFTI_ERRORS,
    Adapter,
    Inspection,
    carve_validation,
    link_or_copy,
    load_nifti,
    nifti_data,
    open_image,
    release_subjects,
    stimulus_table,
    write_description,
    write_stimuli,
    write_table,
)
from mindpipe.io.bids import T1W_GLOB, find_t1w, header_tr, read_tsv
from mindpipe.params import SourceParams
from mindpipe.utils import progress, write_json

logger = logging.getLogger(__name__)

EVENTS_REQUIRED = ("onset", "duration", "stim_file")
_BOLD = re.compile(
    r"^(?P<sub>sub-[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?_task-(?P<task>[A-Za-z0-9]+)"
    r"(?P<rest>(?:_[a-z]+-[A-Za-z0-9]+)*)_bold\.nii(?:\.gz)?$"
)
_RUN = re.compile(r"_run-(\d+)")


@dataclasses.dataclass
class _Run:
    subject: str
    session: str
    task: str
    run: int
    bold: Path
    events: pd.DataFrame  # stimulus rows only, sorted by onset
    tr: float
    shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def stem(self) -> str:
        return f"{self.subject}_ses-{self.session}_task-{self.task}_run-{self.run:02d}"


@dataclasses.dataclass
class _Plan:
    runs: dict[str, list[_Run]]  # subject -> runs


def inspect(source: Path, params: SourceParams) -> Inspection:
    """Check runs, events, sidecars, stimulus files and masks; decompress no image."""
    source = Path(source)
    report = Inspection("bids", source)
    found = {p.name: p for p in source.glob("sub-*") if p.is_dir()}
    expected = "'sub-<label>/[ses-<label>/]func/sub-<label>_task-<label>_bold.nii.gz'"
    names = release_subjects(report, found, params.subjects, expected)
    runs: dict[str, list[_Run]] = {}
    for name in names:
        subject_runs = report.attempt(lambda n=name: _inspect_subject(source, n, params))
        if subject_runs:
            runs[name] = subject_runs
    events = [r.events.assign(file=r.bold.name) for rs in runs.values() for r in rs]
    if events:
        table = pd.concat(events, ignore_index=True)
        table["stim_exists"] = [(source / "stimuli" / f).is_file() for f in table["stim_file"]]
        report.tables["events"] = (table, _event_specs(), ("file",))
    report.counts = {
        "n_subjects": len(runs),
        "n_runs": sum(len(r) for r in runs.values()),
        "n_events": sum(len(e) for e in events),
    }
    if not report.problems:
        report.plan = _Plan(runs)
    return report


def _event_specs() -> list:
    return [
        ("ExpectColumnValuesToBeBetween", {"column": "onset", "min_value": 0}),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "duration", "min_value": 0, "strict_min": True},
        ),
        ("ExpectColumnValuesToNotBeNull", {"column": "stim_file"}),
        ("ExpectColumnValuesToBeInSet", {"column": "stim_exists", "value_set": [True]}),
        (
            "ExpectColumnPairValuesAToBeGreaterThanB",
            {"column_A": "run_length", "column_B": "end", "or_equal": True},
        ),
    ]


def _inspect_subject(source: Path, subject: str, params: SourceParams) -> list[_Run]:
    bolds = sorted(p for p in (source / subject).glob("**/func/*_bold.nii*") if _BOLD.match(p.name))
    if not bolds:
        raise DataError(
            f"{subject}: no BOLD runs: expected '{source / subject}/[ses-<label>/]func/"
            f"{subject}_task-<label>_bold.nii.gz'"
        )
    runs, counters = [], {}
    for bold in bolds:
        match = _BOLD.match(bold.name)
        session, task = match["ses"] or "01", match["task"]
        index = _RUN.search(match["rest"])
        key = (session, task)
        counters[key] = counters.get(key, 0) + 1
        run = int(index[1]) if index else counters[key]
        img = load_nifti(bold, "BOLD")
        if img.ndim != 4:
            raise DataError(f"BOLD '{bold}' must be 4-D (x, y, z, t); found shape {img.shape}")
        tr = _repetition_time(source, bold, task, img)
        events = _events(bold, img.shape[3] * tr)
        runs.append(_Run(subject, session, task, run, bold, events, tr, img.shape, img.affine))
    stems = [r.stem for r in runs]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise DataError(f"{subject}: several runs map to {twice}: give them distinct run entities")
    for run in runs[1:]:
        if run.shape[:3] != runs[0].shape[:3] or not np.allclose(
            run.affine, runs[0].affine, atol=1e-3
        ):
            raise DataError(
                f"'{run.bold}' has grid {run.shape[:3]} but '{runs[0].bold}' has "
                f"{runs[0].shape[:3]} (or another affine): the runs of a subject must share one "
                "grid (realign them first)"
            )
    if params.roi:
        _check_mask(source / params.roi.format(subject=subject), runs[0])
    load_nifti(find_t1w(source, subject), "T1w")  # the header must read; align reads the data
    return runs


def _repetition_time(source: Path, bold: Path, task: str, img: nib.Nifti1Image) -> float:
    """The sidecar's ``RepetitionTime`` (run, then top-level), checked against the header."""
    stem = bold.name.split("_bold.nii")[0]
    candidates = [bold.with_name(f"{stem}_bold.json"), source / f"task-{task}_bold.json"]
    sidecar = next((c for c in candidates if c.is_file()), None)
    if sidecar is None:
        raise DataError(
            f"no RepetitionTime for '{bold}': expected '{candidates[0]}' or '{candidates[1]}'"
        )
    try:
        tr = json.loads(sidecar.read_text()).get("RepetitionTime")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise DataError(f"JSON sidecar '{sidecar}' is not a valid JSON object: {exc}") from exc
    if not isinstance(tr, int | float) or not tr > 0:
        raise DataError(f"'{sidecar}': expected a positive 'RepetitionTime', found {tr!r}")
    header = header_tr(img, bold)
    if not math.isclose(header, tr, rel_tol=1e-3):
        raise DataError(
            f"TR mismatch for '{bold}': header pixdim[4] says {header:g} s, '{sidecar}' says "
            f"{tr:g} s; fix the header or the sidecar"
        )
    return float(tr)


def _events(bold: Path, run_length: float) -> pd.DataFrame:
    """The run's stimulus events (rows naming a stimulus file), sorted by onset."""
    path = bold.with_name(bold.name.split("_bold.nii")[0] + "_events.tsv")
    table = read_tsv(path, EVENTS_REQUIRED, "events file")
    table = table[table["stim_file"].notna() & (table["stim_file"].astype(str) != "n/a")].copy()
    if table.empty:
        raise DataError(f"events file '{path}' names no stimulus file (column 'stim_file')")
    for column in ("onset", "duration"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
        if table[column].isna().any():
            raise DataError(f"'{path}': column '{column}' must be numeric on stimulus rows")
    if "trial_type" not in table.columns:
        table["trial_type"] = "stimulus"
    table = table.sort_values("onset", kind="stable").reset_index(drop=True)
    table["stim_file"] = table["stim_file"].astype(str)
    table["trial_type"] = table["trial_type"].astype(str)
    table["end"] = table["onset"] + table["duration"]
    table["run_length"] = run_length
    return table[["onset", "duration", "trial_type", "stim_file", "end", "run_length"]]


def _check_mask(path: Path, run: _Run) -> None:
    img = load_nifti(path, "mask (base.source.roi)")
    if img.shape != run.shape[:3] or not np.allclose(img.affine, run.affine, atol=1e-3):
        raise DataError(
            f"mask '{path}' has grid {img.shape}; expected the BOLD grid {run.shape[:3]} of "
            f"'{run.bold}' (and its affine)"
        )


def convert(report: Inspection, out_dir: Path, params: SourceParams, seed: int) -> dict[str, float]:
    """Stimuli, then per subject its mask and runs (linked), events and sidecars."""
    plan: _Plan = report.plan
    events = pd.concat([r.events for rs in plan.runs.values() for r in rs], ignore_index=True)
    first = events.drop_duplicates("stim_file").sort_values("stim_file")
    files = first["stim_file"].to_numpy()
    rng = np.random.default_rng(seed)
    n_test = round(params.test_fraction * files.size)
    test = np.sort(rng.choice(files, size=n_test, replace=False)) if n_test else files[:0]
    val = carve_validation(np.setdiff1d(files, test), params.val_fraction, seed, "images")
    split = np.where(np.isin(files, test), "test", np.where(np.isin(files, val), "val", "train"))
    table = stimulus_table(
        source_id=files.tolist(),
        caption=[f"a photo of a {c}" for c in first["trial_type"]],
        category=first["trial_type"].tolist(),
        split=split.tolist(),
    )
    what = "stimulus (named in an events file)"
    images = (open_image(report.source / "stimuli" / f, what) for f in files)
    write_stimuli(out_dir, table, images, params.image_size)
    stim_of = {f: k for k, f in enumerate(files)}
    internal_file = dict(zip(files, table["file"], strict=True))
    for subject, runs in progress(plan.runs.items(), desc="bids: subjects"):
        func = out_dir / subject / "func"
        func.mkdir(parents=True)
        _write_mask(report.source, subject, runs[0], func, params.roi)
        for run in runs:
            _write_run(run, func, stim_of, internal_file)
        _link_anat(report.source / subject, out_dir / subject)
    write_description(out_dir, "bids", report.source, sorted(plan.runs))
    return {
        "n_subjects": float(len(plan.runs)),
        "n_runs": float(sum(len(r) for r in plan.runs.values())),
        "n_stimuli": float(files.size),
    }


def _write_mask(source: Path, subject: str, run: _Run, func: Path, roi: str | None) -> None:
    """The subject's mask on the BOLD grid: the given ROI, or nilearn's EPI brain mask."""
    if roi:
        data = nifti_data(load_nifti(source / roi.format(subject=subject), "mask"), "mask") > 0
    else:
        from nilearn.masking import compute_epi_mask

        try:
            data = np.asarray(compute_epi_mask(str(run.bold)).dataobj) > 0
        except NIFTI_ERRORS as exc:
            raise DataError(
                f"cannot read the data of BOLD '{run.bold}' for its EPI brain mask (truncated "
                f"or corrupt file?): {exc}"
            ) from exc
    img = nib.Nifti1Image(data.astype(np.uint8), run.affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, func / f"{subject}_desc-visual_mask.nii.gz")


def _write_run(run: _Run, func: Path, stim_of: dict[str, int], file_of: dict[str, str]) -> None:
    target = func / f"{run.stem}_bold.nii.gz"
    if run.bold.name.endswith(".gz"):
        link_or_copy(run.bold, target)
    else:  # the internal layout is gzipped NIfTI
        with run.bold.open("rb") as src, gzip.open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    write_json(func / f"{run.stem}_bold.json", {"RepetitionTime": run.tr, "TaskName": run.task})
    events = pd.DataFrame(
        {
            "onset": run.events["onset"],
            "duration": run.events["duration"],
            "trial_type": "stimulus",
            "stim_id": [stim_of[f] for f in run.events["stim_file"]],
            "stim_file": [file_of[f] for f in run.events["stim_file"]],
        }
    )
    write_table(func / f"{run.stem}_events.tsv", events)


def _link_anat(source_subject: Path, target_subject: Path) -> None:
    """Keep the T1w images (the ``align`` stage reads them)."""
    for t1 in sorted(source_subject.glob(T1W_GLOB)):
        link_or_copy(t1, target_subject / "anat" / t1.name)


ADAPTER = Adapter(
    name="bids",
    route="bold",
    layout="'sub-<label>/[ses-<label>/]func/*_bold.nii.gz' + '_events.tsv' (stim_file) + "
    "'stimuli/'",
    inspect=inspect,
    convert=convert,
)
