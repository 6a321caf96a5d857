"""Pulling one dataset version from a DVC remote by its md5, as a KFP task does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mindpipe.exceptions import DataError
from mindpipe.kfp.data import VERSION_FILE, pull_dataset


def _dvc(cwd: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """A DVC project that pushed a small dataset to a local remote: (remote, md5, dataset)."""
    root = tmp_path_factory.mktemp("dvc")
    project, remote = root / "project", root / "remote"
    data = project / "data"
    (data / "sub-01").mkdir(parents=True)
    (data / "stimuli.tsv").write_text("stim_id\tfile\n0\ta.png\n")
    (data / "sub-01" / "betas.bin").write_bytes(bytes(range(256)) * 8)
    _dvc(project, "init", "--no-scm", "-q")
    _dvc(project, "add", "-q", "data")
    _dvc(project, "remote", "add", "-d", "local", str(remote))
    _dvc(project, "push", "-q")
    md5 = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    return str(remote), md5, data


def test_pull_fetches_the_version_once(pushed, tmp_path):
    remote, md5, data = pushed
    out = tmp_path / "mnt" / "data"
    assert pull_dataset(remote, md5, out) is True
    for path in data.rglob("*"):
        if path.is_file():
            assert (out / path.relative_to(data)).read_bytes() == path.read_bytes()
    assert (out / VERSION_FILE).read_text().strip() == md5
    assert pull_dataset(remote, md5, out) is False  # already there: nothing fetched


def test_a_failed_pull_names_the_remote_and_leaves_the_folder_alone(pushed, tmp_path):
    remote = pushed[0]
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    missing = "0" * 32 + ".dir"
    with pytest.raises(DataError, match="cannot pull"):
        pull_dataset(remote, missing, out)
    assert (out / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in out.parent.iterdir()) == ["data"]  # no temp folder left
    with pytest.raises(DataError, match="32 hex"):
        pull_dataset(remote, "not-a-hash", out)


def test_the_pipelines_first_task_pulls_the_data_before_the_parent_run(pushed, tmp_path):
    from mindpipe.kfp.task import parent_run

    remote, md5, data = pushed
    out = tmp_path / "pvc" / "data"
    run_id = parent_run(md5, f"sqlite:///{tmp_path}/mlruns.db", str(out), remote)
    assert run_id and (out / "stimuli.tsv").read_text() == (data / "stimuli.tsv").read_text()
