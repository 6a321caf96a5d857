"""Cluster settings (images, GPU node pool) read from one file, deploy/cluster.yaml."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from mindpipe.exceptions import ParamsError

DEFAULT_CLUSTER_FILE = Path("deploy/cluster.yaml")


@dataclasses.dataclass(frozen=True)
class Toleration:
    key: str
    operator: str = "Exists"
    effect: str = "NoSchedule"
    value: str | None = None


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Everything that differs between clusters, so components and pipelines never hard-code it."""

    cpu_image: str
    cuda_image: str
    accelerator_type: str
    node_selector: tuple[tuple[str, str], ...]
    tolerations: tuple[Toleration, ...]

    def image_for(self, gpu: int) -> str:
        return self.cuda_image if gpu > 0 else self.cpu_image


def load_cluster_config(path: str | Path = DEFAULT_CLUSTER_FILE) -> ClusterConfig:
    """Parse ``path``; a missing or misspelt key is a ParamsError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"cluster config '{path}' not found")
    raw: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    try:
        images, gpu = raw["images"], raw["gpu"]
        return ClusterConfig(
            cpu_image=str(images["cpu"]),
            cuda_image=str(images["cuda"]),
            accelerator_type=str(gpu["accelerator_type"]),
            node_selector=tuple(sorted((str(k), str(v)) for k, v in gpu["node_selector"].items())),
            tolerations=tuple(Toleration(**t) for t in gpu["tolerations"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ParamsError(f"cluster config '{path}': missing or malformed entry {exc}") from exc
