"""Save and rebuild models whose ``config`` is a dataclass (safetensors + ``config.json``), and
check local folders of pretrained weights before loading them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from mindpipe.exceptions import MissingWeightsError
from mindpipe.utils import write_json

M = TypeVar("M", bound=torch.nn.Module)


def save_checkpoint(folder: str | Path, model: torch.nn.Module, **extra: Any) -> None:
    """Write the weights (on CPU) and ``extra`` + the config's fields; the folder is created."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    write_json(folder / "config.json", {**extra, **dataclasses.asdict(model.config)})


def load_checkpoint(folder: str | Path, model_cls: type[M], config_cls: type, what: str) -> M:
    """Rebuild a ``model_cls(config_cls(...))`` written by :func:`save_checkpoint`.

    JSON turns the config's tuples into lists; they are turned back. A missing file raises
    MissingWeightsError naming the folder and the file (``what`` names the model in it).
    """
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise MissingWeightsError(f"{what} folder '{folder}' has no {name}")
    model = model_cls(read_config(folder / "config.json", config_cls)[0])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model


def read_config(path: Path, config_cls: type) -> tuple[Any, dict[str, Any]]:
    """The ``config_cls`` in a ``config.json`` written by :func:`save_checkpoint` (JSON's lists
    turned back into tuples), and the file's whole content (the ``extra`` fields too)."""
    raw = json.loads(Path(path).read_text())
    fields = {f.name for f in dataclasses.fields(config_cls)}
    config = config_cls(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields}
    )
    return config, raw


def require_local_weights(folder: Path, marker: str, what: str, param: str) -> None:
    """Raise MissingWeightsError naming ``folder`` and the ``param`` that set it, unless the
    folder holds ``marker`` (``model_index.json`` for a pipeline, ``config.json`` for a model)."""
    if not (folder / marker).is_file():
        raise MissingWeightsError(
            f"local {what} weights '{folder}' not found or incomplete (no {marker}); "
            f"point {param} at a diffusers folder on disk (nothing is downloaded)"
        )
