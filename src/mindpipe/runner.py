"""Run one registered stage: parse params, resolve inputs, execute, write atomically, track."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from mindpipe.exceptions import MindpipeError
from mindpipe.params import load_params, section_dict
from mindpipe.stages import get_stage, parse_all, resolve_inputs, stage_out_dir
from mindpipe.tracking import lineage_tags, log_stage_run
from mindpipe.utils import atomic_dir, seed_everything, write_json

logger = logging.getLogger(__name__)

STEPS_FILE = "steps.json"


def run_stage(
    name: str,
    params_path: str | Path = "params.yaml",
    *,
    input_dirs: dict[str, Path] | None = None,
    out: Path | None = None,
) -> dict[str, float]:
    """Execute stage ``name`` with the params in ``params_path``; return its metrics.

    Outputs appear at ``artifacts/<name>/`` (or ``out``) only if the stage and its MLflow
    logging both succeed; otherwise the previous outputs (or nothing) remain. ``input_dirs``
    replaces the registry's data/artifacts resolution for the named inputs, so an orchestrator
    (KFP) that mounts folders elsewhere runs the very same stage code.
    """
    stage = get_stage(name)
    base, sections = parse_all(load_params(params_path))
    params = sections[name]
    inputs = resolve_inputs(stage, base, input_dirs)
    seed_everything(base.seed)
    logger.info("stage %s: inputs %s", name, {k: str(v) for k, v in inputs.items()})

    with atomic_dir(Path(out) if out is not None else stage_out_dir(name, base)) as tmp:
        metrics = stage.load_func()(**inputs, out_dir=tmp, params=params, base=base)
        _check_metrics(name, metrics)
        write_json(tmp / "metrics.json", metrics)
        all_params = {"base": section_dict(base), name: section_dict(params)}
        log_stage_run(
            stage=name,
            params=all_params,
            metrics=metrics,
            tags=lineage_tags(
                seed=base.seed, params=all_params, data_dir=base.data_dir, stage=name
            ),
            artifacts=[tmp / "metrics.json", *(tmp / p for p in stage.plots if (tmp / p).exists())],
            steps=_read_steps(tmp / STEPS_FILE),
            model=tmp / stage.model if stage.model else None,
        )
    return metrics


def _read_steps(path: Path) -> dict[str, list[list[float]]] | None:
    """A stage may write per-step metric histories to ``steps.json`` (name -> [[step, value]])."""
    return json.loads(path.read_text()) if path.is_file() else None


def _check_metrics(stage: str, metrics: dict[str, float]) -> None:
    bad = {
        k: v for k, v in metrics.items() if not isinstance(v, int | float) or not math.isfinite(v)
    }
    if bad:
        raise MindpipeError(f"stage {stage!r} returned non-finite or non-scalar metrics: {bad}")
