"""A sweep file: which stage, which validation metric, and the search space, all declared.

```yaml
stage: litemind
objective:
  metric: "litemind.*.val_top1"   # shell-style pattern over the stage's metrics
  aggregate: mean                 # of every matching metric: mean, min or max
  direction: maximize
pruner: {n_startup_trials: 5, n_warmup_steps: 4}   # Optuna's MedianPruner
space:
  litemind.train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}   # float (or int if both ints)
  litemind.patch_size: {choices: [8, 16, 32]}                 # categorical
```

Every space key is a dotted path into the stage's own params section. The objective must be a
validation metric: hyperparameters are never chosen on the test split.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import re
from pathlib import Path
from typing import Any

import numpy as np

from mindpipe.exceptions import ParamsError
from mindpipe.params import read_yaml
from mindpipe.stages import STAGES, parse_all

AGGREGATES = {"mean": np.mean, "min": np.min, "max": np.max}
DIRECTIONS = ("maximize", "minimize")
_VALIDATION = re.compile(r"(^|[._*])val")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched param: a range (``low``..``high``, ``log``, ``step``) or ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def contains(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        return isinstance(value, int | float) and self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str
    aggregate: str = "mean"
    direction: str = "maximize"

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.metric)

    def value(self, metrics: dict[str, float]) -> float:
        """The aggregate of every matching metric; an error lists what the stage did report."""
        values = [v for k, v in metrics.items() if self.matches(k)]
        if not values:
            raise ParamsError(
                f"objective.metric {self.metric!r} matches none of the stage's metrics: "
                f"{sorted(metrics)}"
            )
        return float(AGGREGATES[self.aggregate](values))


@dataclasses.dataclass(frozen=True)
class PrunerSpec:
    n_startup_trials: int = 5  # trials that run to the end before any is pruned
    n_warmup_steps: int = 4  # validation checks a trial gets before it can be pruned


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    stage: str
    objective: Objective
    space: tuple[Dimension, ...]
    pruner: PrunerSpec = PrunerSpec()
    path: str = ""

    def apply(self, raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """A copy of the params sections ``raw`` with each dotted key set to its value."""
        out = copy.deepcopy(raw)
        for key, value in values.items():
            node = out
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ParamsError(f"space key {key!r}: {part!r} is not a params group")
            node[leaf] = value
        return out

    def defaults(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Each searched key's value in the params ``raw`` (set there, or the dataclass default)."""
        _, sections = parse_all(raw)
        found = {}
        for dim in self.space:
            node = sections[self.stage]
            for part in dim.key.split(".")[1:]:
                node = getattr(node, part)
            found[dim.key] = node
        return found


def load_sweep(path: str | Path) -> SweepSpec:
    """Parse and check a sweep file; every problem names the file and the key."""
    raw = read_yaml(path, "sweep file")
    try:
        return _parse(raw, str(path))
    except (TypeError, ParamsError) as exc:
        raise ParamsError(f"sweep file '{path}': {exc}") from exc


def _parse(raw: dict[str, Any], path: str) -> SweepSpec:
    unknown = set(raw) - {"stage", "objective", "space", "pruner"}
    if unknown:
        raise ParamsError(f"unknown keys {sorted(unknown)}")
    stage = raw.get("stage")
    if stage not in {s.name for s in STAGES}:
        raise ParamsError(f"'stage' must name a registered stage; got {stage!r}")
    objective = Objective(**(raw.get("objective") or {}))
    if objective.aggregate not in AGGREGATES or objective.direction not in DIRECTIONS:
        raise ParamsError(
            f"objective.aggregate must be one of {list(AGGREGATES)} and objective.direction one "
            f"of {list(DIRECTIONS)}; got {objective.aggregate!r}, {objective.direction!r}"
        )
    if not _VALIDATION.search(objective.metric):
        raise ParamsError(
            f"objective.metric {objective.metric!r} is not a validation metric (no 'val' in "
            "its name): hyperparameters are chosen on the validation split, never on test"
        )
    space = tuple(_dimension(stage, key, spec) for key, spec in (raw.get("space") or {}).items())
    if not space:
        raise ParamsError("'space' declares no params to search")
    pruner = PrunerSpec(**(raw.get("pruner") or {}))
    return SweepSpec(stage, objective, space, pruner, path)


def _dimension(stage: str, key: str, spec: Any) -> Dimension:
    if not key.startswith(f"{stage}."):
        raise ParamsError(f"space key {key!r} must be in the swept stage's section ({stage}.*)")
    if not isinstance(spec, dict):
        raise ParamsError(f"space.{key} must be a mapping with low/high or choices")
    spec = dict(spec)
    if "choices" in spec:
        choices = tuple(spec.pop("choices") or ())
        if spec or not choices:
            raise ParamsError(f"space.{key}: 'choices' must be a non-empty list, alone")
        return Dimension(key, choices=choices)
    dim = Dimension(key, **spec)
    if dim.low is None or dim.high is None or not dim.low < dim.high:
        raise ParamsError(f"space.{key} needs low < high; got {dim.low}, {dim.high}")
    if dim.log and dim.low <= 0:
        raise ParamsError(f"space.{key}: a log range needs low > 0; got {dim.low}")
    return dim
