"""The MLflow Model Registry: register each stage's model, promote it, load it back.

A new version is the ``challenger``. ``promote`` moves ``champion`` to it only when it beats
the current champion on every gate metric, both versions scored now, by the stage's scorer, on
the same validation data; otherwise it refuses and says by how much each gate fell short.
Versions carry the run's lineage tags, their validation metrics (``metric.<name>``) and a
signature (an ``MLmodel`` file beside the safetensors checkpoint; nothing is pickled).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mindpipe.exceptions import MindpipeError
from mindpipe.stages import ModelCard, Stage, resolve_inputs

CHALLENGER = "challenger"
CHAMPION = "champion"
METRIC_TAG = "metric."
REPRODUCE_TOLERANCE = 1e-6


def _client():
    """A client on the project's tracking URI (also what ``models:/`` downloads resolve)."""
    import mlflow

    from mindpipe.tracking.runs import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.MlflowClient()


def model_name(stage: str) -> str:
    return f"mindpipe-{stage}"


def stage_model_folder(folder: Path, card: ModelCard | None, stage: str, dst: Path) -> Path:
    """A copy of ``folder`` with an ``MLmodel`` file holding the signature ``card`` gives."""
    from mlflow.models import Model, infer_signature

    staged = dst / folder.name
    shutil.copytree(folder, staged)
    if card is not None:
        model = Model()
        model.signature = infer_signature(card.example_input, card.example_output)
        model.add_flavor("mindpipe", stage=stage, format="safetensors")
        model.save(str(staged / "MLmodel"))
    return staged


def register_model(
    *,
    run_id: str,
    artifact_path: str,
    name: str,
    tags: dict[str, str],
    metrics: dict[str, float] | None = None,
    alias: str = CHALLENGER,
) -> str:
    """Make ``runs:/<run_id>/<artifact_path>`` a new version of model ``name``; return it.

    The run's lineage ``tags`` and the model's validation ``metrics`` are copied onto the
    version, so the registry alone tells which data, params, seed and commit produced it and
    how it scored. The client API is used because the folder is a safetensors checkpoint, not
    an MLflow flavour that ``mlflow.register_model`` would load.
    """
    client = _client()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description="Registered by the mindpipe runner.")
    run = client.get_run(run_id)
    version_tags = {
        **tags,
        **{f"{METRIC_TAG}{k}": repr(float(v)) for k, v in (metrics or {}).items()},
    }
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{artifact_path}", run_id=run_id, tags=version_tags
    )
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


@dataclasses.dataclass(frozen=True)
class Scored:
    version: str
    logged: dict[str, float]  # the metrics recorded when the version was registered
    card: ModelCard  # the version loaded and scored now


def score_version(stage: Stage, alias: str, params: Any, base: Any) -> Scored:
    """Download the version ``alias`` points at, load it and score it now on the stage's
    current inputs (``base.data_dir``, upstream stages' outputs)."""
    import mlflow

    client = _client()
    name = model_name(stage.name)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as exc:
        raise MindpipeError(f"model {name!r} has no version with alias {alias!r}") from exc
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-v{version.version}-"))
    try:
        local = mlflow.artifacts.download_artifacts(
            f"models:/{name}/{version.version}", dst_path=str(folder)
        )
        inputs = resolve_inputs(stage, base)
        card = stage.load_scorer()(Path(local), params=params, base=base, **inputs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    logged = {
        k.removeprefix(METRIC_TAG): float(v)
        for k, v in version.tags.items()
        if k.startswith(METRIC_TAG)
    }
    return Scored(str(version.version), logged, card)


def has_alias(stage: Stage, alias: str) -> bool:
    import mlflow

    try:
        _client().get_model_version_by_alias(model_name(stage.name), alias)
    except mlflow.exceptions.MlflowException:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Promotion:
    challenger: Scored
    champion: Scored | None  # the champion it replaced, if any
    gates: tuple[str, ...]


def promote(
    stage: Stage,
    params: Any,
    base: Any,
    *,
    gates: tuple[str, ...] = (),
    min_delta: float = 0.0,
    data_hash: str = "",
) -> Promotion:
    """Point ``champion`` at the challenger if it beats the champion on every gate by more
    than ``min_delta``, both scored now on the same inputs; raise a clear refusal otherwise."""

    challenger = score_version(stage, CHALLENGER, params, base)
    champion = score_version(stage, CHAMPION, params, base) if has_alias(stage, CHAMPION) else None
    gates = gates or tuple(challenger.card.metrics)
    unknown = [g for g in gates if g not in challenger.card.metrics]
    if unknown:
        raise MindpipeError(
            f"gate metric(s) {unknown} are not scored for {stage.name!r}; "
            f"known: {sorted(challenger.card.metrics)}"
        )
    name = model_name(stage.name)
    if champion is not None and champion.version == challenger.version:
        raise MindpipeError(f"{name} version {challenger.version} is already the champion")
    if champion is not None:
        short = [
            f"{g}: challenger v{challenger.version} {challenger.card.metrics[g]:.4f} vs champion "
            f"v{champion.version} {champion.card.metrics[g]:.4f}"
            for g in gates
            if not challenger.card.metrics[g] > champion.card.metrics[g] + min_delta
        ]
        if short:
            raise MindpipeError(
                f"promotion of {name} refused: the challenger does not beat the champion by "
                f"more than {min_delta} on the same data ({base.data_dir}): " + "; ".join(short)
            )
    client = _client()
    client.set_registered_model_alias(name, CHAMPION, challenger.version)
    tags = {f"gate.{g}": repr(challenger.card.metrics[g]) for g in gates}
    tags |= {
        "promoted_over": champion.version if champion else "none",
        "gate.data_dir": str(base.data_dir),
        "gate.data_hash": data_hash,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, challenger.version, key, value)
    return Promotion(challenger, champion, gates)


def reproduces(scored: Scored) -> dict[str, tuple[float, float]]:
    """Each logged metric with its value now; raise if any differs beyond the tolerance."""
    pairs = {k: (v, scored.card.metrics.get(k, float("nan"))) for k, v in scored.logged.items()}
    off = {k: p for k, p in pairs.items() if not abs(p[0] - p[1]) <= REPRODUCE_TOLERANCE}
    if not pairs or off:
        raise MindpipeError(
            f"version {scored.version} does not reproduce its logged metrics: "
            + (", ".join(f"{k} logged {a} now {b}" for k, (a, b) in off.items()) or "none logged")
        )
    return pairs
