"""Time the foundation DAG on a twin profile and print its calibration figures.

    .venv/bin/python benchmarks/foundation.py --profile default

Generates the twin into a temporary project, runs every registered stage once through the
runner (MLflow to a temporary sqlite file), then runs `dvc repro` twice: the second call must
find nothing to do. Prints seconds per step and the evaluate metrics (oracle, ridge, ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=["tiny", "default"], default="default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from mindpipe.runner import run_stage
    from mindpipe.stages import STAGES
    from mindpipe.twin import generate

    project = Path(tempfile.mkdtemp(prefix="mindpipe-bench-"))
    os.environ.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{project}/mlruns.db",
        MINDPIPE_PROGRESS="0",
        DVC_NO_ANALYTICS="1",
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(profile=args.profile, seed=args.seed)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    os.chdir(project)

    timings: dict[str, float] = {}
    start = time.perf_counter()
    generate(project / "data", profile=args.profile, seed=args.seed)
    timings["twin generate"] = time.perf_counter() - start
    for stage in STAGES:
        start = time.perf_counter()
        run_stage(stage.name)
        timings[f"stage {stage.name}"] = time.perf_counter() - start

    dvc = [sys.executable, "-m", "dvc"]
    for step in (["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "add", "-q", "data"]):
        subprocess.run(step, check=True)
    for label in ("dvc repro (first)", "dvc repro (second, nothing to do)"):
        start = time.perf_counter()
        out = subprocess.run([*dvc, "repro"], check=True, capture_output=True, text=True)
        timings[label] = time.perf_counter() - start
    assert "Data and pipelines are up to date" in out.stdout, out.stdout

    metrics = json.loads((project / "artifacts/evaluate/metrics.json").read_text())
    print(f"profile={args.profile} seed={args.seed} project={project}")
    for label, seconds in timings.items():
        print(f"{label:<40} {seconds:8.1f} s")
    for key in sorted(k for k in metrics if k.count(".") == 1 or "oracle_ratio" in k):
        print(f"{key:<40} {metrics[key]:8.3f}")
    shutil.rmtree(project)


if __name__ == "__main__":
    main()
