"""Where a result came from: git commit, data hash, params hash and seed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from mindpipe.utils import hash_file, hash_obj


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD's commit, suffixed ``-dirty`` when tracked files differ; ``unknown`` outside git."""
    try:
        commit = _git(["rev-parse", "HEAD"], cwd)
        dirty = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def _git(args: list[str], cwd: str | Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def dataset_hash(data_dir: str | Path) -> str:
    """The md5 DVC records for a directory (``<md5>.dir`` in data.dvc), computed from content.

    DVC hashes the JSON list of ``{"md5", "relpath"}`` entries sorted by path; computing the same
    digest lets every MLflow run be matched to the data.dvc version it was trained on.
    """
    data_dir = Path(data_dir)
    entries = [
        {"md5": hash_file(path), "relpath": path.relative_to(data_dir).as_posix()}
        for path in sorted(data_dir.rglob("*"))
        if path.is_file()
    ]
    entries.sort(key=lambda e: e["relpath"])
    digest = hashlib.md5(json.dumps(entries, sort_keys=True).encode(), usedforsecurity=False)
    return f"{digest.hexdigest()}.dir"


def lineage_tags(
    *, seed: int, params: dict[str, Any], data_dir: str | Path, stage: str
) -> dict[str, str]:
    """Tags every MLflow run carries, so any number can be traced back to code, data and params."""
    return {
        "mindpipe.stage": stage,
        "mindpipe.seed": str(seed),
        "mindpipe.git_commit": git_commit(),
        "mindpipe.data_hash": dataset_hash(data_dir) if Path(data_dir).is_dir() else "missing",
        "mindpipe.params_hash": hash_obj(params),
        "mindpipe.profile": str(params.get("base", {}).get("profile", "")),
        "mindpipe.host": os.uname().nodename,
    }
