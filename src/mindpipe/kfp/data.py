"""Fetch one version of the dataset from a DVC remote, without the project's git repository:
what a pipeline's first task does when it is given ``data_remote`` (and `mindpipe data pull`).

A DVC remote is content-addressed: the ``md5`` of ``data.dvc`` (``<hash>.dir``) names the
dataset version, whatever the remote (s3://, gs://, azure://, ssh://, a shared path). A pipeline
task on a cluster therefore needs only the remote URL and that hash: a throw-away DVC workspace
with a one-line ``.dvc`` file pulls it through DVC itself (its caching, retries and credentials,
which come from the environment, e.g. ``AWS_*``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mindpipe.exceptions import DataError

VERSION_FILE = ".dvc-md5"  # written into the fetched folder: which version it holds
_MD5_DIR = re.compile(r"[0-9a-f]{32}\.dir")


def pull_dataset(remote: str, md5: str, out: Path) -> bool:
    """Make ``out`` hold dataset version ``md5`` from ``remote``; False if it already did.

    The pull lands in a sibling temp folder that is renamed into place only once complete, so
    a failed pull leaves whatever was there before.
    """
    md5 = md5.strip()
    if not _MD5_DIR.fullmatch(md5):
        raise DataError(f"data md5 must look like '<32 hex>.dir' (from data.dvc), got {md5!r}")
    out = Path(out)
    marker = out / VERSION_FILE
    if marker.is_file() and marker.read_text().strip() == md5:
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-pull-") as tmp:
        work = Path(tmp)
        (work / "data.dvc").write_text(f"outs:\n- md5: {md5}\n  path: data\n  hash: md5\n")
        _dvc(work, "init", "--no-scm", "-q")
        _dvc(work, "remote", "add", "-d", "origin", remote)
        _dvc(work, "pull", "-q", "data.dvc", error=f"cannot pull {md5} from DVC remote {remote!r}")
        (work / "data" / VERSION_FILE).write_text(md5 + "\n")
        if out.exists():
            shutil.rmtree(out)
        (work / "data").rename(out)
    return True


def _dvc(cwd: Path, *args: str, error: str | None = None) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise DataError(f"{error or 'dvc ' + args[0] + ' failed'}: {' '.join(detail[-3:])}")
