"""params.yaml, parsed into one frozen dataclass per section.

The file starts with ``base:`` (seed, profile, paths) followed by one section per stage, named
after the stage. Each stage declares its section as a frozen dataclass next to its function.
An unknown or mistyped key is an error naming ``section.key``: a typo must never fall back
silently to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mindpipe.exceptions import ParamsError

P = TypeVar("P")

PROFILES = ("tiny", "default")
#: ``base.dataset`` values: the twin, or a real dataset converted by ``mindpipe data import``.
DATASETS = ("twin", "nsd", "god", "cc2017", "bids")


@dataclasses.dataclass(frozen=True)
class SourceParams:
    """``base.source``: where a real dataset's release lies and how to convert it.

    Read only by ``mindpipe data import`` (and ``mindpipe data check``), which write the
    converted dataset to ``base.data_dir``; the stages read ``base.data_dir`` only.
    docs/real-data.md gives each dataset's expected layout.

    Attributes
    ----------
    dir : str or None
        The release folder as downloaded (null with the twin).
    subjects : tuple of str
        Subjects to convert, named as in the release (``subj01``, ``Subject1``, ``subject1``,
        ``sub-01``); empty: every subject found.
    val_fraction : float
        Fraction of the training images (clips) set aside as the validation split, by
        ``base.seed``.
    test_fraction : float
        ``bids`` only (a lab's dataset has no test split): fraction of the stimuli held out
        for testing, by ``base.seed``. The public datasets' own test sets are kept.
    image_size : int
        Stimulus images (and video frames) are written square at this size in pixels.
    roi : str or None
        The voxels kept: NSD NIfTI route, the ROI file name under ``roi/`` (null:
        ``nsdgeneral``); GOD, the bdpy ROI key (null: ``ROI_VC``); BIDS, a mask path relative
        to the release with ``{subject}`` in it (null: an EPI brain mask from nilearn); CC2017
        keeps the cortical surface and ignores it.
    """

    dir: str | None = None
    subjects: tuple[str, ...] = ()
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: int = 224
    roi: str | None = None

    def __post_init__(self) -> None:
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ParamsError(f"'{key}' must be in [0, 1); got {value} (base.source.{key})")
        if self.image_size < 8:
            raise ParamsError(
                f"'image_size' must be >= 8 pixels; got {self.image_size} (base.source.image_size)"
            )


@dataclasses.dataclass(frozen=True)
class BaseParams:
    """Settings every stage shares.

    Attributes
    ----------
    seed : int
        Seeds every random draw of every stage.
    profile : str
        ``tiny`` (tests, seconds) or ``default`` (the README run, minutes).
    data_dir : str
        The raw dataset (BIDS-like; tracked by ``data.dvc``).
    artifacts_dir : str
        Where stage outputs go, one folder per stage.
    dataset : str
        What ``data_dir`` holds: ``twin`` (the synthetic twin, or any dataset already in the
        internal layout) or a real dataset that ``mindpipe data import`` converted from
        ``source``: ``nsd``, ``god``, ``cc2017`` (pre-estimated responses) or ``bids`` (a lab's
        own scans, through the GLM).
    source : SourceParams
        The real dataset's release and conversion settings.
    """

    seed: int = 0
    profile: str = "default"
    data_dir: str = "data"
    artifacts_dir: str = "artifacts"
    dataset: str = "twin"
    source: SourceParams = dataclasses.field(default_factory=SourceParams)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ParamsError(
                f"'profile' must be one of {list(PROFILES)}; got {self.profile!r} (base.profile)"
            )
        if self.dataset not in DATASETS:
            raise ParamsError(
                f"'dataset' must be one of {list(DATASETS)}; got {self.dataset!r} (base.dataset)"
            )


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file's content (``{}`` if empty); a missing or malformed ``what`` is an error."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{what} not found: '{path}'")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{what} '{path}' is not valid YAML: {exc}") from exc


def load_params(path: str | Path) -> dict[str, Any]:
    """Read params.yaml into a plain dict of sections; a missing or malformed file is an error."""
    raw = read_yaml(path, "params file")
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ParamsError(f"params file '{path}' must map section names to mappings")
    return raw


def parse_section(cls: type[P], values: dict[str, Any] | None, section: str) -> P:
    """Bind ``values`` to the dataclass ``cls``; every problem is reported at once.

    Raises
    ------
    ParamsError
        Listing each ``section.key: problem`` (unknown key, wrong type, failed check).
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    problems = [
        f"{section}.{key}: unknown key (allowed: {sorted(fields)})"
        for key in values
        if key not in fields
    ]
    for key, value in values.items():
        if key not in fields:
            continue
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            try:  # a nested group of params, e.g. ``litemind.train.lr``
                values[key] = parse_section(hints[key], value, f"{section}.{key}")
            except ParamsError as exc:
                problems.append(str(exc).removeprefix("invalid params:\n  "))
        elif not _matches(value, hints[key]):
            problems.append(f"{section}.{key}: expected {_type_name(hints[key])}, got {value!r}")
    if problems:
        raise ParamsError("invalid params:\n  " + "\n  ".join(problems))
    try:
        return cls(**{k: _coerce(v, hints[k]) for k, v in values.items()})
    except ParamsError as exc:
        raise ParamsError(f"invalid params: {exc}") from exc


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return isinstance(value, list | tuple) and all(
            item is Any or _matches(v, item) for v in value
        )
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    return isinstance(value, hint)


def _coerce(value: Any, hint: Any) -> Any:
    """YAML gives lists; frozen dataclasses want tuples, and ints where floats are declared."""
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def section_dict(params: Any) -> dict[str, Any]:
    """A params dataclass back to a plain dict (for hashing and MLflow)."""
    return dataclasses.asdict(params)
