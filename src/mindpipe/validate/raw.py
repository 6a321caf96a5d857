"""The ``validate_raw`` stage: structural checks of ``data/`` plus Great Expectations suites.

1. Structure (:mod:`mindpipe.io.bids`): subjects and runs exist, every BOLD run has its events and
   sidecar, headers are 4D with the sidecar's TR, the files decompress completely with only finite
   values, the mask sits on the BOLD grid, tables parse. All problems are collected, then raised
   together as one :class:`~mindpipe.exceptions.DataError`.
2. Values (Great Expectations): one suite on all events tables concatenated, one on
   ``stimuli.tsv``. Failures raise :class:`~mindpipe.exceptions.ValidationError` with one line per
   failed expectation.

A dataset of pre-estimated responses (``base.dataset`` nsd, god or cc2017: the *betas route*,
:mod:`mindpipe.io.trials`) gets the same gate with its betas in place of BOLD runs: the files of
every subject agree (rows, voxel counts, sidecar), the data is finite, and a suite checks the
trial tables against ``stimuli.tsv``.

``report.json`` and ``report.md`` are written to ``out_dir`` in either case before raising.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mindpipe.exceptions import DataError, ParamsError, ValidationError
from mindpipe.io import bids
from mindpipe.io.trials import BETAS_DATASETS, TrialBetas, check_dataset_kind, open_trial_betas
from mindpipe.params import BaseParams
from mindpipe.utils import progress, write_json
from mindpipe.validate.gx import Check, Spec, format_failures, run_suite

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ValidateRawParams:
    """The ``validate_raw:`` section of params.yaml.

    Attributes
    ----------
    read_data : bool
        Decompress every BOLD run (catches truncated files and NaN/inf values; seconds on the
        default profile). False checks headers only.
    trial_types : tuple of str
        Allowed ``trial_type`` values of the events tables.
    check_image_files : bool
        Every ``stimuli.tsv`` ``file`` must exist under ``data/``.
    """

    read_data: bool = True
    trial_types: tuple[str, ...] = bids.TRIAL_TYPES
    check_image_files: bool = True

    def __post_init__(self) -> None:
        if not self.trial_types:
            raise ParamsError(
                "'trial_types' must list at least one value (validate_raw.trial_types)"
            )


def validate_raw(
    *, data_dir: Path, out_dir: Path, params: ValidateRawParams, base: BaseParams
) -> dict[str, float]:
    """Validate the dataset and its video paradigm (report in ``out_dir/video``), if any.

    ``base.dataset`` picks the gate: BOLD runs (twin, bids) or pre-estimated responses.
    """
    check_dataset_kind(data_dir, base.dataset)
    gate = validate_trials_dataset if base.dataset in BETAS_DATASETS else validate_dataset
    return bids.for_each_paradigm(lambda data, out: gate(data, out, params), data_dir, out_dir)


def validate_dataset(data_dir: Path, out_dir: Path, params: ValidateRawParams) -> dict[str, float]:
    """Validate one raw dataset; write ``report.json``/``report.md``; return counts.

    Returns
    -------
    dict
        ``n_subjects``, ``n_runs``, ``n_events``, ``n_stimuli``, ``n_expectations``,
        ``n_failed``.

    Raises
    ------
    DataError
        Structural problems (all of them, one per line).
    ValidationError
        A failed expectation (the readable report is the message).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    stimuli = bids.read_stimuli(data_dir)
    subjects = bids.discover_subjects(data_dir)
    events, n_runs = _structure(data_dir, subjects, params, problems)
    counts = {
        "n_subjects": len(subjects),
        "n_runs": n_runs,
        "n_events": len(events),
        "n_stimuli": len(stimuli),
    }
    if problems:
        _raise_structural(out_dir, data_dir, counts, problems)

    checks = run_suite("events", events, events_specs(stimuli, params.trial_types), ("file",))
    return _stimuli_gate(data_dir, out_dir, stimuli, params, counts, checks)


def validate_trials_dataset(
    data_dir: Path, out_dir: Path, params: ValidateRawParams
) -> dict[str, float]:
    """Validate a dataset of pre-estimated responses; write the reports; return counts.

    Returns
    -------
    dict
        ``n_subjects``, ``n_trials``, ``n_stimuli``, ``n_expectations``, ``n_failed``.

    Raises
    ------
    DataError
        Structural problems: missing, truncated or disagreeing files, non-finite values.
    ValidationError
        A failed expectation on the trial tables or ``stimuli.tsv``.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    stimuli = bids.read_stimuli(data_dir)
    subjects = bids.discover_subjects(data_dir)
    tables = []
    for subject in progress(subjects, desc="validate_raw: subjects"):
        try:
            tb = open_trial_betas(data_dir, subject)
            if params.read_data:
                check_finite(tb)
        except DataError as exc:
            problems.append(str(exc))
            continue
        tables.append(
            pd.DataFrame(
                {
                    "subject": subject,
                    "trial": np.arange(tb.stim.size),
                    "stim_id": tb.stim,
                    "session": tb.session,
                }
            )
        )
    trials = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    counts = {"n_subjects": len(subjects), "n_trials": len(trials), "n_stimuli": len(stimuli)}
    if problems:
        _raise_structural(out_dir, data_dir, counts, problems)
    checks = run_suite("trials", trials, trials_specs(stimuli), ("subject", "trial"))
    return _stimuli_gate(data_dir, out_dir, stimuli, params, counts, checks)


def check_finite(tb: TrialBetas) -> None:
    """Read the betas block by block; any NaN or inf raises, naming the rows."""
    for start, block in tb.row_chunks():
        bad = ~np.isfinite(block)
        if bad.any():
            row = start + int(np.flatnonzero(bad.any(axis=1))[0])
            raise DataError(
                f"'{tb.path}' holds {int(bad.sum())} non-finite value(s) in rows "
                f"{start}-{start + block.shape[0] - 1} (first at row {row}); expected only "
                "finite values"
            )


def trials_specs(stimuli: pd.DataFrame) -> list[Spec]:
    """Expectations on every subject's trial table concatenated."""
    return [
        ("ExpectColumnValuesToNotBeNull", {"column": "stim_id"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "session"}),
        (
            "ExpectColumnValuesToBeInSet",
            {"column": "stim_id", "value_set": sorted(stimuli["stim_id"].tolist())},
        ),
        ("ExpectCompoundColumnsToBeUnique", {"column_list": ["subject", "trial"]}),
    ]


def _raise_structural(
    out_dir: Path, data_dir: Path, counts: dict[str, int], problems: list[str]
) -> None:
    _write_report(out_dir, data_dir, counts, problems, [])
    raise DataError(
        f"dataset '{data_dir}' has {len(problems)} structural problem(s):\n  "
        + "\n  ".join(problems)
    )


def _stimuli_gate(
    data_dir: Path,
    out_dir: Path,
    stimuli: pd.DataFrame,
    params: ValidateRawParams,
    counts: dict[str, int],
    checks: list[Check],
) -> dict[str, float]:
    """Add the ``stimuli.tsv`` suite to ``checks``, write the reports, raise on a failure."""
    table = _stimuli_table(data_dir, stimuli, params)
    checks += run_suite("stimuli", table, stimuli_specs(data_dir, table), ("stim_id",))
    failed = [c for c in checks if not c.success]
    counts |= {"n_expectations": len(checks), "n_failed": len(failed)}
    _write_report(out_dir, data_dir, counts, [], checks)
    if failed:
        raise ValidationError(format_failures(checks, f"raw dataset '{data_dir}'"))
    logger.info("validate_raw: %s", counts)
    return {k: float(v) for k, v in counts.items()}


def _structure(
    data_dir: Path, subjects: list[str], params: ValidateRawParams, problems: list[str]
) -> tuple[pd.DataFrame, int]:
    """Check files subject by subject; append problems; return the events of readable runs."""
    tables = []
    n_runs = 0
    for subject in progress(subjects, desc="validate_raw: subjects"):
        try:
            runs = bids.discover_runs(data_dir, subject)
        except DataError as exc:
            problems.append(str(exc))
            continue
        n_runs += len(runs)
        mask, ref = None, None
        for run in progress(runs, desc=f"validate_raw: {subject} runs"):
            try:
                shape, affine, tr = bids.load_bold_header(run)
                if ref is None:
                    ref = (shape, affine, bids.mask_path(data_dir, subject))
                    try:
                        mask = bids.load_mask(data_dir, subject, shape, affine)
                    except DataError as exc:  # report it once, go on checking the runs
                        problems.append(str(exc))
                bids.check_same_grid(run, shape, affine, *ref)
                if params.read_data:
                    bids.load_bold(run, mask)
                table = bids.read_events(run)
            except DataError as exc:
                problems.append(str(exc))
                continue
            table.insert(0, "file", run.events.name)
            table["subject"], table["session"], table["run"] = subject, run.session, run.run
            table["run_length"] = shape[3] * tr
            table["end"] = (table["onset"] + table["duration"]).round(6)
            table["onset_increment"] = table["onset"].diff()
            tables.append(table)
    events = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return events, n_runs


def events_specs(stimuli: pd.DataFrame, trial_types: tuple[str, ...]) -> list[Spec]:
    """Expectations on all events tables concatenated (with derived columns ``run_length``,
    ``end`` = onset + duration, ``onset_increment`` = onset minus the previous onset in the run).
    """
    specs: list[Spec] = [("ExpectColumnToExist", {"column": c}) for c in bids.EVENTS_COLUMNS]
    specs += [("ExpectColumnValuesToNotBeNull", {"column": c}) for c in bids.EVENTS_COLUMNS]
    specs += [
        ("ExpectColumnValuesToBeBetween", {"column": "onset", "min_value": 0}),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "onset_increment", "min_value": 0, "strict_min": True},
        ),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "duration", "min_value": 0, "strict_min": True},
        ),
        ("ExpectColumnValuesToBeInSet", {"column": "trial_type", "value_set": list(trial_types)}),
        (
            "ExpectColumnValuesToBeInSet",
            {"column": "stim_id", "value_set": sorted(stimuli["stim_id"].tolist())},
        ),
        (
            "ExpectColumnPairValuesAToBeGreaterThanB",
            {"column_A": "run_length", "column_B": "end", "or_equal": True},
        ),
    ]
    return specs


def stimuli_specs(data_dir: Path, stimuli: pd.DataFrame) -> list[Spec]:
    """Expectations on ``stimuli.tsv`` (plus ``file_exists`` when image files are checked)."""
    specs: list[Spec] = [
        ("ExpectColumnToExist", {"column": c}) for c in bids.STIMULI_CONTRACT_COLUMNS
    ]
    specs += [
        ("ExpectColumnValuesToNotBeNull", {"column": "stim_id"}),
        ("ExpectColumnValuesToBeUnique", {"column": "stim_id"}),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "stim_id", "min_value": 0, "max_value": len(stimuli) - 1},
        ),
        ("ExpectColumnValuesToBeInSet", {"column": "split", "value_set": list(bids.SPLITS)}),
        ("ExpectColumnValuesToBeInSet", {"column": "held_out", "value_set": [0, 1]}),
        (
            "ExpectColumnValuesToBeInSet",
            {"column": "split", "value_set": ["test"], "row_condition": ("held_out", "==", 1)},
        ),
    ]
    held_out = _held_out_categories(data_dir, stimuli)
    if held_out:
        specs.append(
            (
                "ExpectColumnValuesToNotBeInSet",
                {
                    "column": "category",
                    "value_set": held_out,
                    "row_condition": ("split", "!=", "test"),
                },
            )
        )
    if "file_exists" in stimuli.columns:
        specs.append(
            ("ExpectColumnValuesToBeInSet", {"column": "file_exists", "value_set": [True]})
        )
    return specs


def _stimuli_table(
    data_dir: Path, stimuli: pd.DataFrame, params: ValidateRawParams
) -> pd.DataFrame:
    table = stimuli.copy()
    if params.check_image_files and "file" in table.columns:
        table["file_exists"] = [(data_dir / str(f)).is_file() for f in table["file"]]
    return table


def _held_out_categories(data_dir: Path, stimuli: pd.DataFrame) -> list[str]:
    """Held-out categories: from ``stimuli/categories.tsv`` when present, and from the rows of
    ``stimuli.tsv`` flagged ``held_out``."""
    cats = set(stimuli.loc[stimuli["held_out"] == 1, "category"].astype(str))
    path = data_dir / "stimuli" / "categories.tsv"
    if path.is_file():
        table = bids.read_tsv(path, ("category", "held_out"), "category table")
        flagged = table["held_out"].astype(str).isin(["1", "1.0", "True", "true"])
        cats |= set(table.loc[flagged, "category"].astype(str))
    return sorted(cats)


def _write_report(
    out_dir: Path,
    data_dir: Path,
    counts: dict[str, Any],
    problems: list[str],
    checks: list[Check],
) -> None:
    failed = [c for c in checks if not c.success]
    success = not problems and not failed
    write_json(
        out_dir / "report.json",
        {
            "dataset": str(data_dir),
            "success": success,
            "counts": counts,
            "structural_problems": problems,
            "expectations": [dataclasses.asdict(c) for c in checks],
        },
    )
    lines = [
        f"# validate_raw: {'PASSED' if success else 'FAILED'}",
        "",
        f"Dataset `{data_dir}`: " + ", ".join(f"{k} = {v}" for k, v in counts.items()) + ".",
        "",
    ]
    if problems:
        lines += ["## Structural problems", ""] + [f"- {p}" for p in problems] + [""]
    if checks:
        lines += [
            f"## Expectations: {len(checks) - len(failed)} of {len(checks)} passed",
            "",
        ]
        lines += [f"- {c.line()}" for c in failed] or ["All expectations passed."]
    (out_dir / "report.md").write_text("\n".join(lines).rstrip() + "\n")
