"""Read the preprocess stage's outputs (layout in docs/data-format.md) for the decoders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mindpipe.exceptions import DataError
from mindpipe.io.bids import SPLITS


@dataclasses.dataclass(frozen=True)
class SubjectBetas:
    """One subject's betas; arrays are memory-mapped.

    Attributes
    ----------
    betas : dict split -> (n_rows, n_voxels) float32
        ``train`` has one row per trial (repeats kept); ``val``/``test`` one row per image.
    stim : dict split -> (n_rows,) int64
        The stimulus id of each row.
    voxel_index : (n_voxels,) int64
        Flat C-order index of each column into the subject's BOLD grid.
    """

    subject: str
    betas: dict[str, np.ndarray]
    stim: dict[str, np.ndarray]
    voxel_index: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(self.voxel_index.shape[0])


def list_subjects(betas_dir: str | Path) -> list[str]:
    """Subjects with preprocessed betas, e.g. ``['sub-01', 'sub-02']``."""
    subjects = sorted(p.name for p in Path(betas_dir).glob("sub-*") if p.is_dir())
    if not subjects:
        raise DataError(f"no sub-* folders in '{betas_dir}'; run the preprocess stage first")
    return subjects


def load_betas(betas_dir: str | Path, subject: str) -> SubjectBetas:
    """Load and cross-check one subject's arrays; a mismatch names the file."""
    folder = Path(betas_dir) / subject
    voxel_index = _load(folder / "voxel_index.npy")
    betas, stim = {}, {}
    for split in SPLITS:
        betas[split] = _load(folder / f"betas_{split}.npy")
        stim[split] = _load(folder / f"stim_{split}.npy")
        if betas[split].ndim != 2 or betas[split].shape[1] != voxel_index.shape[0]:
            raise DataError(
                f"expected betas of shape (n_rows, {voxel_index.shape[0]} voxels), got "
                f"{betas[split].shape} from '{folder / f'betas_{split}.npy'}'"
            )
        if stim[split].shape != (betas[split].shape[0],):
            raise DataError(
                f"expected {betas[split].shape[0]} stimulus ids, got {stim[split].shape} "
                f"from '{folder / f'stim_{split}.npy'}'"
            )
    return SubjectBetas(subject, betas, stim, voxel_index)


def load_stimuli(betas_dir: str | Path) -> pd.DataFrame:
    """The stimulus table, indexed by ``stim_id``."""
    path = Path(betas_dir) / "stimuli.tsv"
    if not path.is_file():
        raise DataError(f"stimulus table not found: '{path}'")
    return pd.read_csv(path, sep="\t").set_index("stim_id", drop=False)


def load_meta(betas_dir: str | Path, subject: str) -> dict:
    path = Path(betas_dir) / subject / "meta.json"
    if not path.is_file():
        raise DataError(f"file not found: '{path}'")
    return json.loads(path.read_text())


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"file not found: '{path}'")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read '{path}': {exc}") from exc
