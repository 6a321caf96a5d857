"""Register a stage's model folder in the MLflow Model Registry.

A new version is a *challenger*: promotion (e.g. to ``champion``) is a human decision taken
after comparing runs, so the pipeline never moves that alias itself.
"""

from __future__ import annotations

CHALLENGER = "challenger"


def register_model(
    *, run_id: str, artifact_path: str, name: str, tags: dict[str, str], alias: str = CHALLENGER
) -> str:
    """Make ``runs:/<run_id>/<artifact_path>`` a new version of model ``name``; return it.

    The run's lineage ``tags`` are copied onto the version so the registry alone tells which
    data, params, seed and commit produced it. The client API is used rather than
    ``mlflow.register_model`` because the folder is a plain safetensors checkpoint, not an
    MLflow-flavoured model.
    """
    import mlflow

    client = mlflow.MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description="Registered by the mindpipe runner.")
    run = client.get_run(run_id)
    version = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/{artifact_path}",
        run_id=run_id,
        tags=tags,
    )
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)
