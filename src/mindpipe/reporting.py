"""Intermediate metrics that training loops announce while they run.

A loop calls :func:`report` after each validation check, under the name its final metric will
carry in the stage's metrics (``litemind.sub-01.val_top1``). Nobody listens during a normal
stage run; a sweep listens to prune a trial early (its listener raises), which is why this hook
has no dependencies: the library stays free of Optuna.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

Listener = Callable[[str, int, float], None]

_listeners: list[Listener] = []


def report(name: str, step: int, value: float) -> None:
    """Tell every listener that metric ``name`` was ``value`` at ``step`` (e.g. the epoch)."""
    for listener in list(_listeners):
        listener(name, step, float(value))


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener(name, step, value)`` for every :func:`report` inside the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
