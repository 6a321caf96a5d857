"""Kubeflow: components/ and pipelines/ are generated from the registry and load in KFP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import components

from mindpipe.cli import main
from mindpipe.kfp.components import COMMON_INPUTS, OUTPUT
from mindpipe.kfp.config import load_cluster_config
from mindpipe.kfp.pipelines import PIPELINES, subset, write_all
from mindpipe.stages import DATA, STAGES

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
    assert f"mindpipe stage {stage.name} " in container.command[-1]


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
    """What a KFP task does: inputs and output elsewhere than data/ and artifacts/."""
    mounted = tmp_path / "pvc" / "twin"
    shutil.copytree(twin_tiny, mounted)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(profile="tiny", data_dir="nowhere")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")
    out = tmp_path / "outputs" / "validate_raw"
    # the component's own command line, as the container runs it
    spec = yaml.safe_load((ROOT / "components" / "validate_raw.yaml").read_text())
    command = spec["implementation"]["container"]["command"]
    args = [(tmp_path / "params.yaml").read_text(), "", "md5", "", "--input"]
    args += [f"data_dir={mounted}", "--out", str(out)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(command + args, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["n_failed"] == 0
    assert not (tmp_path / "artifacts").exists()
    assert main(["stage", "validate_raw", "--input", "nope=/x"]) == 1


def test_stage_runs_nest_under_the_parent_run(tmp_path, twin_tiny, monkeypatch):
    """The first KFP task creates a parent run; stage runs given its id nest under it."""
    import mlflow

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(profile="tiny", data_dir=str(twin_tiny))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["kfp", "parent-run", "--data-hash", "abc", "--out", "parent.txt"]) == 0
    parent = (tmp_path / "parent.txt").read_text()
    monkeypatch.setenv("MINDPIPE_PARENT_RUN_ID", parent)
    assert main(["stage", "validate_raw", "--out", str(tmp_path / "out")]) == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["mindpipe"], output_format="list")
    child = next(r for r in runs if r.info.run_name == "validate_raw")
    assert child.data.tags["mlflow.parentRunId"] == parent
