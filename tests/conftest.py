"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from mindpipe.twin import generate


@pytest.fixture(scope="session")
def twin_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny twin (seed 0), generated once per test session; treat it as read-only."""
    return generate(tmp_path_factory.mktemp("twin") / "data", profile="tiny", seed=0)


@pytest.fixture(autouse=True)
def _quiet_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep stderr to what the code under test says (`make test` sets this too)."""
    monkeypatch.setenv("MINDPIPE_PROGRESS", "0")
