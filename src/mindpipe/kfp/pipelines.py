"""Pipelines are named subsets of registry stages; edges come from the registry.

Adding a pipeline is one entry in ``PIPELINES``. Compilation writes one component YAML per
stage to components/ and one pipeline YAML per entry (plus the sweep) to pipelines/,
byte-identically for the same registry and deploy/cluster.yaml.
"""

import tempfile
from collections.abc import Callable
from pathlib import Path

from kfp import compiler, dsl, kubernetes
from kfp.dsl.base_component import BaseComponent
from kfp.dsl.python_component import PythonComponent

from mindpipe.exceptions import MindpipeError
from mindpipe.kfp.components import (
    OUTPUT,
    PARENT_COMPONENT,
    artifact_inputs,
    parent_run_component,
    stage_component,
)
from mindpipe.kfp.config import ClusterConfig
from mindpipe.stages import STAGES, Stage, get_stage

PIPELINES: dict[str, tuple[str, ...]] = {
    "decoding": (
        "validate_raw",
        "preprocess",
        "align",
        "baseline",
        "oracle",
        "mlip",
        "features",
        "litemind",
        "mindtuner",
        "wills",
        "reconstruct",
        "reconstruct_fewshot",
        "evaluate",
    ),
    "video": (
        "validate_raw",
        "preprocess",
        "mlip",
        "features",
        "litemind",
        "reconstruct",
        "neuroclips",
    ),
    "federated": ("validate_raw", "preprocess", "mlip", "features", "federated"),
}
SWEEP_STAGE = "baseline"  # the training stage the sweep pipeline fans out over


def subset(names: tuple[str, ...]) -> list[Stage]:
    """Registry stages named in ``names``, in registry (topological) order; must be closed."""
    chosen = [s for s in STAGES if s.name in names]
    unknown = sorted(set(names) - {s.name for s in chosen})
    if unknown:
        raise MindpipeError(f"pipeline names unknown stage(s) {unknown}")
    for stage in chosen:
        missing = [up for up in stage.upstream() if up not in names]
        if missing:
            raise MindpipeError(f"stage {stage.name!r} needs {missing}, absent from the pipeline")
    return chosen


def _configure(task: dsl.PipelineTask, stage: Stage, cluster: ClusterConfig) -> None:
    """Requests from ``Stage.resources``; GPU stages go to the GPU node pool."""
    task.set_display_name(stage.name)
    task.set_cpu_request(stage.resources.cpu)
    task.set_memory_request(stage.resources.memory)
    task.set_caching_options(True)
    if stage.resources.gpu > 0:
        task.set_accelerator_type(cluster.accelerator_type)
        task.set_accelerator_limit(stage.resources.gpu)
        for key, value in cluster.node_selector:
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in cluster.tolerations:
            kubernetes.add_toleration(
                task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect
            )


class _Components:
    """Each stage's component, built once per compilation from the registry."""

    def __init__(self, cluster: ClusterConfig) -> None:
        self.cluster = cluster
        self._cache: dict[str, PythonComponent] = {}

    def __call__(self, stage: Stage) -> PythonComponent:
        if stage.name not in self._cache:
            self._cache[stage.name] = stage_component(stage, self.cluster)
        return self._cache[stage.name]


def _run_inputs(
    cluster: ClusterConfig,
    data_dir: str,
    data_hash: str,
    mlflow_tracking_uri: str,
    data_remote: str,
) -> dict[str, object]:
    """What every stage task gets besides params: the run's inputs and the parent MLflow run's
    id. The parent task (after the data pull, if any) is never cached, so each pipeline run
    gets its own parent; every stage waits for it through ``parent_run_id``."""
    task = parent_run_component(cluster)(
        data_hash=data_hash,
        mlflow_tracking_uri=mlflow_tracking_uri,
        data_dir=data_dir,
        data_remote=data_remote,
    )
    task.set_display_name("data + mlflow parent run")
    task.set_cpu_request("0.5").set_memory_request("512Mi")
    task.set_caching_options(False)
    return dict(
        data_dir=data_dir,
        data_hash=data_hash,
        mlflow_tracking_uri=mlflow_tracking_uri,
        parent_run_id=task.output,
    )


def _add_stages(
    stages: list[Stage],
    comps: _Components,
    common: dict[str, object],
    tasks: dict[str, dsl.PipelineTask],
) -> None:
    for stage in stages:
        ups = {kw: tasks[stage.inputs[kw]].outputs[OUTPUT] for kw in artifact_inputs(stage)}
        task = comps(stage)(**common, **ups)
        _configure(task, stage, comps.cluster)
        for gate in stage.after:
            task.after(tasks[gate])
        tasks[stage.name] = task


def build_pipeline(name: str, cluster: ClusterConfig) -> Callable[..., None]:
    """The ``@dsl.pipeline`` function for ``PIPELINES[name]``."""
    stages = subset(PIPELINES[name])
    comps = _Components(cluster)

    def pipeline(
        data_dir: str = "/mnt/data",
        params_yaml: str = "",
        data_hash: str = "",
        mlflow_tracking_uri: str = "",
        data_remote: str = "",
    ) -> None:
        common = _run_inputs(cluster, data_dir, data_hash, mlflow_tracking_uri, data_remote)
        _add_stages(stages, comps, {**common, "params_yaml": params_yaml}, {})

    pipeline.__name__ = name
    return dsl.pipeline(name=f"mindpipe-{name}", description=f"mindpipe {name} DAG")(pipeline)


def build_sweep(cluster: ClusterConfig) -> Callable[..., None]:
    """Upstream stages once, then ``SWEEP_STAGE`` once per params.yaml text in ``sweep``."""
    target = get_stage(SWEEP_STAGE)
    stages = subset(_closure(target))
    upstream = [s for s in stages if s.name != target.name]
    comps = _Components(cluster)

    def sweep(
        sweep_params: list = [],  # noqa: B006 - KFP reads the default from the signature
        data_dir: str = "/mnt/data",
        params_yaml: str = "",
        data_hash: str = "",
        mlflow_tracking_uri: str = "",
        data_remote: str = "",
    ) -> None:
        common = _run_inputs(cluster, data_dir, data_hash, mlflow_tracking_uri, data_remote)
        tasks: dict[str, dsl.PipelineTask] = {}
        _add_stages(upstream, comps, {**common, "params_yaml": params_yaml}, tasks)
        with dsl.ParallelFor(sweep_params, parallelism=4) as variant:
            _add_stages([target], comps, {**common, "params_yaml": variant}, tasks)

    return dsl.pipeline(name=f"mindpipe-sweep-{SWEEP_STAGE}")(sweep)


def _closure(stage: Stage) -> tuple[str, ...]:
    names = {stage.name}
    frontier = list(stage.upstream())
    while frontier:
        up = frontier.pop()
        if up not in names:
            names.add(up)
            frontier.extend(get_stage(up).upstream())
    return tuple(names)


def render_all(cluster: ClusterConfig) -> dict[str, str]:
    """Relative path -> file text for everything under components/ and pipelines/."""
    comps = _Components(cluster)
    builders: dict[str, BaseComponent | Callable[..., None]] = {
        f"components/{s.name}.yaml": comps(s) for s in STAGES
    }
    builders[f"components/{PARENT_COMPONENT}.yaml"] = parent_run_component(cluster)
    for name in PIPELINES:
        builders[f"pipelines/{name}.yaml"] = build_pipeline(name, cluster)
    builders[f"pipelines/sweep_{SWEEP_STAGE}.yaml"] = build_sweep(cluster)
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rel, func in builders.items():
            out = Path(tmp) / "spec.yaml"
            compiler.Compiler().compile(func, str(out))
            files[rel] = out.read_text()
    return files


def write_all(root: Path, cluster: ClusterConfig, check: bool = False) -> list[str]:
    """Write (or with ``check``, only compare) the generated files; return the stale ones."""
    stale = []
    for rel, text in sorted(render_all(cluster).items()):
        path = root / rel
        if not path.is_file() or path.read_text() != text:
            stale.append(rel)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return stale
