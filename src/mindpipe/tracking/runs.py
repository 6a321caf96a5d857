"""Log a stage execution to MLflow (sqlite in the project root unless MLFLOW_TRACKING_URI says)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mindpipe.exceptions import MindpipeError
from mindpipe.tracking.registry import register_model

logger = logging.getLogger(__name__)

EXPERIMENT = "mindpipe"
DEFAULT_URI = "sqlite:///mlruns.db"
PARENT_RUN_ENV = "MINDPIPE_PARENT_RUN_ID"  # set by KFP: nest this stage's run under that run


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def start_parent_run(name: str, tags: dict[str, str]) -> str:
    """Create the run that every stage of one orchestrated pipeline run nests under.

    The orchestrator passes the returned id to each stage as ``MINDPIPE_PARENT_RUN_ID``.
    """
    import mlflow

    uri = tracking_uri()
    try:
        _use_experiment(mlflow, uri)
        with mlflow.start_run(run_name=name, tags=tags) as run:
            return str(run.info.run_id)
    except Exception as exc:
        raise MindpipeError(f"cannot create the parent MLflow run at {uri}: {exc}") from exc


def log_stage_run(
    *,
    stage: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: list[Path],
    steps: dict[str, list[list[float]]] | None = None,
    model: Path | None = None,
) -> str:
    """Record one stage execution; returns the MLflow run id.

    ``steps`` maps a metric name to ``[step, value]`` pairs (e.g. per training round); they are
    logged as that metric's history. A ``model`` folder is logged under its own name and
    registered as a new version of ``mindpipe-<stage>`` (alias ``challenger``) carrying ``tags``.

    A failure to reach the tracking store is raised, never swallowed: a stage whose results
    could not be recorded fails, so no run is silently lost.
    """
    import mlflow

    uri = tracking_uri()
    try:
        _use_experiment(mlflow, uri)
        parent = os.environ.get(PARENT_RUN_ENV) or None
        with mlflow.start_run(run_name=stage, tags=tags, parent_run_id=parent) as run:
            mlflow.log_params(_flatten(params))
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            for step, values in _by_step(steps or {}).items():
                mlflow.log_metrics(values, step=step)
            for path in artifacts:
                mlflow.log_artifact(str(path))
            if model is not None:
                mlflow.log_artifacts(str(model), artifact_path=model.name)
        if model is not None:
            register_model(
                run_id=run.info.run_id,
                artifact_path=model.name,
                name=f"mindpipe-{stage}",
                tags=tags,
            )
    except Exception as exc:  # any store/network error becomes one actionable message
        raise MindpipeError(
            f"could not log stage {stage!r} to MLflow at {uri!r}: {exc}. "
            "Check MLFLOW_TRACKING_URI (unset it to use the local sqlite file)."
        ) from exc
    return run.info.run_id


def _by_step(steps: dict[str, list[list[float]]]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for name, pairs in steps.items():
        for step, value in pairs:
            out.setdefault(int(step), {})[name] = float(value)
    return out


def _use_experiment(mlflow, uri: str) -> None:
    """Point mlflow at ``uri`` and the project's experiment, creating it on first use."""
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=_artifact_root(uri))
    mlflow.set_experiment(EXPERIMENT)


def _artifact_root(uri: str) -> str | None:
    """Keep a local sqlite store's artifacts beside it, not in whatever the cwd happens to be."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.resolve().parent / "mlartifacts").as_uri()
    return None


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
