"""The ``mindpipe`` command. ``main(argv)`` is a plain function so tests can call it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from mindpipe.exceptions import MindpipeError
from mindpipe.params import DATASETS, BaseParams, load_params, parse_section
from mindpipe.stages import STAGES

logger = logging.getLogger("mindpipe")

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mindpipe",
        description="Decode vision from fMRI: a DVC/MLflow/Kubeflow pipeline of declarative "
        "stages. `mindpipe run` runs the whole DAG on the synthetic twin.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the main job: make sure data/ exists, then `dvc repro`")
    run.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")

    stage = sub.add_parser(
        "stage",
        help="run one pipeline stage (what dvc.yaml calls)",
        description="Stages:\n" + "\n".join(f"  {s.name:<14} {s.description}" for s in STAGES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stage.add_argument("name", choices=[s.name for s in STAGES], metavar="NAME")
    stage.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    stage.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="KWARG=PATH",
        help="read this input from PATH instead of data/ or artifacts/ (repeatable; used by KFP)",
    )
    stage.add_argument("--out", help="output folder (default: artifacts/NAME)")

    sub.add_parser("stages", help="list the registered stages and what each one reads")

    data = sub.add_parser("data", help="datasets: check, import (real data) or pull one")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = data_sub.add_parser(
        "check",
        help="validate a dataset folder and print what is missing or wrong; writes nothing. "
        "twin: the internal layout (NIfTI, events, stimuli); nsd, god, cc2017, bids: the "
        "release as downloaded (files, keys, shapes, index tables; Great Expectations)",
    )
    check.add_argument(
        "path", nargs="?", help="folder (default: base.data_dir, or base.source.dir)"
    )
    check.add_argument("--params", default="params.yaml", help="params file (validate_raw section)")
    check.add_argument("--dataset", choices=DATASETS, help="default: base.dataset")
    imp = data_sub.add_parser(
        "import",
        help="convert a real dataset's release (base.source.dir) into base.data_dir "
        "(the internal layout the stages read), after checking it",
    )
    imp.add_argument("--params", default="params.yaml", help="base.dataset and base.source")
    imp.add_argument("--source", help="the release folder (default: base.source.dir)")
    imp.add_argument("--out", help="default: base.data_dir")
    imp.add_argument("--force", action="store_true", help="replace an existing output folder")
    pull = data_sub.add_parser(
        "pull",
        help="fetch one dataset version (data.dvc's md5) from a DVC remote, no git repo needed",
    )
    pull.add_argument("--remote", required=True, help="DVC remote URL (s3://..., a path, ...)")
    pull.add_argument("--md5", help="dataset version, '<hash>.dir' (default: from data.dvc)")
    pull.add_argument("--out", default="data", help="folder to fill (default: %(default)s)")

    compile_ = sub.add_parser("compile", help="regenerate dvc.yaml from the stage registry")
    compile_.add_argument("--params", default="params.yaml")
    compile_.add_argument(
        "--check", action="store_true", help="exit 1 if dvc.yaml is out of date; write nothing"
    )

    twin = sub.add_parser("twin", help="the synthetic fMRI twin dataset")
    twin_sub = twin.add_subparsers(dest="twin_command", required=True, metavar="ACTION")
    gen = twin_sub.add_parser("generate", help="write the twin (BIDS-like) to a folder")
    gen.add_argument("--profile", choices=["tiny", "default"], help="default: base.profile")
    gen.add_argument("--seed", type=int, help="default: base.seed")
    gen.add_argument("--out", help="default: base.data_dir")
    gen.add_argument("--params", default="params.yaml")

    sweep = sub.add_parser(
        "sweep",
        help="an Optuna study over a training stage's params (space in sweeps/STAGE.yaml)",
        description="Each trial runs the stage with the trial's params and is a nested MLflow "
        "run under the study's parent run; trials that trail the median at the same validation "
        "check are pruned. Several workers may run the same --study against one --storage.",
    )
    sweep.add_argument("stage", choices=[s.name for s in STAGES], metavar="STAGE")
    sweep.add_argument("--trials", type=int, default=20, help="trials this worker runs")
    sweep.add_argument(
        "--storage",
        help="Optuna RDB URL; postgresql://... for many workers (default: sqlite:///optuna.db)",
    )
    sweep.add_argument("--file", help="sweep file (default: sweeps/STAGE.yaml)")
    sweep.add_argument("--study", help="study name (default: the sweep file's name)")
    sweep.add_argument("--params", default="params.yaml", help="the params the trials start from")
    sweep.add_argument("--no-prune", action="store_true", help="run every trial to the end")
    sweep.add_argument("--seed", type=int, help="sampler seed (default: base.seed)")
    sweep.add_argument("--out", help="results folder (default: .mindpipe/sweeps/STUDY)")

    registry = sub.add_parser(
        "registry", help="MLflow model registry: promote the challenger, load a version back"
    )
    reg_sub = registry.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    promote = reg_sub.add_parser(
        "promote",
        help="make the challenger the champion if it beats it on every gate metric, both "
        "scored now on the same validation data; refuse (exit 1) otherwise",
    )
    load = reg_sub.add_parser(
        "load", help="download a version, load it, score it and check it reproduces its metrics"
    )
    for action in (promote, load):
        action.add_argument("stage", metavar="STAGE", help="a stage that registers a model")
        action.add_argument("--params", default="params.yaml", help="base.data_dir: the data")
    promote.add_argument(
        "--gate", action="append", default=[], help="metric to beat (repeatable; default: all)"
    )
    promote.add_argument("--min-delta", type=float, default=0.0, help="margin each gate needs")
    load.add_argument("--alias", default="champion", help="default: %(default)s")

    kfp = sub.add_parser("kfp", help="Kubeflow Pipelines: compile components/pipelines, submit")
    kfp_sub = kfp.add_subparsers(dest="kfp_command", required=True, metavar="ACTION")
    kcompile = kfp_sub.add_parser("compile", help="regenerate components/ and pipelines/")
    kcompile.add_argument("--cluster", default="deploy/cluster.yaml", help="images, GPU pool")
    kcompile.add_argument("--check", action="store_true", help="exit 1 if stale; write nothing")
    klocal = kfp_sub.add_parser("run-local", help="run a pipeline here with kfp.local")
    klocal.add_argument("--pipeline", default="decoding", help="a name in PIPELINES")
    klocal.add_argument("--params", default="params.yaml", help="its base.data_dir is the data")
    klocal.add_argument("--cluster", default="deploy/cluster.yaml", help="images, GPU pool")
    klocal.add_argument("--root", default=".mindpipe/kfp_local", help="outputs: ROOT/<time>/")
    klocal.add_argument("--mlflow-uri", default="", help="default: MLFLOW_TRACKING_URI")
    ksubmit = kfp_sub.add_parser("submit", help="upload a compiled pipeline and start a run")
    ksubmit.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8080")
    ksubmit.add_argument("--pipeline", default="decoding", help="pipelines/NAME.yaml")
    ksubmit.add_argument("--params", default="params.yaml", help="sent as the params_yaml input")
    ksubmit.add_argument("--data-dir", default="/mnt/data", help="dataset path on the PVC")
    ksubmit.add_argument(
        "--data-remote",
        default="",
        help="DVC remote URL: the first task pulls data.dvc's version into --data-dir if absent",
    )
    ksubmit.add_argument("--mlflow-uri", default="", help="MLflow tracking URI for the run")
    ksubmit.add_argument("--timeout", type=float, default=10.0, help="connect timeout (s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        return COMMANDS[args.command](args)
    except MindpipeError as exc:
        print(f"mindpipe: error: {exc}", file=sys.stderr)
        return 1


def _raw_params(params_path: str) -> dict:
    path = Path(params_path)
    return load_params(path) if path.exists() else {}


def _base(params_path: str) -> BaseParams:
    return parse_section(BaseParams, _raw_params(params_path).get("base"), "base")


def cmd_stage(args: argparse.Namespace) -> int:
    from mindpipe.runner import run_stage

    given = {}
    for item in args.input:
        kwarg, sep, path = item.partition("=")
        if not sep or not kwarg or not path:
            raise MindpipeError(f"--input {item!r}: expected KWARG=PATH")
        given[kwarg] = Path(path)
    out = Path(args.out) if args.out else None
    metrics = run_stage(args.name, args.params, input_dirs=given, out=out)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """``data check``: a real release's inspection (``base.dataset`` nsd, god, cc2017, bids),
    or the ``validate_raw`` gate on a folder in the internal layout (the twin, or a converted
    dataset), its report printed, not kept. ``data import``: see :func:`_import_data`.
    ``data pull``: one dataset version from a DVC remote."""
    import tempfile

    if args.data_command == "pull":
        from mindpipe.kfp.data import pull_dataset
        from mindpipe.kfp.submit import dvc_data_hash

        md5 = args.md5 or dvc_data_hash()
        fetched = pull_dataset(args.remote, md5, Path(args.out))
        print(f"{args.out}: {'pulled' if fetched else 'already holds'} {md5}")
        return 0

    if args.data_command == "import":
        return _import_data(args)
    from mindpipe.io.trials import recorded_dataset

    base = _base(args.params)
    kind = args.dataset or base.dataset
    converted = args.path is not None and recorded_dataset(args.path) == kind
    if kind != "twin" and not converted:  # the release, as downloaded
        from mindpipe.io.adapters import check_source

        report = check_source(kind, args.path or base.source.dir, base.source)
        print(report.markdown())
        if not report.ok:
            raise MindpipeError(f"the {kind} release is not ready to import: see the report above")
        return 0

    from mindpipe.validate.raw import ValidateRawParams, validate_raw

    raw = _raw_params(args.params).get("validate_raw")
    params = parse_section(ValidateRawParams, raw, "validate_raw")
    data_dir = Path(args.path or base.data_dir)
    gate_base = dataclasses.replace(base, dataset=kind)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            validate_raw(data_dir=data_dir, out_dir=Path(tmp), params=params, base=gate_base)
            failure = None
        except MindpipeError as exc:
            failure = exc
        report = Path(tmp) / "report.md"
        if report.exists():
            print(report.read_text())
    if failure is not None:
        raise failure
    return 0


def _import_data(args: argparse.Namespace) -> int:
    """``data import``: check the release, convert it into ``base.data_dir`` atomically."""
    base = _base(args.params)
    if base.dataset == "twin":
        raise MindpipeError(
            "base.dataset is 'twin': set it to the real dataset to import (nsd, god, cc2017 or "
            "bids) and base.source.dir to its release"
        )
    out = Path(args.out or base.data_dir)
    if out.exists() and not args.force:
        raise MindpipeError(f"'{out}' exists; move it away or pass --force to replace it")
    from mindpipe.io.adapters import import_dataset

    source = args.source or base.source.dir
    metrics = import_dataset(base.dataset, source, out, base.source, base.seed)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"wrote {base.dataset} from '{source}' to '{out}'; next: `dvc add {out}`, `mindpipe run`")
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    for s in STAGES:
        reads = ", ".join(f"{k}<-{v}" for k, v in s.inputs.items())
        print(f"{s.name:<14} {s.description}\n{'':<14} reads: {reads}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from mindpipe.dvcyaml import render

    text = render(_base(args.params))
    target = Path("dvc.yaml")
    if args.check:
        if not target.exists() or target.read_text() != text:
            print("dvc.yaml is out of date with src/mindpipe/stages.py; run `mindpipe compile`")
            return 1
        print("dvc.yaml is up to date")
        return 0
    target.write_text(text)
    print(f"wrote {target}")
    return 0


def cmd_twin(args: argparse.Namespace) -> int:
    from mindpipe.twin import generate

    base = _base(args.params)
    out = Path(args.out or base.data_dir)
    generate(
        out,
        profile=args.profile or base.profile,
        seed=base.seed if args.seed is None else args.seed,
    )
    print(f"wrote the twin to {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    base = _base(args.params)
    ensure_data(base)
    if subprocess.run([sys.executable, "-m", "dvc", "repro"], env=_env_with_own_bin()).returncode:
        raise MindpipeError("`dvc repro` failed; the failing stage's error is printed above")
    report = Path(base.artifacts_dir) / "evaluate" / "report.md"
    if report.exists():
        print(report.read_text())
    print(
        f"Outputs: {base.artifacts_dir}/<stage>/. Metrics: `dvc metrics show`. "
        "Runs: `mlflow ui --backend-store-uri sqlite:///mlruns.db`."
    )
    return 0


def _env_with_own_bin() -> dict[str, str]:
    """dvc.yaml calls `mindpipe stage`: use this environment's mindpipe, even unactivated."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def ensure_data(base: BaseParams) -> None:
    """Make data/ match params: pull it from a DVC remote, (re)generate the twin, or import.

    A twin whose recorded profile/seed differ from base.profile/base.seed is regenerated, so
    `dvc exp run -S base.profile=tiny` sees tiny data. Real data (no twin description) is
    never touched; a missing data/ with a real base.dataset is imported from base.source.dir.
    """
    data = Path(base.data_dir)
    if data.exists() and base.dataset != "twin":
        from mindpipe.io.trials import check_dataset_kind

        check_dataset_kind(data, base.dataset)
        return
    if data.exists():
        recorded = _twin_description(data)
        if recorded is None or recorded == (base.profile, base.seed):
            return
        logger.info(
            "data/ holds twin %s; params ask for %s: regenerating",
            recorded,
            (base.profile, base.seed),
        )
    elif Path(f"{data}.dvc").exists() and _has_dvc_remote():
        if subprocess.run([sys.executable, "-m", "dvc", "pull", f"{data}.dvc"]).returncode:
            raise MindpipeError(f"`dvc pull {data}.dvc` failed; check the DVC remote")
        return
    if base.dataset != "twin":
        from mindpipe.io.adapters import import_dataset

        import_dataset(base.dataset, base.source.dir, data, base.source, base.seed)
        return
    from mindpipe.twin import generate

    generate(data, profile=base.profile, seed=base.seed)


def _twin_description(data: Path) -> tuple[str, int] | None:
    desc = data / "dataset_description.json"
    if not desc.exists():
        return None
    info = json.loads(desc.read_text())
    if "profile" not in info:
        return None
    return info["profile"], int(info["seed"])


def _has_dvc_remote() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "list"], capture_output=True, text=True
    )
    return out.returncode == 0 and bool(out.stdout.strip())


def cmd_kfp(args: argparse.Namespace) -> int:
    from mindpipe.kfp.config import load_cluster_config
    from mindpipe.kfp.pipelines import write_all
    from mindpipe.kfp.submit import dvc_data_hash, submit

    if args.kfp_command == "run-local":
        from mindpipe.kfp.local import run_local

        cluster = load_cluster_config(args.cluster)
        outs = run_local(args.pipeline, args.params, cluster, Path(args.root), args.mlflow_uri)
        for stage, path in outs.items():
            print(f"{stage:<14} {path}")
        return 0
    if args.kfp_command == "compile":
        stale = write_all(Path("."), load_cluster_config(args.cluster), check=args.check)
        if args.check and stale:
            print(f"out of date: {', '.join(stale)}; run `mindpipe kfp compile`")
            return 1
        print("components/ and pipelines/ are up to date" if args.check else f"wrote {stale}")
        return 0
    run_id = submit(
        args.host,
        Path("pipelines") / f"{args.pipeline}.yaml",
        arguments={
            "data_dir": args.data_dir,
            "params_yaml": Path(args.params).read_text(),
            "data_hash": dvc_data_hash(),
            "data_remote": args.data_remote,
            "mlflow_tracking_uri": args.mlflow_uri,
        },
        timeout=args.timeout,
    )
    print(f"submitted run {run_id} to {args.host}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from mindpipe.sweep import load_sweep, run_sweep
    from mindpipe.sweep.study import DEFAULT_STORAGE

    spec = load_sweep(args.file or Path("sweeps") / f"{args.stage}.yaml")
    if not args.verbose:  # one line per trial, not every stage's own log
        logging.getLogger("mindpipe").setLevel(logging.WARNING)
        logging.getLogger("mindpipe.sweep").setLevel(logging.INFO)
    if spec.stage != args.stage:
        raise MindpipeError(f"sweep file '{spec.path}' sweeps {spec.stage!r}, not {args.stage!r}")
    result = run_sweep(
        spec,
        trials=args.trials,
        params_path=args.params,
        storage=args.storage or DEFAULT_STORAGE,
        study_name=args.study,
        prune=not args.no_prune,
        seed=args.seed,
        out_dir=args.out,
    )
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.states.items()))
    defaults = "n/a" if result.defaults_value is None else f"{result.defaults_value:.4f}"
    print(
        f"study {result.study}: {states}; this worker {result.worker_trials} trials, "
        f"{result.trials_per_minute:.1f}/min\n"
        f"best {spec.objective.metric} ({spec.objective.aggregate}, validation): "
        f"{result.best_value:.4f} (params.yaml's values: {defaults})\n"
        f"best params: {result.best_params}\n"
        f"apply: dvc exp run $(cat {result.out_dir}/best_params.txt)\n"
        f"   or: cp {result.out_dir}/best_params.yaml params.yaml && dvc repro"
    )
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from mindpipe.stages import get_stage, parse_all
    from mindpipe.tracking import dataset_hash
    from mindpipe.tracking.registry import promote, reproduces, score_version
    from mindpipe.tracking.runs import check_tracking_server, tracking_errors

    stage = get_stage(args.stage)
    if stage.scorer is None:
        scored = [s.name for s in STAGES if s.scorer]
        raise MindpipeError(f"stage {stage.name!r} registers no scored model; these do: {scored}")
    base, sections = parse_all(load_params(args.params))
    data_dir = Path(base.data_dir)
    check_tracking_server()
    with tracking_errors(f"{args.registry_command} mindpipe-{stage.name}"):
        if args.registry_command == "promote":
            done = promote(
                stage,
                sections[stage.name],
                base,
                gates=tuple(args.gate),
                min_delta=args.min_delta,
                data_hash=dataset_hash(data_dir),
            )
            old = f"v{done.champion.version}" if done.champion else "none"
            for gate in done.gates:
                before = f"{done.champion.card.metrics[gate]:.4f}" if done.champion else "-"
                print(f"{gate}: {done.challenger.card.metrics[gate]:.4f} (champion: {before})")
            print(f"mindpipe-{stage.name}: champion is now v{done.challenger.version} (was {old})")
            return 0
        scored = score_version(stage, args.alias, sections[stage.name], base)
        for metric, (logged, now) in reproduces(scored).items():
            print(f"{metric}: logged {logged:.6f}, now {now:.6f}")
        print(f"mindpipe-{stage.name}@{args.alias} (v{scored.version}) reproduces its metrics")
    return 0


COMMANDS = {
    "data": cmd_data,
    "kfp": cmd_kfp,
    "registry": cmd_registry,
    "run": cmd_run,
    "stage": cmd_stage,
    "stages": cmd_stages,
    "sweep": cmd_sweep,
    "compile": cmd_compile,
    "twin": cmd_twin,
}

if __name__ == "__main__":
    sys.exit(main())
