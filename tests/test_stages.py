"""One stage contract: the registry, params.yaml and dvc.yaml agree."""

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mindpipe.dvcyaml import render
from mindpipe.exceptions import MindpipeError, ParamsError
from mindpipe.params import BaseParams, load_params, parse_section
from mindpipe.stages import DATA, STAGES, get_stage, parse_all

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_is_generated_from_the_registry():
    base = parse_section(BaseParams, load_params(ROOT / "params.yaml")["base"], "base")
    committed = (ROOT / "dvc.yaml").read_text()
    assert committed == render(base), "dvc.yaml is stale: run `mindpipe compile`"
    stages = yaml.safe_load(committed)["stages"]
    assert list(stages) == [s.name for s in STAGES]
    for stage in STAGES:
        entry = stages[stage.name]
        assert entry["cmd"] == f"mindpipe stage {stage.name}"
        assert entry["params"] == ["base", stage.name]
        assert entry["outs"] == [f"artifacts/{stage.name}"]
        for upstream in stage.upstream():
            assert f"artifacts/{upstream}" in entry["deps"]


def test_params_yaml_has_every_section_and_every_key():
    raw = load_params(ROOT / "params.yaml")
    parse_all(raw)
    assert set(raw) == {"base"} | {s.name for s in STAGES}
    for stage in STAGES:
        cls = stage.load_params_cls()
        parsed = parse_section(cls, raw[stage.name], stage.name)
        assert set(raw[stage.name]) == {f.name for f in dataclasses.fields(cls)}, stage.name
        assert dataclasses.is_dataclass(parsed)


def test_stage_functions_take_their_declared_inputs():
    for stage in STAGES:
        parameters = inspect.signature(stage.load_func()).parameters
        named = {n for n, p in parameters.items() if p.kind is not p.VAR_KEYWORD}
        if len(named) < len(parameters):  # ``**stage_dirs``: the other inputs are stage folders
            assert (
                {"out_dir", "params", "base"}
                <= named
                <= {*stage.inputs, "out_dir", "params", "base"}
            )
            rest = {k: src for k, src in stage.inputs.items() if k not in named}
            assert all(k == f"{src}_dir" for k, src in rest.items()), stage.name
        else:
            assert named == {*stage.inputs, "out_dir", "params", "base"}, stage.name


def test_dag_has_no_cycles_and_known_upstreams():
    seen: set[str] = set()
    for stage in STAGES:  # registry order is a topological order
        assert set(stage.upstream()) <= seen, f"{stage.name} reads a later or unknown stage"
        assert all(src == DATA or src in seen for src in stage.inputs.values())
        seen.add(stage.name)


def test_every_params_problem_is_reported_at_once():
    raw = {"base": {"profile": "huge"}, "preprocesss": {}, "baseline": {"alpha": 1}}
    with pytest.raises(ParamsError) as info:
        parse_all(raw)
    message = str(info.value)
    assert "preprocesss: unknown section" in message
    assert "'profile' must be one of ['tiny', 'default']; got 'huge'" in message
    assert "baseline.alpha: unknown key" in message


def test_unknown_stage_is_an_error():
    with pytest.raises(MindpipeError, match="known stages"):
        get_stage("litemnd")


def test_library_does_not_import_orchestrators():
    code = (
        "import sys, mindpipe.stages, mindpipe.models.baselines, mindpipe.evaluate.report;"
        "bad = {'mlflow', 'kfp', 'dvc', 'optuna'} & set(sys.modules);"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
