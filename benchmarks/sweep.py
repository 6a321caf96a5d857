"""Optuna sweep of one stage on the tiny twin: what pruning buys, what the sweep finds.

    .venv/bin/python benchmarks/sweep.py [--trials 20] [--file sweeps/litemind.yaml]
        [--project DIR] [--stage-sizes] [--set KEY=VALUE ...]

Runs the same study twice in one process, same sampler seed and sweep file: with the median
pruner, then with every trial run to the end. Prints trials per minute of each (and their
ratio: the pruning speed-up), how many trials were pruned, and the best validation objective
against params.yaml's own values (trial 0 of each study). Without ``--project``, a tiny project
is built in a temporary folder first (the twin, then the stages the swept stage reads), with
the tiny model sizes the tests use; ``--stage-sizes`` keeps params.yaml's sizes and budget for
the swept stage itself (e.g. the federation's 20 rounds: the tests' 3 leave nothing to prune),
and ``--set federated.strategies=[pmcmfl]`` sets any params key in it (a YAML value).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from mindpipe.sweep.spec import SweepSpec

ROOT = Path(__file__).resolve().parents[1]


def upstream(stage: str) -> list[str]:
    """The stages ``stage`` reads or waits for, directly or not, in an order that runs."""
    from mindpipe.stages import DATA, get_stage

    order: list[str] = []

    def visit(name: str) -> None:
        node = get_stage(name)
        for dep in (*node.inputs.values(), *node.after):
            if dep != DATA and dep not in order:
                visit(dep)
        if name not in order:
            order.append(name)

    visit(stage)
    return order[:-1]


def build_tiny_project(folder: Path, spec: SweepSpec, stage_sizes: bool, sets: list[str]) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from fakes import TINY_MODELS, write_params  # the tests' tiny model sizes, not a copy
    from mindpipe.params import load_params
    from mindpipe.runner import run_stage
    from mindpipe.twin import generate

    stage = spec.stage
    own = {stage: load_params(ROOT / "params.yaml")[stage]} if stage_sizes else {}
    if stage_sizes and stage not in TINY_MODELS:
        raise SystemExit(f"--stage-sizes: the tests do not shrink {stage!r}; nothing to keep")
    path = write_params(folder, generate(folder / "data", profile="tiny", seed=0), **own)
    values = dict(item.split("=", 1) for item in sets)
    params = spec.apply(load_params(path), {k: yaml.safe_load(v) for k, v in values.items()})
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    os.chdir(folder)
    for name in upstream(stage):
        run_stage(name, folder / "params.yaml")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--file", default=str(ROOT / "sweeps" / "litemind.yaml"))
    parser.add_argument("--project", help="a project whose inputs of the swept stage exist")
    parser.add_argument(
        "--stage-sizes", action="store_true", help="params.yaml's sizes for the swept stage"
    )
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE in params")
    args = parser.parse_args()
    os.environ.setdefault("MINDPIPE_PROGRESS", "0")
    work = Path(tempfile.mkdtemp(prefix="mindpipe-sweep-bench-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work}/mlruns.db")
    from mindpipe.sweep import load_sweep, run_sweep

    spec = load_sweep(args.file)
    if args.project:
        project = Path(args.project).resolve()
    else:
        project = build_tiny_project(work / "p", spec, args.stage_sizes, args.set)
    os.chdir(project)
    results = {}
    for label, prune in (("pruned", True), ("unpruned", False)):
        results[label] = run_sweep(
            spec,
            trials=args.trials,
            params_path=project / "params.yaml",
            storage=f"sqlite:///{work}/optuna.db",
            study_name=label,
            prune=prune,
            out_dir=work / label,
        )
    print(f"\n{spec.stage} sweep, {args.trials} trials each, objective {spec.objective.metric}")
    print("| study | pruned trials | minutes | trials/min | best (val) | params.yaml (val) |")
    print("|---|---|---|---|---|---|")
    for label, r in results.items():
        print(
            f"| {label} | {r.states.get('PRUNED', 0)} | {r.worker_seconds / 60:.2f} | "
            f"{r.trials_per_minute:.1f} | {r.best_value:.4f} | {r.defaults_value:.4f} |"
        )
    speedup = results["pruned"].trials_per_minute / results["unpruned"].trials_per_minute
    print(f"pruning speed-up (trials/min, same run): x{speedup:.2f}")
    print(f"best params (pruned study): {results['pruned'].best_params}")
    print(f"outputs: {work}")


if __name__ == "__main__":
    main()
