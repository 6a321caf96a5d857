"""What every KFP task runs: the generated component bodies are one call into this module.

Keeping the runtime here (not in the generated component source) means a stage runs through
exactly the CLI path a local `mindpipe stage` run takes: same params parsing, same runner,
same offline environment and MLflow logging.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mindpipe.exceptions import MindpipeError
from mindpipe.tracking.runs import PARENT_RUN_ENV, start_parent_run


def run_task(
    stage: str,
    *,
    params_yaml: str,
    inputs: dict[str, str],
    out: str,
    mlflow_tracking_uri: str,
    parent_run_id: str,
) -> None:
    """Run registry stage ``stage`` as `mindpipe stage` does, with KFP-given folders.

    ``parent_run_id`` makes the stage's MLflow run nest under the pipeline's. (The task's
    ``data_hash`` input is not passed on: it exists only to be part of the KFP cache key.)
    """
    from mindpipe.cli import main

    _export_tracking(mlflow_tracking_uri)
    os.environ[PARENT_RUN_ENV] = parent_run_id
    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / "params.yaml"
        params.write_text(params_yaml)
        argv = ["stage", stage, "--params", str(params), "--out", out]
        for kwarg, path in inputs.items():
            argv += ["--input", f"{kwarg}={path}"]
        if main(argv) != 0:
            raise MindpipeError(f"KFP task for stage {stage!r} failed (see the error above)")


def parent_run(
    data_hash: str, mlflow_tracking_uri: str, data_dir: str = "", data_remote: str = ""
) -> str:
    """Create the pipeline run's parent MLflow run; return its id. With ``data_remote``, first
    pull dataset version ``data_hash`` into ``data_dir`` (a no-op when it is already there)."""
    if data_remote:
        from mindpipe.kfp.data import pull_dataset

        pull_dataset(data_remote, data_hash, Path(data_dir))
    _export_tracking(mlflow_tracking_uri)
    return start_parent_run("mindpipe-kfp", {"mindpipe.data_hash": data_hash})


def _export_tracking(uri: str) -> None:
    """An empty URI keeps the image's (or the local shell's) MLFLOW_TRACKING_URI."""
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
