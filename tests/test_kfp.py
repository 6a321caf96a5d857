"""Kubeflow: components/ and pipelines/ are generated from the registry and load in KFP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from kfp import components

from fakes import TINY_MODELS
from mindpipe.cli import main
from mindpipe.exceptions import MindpipeError
from mindpipe.kfp.components import COMMON_INPUTS, OUTPUT
from mindpipe.kfp.config import load_cluster_config
from mindpipe.kfp.pipelines import PIPELINES, subset, write_all
from mindpipe.kfp.task import parent_run, run_task
from mindpipe.stages import DATA, STAGES
from mindpipe.tracking import dataset_hash
from mindpipe.tracking.runs import PARENT_RUN_ENV

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return load_cluster_config(ROOT / "deploy" / "cluster.yaml")


def test_components_and_pipelines_are_generated_from_the_registry(cluster, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert write_all(ROOT, cluster, check=True) == [], "run `mindpipe kfp compile`"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_stage_has_a_matching_component(stage, cluster):
    comp = components.load_component_from_file(str(ROOT / "components" / f"{stage.name}.yaml"))
    spec = comp.component_spec
    artifacts = {k for k, src in stage.inputs.items() if src != DATA}
    assert set(spec.inputs) == set(COMMON_INPUTS) | artifacts
    assert set(spec.outputs) == {OUTPUT}
    container = spec.implementation.container
    assert container.image == cluster.image_for(stage.resources.gpu)
    # a lightweight Python component (what kfp.local runs) whose body is the one runner call
    command = " ".join(container.command)
    assert "kfp.dsl.executor_main" in command
    assert f'run_task(\n        "{stage.name}",' in container.command[-1]
    assert "pip install" not in command, "the image has mindpipe and kfp"


def _pipeline(name: str) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec) of a compiled pipeline file."""
    docs = list(yaml.safe_load_all((ROOT / "pipelines" / f"{name}.yaml").read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


@pytest.mark.parametrize("name", [*PIPELINES, "sweep_baseline"])
def test_pipelines_load_in_kfp(name):
    comp = components.load_component_from_file(str(ROOT / "pipelines" / f"{name}.yaml"))
    assert {"data_dir", "params_yaml", "data_hash", "mlflow_tracking_uri"} <= set(
        comp.component_spec.inputs
    )


def test_decoding_pipeline_requests_resources_and_gpu_pool(cluster):
    spec, platform = _pipeline("decoding")
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    stages = subset(PIPELINES["decoding"])
    assert any(s.resources.gpu for s in stages), "the decoding DAG has GPU stages"
    tasks = spec["root"]["dag"]["tasks"]
    for stage in stages:
        task = tasks[stage.name.replace("_", "-")]
        # every task's cache key includes the dataset hash
        assert "data_hash" in task["inputs"]["parameters"]
        executor = task["componentRef"]["name"].replace("comp-", "exec-")
        resources = executors[executor]["container"]["resources"]
        assert resources["resourceCpuRequest"] == stage.resources.cpu
        assert resources["resourceMemoryRequest"] == stage.resources.memory
        if stage.resources.gpu:
            assert resources["accelerator"]["resourceType"] == cluster.accelerator_type
            assert int(resources["accelerator"]["resourceCount"]) == stage.resources.gpu
            assert k8s[executor]["nodeSelector"]["labels"] == dict(cluster.node_selector)
            assert {t["key"] for t in k8s[executor]["tolerations"]} == {
                t.key for t in cluster.tolerations
            }
        else:
            assert "accelerator" not in resources
            assert executor not in k8s


def test_decoding_edges_come_from_the_registry():
    spec, _ = _pipeline("decoding")
    tasks = spec["root"]["dag"]["tasks"]
    for stage in subset(PIPELINES["decoding"]):
        deps = set(tasks[stage.name.replace("_", "-")].get("dependentTasks", []))
        ups = {up.replace("_", "-") for up in stage.upstream()}
        assert deps == ups | {"mlflow-parent-run"}, stage.name  # every stage nests under it
        assert tasks[stage.name.replace("_", "-")]["cachingOptions"]["enableCache"]
    parent = tasks["mlflow-parent-run"]["cachingOptions"]
    assert not parent.get("enableCache"), "a fresh parent run per pipeline run"


def test_sweep_fans_out_over_params(cluster):
    spec, _ = _pipeline("sweep_baseline")
    loops = [t for t in spec["root"]["dag"]["tasks"].values() if "iteratorPolicy" in t]
    assert loops and "parameterIterator" in json.dumps(spec["root"]["dag"])


def test_submit_to_unreachable_host_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    host = "http://127.0.0.1:9"
    assert main(["kfp", "submit", "--host", host, "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mindpipe: error:") and host in err


def test_stage_reads_explicit_inputs_and_writes_explicit_out(tmp_path, twin_tiny, monkeypatch):
    """What a KFP task's body does: inputs and output elsewhere than data/ and artifacts/."""
    mounted = tmp_path / "pvc" / "twin"
    shutil.copytree(twin_tiny, mounted)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(profile="tiny", data_dir="nowhere")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unused")  # restored after run_task exports its own
    monkeypatch.setenv(PARENT_RUN_ENV, "")
    out = tmp_path / "outputs" / "validate_raw"
    run_task(
        "validate_raw",
        params_yaml=yaml.safe_dump(params),
        inputs={"data_dir": str(mounted)},
        out=str(out),
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlruns.db",
        parent_run_id="",
    )
    assert json.loads((out / "metrics.json").read_text())["n_failed"] == 0
    assert not (tmp_path / "artifacts").exists()
    with pytest.raises(MindpipeError, match="validate_raw"):
        run_task(
            "validate_raw",
            params_yaml=yaml.safe_dump(params),
            inputs={"nope": "/x"},
            out=str(out),
            mlflow_tracking_uri="",
            parent_run_id="",
        )


def test_stage_runs_nest_under_the_parent_run(tmp_path, twin_tiny, monkeypatch):
    """The first KFP task creates a parent run; stage runs given its id nest under it."""
    import mlflow

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(profile="tiny", data_dir=str(twin_tiny))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    parent = parent_run("abc", "")
    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    assert main(["stage", "validate_raw", "--out", str(tmp_path / "out")]) == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["mindpipe"], output_format="list")
    child = next(r for r in runs if r.info.run_name == "validate_raw")
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert mlflow.get_run(parent).data.tags["mindpipe.data_hash"] == "abc"


def test_run_local_errors_name_the_problem(tmp_path, capsys, monkeypatch):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(data_dir=str(tmp_path / "missing"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    cluster_file = str(ROOT / "deploy" / "cluster.yaml")
    assert main(["kfp", "run-local", "--cluster", cluster_file, "--pipeline", "nope"]) == 1
    assert "unknown pipeline 'nope'" in capsys.readouterr().err
    assert main(["kfp", "run-local", "--cluster", cluster_file]) == 1
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / ".mindpipe").exists()


@pytest.mark.slow
def test_run_local_matches_the_local_runner(tmp_path, twin_tiny, monkeypatch, capsys):
    """kfp.local runs the decoding pipeline to the same metrics as `mindpipe stage` runs.

    Same data, params and seed, and every stage is deterministic given the seed, so the
    metrics must be equal, not merely close; only wall-clock measurements (``*seconds``,
    ``*_per_s``) differ between two runs and are left out.
    """
    import mlflow

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(profile="tiny", data_dir=str(twin_tiny), artifacts_dir="artifacts")
    for name, values in {**TINY_MODELS, "mlip": {**TINY_MODELS["mlip"], "epochs": 2}}.items():
        params[name].update(values)
    local, kfp_dir = tmp_path / "local", tmp_path / "kfp"  # each with its own (cold) caches
    for project in (local, kfp_dir):
        project.mkdir()
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    stages = [s.name for s in subset(PIPELINES["decoding"])]
    monkeypatch.chdir(local)
    for name in stages:
        assert main(["stage", name]) == 0, name
    monkeypatch.chdir(kfp_dir)
    cluster_file = str(ROOT / "deploy" / "cluster.yaml")
    assert main(["kfp", "run-local", "--cluster", cluster_file, "--root", "kl"]) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines()[-len(stages) :])
    assert sorted(printed) == sorted(stages)
    for name in stages:
        expected = _untimed(local / "artifacts" / name / "metrics.json")
        assert _untimed(Path(printed[name]) / "metrics.json") == expected, name
    assert len(_untimed(Path(printed["evaluate"]) / "metrics.json")) > 10
    # the kfp.local stage runs nest under the pipeline's parent run
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["mindpipe"], output_format="list")
    parent = next(r for r in runs if r.info.run_name == "mindpipe-kfp")
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId")}
    assert children == set(stages)
    assert parent.data.tags["mindpipe.data_hash"] == dataset_hash(twin_tiny)


def _untimed(metrics_file: Path) -> dict[str, float]:
    """A stage's metrics without its wall-clock measurements."""
    metrics = json.loads(metrics_file.read_text())
    return {k: v for k, v in metrics.items() if not k.endswith(("seconds", "_per_s"))}
