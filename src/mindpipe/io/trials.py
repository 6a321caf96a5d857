"""Pre-estimated single-trial responses in ``data/`` (the *betas route*), read and written here.

NSD, GOD and CC2017 publish responses that are already estimated per trial (GLM betas, block
averages, volumes); ``mindpipe data import`` converts them into this layout next to the usual
``stimuli/`` folder (docs/data-format.md, "Pre-estimated responses")::

    sub-01/betas/sub-01_betas.npy     (n_trials, n_voxels) float32, memory-mappable
    sub-01/betas/sub-01_trials.tsv    one row per betas row: trial, stim_id, session
    sub-01/betas/sub-01_voxels.npy    (n_voxels,) int64 index of each column in the source grid
    sub-01/betas/sub-01_betas.json    n_trials, n_voxels, units, TR, source, grid

:class:`TrialBetasWriter` appends rows chunk by chunk to the ``.npy`` so a converter never
holds a subject's whole matrix; :func:`open_trial_betas` reads the headers back
and cross-checks the four files, every mismatch naming both files and what was found; its
betas are then read in row blocks, never whole.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mindpipe.exceptions import DataError
from mindpipe.io.bids import read_tsv
from mindpipe.utils import write_json

logger = logging.getLogger(__name__)

#: ``base.dataset`` values whose ``data/`` holds pre-estimated responses rather than BOLD runs.
BETAS_DATASETS = ("nsd", "god", "cc2017")
BETAS_DIR = "betas"
TRIALS_COLUMNS = ("trial", "stim_id", "session")
#: ``dataset_description.json`` key naming the dataset a converter wrote (absent: the twin).
DATASET_KEY = "MindpipeDataset"


@dataclasses.dataclass(frozen=True)
class TrialFiles:
    """The four files of one subject's pre-estimated responses."""

    betas: Path
    trials: Path
    voxels: Path
    sidecar: Path


def trial_files(data_dir: str | Path, subject: str) -> TrialFiles:
    """Paths of ``sub-XX/betas/sub-XX_{betas.npy,trials.tsv,voxels.npy,betas.json}``."""
    folder = Path(data_dir) / subject / BETAS_DIR
    return TrialFiles(
        betas=folder / f"{subject}_betas.npy",
        trials=folder / f"{subject}_trials.tsv",
        voxels=folder / f"{subject}_voxels.npy",
        sidecar=folder / f"{subject}_betas.json",
    )


@dataclasses.dataclass(frozen=True)
class TrialBetas:
    """One subject's pre-estimated responses (the betas stay on disk).

    Attributes
    ----------
    path : Path
        The ``(n_trials, n_voxels)`` float32 ``.npy``; read it with :meth:`rows`.
    shape : tuple of int
        ``(n_trials, n_voxels)``.
    stim : ndarray, (n_trials,) int64
        Stimulus id of each row.
    session : ndarray, (n_trials,) str
        Session (or run) label of each row: rows are z-scored within it.
    voxel_index : ndarray, (n_voxels,) int64
    meta : dict
        The JSON sidecar.
    """

    subject: str
    path: Path
    shape: tuple[int, int]
    stim: np.ndarray
    session: np.ndarray
    voxel_index: np.ndarray
    meta: dict[str, Any]

    @property
    def tr(self) -> float:
        return float(self.meta.get("RepetitionTime") or 0.0)

    def rows(self, which: slice | np.ndarray) -> np.ndarray:
        """A float32 copy of rows ``which`` (a slice or sorted indices), shape (k, n_voxels).

        The file is memory-mapped for this call only, so the pages read do not stay resident
        (and counted in the process's memory) across a pass over a large file.
        """
        data = np.load(self.path, mmap_mode="r", allow_pickle=False)
        try:
            return np.array(data[which], dtype=np.float32)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read rows of '{self.path}' (truncated?): {exc}") from exc
        finally:
            del data

    def row_chunks(self, max_values: int = 1 << 22) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` blocks in row order, each at most ``max_values`` values."""
        step = max(1, max_values // max(self.shape[1], 1))
        for start in range(0, self.shape[0], step):
            yield start, self.rows(slice(start, start + step))


def open_trial_betas(data_dir: str | Path, subject: str) -> TrialBetas:
    """Memory-map one subject's responses and check the files agree.

    Raises
    ------
    DataError
        A missing or unreadable file (a truncated ``.npy`` included), betas not 2-D, a trial
        table whose rows, or a voxel list whose length, disagree with the betas, a sidecar whose
        ``n_voxels``/``n_trials`` disagree with them.
    """
    files = trial_files(data_dir, subject)
    betas = _load_npy(files.betas, "betas")
    if betas.ndim != 2:
        raise DataError(
            f"expected 2-D (trials, voxels) betas in '{files.betas}', got shape {betas.shape}"
        )
    trials = read_tsv(files.trials, TRIALS_COLUMNS, "trial table")
    if len(trials) != betas.shape[0]:
        raise DataError(
            f"trial table '{files.trials}' has {len(trials)} rows but '{files.betas}' has "
            f"{betas.shape[0]} trials; each betas row needs one trial row"
        )
    voxels = _load_npy(files.voxels, "voxel index")
    if voxels.shape != (betas.shape[1],):
        raise DataError(
            f"voxel index '{files.voxels}' has shape {voxels.shape} but '{files.betas}' has "
            f"{betas.shape[1]} voxels (columns); expected ({betas.shape[1]},)"
        )
    meta = _read_sidecar(files.sidecar)
    for key, found in (("n_trials", betas.shape[0]), ("n_voxels", betas.shape[1])):
        if meta.get(key) != found:
            raise DataError(
                f"'{files.sidecar}' says {key} = {meta.get(key)!r} but '{files.betas}' has "
                f"{found}: mismatched files (re-run `mindpipe data import`)"
            )
    shape = (int(betas.shape[0]), int(betas.shape[1]))
    del betas  # only the header was needed
    stim = pd.to_numeric(trials["stim_id"], errors="coerce")
    if stim.isna().any() or (np.mod(stim, 1) != 0).any():
        raise DataError(f"'{files.trials}': column 'stim_id' must hold integers")
    return TrialBetas(
        subject=subject,
        path=files.betas,
        shape=shape,
        stim=stim.to_numpy(np.int64),
        session=trials["session"].astype(str).to_numpy(),
        voxel_index=np.asarray(voxels, dtype=np.int64),
        meta=meta,
    )


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{what} not found: expected '{path}'")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {what} '{path}' (truncated or not .npy): {exc}") from exc


def _read_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"betas sidecar not found: expected '{path}'")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"betas sidecar '{path}' is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise DataError(f"betas sidecar '{path}' must hold a JSON object")
    return meta


class TrialBetasWriter:
    """Write one subject's responses row chunk by row chunk into a ``.npy`` file.

    Rows are appended with plain file writes behind the ``.npy`` header (no memory map), so a
    converter's memory stays bounded by the chunk it holds, whatever the file's size.

    Parameters
    ----------
    data_dir : path
        The dataset being written (a converter's temporary folder).
    subject : str
    n_trials, n_voxels : int
        The final shape; :meth:`close` checks every row was written.
    """

    def __init__(self, data_dir: str | Path, subject: str, n_trials: int, n_voxels: int) -> None:
        self.files = trial_files(data_dir, subject)
        self.files.betas.parent.mkdir(parents=True, exist_ok=True)
        self.shape = (int(n_trials), int(n_voxels))
        self._out = NpyRowWriter(self.files.betas, self.shape)
        self._stim: list[np.ndarray] = []
        self._session: list[np.ndarray] = []

    def write(self, rows: np.ndarray, stim: np.ndarray, session: str | np.ndarray) -> None:
        """Append ``rows`` (k, n_voxels) with their stimulus ids (k,) and session label(s)."""
        k = self._out.write(rows)
        self._stim.append(np.asarray(stim, dtype=np.int64).reshape(k))
        self._session.append(np.broadcast_to(np.asarray(session, dtype=str), (k,)))

    def close(self, voxel_index: np.ndarray, meta: dict[str, Any]) -> None:
        """Finish the betas; write the trial table, voxel index and sidecar."""
        self._out.close()
        table = pd.DataFrame(
            {
                "trial": np.arange(self.shape[0]),
                "stim_id": np.concatenate(self._stim) if self._stim else [],
                "session": np.concatenate(self._session) if self._session else [],
            }
        )
        table.to_csv(self.files.trials, sep="\t", index=False, lineterminator="\n")
        np.save(self.files.voxels, np.asarray(voxel_index, dtype=np.int64))
        write_json(
            self.files.sidecar,
            {**meta, "n_trials": self.shape[0], "n_voxels": self.shape[1], "dtype": "float32"},
        )


class NpyRowWriter:
    """A float32 ``(n_rows, n_cols)`` ``.npy`` written row block by row block, in order.

    The file is opened for each block only: a conversion that fails between blocks holds no
    handle on it, so the atomic writer's clean-up can remove the temporary folder at once
    (an open file cannot be deleted on Windows, and would leave the folder behind).
    """

    def __init__(self, path: Path, shape: tuple[int, int]) -> None:
        self.path, self.shape, self.n_written = Path(path), shape, 0
        header = {"descr": "<f4", "fortran_order": False, "shape": shape}
        with self.path.open("wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)

    def write(self, rows: np.ndarray) -> int:
        """Append ``rows`` (k, n_cols); return k."""
        rows = np.asarray(rows)
        k = rows.shape[0] if rows.ndim == 2 else -1
        if rows.ndim != 2 or rows.shape[1] != self.shape[1] or self.n_written + k > self.shape[0]:
            raise DataError(
                f"{self.path}: cannot add rows of shape {rows.shape} at row {self.n_written} "
                f"of a {self.shape} file"
            )
        with self.path.open("ab") as fh:
            fh.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())
        self.n_written += k
        return k

    def close(self) -> None:
        """Finish the file; every row must have been written."""
        if self.n_written != self.shape[0]:
            raise DataError(f"{self.path}: {self.n_written} of {self.shape[0]} rows were written")


def recorded_dataset(data_dir: str | Path) -> str:
    """The dataset kind ``data_dir`` was converted from (``twin`` when no converter wrote it)."""
    path = Path(data_dir) / "dataset_description.json"
    try:
        description = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return "twin"
    return str(description.get(DATASET_KEY, "twin")) if isinstance(description, dict) else "twin"


def check_dataset_kind(data_dir: str | Path, dataset: str) -> None:
    """Raise unless ``data_dir`` holds what ``base.dataset`` says.

    The twin (or a dataset put in the internal layout by hand) counts as ``twin``; any other
    kind must have been written by ``mindpipe data import`` for that kind.

    Raises
    ------
    DataError
        Naming both kinds, the description file and the command that fixes it.
    """
    found = recorded_dataset(data_dir)
    if found != dataset:
        fix = (
            "convert the release (base.source.dir) with `mindpipe data import` first"
            if dataset != "twin"
            else f"set base.dataset: {found}"
        )
        raise DataError(
            f"base.dataset is {dataset!r} but '{Path(data_dir) / 'dataset_description.json'}' "
            f"records {found!r}; {fix}"
        )
