"""Log a stage execution to MLflow (sqlite in the project root unless MLFLOW_TRACKING_URI says)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mindpipe.exceptions import MindpipeError, TrackingError
from mindpipe.stages import ModelCard
from mindpipe.tracking.registry import model_name, register_model, stage_model_folder

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

    with tracking_errors(f"create the parent run {name!r}"):
        _use_experiment(mlflow, tracking_uri())
        with mlflow.start_run(run_name=name, tags=tags) as run:
            return str(run.info.run_id)


def log_stage_run(
    *,
    stage: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: list[Path],
    steps: dict[str, list[list[float]]] | None = None,
    model: Path | None = None,
    card: ModelCard | None = None,
) -> str:
    """Record one stage execution; returns the MLflow run id.

    ``steps`` maps a metric name to ``[step, value]`` pairs (e.g. per training round); they are
    logged as that metric's history. A ``model`` folder is logged under its own name (with the
    signature ``card`` gives) and registered as a new version of ``mindpipe-<stage>`` (alias
    ``challenger``) carrying ``tags`` and the card's validation metrics (``model.<name>`` on
    the run).

    A failure to reach the tracking store is raised, never swallowed: a stage whose results
    could not be recorded fails, so no run is silently lost.
    """
    model_metrics = card.metrics if card is not None else {}
    with tempfile.TemporaryDirectory() as staging:
        run_id = log_run(
            name=stage,
            params=params,
            metrics={**metrics, **{f"model.{k}": v for k, v in model_metrics.items()}},
            tags=tags,
            artifacts=artifacts,
            steps=steps,
            folder=stage_model_folder(model, card, stage, Path(staging)) if model else None,
            parent_run_id=os.environ.get(PARENT_RUN_ENV) or None,
        )
    if model is not None:
        with tracking_errors(f"register stage {stage!r}'s model"):
            register_model(
                run_id=run_id,
                artifact_path=model.name,
                name=model_name(stage),
                tags=tags,
                metrics=model_metrics,
            )
    return run_id


def log_run(
    *,
    name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: list[Path] = (),
    steps: dict[str, list[list[float]]] | None = None,
    folder: Path | None = None,
    parent_run_id: str | None = None,
    status: str = "FINISHED",
) -> str:
    """One MLflow run (nested under ``parent_run_id`` if given); errors name the store."""
    import mlflow

    with tracking_errors(f"log run {name!r}"):
        _use_experiment(mlflow, tracking_uri())
        with mlflow.start_run(run_name=name, tags=tags, parent_run_id=parent_run_id) as run:
            mlflow.log_params(_flatten(params))
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            for step, values in _by_step(steps or {}).items():
                mlflow.log_metrics(values, step=step)
            for path in artifacts:
                mlflow.log_artifact(str(path))
            if folder is not None:
                mlflow.log_artifacts(str(folder), artifact_path=folder.name)
            if status != "FINISHED":
                mlflow.end_run(status=status)
    return run.info.run_id


def update_run(run_id: str, metrics: dict[str, float], artifacts: list[Path] = ()) -> None:
    """Add metrics and files to an existing run (a sweep's parent, once its trials are done)."""
    import mlflow

    with tracking_errors(f"update run {run_id}"):
        client = mlflow.MlflowClient(tracking_uri())
        for key, value in metrics.items():
            client.log_metric(run_id, key, float(value))
        for path in artifacts:
            client.log_artifact(run_id, str(path))


@contextlib.contextmanager
def tracking_errors(action: str) -> Iterator[None]:
    """Any store or network error becomes one actionable message naming the tracking URI."""
    uri = tracking_uri()
    try:
        yield
    except MindpipeError:
        raise
    except Exception as exc:
        raise TrackingError(
            f"could not {action} in MLflow at {uri!r}: {exc}. Check MLFLOW_TRACKING_URI "
            "(unset it to use the local sqlite file); nothing was recorded for this run."
        ) from exc


def check_tracking_server(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when an HTTP tracking server does not answer.

    MLflow's own client retries a refused connection for minutes before it gives up; a stage or
    sweep would only find out after its work is done. Database and file URIs are not probed.
    """
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except (OSError, ValueError) as exc:
        raise TrackingError(
            f"the MLflow tracking server at {uri!r} is unreachable ({exc}); start it, fix "
            "MLFLOW_TRACKING_URI, or unset it to track in the local sqlite file"
        ) from exc


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
        try:
            mlflow.create_experiment(EXPERIMENT, artifact_location=_artifact_root(uri))
        except mlflow.exceptions.MlflowException:
            # another worker created it between our lookup and our create
            if mlflow.get_experiment_by_name(EXPERIMENT) is None:
                raise
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
