"""`mindpipe registry`: versions with signature, metrics and lineage; gated promotion; reload."""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest
import torch

from fakes import write_params
from mindpipe.cli import main
from mindpipe.models.mlip import MLIP
from mindpipe.params import load_params
from mindpipe.stages import STAGES, get_stage, parse_all, resolve_inputs
from mindpipe.tracking.registry import CHAMPION, reproduces, score_version


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_run):
    """An empty project whose raw data already passed the gate (the tiny run's)."""
    shutil.copytree(
        tiny_run / "artifacts" / "validate_raw", tmp_path / "artifacts" / "validate_raw"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")
    return tmp_path


def train_mlip(project, twin_tiny, epochs: int) -> None:
    write_params(project, twin_tiny, mlip={"epochs": epochs})
    assert main(["stage", "mlip"]) == 0


def champion() -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias("mindpipe-mlip", CHAMPION).version)


def test_promotion_is_gated_and_the_champion_reproduces_its_metric(project, twin_tiny, capsys):
    train_mlip(project, twin_tiny, epochs=1)
    assert main(["registry", "promote", "mlip"]) == 0  # no champion yet: the first becomes it
    assert champion() == "1"

    train_mlip(project, twin_tiny, epochs=6)  # better on validation
    assert main(["registry", "promote", "mlip"]) == 0
    assert champion() == "2"
    assert "champion is now v2 (was v1)" in capsys.readouterr().out

    train_mlip(project, twin_tiny, epochs=1)  # v3: worse than v2 on the same data
    assert main(["registry", "promote", "mlip"]) == 1
    err = capsys.readouterr().err
    assert "promotion of mindpipe-mlip refused" in err and "challenger v3" in err
    assert champion() == "2"

    client = mlflow.MlflowClient()
    version = client.get_model_version("mindpipe-mlip", "2")
    assert {"mindpipe.git_commit", "mindpipe.data_hash", "mindpipe.params_hash"} <= set(
        version.tags
    )
    logged = float(version.tags["metric.val_retrieval_top1"])
    run = client.get_run(version.run_id)
    assert run.data.metrics["model.val_retrieval_top1"] == logged
    assert run.data.metrics["mlip_r0.25.val_retrieval_top1"] == logged  # the stage's own score
    signature = mlflow.models.get_model_info("models:/mindpipe-mlip/2").signature
    assert list(signature.inputs.to_dict()[0]["tensor-spec"]["shape"])[1:] == [3, 32, 32]
    width = signature.outputs.to_dict()[0]["tensor-spec"]["shape"][1]

    assert main(["registry", "load", "mlip"]) == 0
    assert "reproduces its metrics" in capsys.readouterr().out
    base, sections = parse_all(load_params("params.yaml"))
    scored = score_version(get_stage("mlip"), CHAMPION, sections["mlip"], base)
    assert isinstance(scored.card.model, MLIP)
    assert reproduces(scored)["val_retrieval_top1"] == (logged, pytest.approx(logged, abs=1e-9))
    with torch.no_grad():  # a working model: it embeds images
        assert scored.card.model.encode_image(torch.zeros(2, 3, 32, 32))[0].shape == (2, width)


def test_litemind_decoders_are_registered_and_reload(project, tiny_run, twin_tiny, capsys):
    """The decoders a sweep tunes go through the same registry (inputs: upstream outputs)."""
    for stage in ("preprocess", "features"):
        shutil.copytree(tiny_run / "artifacts" / stage, project / "artifacts" / stage)
    write_params(project, twin_tiny)
    assert main(["stage", "litemind"]) == 0
    assert main(["registry", "promote", "litemind"]) == 0
    assert main(["registry", "load", "litemind"]) == 0
    assert "mindpipe-litemind@champion (v1) reproduces its metrics" in capsys.readouterr().out


def test_each_scorer_reproduces_its_stage_metrics(tiny_run, monkeypatch):
    """A registered version's score is the one the stage selected its checkpoint on."""
    monkeypatch.chdir(tiny_run)
    base, sections = parse_all(load_params("params.yaml"))
    for stage in (s for s in STAGES if s.scorer):
        card = stage.load_scorer()(
            tiny_run / "artifacts" / stage.name / stage.model,
            params=sections[stage.name],
            base=base,
            **resolve_inputs(stage, base),
        )
        logged = json.loads((tiny_run / "artifacts" / stage.name / "metrics.json").read_text())
        for metric, value in card.metrics.items():
            if stage.name == "mlip":  # per variant; the saved model is the merge-ratio one
                metric = f"mlip_r{sections['mlip'].merge_ratio:g}.{metric}"
            elif stage.name in ("mindtuner", "wills"):  # the full model among its baselines
                metric = f"{stage.name}.{metric}"
            elif stage.name in ("baseline", "litemind"):  # per subject in the stage's metrics
                prefix = "litemind." if stage.name == "litemind" else ""
                per_subject = [
                    v
                    for k, v in logged.items()
                    if k.startswith(f"{prefix}sub-") and k.endswith(metric)
                ]
                logged[metric] = sum(per_subject) / len(per_subject)
            assert value == pytest.approx(logged[metric], abs=1e-6), (stage.name, metric)
        inputs = card.example_input  # one array, or named arrays (federated: three modalities)
        first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
        assert first.shape[0] == card.example_output.shape[0] == 2


@pytest.mark.parametrize("stage", ["reconstruct", "federated"])
def test_generator_and_federations_register_and_reload(stage, tiny_run, monkeypatch, capsys):
    """The tiny run registered every trained stage; these two reload from the registry (MLmodel
    signature included) and reproduce the val scores logged on their versions."""
    monkeypatch.chdir(tiny_run)
    uri = f"sqlite:///{tiny_run}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # an earlier test may have set another one globally
    version = mlflow.MlflowClient().get_model_version_by_alias(f"mindpipe-{stage}", "challenger")
    assert {k for k in version.tags if k.startswith("metric.")}
    info = mlflow.models.get_model_info(f"models:/mindpipe-{stage}/{version.version}")
    assert info.signature.inputs is not None and info.signature.outputs is not None
    assert main(["registry", "load", stage, "--alias", "challenger"]) == 0
    assert f"mindpipe-{stage}@challenger (v{version.version}) reproduces its metrics" in (
        capsys.readouterr().out
    )


def test_registry_errors_are_clear(project, twin_tiny, capsys):
    write_params(project, twin_tiny)
    assert main(["registry", "promote", "evaluate"]) == 1
    err = capsys.readouterr().err
    trained = (
        "['baseline', 'mlip', 'litemind', 'mindtuner', 'wills', 'reconstruct', 'neuroclips', "
        "'federated']"
    )
    assert f"registers no scored model; these do: {trained}" in err
    assert main(["registry", "load", "mlip"]) == 1
    assert "has no version with alias 'champion'" in capsys.readouterr().err


def test_unreachable_tracking_server_stops_a_stage_before_it_runs(
    project, twin_tiny, capsys, monkeypatch
):
    write_params(project, twin_tiny)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: refused
    assert main(["stage", "mlip"]) == 1
    assert "is unreachable" in capsys.readouterr().err
    assert not (project / "artifacts" / "mlip").exists()
