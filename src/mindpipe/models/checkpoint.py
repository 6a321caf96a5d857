"""Save a model whose ``config`` is a dataclass: ``model.safetensors`` + ``config.json``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mindpipe.utils import write_json


def save_checkpoint(folder: str | Path, model: torch.nn.Module, **extra: Any) -> None:
    """Write the weights (on CPU) and ``extra`` + the config's fields; the folder is created."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    write_json(folder / "config.json", {**extra, **dataclasses.asdict(model.config)})
