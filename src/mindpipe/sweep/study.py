"""Run an Optuna study over one stage's params; every trial is a nested MLflow run.

Each trial runs the stage in this process, exactly as `mindpipe stage` would, with the trial's
values set in a copy of params.yaml and its outputs in a scratch folder that is removed after.
The stage's training loops announce their validation checks (:mod:`mindpipe.reporting`); the
sweep turns those into the objective so far (the objective's aggregate of each matching
metric's value as the stage would return it now) and reports it to Optuna, whose median
pruner stops trials that trail the others at the same check.

Several workers may run the same study: they share it through the storage (sqlite for one
machine, PostgreSQL for many) and nest their trials under the one parent run the study's
creator started. ``trials`` is the number this worker runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from mindpipe.exceptions import MindpipeError, ParamsError, TrackingError
from mindpipe.params import load_params
from mindpipe.reporting import listening
from mindpipe.runner import run_stage
from mindpipe.stages import get_stage, parse_all, resolve_inputs
from mindpipe.sweep.spec import Dimension, SweepSpec
from mindpipe.tracking import lineage_tags
from mindpipe.tracking.runs import (
    check_tracking_server,
    log_run,
    start_parent_run,
    update_run,
)
from mindpipe.utils import atomic_dir, hash_obj, write_json

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///optuna.db"
PARENT_ATTR = "mindpipe.mlflow_parent_run_id"
DEFAULTS_ATTR = "mindpipe.defaults"
STEPS_METRIC = "objective_so_far"


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The study after this worker's trials (counts and best cover every worker's trials)."""

    study: str
    states: dict[str, int]  # trial state -> count, whole study
    best_value: float
    best_params: dict[str, Any]
    defaults_value: float | None  # the enqueued trial with params.yaml's values, if run
    worker_trials: int
    worker_seconds: float
    out_dir: Path

    @property
    def trials_per_minute(self) -> float:
        return 60.0 * self.worker_trials / max(self.worker_seconds, 1e-9)


def run_sweep(
    spec: SweepSpec,
    *,
    trials: int,
    params_path: str | Path = "params.yaml",
    storage: str = DEFAULT_STORAGE,
    study_name: str | None = None,
    prune: bool = True,
    seed: int | None = None,
    out_dir: str | Path | None = None,
) -> SweepResult:
    """Run ``trials`` trials of the study (created on first use); write its best params file.

    Writes ``out_dir`` (default ``.mindpipe/sweeps/<study>/``): ``best_params.yaml`` (the
    params file with the best trial's values, for ``dvc repro``), ``best_params.txt`` (the same
    as ``dvc exp run -S`` arguments), ``trials.csv``, ``summary.json`` and ``trials.png``.
    """
    import optuna

    if trials < 1:
        raise ParamsError(f"--trials must be >= 1; got {trials}")
    raw = load_params(params_path)
    base, _ = parse_all(raw)
    _check_space(spec, raw)
    resolve_inputs(get_stage(spec.stage), base)  # missing upstream outputs: fail before trial 0
    check_tracking_server()
    name = study_name or Path(spec.path).stem or spec.stage
    out_dir = Path(out_dir or Path(".mindpipe/sweeps") / name)
    _check_out_dir(out_dir)
    seed = base.seed if seed is None else seed
    study, created = _open_study(spec, name, storage, prune, seed)
    tags = lineage_tags(seed=base.seed, params=raw, data_dir=base.data_dir, stage=spec.stage)
    tags |= {"mindpipe.sweep.study": name, "mindpipe.sweep.file_hash": _file_hash(spec.path)}
    if created:
        _enqueue_defaults(study, spec, raw)
        parent = start_parent_run(f"sweep:{name}", tags)
        study.set_user_attr(PARENT_ATTR, parent)
    else:
        parent = _wait_for_parent(study)
    objective = TrialRunner(spec, raw, parent, tags)
    start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=trials, catch=(TrialFailed,))
    result = _summarise(study, name, trials, time.perf_counter() - start, out_dir)
    _write_outputs(study, spec, raw, result)
    update_run(
        parent,
        _summary_metrics(result),
        [result.out_dir / f for f in ("summary.json", "trials.csv", "trials.png")],
    )
    return result


OUTPUTS = ("best_params.yaml", "best_params.txt", "trials.csv", "summary.json", "trials.png")


def _check_out_dir(out_dir: Path) -> None:
    """The results replace ``out_dir`` whole: refuse a folder that holds anything else."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ParamsError(f"--out '{out_dir}' is a file; give a folder for the sweep's results")
    found = out_dir.iterdir() if out_dir.exists() else ()
    others = sorted(p.name for p in found if p.name not in OUTPUTS)
    if others:
        raise ParamsError(
            f"--out '{out_dir}' holds other files ({', '.join(others[:3])}): a sweep replaces "
            "its results folder whole, so give a new or empty folder"
        )


class TrialFailed(MindpipeError):
    """One trial's params made the stage fail (e.g. a diverging loss): the study goes on."""


class TrialRunner:
    """Optuna's objective: one stage run with the trial's params, logged as a nested run.

    A trial whose stage raises a MindpipeError is recorded as failed (Optuna state FAIL, an
    MLflow run with status FAILED and the message) and the study goes on; a tracking failure
    stops the sweep, since every later result would be lost too.
    """

    def __init__(self, spec: SweepSpec, raw: dict, parent: str, tags: dict[str, str]):
        self.spec, self.raw, self.parent, self.tags = spec, raw, parent, tags

    def __call__(self, trial) -> float:
        import optuna

        values = {dim.key: suggest(trial, dim) for dim in self.spec.space}
        params = self.spec.apply(self.raw, values)
        pruning = PruningListener(trial, self.spec)
        scratch = Path(tempfile.mkdtemp(prefix=f"mindpipe-trial-{trial.number}-"))
        started = time.perf_counter()
        try:
            with listening(pruning):
                metrics = run_stage(self.spec.stage, params, out=scratch / "out", track=False)
        except optuna.TrialPruned:
            self._log(trial, params, {}, pruning.history, "PRUNED")
            logger.info("trial %d pruned after %d checks", trial.number, len(pruning.history))
            raise
        except TrackingError:
            raise
        except MindpipeError as exc:
            self._log(trial, params, {}, pruning.history, "FAIL", error=str(exc))
            logger.warning("trial %d failed: %s", trial.number, exc)
            raise TrialFailed(str(exc)) from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        value = self.spec.objective.value(metrics)
        metrics = {**metrics, "objective": value, "seconds": time.perf_counter() - started}
        self._log(trial, params, metrics, pruning.history, "COMPLETE")
        logger.info("trial %d: objective %.4f %s", trial.number, value, values)
        return value

    def _log(
        self, trial, params: dict, metrics: dict, history: list, state: str, error: str = ""
    ) -> None:
        section = {"base": params["base"], self.spec.stage: params[self.spec.stage]}
        status = {"PRUNED": "KILLED", "FAIL": "FAILED"}.get(state, "FINISHED")
        log_run(
            name=f"trial-{trial.number}",
            params=section,
            metrics=metrics,
            tags={
                **self.tags,
                "mindpipe.params_hash": hash_obj(section),
                "mindpipe.sweep.trial": str(trial.number),
                "mindpipe.sweep.state": state,
                **({"mindpipe.sweep.error": error[:5000]} if error else {}),
            },
            steps={STEPS_METRIC: [list(point) for point in history]},
            parent_run_id=self.parent,
            status=status,
        )


class PruningListener:
    """Turns the stage's validation checks into Optuna reports, and prunes when told to.

    The value reported at check ``k`` is the objective computed on what the stage has reported
    so far: each matching metric's value as the stage would return it now (its best value yet,
    or its latest where the stage keeps its last check), aggregated as the objective
    aggregates. It ends at the trial's objective, and at any ``k`` it means the same thing in
    every trial.
    """

    def __init__(self, trial, spec: SweepSpec):
        self.trial, self.objective = trial, spec.objective
        self.now: dict[str, float] = {}  # each metric as the stage would return it now
        self.history: list[tuple[int, float]] = []

    def __call__(self, name: str, step: int, value: float, keeps_best: bool = True) -> None:
        import optuna

        if not self.objective.matches(name):
            return
        if keeps_best:
            better = max if self.objective.direction == "maximize" else min
            value = better(self.now.get(name, value), value)
        self.now[name] = value
        so_far = self.objective.value(self.now)
        check = len(self.history)
        self.history.append((check, so_far))
        self.trial.report(so_far, check)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"objective so far {so_far:.4f} at check {check}")


def suggest(trial, dim: Dimension) -> Any:
    if dim.choices:
        return trial.suggest_categorical(dim.key, list(dim.choices))
    if dim.is_int:
        step = int(dim.step or 1)
        return trial.suggest_int(dim.key, dim.low, dim.high, step=step, log=dim.log)
    return trial.suggest_float(dim.key, float(dim.low), float(dim.high), step=dim.step, log=dim.log)


def _check_space(spec: SweepSpec, raw: dict) -> None:
    """Each end of every range must make valid params: a typo fails here, not in trial 7."""
    for pick in (0, -1):
        values = {
            d.key: d.choices[pick] if d.choices else (d.low, d.high)[pick] for d in spec.space
        }
        try:
            parse_all(spec.apply(raw, values))
        except ParamsError as exc:
            raise ParamsError(f"sweep file '{spec.path}': the space makes invalid {exc}") from exc


def _open_study(spec: SweepSpec, name: str, storage: str, prune: bool, seed: int):
    """Create the study, or join it when another worker did; returns (study, created)."""
    import optuna

    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=spec.pruner.n_startup_trials,
            n_warmup_steps=spec.pruner.n_warmup_steps,
        )
        if prune
        else optuna.pruners.NopPruner()
    )
    kwargs = {"study_name": name, "storage": open_storage(storage), "pruner": pruner}
    try:
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        study = optuna.create_study(direction=spec.objective.direction, sampler=sampler, **kwargs)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        # a joining worker must not repeat the creator's draws: same seed, same suggestions
        sampler = optuna.samplers.TPESampler(seed=seed + 1 + os.getpid(), constant_liar=True)
        study = optuna.load_study(sampler=sampler, **kwargs)
        if study.direction.name.lower() != spec.objective.direction:
            raise ParamsError(
                f"study {name!r} in {_redact(storage)} {study.direction.name.lower()}s; the "
                f"sweep file says {spec.objective.direction}: use another --study name"
            ) from None
        return study, False
    except Exception as exc:
        raise MindpipeError(f"cannot open the Optuna storage {_redact(storage)!r}: {exc}") from exc


def open_storage(url: str, attempts: int = 5):
    """Optuna's RDB storage at ``url``, its tables created on first use.

    Workers started together on an empty database race to create the tables; the loser gets
    a duplicate-object error and retries once the winner's schema is there. Connection
    errors are not retried.
    """
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            if attempt + 1 < attempts:
                logger.info("another worker is creating the Optuna tables; retrying")
                time.sleep(1.0 + attempt)
                continue
            error = exc
        except Exception as exc:  # a bad URL, a refused connection: no retry
            error = exc
        raise MindpipeError(f"cannot open the Optuna storage {_redact(url)!r}: {error}") from error


def _enqueue_defaults(study, spec: SweepSpec, raw: dict) -> None:
    """Trial 0 runs params.yaml's own values, so 'beats the defaults' is measured in the study."""
    defaults = spec.defaults(raw)
    outside = [d.key for d in spec.space if not d.contains(defaults[d.key])]
    if outside:
        logger.warning("defaults not in the space (%s): not run as a trial", ", ".join(outside))
        return
    study.enqueue_trial(defaults, user_attrs={DEFAULTS_ATTR: True})


def _wait_for_parent(study, timeout: float = 60.0) -> str:
    """The creator stores its parent run id right after creating the study; wait for it."""
    deadline = time.monotonic() + timeout
    while PARENT_ATTR not in study.user_attrs:
        if time.monotonic() > deadline:
            raise MindpipeError(
                f"study {study.study_name!r} has no MLflow parent run after {timeout:.0f} s: "
                "its creator failed before starting one; delete the study and start again"
            )
        time.sleep(0.5)
    return study.user_attrs[PARENT_ATTR]


def _summarise(study, name: str, trials: int, seconds: float, out_dir: Path) -> SweepResult:
    import optuna

    done = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in done:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise MindpipeError(f"study {name!r} has no completed trial: {states}")
    defaults = [t.value for t in complete if t.user_attrs.get(DEFAULTS_ATTR)]
    return SweepResult(
        study=name,
        states=states,
        best_value=float(study.best_value),
        best_params=dict(study.best_params),
        defaults_value=defaults[0] if defaults else None,
        worker_trials=trials,
        worker_seconds=seconds,
        out_dir=out_dir,
    )


def _write_outputs(study, spec: SweepSpec, raw: dict, result: SweepResult) -> None:
    best = spec.apply(raw, result.best_params)
    frame = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params"))
    with atomic_dir(result.out_dir) as tmp:
        (tmp / "best_params.yaml").write_text(
            f"# study {result.study}: best {spec.objective.metric} ({spec.objective.aggregate}) "
            f"= {result.best_value:.4f}\n" + yaml.safe_dump(best, sort_keys=False)
        )
        (tmp / "best_params.txt").write_text(
            " ".join(f"-S '{k}={v}'" for k, v in result.best_params.items()) + "\n"
        )
        frame.to_csv(tmp / "trials.csv", index=False)
        write_json(tmp / "summary.json", {**dataclasses.asdict(result), "out_dir": None})
        plot_trials(study, spec, tmp / "trials.png")


def plot_trials(study, spec: SweepSpec, path: Path) -> None:
    """Objective so far against validation check, one line per trial; pruned ones dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, finals) = plt.subplots(1, 2, figsize=(11, 4))
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values.items())
        if not steps:
            continue
        pruned = t.state.name == "PRUNED"
        curves.plot(*zip(*steps, strict=True), ls="--" if pruned else "-", lw=0.8, alpha=0.7)
        if pruned:  # Optuna gives a pruned trial its last reported value: show it apart
            finals.scatter(t.number, steps[-1][1], marker="x", color="grey", s=18)
        elif t.value is not None:
            colour = "tab:red" if t.user_attrs.get(DEFAULTS_ATTR) else "tab:blue"
            finals.scatter(t.number, t.value, color=colour, s=18)
    curves.set(
        xlabel="validation check", ylabel="objective so far", title="trials (dashed: pruned)"
    )
    finals.set(
        xlabel="trial",
        ylabel=spec.objective.metric,
        title="objective per trial (red: params.yaml, x: pruned)",
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _summary_metrics(result: SweepResult) -> dict[str, float]:
    metrics = {
        "best_value": result.best_value,
        "trials_per_minute": result.trials_per_minute,
        **{f"trials_{state.lower()}": n for state, n in result.states.items()},
    }
    if result.defaults_value is not None:
        metrics["defaults_value"] = result.defaults_value
    return metrics


def _file_hash(path: str) -> str:
    data = Path(path).read_bytes() if path and Path(path).is_file() else b""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _redact(url: str) -> str:
    """A storage URL without its password, for logs and MLflow params."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':')[0]}:***@{host}"
