"""Intermediate metrics that training loops announce while they run.

A loop calls :func:`report` after each validation check, under the name its final metric will
carry in the stage's metrics (``litemind.sub-01.val_top1``), and says which check that final
metric will be: the best one (the stage keeps its best checkpoint) or the last one (a
federation keeps its last round's model). Nobody listens during a normal
stage run; a sweep listens to prune a trial early (its listener raises), which is why this hook
has no dependencies: the library stays free of Optuna.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

Listener = Callable[[str, int, float, bool], None]

_listeners: list[Listener] = []


def report(name: str, step: int, value: float, *, keeps_best: bool = True) -> None:
    """Tell every listener that metric ``name`` was ``value`` at ``step`` (e.g. the epoch);
    ``keeps_best``: the stage's final ``name`` is its best check (else its last)."""
    for listener in list(_listeners):
        listener(name, step, float(value), keeps_best)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener(name, step, value, keeps_best)`` for every :func:`report` in the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
