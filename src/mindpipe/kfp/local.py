"""Run a compiled-from-the-registry pipeline on this machine with ``kfp.local``.

The pipeline object is the one `mindpipe kfp compile` writes to pipelines/, executed by
``kfp.local.SubprocessRunner`` in the current Python environment (no images, no cluster), so
a local run exercises the same components, DAG edges and task inputs as a cluster run.
"""

from __future__ import annotations

import time
from pathlib import Path

from mindpipe.exceptions import MindpipeError
from mindpipe.kfp.components import OUTPUT
from mindpipe.kfp.config import ClusterConfig
from mindpipe.kfp.pipelines import PIPELINES, build_pipeline
from mindpipe.params import load_params
from mindpipe.stages import parse_all
from mindpipe.tracking import dataset_hash


def run_local(
    pipeline: str,
    params_path: str | Path,
    cluster: ClusterConfig,
    root: Path,
    mlflow_tracking_uri: str = "",
) -> dict[str, Path]:
    """Run ``PIPELINES[pipeline]`` on ``base.data_dir``; return stage name -> output folder.

    Each call writes under a fresh ``root/<timestamp>`` folder. The data hash is computed from
    the folder's content, the same md5 `dvc add` records.
    """
    import kfp.local

    if pipeline not in PIPELINES:
        raise MindpipeError(f"unknown pipeline {pipeline!r}; known: {sorted(PIPELINES)}")
    params_path = Path(params_path)
    base, _ = parse_all(load_params(params_path))  # fail early on bad params
    data = Path(base.data_dir).resolve()
    if not data.is_dir():
        raise MindpipeError(f"base.data_dir '{data}' not found; run `mindpipe twin generate`")
    run_root = (root / time.strftime("%Y%m%d-%H%M%S")).resolve()
    run_root.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(run_root))
    try:
        build_pipeline(pipeline, cluster)(
            data_dir=str(data),
            params_yaml=params_path.read_text(),
            data_hash=dataset_hash(data),
            mlflow_tracking_uri=mlflow_tracking_uri,
        )
    except RuntimeError as exc:  # kfp.local's "task failed"; the task's own log is above
        raise MindpipeError(f"kfp.local run of pipeline {pipeline!r} failed: {exc}") from exc
    return {
        path.parent.name.replace("-", "_"): path for path in sorted(run_root.glob(f"*/*/{OUTPUT}"))
    }
