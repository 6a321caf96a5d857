"""One KFP lightweight Python component per registry stage, generated from the registry.

Each component's body is one call, ``mindpipe.kfp.task.run_task``, i.e. the same stage function
through the same runner and CLI path as a local run; its base image is the project image
(deploy/cluster.yaml), which has mindpipe and kfp installed, so nothing is pip-installed at
run time. Being a Python (not container) component, the same component also runs under
``kfp.local.SubprocessRunner``. Inputs:

- ``data_dir`` (string): where the raw dataset is mounted (PVC path) for ``DATA`` inputs;
- one artifact per upstream stage it reads (the upstream component's ``out_dir``);
- ``params_yaml`` (string): the full params.yaml text, so sweeps and profiles are run inputs;
- ``data_hash`` (string): the DVC md5 of the dataset. Unused by the stage, it is part of every
  task's cache key, so KFP never reuses a result computed on other data;
- ``mlflow_tracking_uri`` (string, may be empty): exported as MLFLOW_TRACKING_URI;
- ``parent_run_id`` (string): the pipeline run's parent MLflow run, made by the first task.
"""

import linecache
from collections.abc import Callable

from kfp import dsl
from kfp.dsl import Artifact, Input, Output
from kfp.dsl.python_component import PythonComponent

from mindpipe.kfp.config import ClusterConfig
from mindpipe.stages import DATA, Stage

OUTPUT = "out_dir"
COMMON_INPUTS = ("data_dir", "params_yaml", "data_hash", "mlflow_tracking_uri", "parent_run_id")
PARENT_COMPONENT = "mlflow_parent_run"


def artifact_inputs(stage: Stage) -> list[str]:
    """Stage inputs that are upstream outputs (artifacts), in registry order."""
    return [kwarg for kwarg, src in stage.inputs.items() if src != DATA]


def component_source(stage: Stage) -> str:
    """Python source of ``stage``'s component function (KFP ships a function's source)."""
    arts = artifact_inputs(stage)
    args = [
        "data_dir: str",
        "params_yaml: str",
        "data_hash: str",
        "parent_run_id: str",
        *(f"{kwarg}: Input[Artifact]" for kwarg in arts),
        f"{OUTPUT}: Output[Artifact]",
        'mlflow_tracking_uri: str = ""',
    ]
    paths = ", ".join(
        f'"{kwarg}": ' + ("data_dir" if src == DATA else f"{kwarg}.path")
        for kwarg, src in stage.inputs.items()
    )
    sig = "".join(f"    {arg},\n" for arg in args)
    return (
        f"def {stage.name}(\n{sig}):\n"
        f"    {stage.description!r}\n"
        "    from mindpipe.kfp.task import run_task\n\n"
        "    run_task(\n"
        f'        "{stage.name}",\n'
        "        params_yaml=params_yaml,\n"
        f"        inputs={{{paths}}},\n"
        f"        out={OUTPUT}.path,\n"
        "        mlflow_tracking_uri=mlflow_tracking_uri,\n"
        "        parent_run_id=parent_run_id,\n"
        "    )\n"
    )


def _function(name: str, source: str) -> Callable[..., None]:
    """Define ``source``'s function; register its text so ``inspect.getsource`` (KFP) finds it."""
    filename = f"<mindpipe-kfp-component {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"Artifact": Artifact, "Input": Input, "Output": Output}
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)
    return namespace[name]


def stage_component(stage: Stage, cluster: ClusterConfig) -> PythonComponent:
    """The KFP component of ``stage``, on the CPU or CUDA project image."""
    func = _function(stage.name, component_source(stage))
    image = cluster.image_for(stage.resources.gpu)
    return dsl.component(base_image=image, install_kfp_package=False)(func)


def mlflow_parent_run(
    data_hash: str, mlflow_tracking_uri: str = "", data_dir: str = "", data_remote: str = ""
) -> str:
    """Pull the data from ``data_remote`` when given, then create the parent MLflow run."""
    from mindpipe.kfp.task import parent_run

    return parent_run(data_hash, mlflow_tracking_uri, data_dir, data_remote)


def parent_run_component(cluster: ClusterConfig) -> PythonComponent:
    """The first task of every pipeline: the data in place (pulled from a DVC remote when
    ``data_remote`` is set) and one parent MLflow run that all stage runs nest under."""
    return dsl.component(base_image=cluster.cpu_image, install_kfp_package=False)(mlflow_parent_run)
