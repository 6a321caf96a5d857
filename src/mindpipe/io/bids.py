"""Read the raw BIDS-like dataset (``data/``, see docs/data-format.md) with precise errors.

Everything here either returns clean, typed data or raises :class:`~mindpipe.exceptions.DataError`
naming the file, what was expected and what was found. Nothing is silently fixed.

Two levels of checks on events tables:

- :func:`read_events` is *structural*: the file parses, required columns exist, numeric columns are
  numeric and non-empty. ``validate_raw`` runs only this, then checks values in a Great
  Expectations suite so that every value problem of the dataset is reported at once.
- :func:`check_events` checks *values* against the run and the stimulus table (onsets, durations,
  trial types, stim ids, events inside the run). ``preprocess`` runs both and stops at the first
  problem.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from mindpipe.exceptions import DataError

logger = logging.getLogger(__name__)

EVENTS_COLUMNS = ("onset", "duration", "trial_type", "stim_id")
STIMULI_COLUMNS = ("stim_id", "category", "split", "held_out")  # what the readers need
# every column docs/data-format.md promises in stimuli.tsv (later stages read them)
STIMULI_CONTRACT_COLUMNS = (
    "stim_id",
    "file",
    "caption",
    "category",
    "colour",
    "texture",
    "size",
    "x",
    "y",
    "split",
    "held_out",
)
SPLITS = ("train", "val", "test")
TRIAL_TYPES = ("stimulus",)

_BOLD_RE = re.compile(
    r"^(?P<subject>sub-[A-Za-z0-9]+)_(?P<session>ses-[A-Za-z0-9]+)_task-(?P<task>[A-Za-z0-9]+)"
    r"_run-(?P<run>[0-9]+)_bold\.nii\.gz$"
)
# Exceptions nibabel/gzip/numpy raise on truncated or corrupt files, depending on where it breaks.
_READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    ValueError,
    nib.filebasedimages.ImageFileError,
)
_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


@dataclass(frozen=True)
class Run:
    """One functional run and its companion files.

    Attributes
    ----------
    subject, session : str
        BIDS labels with their prefix (``sub-01``, ``ses-01``).
    task : str
        Task label without prefix.
    run : int
        Run number.
    bold, events, sidecar : Path
        ``*_bold.nii.gz``, ``*_events.tsv`` and ``*_bold.json``.
    """

    subject: str
    session: str
    task: str
    run: int
    bold: Path
    events: Path
    sidecar: Path

    @property
    def name(self) -> str:
        """``sub-01_ses-01_task-images_run-01``: the run's file stem, used in messages."""
        return self.bold.name[: -len("_bold.nii.gz")]


@dataclass(frozen=True)
class Bold:
    """One loaded BOLD run.

    Attributes
    ----------
    data : ndarray, float32
        ``(x, y, z, t)``, or ``(t, n_mask)`` when loaded with a mask.
    affine : ndarray, (4, 4) float64
    tr : float
        Seconds, from the header (already checked against the sidecar).
    shape : tuple of int
        The 4D shape of the image on disk.
    """

    data: np.ndarray
    affine: np.ndarray
    tr: float
    shape: tuple[int, int, int, int]

    @property
    def n_vols(self) -> int:
        return int(self.shape[3])

    @property
    def duration(self) -> float:
        """Length of the run in seconds: ``n_vols * tr``."""
        return self.n_vols * self.tr


# --------------------------------------------------------------------------- discovery


def discover_subjects(data_dir: str | Path) -> list[str]:
    """Sorted subject labels (``sub-01`` ...) of the dataset.

    Raises
    ------
    DataError
        The directory does not exist or holds no ``sub-*`` folder.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"dataset directory not found: '{data_dir}'")
    subjects = sorted(p.name for p in data_dir.glob("sub-*") if p.is_dir())
    if not subjects:
        raise DataError(
            f"no subjects in '{data_dir}': expected folders named 'sub-<label>' "
            f"(see docs/data-format.md); found {sorted(p.name for p in data_dir.iterdir())[:10]}"
        )
    return subjects


def discover_runs(data_dir: str | Path, subject: str) -> list[Run]:
    """The subject's functional runs, sorted by session then run number.

    Every ``*_bold.nii.gz`` must follow ``sub-XX_ses-YY_task-ZZ_run-NN_bold.nii.gz`` and have its
    ``_events.tsv`` and ``_bold.json`` next to it.

    Raises
    ------
    DataError
        No ``func/`` folder or no runs, a badly named BOLD file, a missing companion file.
    """
    func = Path(data_dir) / subject / "func"
    if not func.is_dir():
        raise DataError(f"{subject}: functional folder not found: '{func}'")
    runs = []
    for bold in sorted(func.glob("*_bold.nii*")):
        match = _BOLD_RE.match(bold.name)
        if match is None or match["subject"] != subject:
            raise DataError(
                f"unexpected BOLD file name '{bold}': expected "
                f"'{subject}_ses-<label>_task-<label>_run-<index>_bold.nii.gz'"
            )
        stem = bold.name[: -len("_bold.nii.gz")]
        events = func / f"{stem}_events.tsv"
        sidecar = func / f"{stem}_bold.json"
        for companion, what in ((events, "events file"), (sidecar, "JSON sidecar")):
            if not companion.is_file():
                raise DataError(f"missing {what} for '{bold}': expected '{companion}'")
        runs.append(
            Run(
                subject=subject,
                session=match["session"],
                task=match["task"],
                run=int(match["run"]),
                bold=bold,
                events=events,
                sidecar=sidecar,
            )
        )
    if not runs:
        raise DataError(
            f"{subject}: no functional runs in '{func}': expected "
            f"'{subject}_ses-<label>_task-<label>_run-<index>_bold.nii.gz'"
        )
    runs.sort(key=lambda r: (r.session, r.task, r.run))
    return runs


# --------------------------------------------------------------------------- paradigms

#: Where a dataset keeps its video paradigm (CC2017-like clips), itself a dataset of this layout.
VIDEO_DATASET = "video"


def video_dataset(data_dir: str | Path) -> Path | None:
    """The video paradigm's dataset inside ``data_dir``, or None when there is none."""
    path = Path(data_dir) / VIDEO_DATASET
    return path if path.is_dir() else None


def for_each_paradigm(
    run: Callable[[Path, Path], dict[str, float]], data_dir: str | Path, out_dir: str | Path
) -> dict[str, float]:
    """``run(data_dir, out_dir)``, then on the video dataset into ``out_dir/video`` if any.

    The video dataset has the image dataset's layout, so a stage reads it with the same code;
    its metrics come back prefixed ``video.``.
    """
    metrics = run(Path(data_dir), Path(out_dir))
    video = video_dataset(data_dir)
    if video is not None:
        out = Path(out_dir) / VIDEO_DATASET
        metrics |= {f"video.{k}": v for k, v in run(video, out).items()}
    return metrics


# --------------------------------------------------------------------------- tables


def read_tsv(path: str | Path, required: tuple[str, ...] = (), what: str = "table") -> pd.DataFrame:
    """Read a TSV file; every problem names the file.

    Raises
    ------
    DataError
        Missing, unreadable or empty file, or a required column missing.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: expected '{path}'")
    try:
        table = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read {what} '{path}': {exc}") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(
            f"{what} '{path}' lacks required column(s) {missing}: expected {list(required)}, "
            f"found {list(table.columns)}"
        )
    return table


def _numeric(table: pd.DataFrame, column: str, path: Path, integer: bool = False) -> pd.Series:
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna()
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())[:5].tolist()
        found = [table[column].iloc[i] for i in rows]
        raise DataError(
            f"'{path}': column '{column}' must be numeric and non-empty; "
            f"{int(bad.sum())} bad value(s), e.g. data rows {rows} (0-based): {found}"
        )
    if integer:
        fractional = np.mod(values, 1) != 0
        if fractional.any():
            raise DataError(
                f"'{path}': column '{column}' must hold integers; "
                f"found {values[fractional].tolist()[:5]}"
            )
        return values.astype(np.int64)
    return values.astype(np.float64)


def read_stimuli(data_dir: str | Path) -> pd.DataFrame:
    """``stimuli/stimuli.tsv`` with ``stim_id`` (int64) and ``held_out`` (int64) parsed.

    Raises
    ------
    DataError
        Missing file, missing columns, non-integer ids, an empty table.
    """
    path = Path(data_dir) / "stimuli" / "stimuli.tsv"
    table = read_tsv(path, STIMULI_COLUMNS, "stimulus table")
    if table.empty:
        raise DataError(f"stimulus table '{path}' has no rows")
    table["stim_id"] = _numeric(table, "stim_id", path, integer=True)
    table["held_out"] = _numeric(table, "held_out", path, integer=True)
    table["split"] = table["split"].astype(str)
    return table


def check_stimuli(stimuli: pd.DataFrame, path: str | Path = "stimuli.tsv") -> None:
    """Value checks of the stimulus table (unique ids, known splits); ``preprocess`` relies on them.

    Raises
    ------
    DataError
        Duplicated ``stim_id`` or a ``split`` outside ``train``/``val``/``test``.
    """
    dup = stimuli["stim_id"][stimuli["stim_id"].duplicated()]
    if len(dup):
        raise DataError(f"'{path}': stim_id must be unique; duplicated {sorted(set(dup))[:10]}")
    bad = sorted(set(stimuli["split"]) - set(SPLITS))
    if bad:
        raise DataError(f"'{path}': split must be one of {list(SPLITS)}; found {bad}")


def read_events(run_or_path: Run | str | Path) -> pd.DataFrame:
    """Read an events table, structurally checked (columns present, numbers numeric).

    Returns
    -------
    DataFrame
        The file's columns; ``onset``/``duration`` float64, ``stim_id`` int64,
        ``trial_type`` str.

    Raises
    ------
    DataError
        Missing file (naming the expected path), missing column, non-numeric or empty values.
    """
    path = run_or_path.events if isinstance(run_or_path, Run) else Path(run_or_path)
    table = read_tsv(path, EVENTS_COLUMNS, "events file")
    table["onset"] = _numeric(table, "onset", path)
    table["duration"] = _numeric(table, "duration", path)
    table["stim_id"] = _numeric(table, "stim_id", path, integer=True)
    table["trial_type"] = table["trial_type"].astype(str)
    return table


def check_events(
    events: pd.DataFrame,
    path: str | Path,
    run_duration: float,
    stim_ids: np.ndarray | pd.Series | None = None,
    trial_types: tuple[str, ...] = TRIAL_TYPES,
) -> None:
    """Value checks of one run's events; the first problem raises.

    Parameters
    ----------
    events : DataFrame
        From :func:`read_events`.
    path : path
        The events file, for messages.
    run_duration : float
        ``n_vols * TR`` in seconds: every event must end by then.
    stim_ids : array, optional
        The stimulus table's ids; each event's ``stim_id`` must be one of them.
    trial_types : tuple of str
        Allowed ``trial_type`` values.

    Raises
    ------
    DataError
        Empty table, negative or non-increasing onsets, non-positive durations, unknown trial
        types, unknown stim ids, events past the end of the run.
    """
    if events.empty:
        raise DataError(f"events file '{path}' has no rows")
    onset, duration = events["onset"].to_numpy(), events["duration"].to_numpy()
    if (onset < 0).any():
        raise DataError(f"'{path}': onsets must be >= 0; found {onset[onset < 0].tolist()[:5]}")
    if (np.diff(onset) <= 0).any():
        i = int(np.flatnonzero(np.diff(onset) <= 0)[0])
        raise DataError(
            f"'{path}': onsets must be strictly increasing; data row {i + 1} (0-based) has "
            f"onset {onset[i + 1]} after {onset[i]}"
        )
    if (duration <= 0).any():
        raise DataError(
            f"'{path}': durations must be > 0; found {duration[duration <= 0].tolist()[:5]}"
        )
    bad_types = sorted(set(events["trial_type"]) - set(trial_types))
    if bad_types:
        raise DataError(
            f"'{path}': trial_type must be one of {list(trial_types)}; found {bad_types}"
        )
    end = onset + duration
    late = end > run_duration + 1e-6
    if late.any():
        raise DataError(
            f"'{path}': {int(late.sum())} event(s) end after the run "
            f"(n_vols * TR = {run_duration:g} s); latest ends at {end.max():g} s"
        )
    if stim_ids is not None:
        unknown = sorted(set(events["stim_id"].tolist()) - set(np.asarray(stim_ids).tolist()))
        if unknown:
            raise DataError(
                f"'{path}': {len(unknown)} stim_id(s) not in stimuli.tsv: {unknown[:10]}"
            )


# --------------------------------------------------------------------------- images


def read_sidecar_tr(path: str | Path) -> float:
    """``RepetitionTime`` (s) of a BOLD JSON sidecar.

    Raises
    ------
    DataError
        Missing or invalid JSON, missing or non-positive ``RepetitionTime``.
    """
    path = Path(path)
    try:
        sidecar = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(f"JSON sidecar not found: expected '{path}'") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"JSON sidecar '{path}' is not valid JSON: {exc}") from exc
    tr = sidecar.get("RepetitionTime") if isinstance(sidecar, dict) else None
    if not isinstance(tr, int | float) or isinstance(tr, bool) or not tr > 0:
        raise DataError(
            f"JSON sidecar '{path}': expected a positive number 'RepetitionTime'; found {tr!r}"
        )
    return float(tr)


def _load_image(path: Path, what: str) -> nib.Nifti1Image:
    if not path.is_file():
        raise DataError(f"{what} not found: expected '{path}'")
    try:
        return nib.load(path)
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read {what} '{path}' (corrupt or not NIfTI): {exc}") from exc


def _read_array(img: nib.Nifti1Image, path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(img.get_fdata(dtype=np.float32))
    except _READ_ERRORS as exc:
        raise DataError(
            f"cannot read the data of {what} '{path}' (truncated or corrupt file; "
            f"expected {img.shape} voxels): {type(exc).__name__}: {exc}"
        ) from exc


def header_tr(img: nib.Nifti1Image, path: str | Path) -> float:
    """TR in seconds from ``pixdim[4]`` and the time unit of ``xyzt_units``.

    Raises
    ------
    DataError
        Unknown time unit, or a non-positive TR.
    """
    _, t_unit = img.header.get_xyzt_units()
    if t_unit not in _TIME_UNITS:
        raise DataError(
            f"BOLD '{path}': xyzt_units time unit must be one of {list(_TIME_UNITS)} "
            f"(docs/data-format.md: mm + s); found {t_unit!r}"
        )
    tr = float(img.header.get_zooms()[3]) * _TIME_UNITS[t_unit]
    if not tr > 0:
        raise DataError(f"BOLD '{path}': header TR (pixdim[4]) must be > 0; found {tr}")
    return tr


def load_bold_header(run: Run) -> tuple[tuple[int, int, int, int], np.ndarray, float]:
    """Shape, affine and TR of a run without reading its data; checks 4D and the sidecar TR.

    Raises
    ------
    DataError
        Unreadable header, not 4D, header TR disagreeing with the sidecar's ``RepetitionTime``.
    """
    img = _load_image(run.bold, "BOLD")
    return _check_header(run, img)


def _check_header(
    run: Run, img: nib.Nifti1Image
) -> tuple[tuple[int, int, int, int], np.ndarray, float]:
    if img.ndim != 4:
        raise DataError(f"BOLD '{run.bold}' must be 4D (x, y, z, t); found shape {img.shape}")
    tr = header_tr(img, run.bold)
    side_tr = read_sidecar_tr(run.sidecar)
    if not math.isclose(tr, side_tr, rel_tol=1e-3, abs_tol=1e-4):
        raise DataError(
            f"TR mismatch for '{run.bold}': header pixdim[4] says {tr:g} s, "
            f"sidecar '{run.sidecar}' RepetitionTime says {side_tr:g} s"
        )
    shape = tuple(int(s) for s in img.shape)
    return shape, img.affine.copy(), tr  # type: ignore[return-value]


def load_bold(run: Run, mask: np.ndarray | None = None) -> Bold:
    """Load one BOLD run as float32 (optionally only the voxels of a boolean 3D mask).

    Parameters
    ----------
    run : Run
    mask : ndarray of bool, (x, y, z), optional
        When given, ``data`` is ``(t, n_mask)`` with voxels in C order of the grid.

    Raises
    ------
    DataError
        Everything :func:`load_bold_header` raises, a truncated/corrupt file, a mask of another
        grid shape, NaN or infinite values (counted).
    """
    img = _load_image(run.bold, "BOLD")
    shape, affine, tr = _check_header(run, img)
    data = _read_array(img, run.bold, "BOLD")
    n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if n_bad:  # anywhere in the image: a NaN outside the mask still means a broken file
        n_nan = int(np.count_nonzero(np.isnan(data)))
        raise DataError(
            f"BOLD '{run.bold}' holds {n_bad} non-finite value(s) "
            f"({n_nan} NaN, {n_bad - n_nan} inf); expected only finite values"
        )
    if mask is not None:
        if mask.shape != data.shape[:3]:
            raise DataError(
                f"mask grid {mask.shape} does not match BOLD grid {data.shape[:3]} of '{run.bold}'"
            )
        data = np.ascontiguousarray(data[mask].T)
    return Bold(data=data, affine=affine, tr=tr, shape=shape)


def check_same_grid(
    run: Run,
    shape: tuple[int, ...],
    affine: np.ndarray,
    ref_shape: tuple[int, ...],
    ref_affine: np.ndarray,
    ref: str | Path,
) -> None:
    """Raise unless the run's 3D grid (shape and affine) equals the reference grid ``ref``.

    Raises
    ------
    DataError
        Naming both files, their shapes and, where they differ, their affines.
    """
    if tuple(shape[:3]) != tuple(ref_shape[:3]):
        raise DataError(
            f"BOLD grid of '{run.bold}' has shape {tuple(shape[:3])}; expected "
            f"{tuple(ref_shape[:3])} as in '{ref}'"
        )
    if not np.allclose(affine, ref_affine, atol=1e-3):
        raise DataError(
            f"BOLD grid of '{run.bold}' has affine\n{affine}\nexpected the affine of '{ref}'\n"
            f"{ref_affine}"
        )


T1W_GLOB = "**/anat/*_T1w.nii.gz"  # a subject's anatomy, in any session folder


def find_t1w(folder: str | Path, subject: str) -> Path:
    """``subject``'s T1w image under ``folder`` (``sub-XX/[ses-XX/]anat/*_T1w.nii.gz``; the
    first if several). The align stage registers it to the template; none is a DataError."""
    found = sorted((Path(folder) / subject).glob(T1W_GLOB))
    if not found:
        raise DataError(
            f"{subject}: no T1w image, which the align stage registers to the template: "
            f"expected '{Path(folder) / subject}/[ses-<label>/]anat/{subject}_T1w.nii.gz'"
        )
    if len(found) > 1:
        logger.warning("%s has %d T1w images; using '%s'", subject, len(found), found[0])
    return found[0]


def mask_path(data_dir: str | Path, subject: str) -> Path:
    """``sub-XX/func/sub-XX_desc-visual_mask.nii.gz``."""
    return Path(data_dir) / subject / "func" / f"{subject}_desc-visual_mask.nii.gz"


def load_mask(
    data_dir: str | Path,
    subject: str,
    shape: tuple[int, ...] | None = None,
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """The subject's visual mask as a boolean 3D array, checked against the BOLD grid.

    Parameters
    ----------
    shape, affine : optional
        The BOLD grid (first three dimensions of ``shape`` are used); a mismatch raises.

    Raises
    ------
    DataError
        Missing/corrupt file, not 3D, values other than 0/1, an empty mask, another grid.
    """
    path = mask_path(data_dir, subject)
    img = _load_image(path, "visual mask")
    if img.ndim != 3:
        raise DataError(f"visual mask '{path}' must be 3D; found shape {img.shape}")
    data = _read_array(img, path, "visual mask")
    values = np.unique(data)
    if not np.isin(values, (0.0, 1.0)).all():
        raise DataError(f"visual mask '{path}' must hold only 0/1; found {values[:10].tolist()}")
    mask = data > 0
    if not mask.any():
        raise DataError(f"visual mask '{path}' is empty (no voxel is 1)")
    if shape is not None and tuple(shape[:3]) != mask.shape:
        raise DataError(
            f"mask grid does not match the BOLD grid: '{path}' has shape {mask.shape}, "
            f"BOLD has {tuple(shape[:3])}"
        )
    if affine is not None and not np.allclose(img.affine, affine, atol=1e-3):
        raise DataError(
            f"mask grid does not match the BOLD grid: affine of '{path}'\n{img.affine}\n"
            f"differs from the BOLD affine\n{affine}"
        )
    return mask
