"""Run one registered stage: parse params, resolve inputs, execute, write atomically, track."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from mindpipe.exceptions import MindpipeError
from mindpipe.params import load_params, section_dict
from mindpipe.stages import get_stage, parse_all, resolve_inputs, stage_out_dir
from mindpipe.tracking import lineage_tags, log_stage_run
from mindpipe.tracking.runs import check_tracking_server
from mindpipe.utils import atomic_dir, seed_everything, write_json

logger = logging.getLogger(__name__)

STEPS_FILE = "steps.json"


def run_stage(
    name: str,
    params: str | Path | dict[str, Any] = "params.yaml",
    *,
    input_dirs: dict[str, Path] | None = None,
    out: Path | None = None,
    track: bool = True,
) -> dict[str, float]:
    """Execute stage ``name`` with ``params`` (a params file, or its sections as a dict).

    Outputs appear at ``artifacts/<name>/`` (or ``out``) only if the stage and its MLflow
    logging both succeed; otherwise the previous outputs (or nothing) remain. ``input_dirs``
    replaces the registry's data/artifacts resolution for the named inputs, so an orchestrator
    (KFP) that mounts folders elsewhere runs the very same stage code. ``track=False`` skips
    MLflow: a sweep logs its trials itself, as nested runs, and registers no model.
    """
    stage = get_stage(name)
    base, sections = parse_all(params if isinstance(params, dict) else load_params(params))
    params = sections[name]
    inputs = resolve_inputs(stage, base, input_dirs)
    if track:
        check_tracking_server()
    seed_everything(base.seed)
    logger.info("stage %s: inputs %s", name, {k: str(v) for k, v in inputs.items()})

    with atomic_dir(Path(out) if out is not None else stage_out_dir(name, base)) as tmp:
        metrics = stage.load_func()(**inputs, out_dir=tmp, params=params, base=base)
        _check_metrics(name, metrics)
        write_json(tmp / "metrics.json", metrics)
        if not track:
            return metrics
        # a stage that skipped (unavailable on this dataset) wrote no model: nothing to register
        model_dir = tmp / stage.model if stage.model and (tmp / stage.model).is_dir() else None
        card = None
        if model_dir is not None and stage.scorer:
            card = stage.load_scorer()(model_dir, params=params, base=base, **inputs)
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
            model=model_dir,
            card=card,
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
