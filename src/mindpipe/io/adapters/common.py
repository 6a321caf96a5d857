"""What the adapters share: the inspection record, HDF5 access with precise errors, the stimulus
and clip writers, the validation split, and the converted dataset's description.

An adapter *inspects* a release (headers, keys, shapes and index tables; no bulk data read),
collecting every problem as one line that names the expected file or key and what was found,
then *converts* it into the internal layout (docs/data-format.md) streaming the bulk data.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from mindpipe import __version__
from mindpipe.exceptions import DataError
from mindpipe.io.trials import DATASET_KEY
from mindpipe.params import SourceParams
from mindpipe.utils import progress, write_json
from mindpipe.validate.gx import Spec

logger = logging.getLogger(__name__)

BIDS_VERSION = "1.9.0"
#: Real datasets carry no shape attributes: stimuli.tsv gets these so its contract holds (the
#: ridge baseline then regresses the category alone).
ATTRIBUTE_PLACEHOLDERS = {
    "colour": "unknown",
    "texture": "unknown",
    "size": 1.0,
    "x": 0.0,
    "y": 0.0,
}
CLIP_FRAMES, CLIP_FPS = 16, 8  # the video stages' clips: 2 s at 8 FPS (docs/data-format.md)
#: What nibabel raises on a truncated or corrupt file (zlib.error: a damaged .gz stream).
NIFTI_ERRORS = (OSError, EOFError, ValueError, zlib.error)


@dataclasses.dataclass
class Inspection:
    """What inspecting a release found.

    Attributes
    ----------
    problems : list of str
        Structural problems, one line each (file or key expected, what was found).
    tables : dict
        ``name -> (table, expectations, index columns)``: index tables of the release that a
        Great Expectations suite checks (trial index, sample table, runs, events).
    counts : dict
        Subjects, trials, images... for the report.
    plan : object
        What ``convert`` needs (the adapter's own record); None when there are problems.
    """

    dataset: str
    source: Path
    problems: list[str] = dataclasses.field(default_factory=list)
    tables: dict[str, tuple[pd.DataFrame, list[Spec], tuple[str, ...]]] = dataclasses.field(
        default_factory=dict
    )
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    plan: Any = None

    def attempt(self, check: Callable[[], Any]) -> Any:
        """Run ``check``; a DataError becomes a problem line (and None is returned)."""
        try:
            return check()
        except DataError as exc:
            self.problems.append(str(exc))
            return None


@dataclasses.dataclass(frozen=True)
class Adapter:
    """One dataset kind: how to inspect its release and convert it.

    Attributes
    ----------
    name : str
        The ``base.dataset`` value.
    route : str
        ``betas`` (pre-estimated responses, ``data/sub-XX/betas/``) or ``bold`` (BOLD runs
        that ``preprocess`` fits with the GLM).
    layout : str
        The expected release layout in one line, for messages.
    inspect : callable
        ``(source, params) -> Inspection``.
    convert : callable
        ``(inspection, out_dir, params, seed) -> metrics``; writes into ``out_dir``.
    """

    name: str
    route: str
    layout: str
    inspect: Callable[[Path, SourceParams], Inspection]
    convert: Callable[[Inspection, Path, SourceParams, int], dict[str, float]]


# --------------------------------------------------------------------------- files


def listing(folder: Path) -> str:
    """``'<folder>' holds [first names]`` or ``'<folder>' does not exist``, for messages."""
    if not folder.is_dir():
        return f"'{folder}' does not exist"
    return f"'{folder}' holds {sorted(p.name for p in folder.iterdir())[:10]}"


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file; otherwise a DataError naming it and what its folder holds."""
    if path.is_file():
        return path
    raise DataError(f"{what} not found: expected '{path}'; {listing(path.parent)}")


def open_h5(path: Path, what: str) -> h5py.File:
    """Open an HDF5 file read-only; missing, truncated or foreign files raise a DataError."""
    require_file(path, what)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"cannot read {what} '{path}' (truncated or not HDF5): {exc}") from exc


def h5_dataset(
    handle: h5py.File | h5py.Group, key: str, what: str, ndim: int | None = None
) -> h5py.Dataset:
    """``handle[key]`` as a dataset of ``ndim`` dimensions, or a DataError naming the keys found."""
    path = handle.file.filename
    if key not in handle or not isinstance(handle[key], h5py.Dataset):
        raise DataError(f"expected key '{key}' ({what}) in '{path}', found {sorted(handle.keys())}")
    data = handle[key]
    if ndim is not None and data.ndim != ndim:
        raise DataError(f"expected a {ndim}-D '{key}' ({what}) in '{path}', got shape {data.shape}")
    return data


def read_rows(data: h5py.Dataset, start: int, stop: int, what: str) -> np.ndarray:
    """``data[start:stop]``; a truncated or corrupt file raises a DataError naming it."""
    try:
        return data[start:stop]
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read rows {start}:{stop} of '{data.name}' ({what}) in "
            f"'{data.file.filename}' (truncated file?): {exc}"
        ) from exc


def load_nifti(path: Path, what: str) -> nib.Nifti1Image:
    """The image's header and data proxy (no data read); missing or unreadable: a DataError."""
    require_file(path, what)
    try:
        return nib.load(path)
    except (*NIFTI_ERRORS, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"cannot read {what} '{path}' (truncated or not NIfTI): {exc}") from exc


def nifti_data(img: nib.Nifti1Image, what: str, index: Any = ...) -> np.ndarray:
    """``img.dataobj[index]``; a truncated or corrupt file raises a DataError naming it."""
    try:
        return np.asanyarray(img.dataobj[index])
    except NIFTI_ERRORS as exc:
        raise DataError(
            f"cannot read the data of {what} '{img.get_filename()}' (truncated or corrupt "
            f"file?): {exc}"
        ) from exc


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (no second copy of a large file), else copy it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def subject_label(number: int) -> str:
    """The internal subject label: ``sub-01``."""
    return f"sub-{number:02d}"


def release_subjects(
    report: Inspection, found: dict[str, Path], wanted: tuple[str, ...], expected: str
) -> list[str]:
    """The release's subjects to convert (``base.source.subjects``, or all found), sorted.

    None found, or a requested one absent, is a problem line (and no subject is returned);
    ``expected`` describes the files that would have been found, for the message.
    """
    if not found:
        report.problems.append(
            f"no {report.dataset} release in '{report.source}': expected {expected}; "
            f"{listing(report.source)}"
        )
        return []
    missing = sorted(set(wanted) - set(found))
    if missing:
        report.problems.append(
            f"base.source.subjects names {missing}, not found in '{report.source}'; "
            f"found {sorted(found)}"
        )
        return []
    return sorted(set(wanted or found))


# --------------------------------------------------------------------------- stimuli


def open_image(path: Path, what: str) -> Image.Image:
    """The image at ``path`` as RGB; a missing or unreadable file raises a DataError naming it."""
    require_file(path, what)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read {what} '{path}': {exc}") from exc


def square_rgb(image: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``size``: RGB ``(size, size, 3)`` uint8."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def stimulus_table(
    source_id: list[str],
    caption: list[str],
    category: list[str],
    split: list[str],
    held_out: list[int] | None = None,
    folder: str = "images",
) -> pd.DataFrame:
    """The internal ``stimuli.tsv`` (docs/data-format.md), one row per stimulus in order.

    ``source_id`` is the stimulus's name in the release (NSD 73k index, GOD image id, ...);
    ``stim_id`` is its row number and ``file`` its PNG under ``stimuli/<folder>/``.
    """
    n = len(source_id)
    prefix = "clip" if folder == "videos" else "stim"
    table = pd.DataFrame(
        {
            "stim_id": np.arange(n, dtype=np.int64),
            "file": [f"stimuli/{folder}/{prefix}-{i:05d}.png" for i in range(n)],
            "caption": caption,
            "category": category,
            **{k: [v] * n for k, v in ATTRIBUTE_PLACEHOLDERS.items()},
            "split": split,
            "held_out": held_out if held_out is not None else [0] * n,
            "source_id": source_id,
        }
    )
    return table


def write_table(path: Path, table: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", index=False, lineterminator="\n")


def write_stimuli(root: Path, table: pd.DataFrame, images: Iterable[np.ndarray], size: int) -> None:
    """PNG of every stimulus (table order), ``stimuli.tsv`` and ``categories.tsv``."""
    (root / "stimuli" / "images").mkdir(parents=True, exist_ok=True)
    files = list(table["file"])
    for file, image in progress(zip(files, images, strict=True), "stimulus images", len(files)):
        Image.fromarray(square_rgb(image, size)).save(root / file, format="PNG")
    _write_tables(root, table)


def write_clips(root: Path, table: pd.DataFrame, clips: Iterable[np.ndarray], size: int) -> None:
    """An animated PNG per clip (``(16, H, W, 3)`` frames, 8 FPS) and the stimulus tables."""
    (root / "stimuli" / "videos").mkdir(parents=True, exist_ok=True)
    files = list(table["file"])
    for file, frames in progress(zip(files, clips, strict=True), "stimulus clips", len(files)):
        first, *rest = (Image.fromarray(square_rgb(f, size)) for f in frames)
        first.save(
            root / file,
            format="PNG",
            save_all=True,
            append_images=rest,
            duration=1000 // CLIP_FPS,
            loop=0,
        )
    _write_tables(root, table)


def _write_tables(root: Path, table: pd.DataFrame) -> None:
    write_table(root / "stimuli" / "stimuli.tsv", table)
    categories = (
        table.groupby("category", sort=True)["held_out"]
        .max()
        .reset_index()[["category", "held_out"]]
    )
    write_table(root / "stimuli" / "categories.tsv", categories)


def carve_validation(train: np.ndarray, fraction: float, seed: int, what: str) -> np.ndarray:
    """Sorted validation items drawn from ``train`` by ``seed`` (at least one, when asked).

    Raises
    ------
    DataError
        Nothing would be left to train on.
    """
    train = np.unique(np.asarray(train))
    if fraction <= 0:
        return train[:0]
    n_val = max(1, round(fraction * train.size))
    if n_val >= train.size:
        raise DataError(
            f"base.source.val_fraction = {fraction} takes {n_val} of the {train.size} training "
            f"{what}, leaving none to train on"
        )
    return np.sort(np.random.default_rng(seed).choice(train, size=n_val, replace=False))


def write_description(root: Path, dataset: str, source: Path, subjects: list[str]) -> None:
    """``dataset_description.json`` (recording the kind and the release) and participants."""
    write_json(
        root / "dataset_description.json",
        {
            "Name": f"{dataset} (converted by mindpipe)",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "GeneratedBy": [{"Name": "mindpipe data import", "Version": __version__}],
            "SourceDatasets": [{"URL": str(Path(source).resolve())}],
            DATASET_KEY: dataset,
        },
    )
    write_table(root / "participants.tsv", pd.DataFrame({"participant_id": subjects}))
