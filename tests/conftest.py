"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fakes import write_params
from mindpipe.cli import main
from mindpipe.stages import STAGES
from mindpipe.twin import generate


@pytest.fixture(scope="session")
def twin_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny twin (seed 0), generated once per test session; treat it as read-only."""
    return generate(tmp_path_factory.mktemp("twin") / "data", profile="tiny", seed=0)


@pytest.fixture(autouse=True)
def _quiet_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep stderr to what the code under test says (`make test` sets this too)."""
    monkeypatch.setenv("MINDPIPE_PROGRESS", "0")


@pytest.fixture(scope="session")
def tiny_run(twin_tiny, tmp_path_factory):
    """Every stage of the registry run once on the tiny twin; returns the project folder.

    Session-wide and read-only: tests that run more stages write to their own folders.
    """
    project = tmp_path_factory.mktemp("project")
    write_params(project, twin_tiny)
    cwd = os.getcwd()
    os.chdir(project)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project}/mlruns.db"
    try:
        for stage in STAGES:
            assert main(["stage", stage.name]) == 0, stage.name
    finally:
        os.chdir(cwd)
        del os.environ["MLFLOW_TRACKING_URI"]
    return project
