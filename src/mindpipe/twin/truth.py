"""Read the twin's ground truth back (only oracles and alignment checks should)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mindpipe.exceptions import DataError
from mindpipe.twin.anatomy import SubjectTransform
from mindpipe.twin.writer import TRUTH_DIR

ENCODING_KEYS = ("voxel_index", "amplitude", "kind", "noise_sd")


@dataclasses.dataclass(frozen=True)
class SubjectTruth:
    """One subject's true encoding model and anatomical mapping.

    Attributes
    ----------
    subject : str, e.g. ``"sub-01"``
    voxel_index : (n_mask,) int64, flat C-order indices into the BOLD grid
    amplitude : (n_stimuli, n_mask) float32, noiseless response in % signal change
    kind : (n_mask,) uint8, 0 retinotopic, 1 semantic
    noise_sd : (n_mask,) float32, per-volume noise sd in % signal change
    transform : SubjectTransform, subject scanner mm -> template mm
    """

    subject: str
    voxel_index: np.ndarray
    amplitude: np.ndarray
    kind: np.ndarray
    noise_sd: np.ndarray
    transform: SubjectTransform


def subject_label(subject: str | int) -> str:
    """``1``, ``"01"`` or ``"sub-01"`` -> ``"sub-01"``."""
    text = str(subject)
    if text.startswith("sub-"):
        return text
    return f"sub-{int(text):02d}" if text.isdigit() else f"sub-{text}"


def load_truth(data_dir: str | Path, subject: str | int) -> SubjectTruth:
    """Load ``derivatives/twin-truth/sub-XX_encoding.npz`` and ``sub-XX_transform.json``.

    Raises
    ------
    DataError
        A file is missing or lacks an expected array.
    """
    label = subject_label(subject)
    folder = Path(data_dir) / TRUTH_DIR
    npz_path = folder / f"{label}_encoding.npz"
    json_path = folder / f"{label}_transform.json"
    for path in (npz_path, json_path):
        if not path.is_file():
            raise DataError(f"twin ground truth not found: '{path}'")
    with np.load(npz_path, allow_pickle=False) as npz:
        missing = [k for k in ENCODING_KEYS if k not in npz.files]
        if missing:
            raise DataError(f"'{npz_path}' lacks {missing}; expected {list(ENCODING_KEYS)}")
        arrays = {k: npz[k] for k in ENCODING_KEYS}
    transform = SubjectTransform.from_dict(json.loads(json_path.read_text()))
    return SubjectTruth(subject=label, transform=transform, **arrays)


def subject_to_template(
    points_mm: np.ndarray, transform: SubjectTransform | Mapping[str, Any]
) -> np.ndarray:
    """Map subject scanner mm to template mm with the true mapping (affine + RBF warp).

    Parameters
    ----------
    points_mm : (n, 3) float
    transform : SubjectTransform, or the dict held in ``sub-XX_transform.json``

    Returns
    -------
    numpy.ndarray
        (n, 3) float, template mm.
    """
    points = np.asarray(points_mm, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"expected points of shape (n, 3), got {points.shape}")
    if not isinstance(transform, SubjectTransform):
        transform = SubjectTransform.from_dict(transform)
    return transform.apply(points)
