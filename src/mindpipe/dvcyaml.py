"""Render dvc.yaml from the stage registry, so the local DAG can never drift from it."""

from __future__ import annotations

from typing import Any

import yaml

from mindpipe.params import BaseParams
from mindpipe.stages import DATA, STAGES, Stage, stage_out_dir

HEADER = (
    "# Generated from src/mindpipe/stages.py by `mindpipe compile`; do not edit by hand.\n"
    "# Run the whole DAG with `dvc repro`; one stage with `dvc repro <stage>`.\n"
)


def render(base: BaseParams) -> str:
    """The full text of dvc.yaml for the registry and the paths in ``base``."""
    doc: dict[str, Any] = {
        "stages": {stage.name: _stage_entry(stage, base) for stage in STAGES},
        "metrics": [str(stage_out_dir(s.name, base) / "metrics.json") for s in STAGES],
        "plots": [str(stage_out_dir(s.name, base) / p) for s in STAGES for p in s.plots],
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


def _stage_entry(stage: Stage, base: BaseParams) -> dict[str, Any]:
    deps = [
        base.data_dir if src == DATA else str(stage_out_dir(src, base))
        for src in stage.inputs.values()
    ]
    deps += [str(stage_out_dir(gate, base)) for gate in stage.after]
    deps += [f"src/mindpipe/{code}" for code in stage.code]
    return {
        "desc": stage.description,
        "cmd": f"mindpipe stage {stage.name}",
        "deps": list(dict.fromkeys(deps)),
        "params": ["base", stage.name],
        "outs": [str(stage_out_dir(stage.name, base))],
    }
