"""Optuna sweep of the litemind stage on the tiny twin: what pruning buys, what the sweep finds.

    .venv/bin/python benchmarks/sweep.py [--trials 20] [--file sweeps/litemind.yaml]
        [--project DIR]

Runs the same study twice in one process, same sampler seed and sweep file: with the median
pruner, then with every trial run to the end. Prints trials per minute of each (and their
ratio: the pruning speed-up), how many trials were pruned, and the best validation objective
against params.yaml's own values (trial 0 of each study). Without ``--project``, a tiny project
is built in a temporary folder first (the twin, then the stages litemind reads), with the tiny
model sizes the tests use.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ("validate_raw", "preprocess", "mlip", "features")


def build_tiny_project(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from fakes import write_params  # the tests' tiny model sizes, not a copy of them
    from mindpipe.runner import run_stage
    from mindpipe.twin import generate

    write_params(folder, generate(folder / "data", profile="tiny", seed=0))
    os.chdir(folder)
    for stage in UPSTREAM:
        run_stage(stage, folder / "params.yaml")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--file", default=str(ROOT / "sweeps" / "litemind.yaml"))
    parser.add_argument("--project", help="a project whose litemind inputs exist")
    args = parser.parse_args()
    os.environ.setdefault("MINDPIPE_PROGRESS", "0")
    work = Path(tempfile.mkdtemp(prefix="mindpipe-sweep-bench-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work}/mlruns.db")
    from mindpipe.sweep import load_sweep, run_sweep

    spec = load_sweep(args.file)
    project = Path(args.project).resolve() if args.project else build_tiny_project(work / "p")
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
