"""`mindpipe sweep`: the sweep file, pruning, nested MLflow runs, the best params, workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from mindpipe.cli import main
from mindpipe.exceptions import ParamsError
from mindpipe.params import load_params
from mindpipe.stages import parse_all
from mindpipe.sweep import load_sweep
from mindpipe.sweep.study import PruningListener
from servers import mlflow_server, postgres_bin, postgres_server

ROOT = Path(__file__).resolve().parents[1]

SWEEP = {
    "stage": "litemind",
    "objective": {"metric": "litemind.*.val_top1", "aggregate": "mean"},
    "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0},
    "space": {
        "litemind.train.lr": {"low": 1.0e-4, "high": 3.0e-2, "log": True},
        "litemind.train.loss": {"choices": ["info_nce", "mixco_softclip"]},
        "litemind.patch_size": {"choices": [8, 16]},
    },
}


def write_sweep(folder: Path, **changes) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **changes}))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stage": "nope"}, "'stage' must name a registered stage"),
        ({"objective": {"metric": "litemind.*.test_top1"}}, "not a validation metric"),
        ({"space": {"mlip.lr": {"low": 0.1, "high": 1.0}}}, "must be in the swept stage"),
        ({"space": {"litemind.train.lr": {"low": 1.0, "high": 0.1}}}, "needs low < high"),
        ({"space": {"litemind.dropout": {"low": 0.0, "high": 1.0, "log": True}}}, "low > 0"),
        ({"space": {}}, "declares no params"),
        ({"objective": {"metric": "x.val", "aggregate": "median"}}, "objective.aggregate"),
    ],
)
def test_bad_sweep_files_name_the_problem(tmp_path, changes, message):
    with pytest.raises(ParamsError, match=message) as err:
        load_sweep(write_sweep(tmp_path, **changes))
    assert "sweep.yaml" in str(err.value)


def test_a_mistyped_param_fails_before_any_trial(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = write_sweep(tmp_path, space={"litemind.train.lrate": {"low": 0.1, "high": 1.0}})
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert main(["sweep", "litemind", "--file", str(path), "--storage", storage]) == 1
    assert "litemind.train.lrate: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists()


def test_apply_sets_nested_keys_without_touching_the_original():
    spec = load_sweep(ROOT / "sweeps" / "litemind.yaml")
    raw = load_params(ROOT / "params.yaml")
    params = spec.apply(raw, {"litemind.train.lr": 0.5, "litemind.patch_size": 8})
    _, sections = parse_all(params)
    assert (sections["litemind"].train.lr, sections["litemind"].patch_size) == (0.5, 8)
    assert raw["litemind"]["train"]["lr"] != 0.5
    assert spec.defaults(raw)["litemind.train.lr"] == raw["litemind"]["train"]["lr"]


class FakeTrial:
    """Records reports; asks to prune once the value drops below ``floor``."""

    def __init__(self, floor: float):
        self.floor, self.reports, self.last = floor, [], None

    def report(self, value, step):
        self.reports.append((step, value))
        self.last = value

    def should_prune(self):
        return self.last < self.floor


def test_the_pruning_listener_reports_the_objective_so_far_and_prunes():
    spec = load_sweep(ROOT / "sweeps" / "litemind.yaml")
    trial = FakeTrial(floor=0.3)
    listener = PruningListener(trial, spec)
    listener("litemind.sub-01.val_top1", 0, 0.5)
    listener("mindeye_mlp.sub-01.val_top1", 0, 0.0)  # not the objective: ignored
    listener("litemind.sub-01.val_top1", 1, 0.4)  # best so far stays 0.5
    listener("litemind.sub-02.val_top1", 0, 0.3)  # mean of the bests: 0.4
    assert trial.reports == [(0, 0.5), (1, 0.5), (2, pytest.approx(0.4))]
    with pytest.raises(optuna.TrialPruned):
        listener("litemind.sub-03.val_top1", 0, 0.0)  # mean 0.8 / 3 < 0.3


def test_a_stage_that_keeps_its_last_check_is_judged_on_its_latest_value():
    spec = load_sweep(ROOT / "sweeps" / "federated.yaml")
    trial = FakeTrial(floor=0.0)
    listener = PruningListener(trial, spec)
    listener("pmcmfl_m00_val_accuracy", 1, 0.6, keeps_best=False)
    listener("fedavg_m00_val_accuracy", 1, 0.9, keeps_best=False)  # not the objective
    listener("pmcmfl_m00_val_accuracy", 2, 0.5, keeps_best=False)  # the latest counts
    listener("pmcmfl_m50_val_accuracy", 1, 0.3, keeps_best=False)
    assert trial.reports == [(0, 0.6), (1, 0.5), (2, pytest.approx(0.4))]


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.mark.slow
def test_sweep_beats_the_defaults_prunes_and_logs_nested_runs(
    tiny_run, tmp_path, tracked, monkeypatch
):
    """The project's own sweep file, 20 trials on the tiny twin (about a minute)."""
    monkeypatch.chdir(tiny_run)
    out, storage = tmp_path / "out", f"sqlite:///{tmp_path}/optuna.db"
    args = ["sweep", "litemind", "--file", str(ROOT / "sweeps" / "litemind.yaml")]
    assert main([*args, "--trials", "20", "--storage", storage, "--out", str(out)]) == 0

    study = optuna.load_study(study_name="litemind", storage=storage)
    states = [t.state.name for t in study.trials]
    assert len(states) == 20 and set(states) == {"COMPLETE", "PRUNED"}
    defaults = study.trials[0]
    assert defaults.user_attrs["mindpipe.defaults"]  # params.yaml's own values ran first
    assert study.best_value >= defaults.value + 0.1  # measured: 0.41 vs 0.19 (validation)

    mlflow.set_tracking_uri(tracked)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = [r for r in runs if r.info.run_name == "sweep:litemind"]
    nested = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert len(parent) == 1 and len(nested) == 20
    assert {r.data.tags["mlflow.parentRunId"] for r in nested} == {parent[0].info.run_id}
    logged = sorted(r.data.tags["mindpipe.sweep.state"] for r in nested)
    assert logged == sorted(states)
    assert all(r.info.status == "KILLED" for r in nested if "objective" not in r.data.metrics)
    for run in nested:
        assert {"mindpipe.git_commit", "mindpipe.data_hash", "mindpipe.params_hash"} <= set(
            run.data.tags
        )
        assert "objective_so_far" in run.data.metrics
    assert parent[0].data.metrics["best_value"] == study.best_value

    best = load_params(out / "best_params.yaml")
    assert best["litemind"]["train"]["lr"] == study.best_params["litemind.train.lr"]
    parse_all(best)  # a params file dvc repro can run
    assert "-S 'litemind.train.lr=" in (out / "best_params.txt").read_text()
    assert (out / "trials.png").stat().st_size > 0


def test_a_federated_sweep_judges_each_round_as_the_stage_keeps_it(
    tiny_run, tmp_path, tracked, monkeypatch, capsys
):
    """The federation keeps its last round's model: each trial's curve ends at its objective."""
    monkeypatch.chdir(tiny_run)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ["sweep", "federated", "--file", str(ROOT / "sweeps" / "federated.yaml")]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # the results replace --out whole: refused
    assert main([*args, "--trials", "3", "--storage", storage, "--out", str(out)]) == 1
    assert "holds other files (notes.txt)" in capsys.readouterr().err
    (out / "notes.txt").unlink()
    assert main([*args, "--trials", "3", "--storage", storage, "--out", str(out)]) == 0

    assert [
        t.state.name for t in optuna.load_study(study_name="federated", storage=storage).trials
    ] == ["COMPLETE"] * 3
    mlflow.set_tracking_uri(tracked)
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    nested = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert len(nested) == 3
    for run in nested:
        curve = client.get_metric_history(run.info.run_id, "objective_so_far")
        rounds = 2 * 3  # two missing rates x the tiny profile's 3 rounds, PmcmFL only
        assert len(curve) == rounds
        final = (
            run.data.metrics["pmcmfl_m00_val_accuracy"]
            + run.data.metrics["pmcmfl_m50_val_accuracy"]
        ) / 2
        assert curve[-1].value == pytest.approx(final) == run.data.metrics["objective"]


def test_an_unreachable_tracking_server_fails_before_any_trial(
    tiny_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tiny_run)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: refused
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ["sweep", "litemind", "--file", str(write_sweep(tmp_path)), "--storage", storage]
    assert main(args) == 1
    assert (
        "MLflow tracking server at 'http://127.0.0.1:9' is unreachable" in capsys.readouterr().err
    )
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.skipif(
    postgres_bin() is None, reason="PostgreSQL is not installed (Debian postgresql)"
)
def test_two_workers_share_one_study_on_team_servers(tiny_run, tmp_path):
    """The team setup: Optuna storage on PostgreSQL, an MLflow server on PostgreSQL with its
    own artifact root; two workers on one study lose no trial and run none twice."""
    with (
        postgres_server("optuna") as storage,
        postgres_server("mlflow") as backend,
        mlflow_server(backend, tmp_path / "artifacts") as tracking,
    ):
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "MINDPIPE_PROGRESS": "0"}
        cmd = [sys.executable, "-m", "mindpipe.cli", "sweep", "litemind", "--trials", "4"]
        cmd += ["--file", str(write_sweep(tmp_path)), "--storage", storage, "--study", "team"]
        workers = [
            subprocess.Popen([*cmd, "--out", str(tmp_path / f"w{i}")], cwd=tiny_run, env=env)
            for i in range(2)
        ]
        assert [w.wait(timeout=600) for w in workers] == [0, 0]

        trials = optuna.load_study(study_name="team", storage=storage).trials
        assert sorted(t.number for t in trials) == list(range(8))
        assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
        mlflow.set_tracking_uri(tracking)
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        nested = [r for r in runs if "mindpipe.sweep.trial" in r.data.tags]
        assert sorted(int(r.data.tags["mindpipe.sweep.trial"]) for r in nested) == list(range(8))
        assert len({r.data.tags["mlflow.parentRunId"] for r in nested}) == 1
        parent = next(r for r in runs if r.info.run_name == "sweep:team")
        assert (tmp_path / "artifacts").is_dir() and parent.data.metrics["best_value"] > 0
        summary = mlflow.artifacts.list_artifacts(run_id=parent.info.run_id)
        assert {"summary.json", "trials.png"} <= {a.path for a in summary}


def test_a_failing_trial_is_recorded_and_the_study_goes_on(
    tiny_run, tmp_path, tracked, monkeypatch
):
    """A stage error in one trial (here: 'diverged' above an lr) fails that trial only."""
    import mindpipe.sweep.study as study_module
    from mindpipe.exceptions import MindpipeError
    from mindpipe.sweep import run_sweep

    def fake_stage(name, params, **kwargs):
        lr = params["litemind"]["train"]["lr"]
        if lr > 3e-3:
            raise MindpipeError(f"stage {name!r} returned non-finite metrics (lr {lr})")
        return {"litemind.sub-01.val_top1": lr}

    monkeypatch.setattr(study_module, "run_stage", fake_stage)
    monkeypatch.chdir(tiny_run)
    spec = load_sweep(write_sweep(tmp_path))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_sweep(spec, trials=8, storage=storage, out_dir=tmp_path / "out")
    assert result.states["FAIL"] >= 1 and result.states["COMPLETE"] >= 1
    assert result.best_value <= 3e-3

    mlflow.set_tracking_uri(tracked)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    failed = [r for r in runs if r.data.tags.get("mindpipe.sweep.state") == "FAIL"]
    assert len(failed) == result.states["FAIL"]
    assert all(r.info.status == "FAILED" for r in failed)
    assert "non-finite metrics" in failed[0].data.tags["mindpipe.sweep.error"]


def test_the_loser_of_the_schema_race_retries_and_a_bad_url_does_not(monkeypatch):
    """Workers started together on an empty database race to create Optuna's tables."""
    import sqlalchemy.exc

    import mindpipe.sweep.study as study_module
    from mindpipe.exceptions import MindpipeError

    calls = []

    def racing(url):
        calls.append(url)
        if len(calls) == 1:  # the other worker created the enum type first
            raise sqlalchemy.exc.IntegrityError("CREATE TYPE studydirection", {}, Exception())
        return "storage"

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(study_module.time, "sleep", lambda s: None)
    assert study_module.open_storage("postgresql://u:secret@h/db") == "storage"
    assert len(calls) == 2

    def refused(url):
        calls.append(url)
        raise sqlalchemy.exc.OperationalError("connect", {}, Exception("refused"))

    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", refused)
    with pytest.raises(MindpipeError, match=r"postgresql://u:\*\*\*@h/db") as err:
        study_module.open_storage("postgresql://u:secret@h/db")
    assert len(calls) == 1 and "secret" not in str(err.value)
