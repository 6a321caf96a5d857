"""The ``wills`` stage: Wills Aligner on the ``align`` stage's template-space voxels, in the
few-data setting (:mod:`mindpipe.recipes.fewshot`), with its two ablations in the same run.

Training is the paper's two stages, both on every subject's training data (the held-out
subject's first trials only):

1. the shared network learns what subjects have in common (the brain experts idle);
2. the mixture of brain experts and the global router learn each subject's pattern, the shared
   network frozen.

Variants, each selected on the held-out subject's validation split and scored on its test split:

- ``wills``: template-space voxels, both stages;
- ``wills_no_experts``: template-space voxels, stage 1 alone;
- ``wills_no_alignment``: each subject's own voxels zero-padded to the widest subject (one
  network cannot read unaligned brains any better without a per-subject input layer), both
  stages;
- ``wills_neither``: own voxels, stage 1 alone.

Outputs: ``results.md``, ``plots/fewshot_curve.png``, ``models/wills/`` (safetensors +
config.json + target_stats.npz) and each variant's test predictions at ``fewshot.fraction``
under ``<variant>/predictions/`` (the evaluate contract).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch

from mindpipe.exceptions import DataError, ParamsError
from mindpipe.features.store import FeatureStore
from mindpipe.io.betas import SubjectBetas, list_subjects, load_betas
from mindpipe.models.checkpoint import load_checkpoint, save_checkpoint
from mindpipe.models.wills import Wills, WillsConfig
from mindpipe.params import BaseParams
from mindpipe.recipes import fewshot
from mindpipe.recipes.contrastive import (
    SubjectView,
    TrainConfig,
    fit_subjects,
    predict,
    resolve_device,
)
from mindpipe.recipes.litemind import TARGETS
from mindpipe.stages import ModelCard
from mindpipe.utils import progress

logger = logging.getLogger(__name__)

VARIANTS = {  # name (folders, metrics, the evaluate table): (template-space voxels, experts)
    "wills": (True, True),
    "wills_no_experts": (True, False),
    "wills_no_alignment": (False, True),
    "wills_neither": (False, False),
}


@dataclasses.dataclass(frozen=True)
class WillsParams:
    """``wills:`` section."""

    fewshot: fewshot.FewShotParams = dataclasses.field(default_factory=fewshot.FewShotParams)
    hidden: int = 256
    n_blocks: int = 2
    dropout_in: float = 0.5
    dropout: float = 0.15
    n_experts: int = 4
    expert_dim: int = 32
    target: str = "tokens"
    shared: TrainConfig = dataclasses.field(default_factory=TrainConfig)  # stage 1
    experts: TrainConfig = dataclasses.field(default_factory=TrainConfig)  # stage 2
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.n_experts < 1 or self.expert_dim < 1:
            raise ParamsError(
                "wills needs n_experts >= 1 and expert_dim >= 1; got "
                f"{self.n_experts}, {self.expert_dim}"
            )
        if self.target not in TARGETS:
            raise ParamsError(f"'target' must be one of {list(TARGETS)}; got {self.target!r}")


def aligned_betas(aligned_dir: Path, subjects: list[str]) -> dict[str, SubjectBetas]:
    """Every subject's template-space betas; a subject the alignment lacks, or columns that
    disagree between subjects, stop the stage with the folder named."""
    found = set(list_subjects(aligned_dir))
    missing = [s for s in subjects if s not in found]
    if missing:
        raise DataError(
            f"subjects {missing} are missing from the alignment '{aligned_dir}'; rerun the "
            "align stage on the same preprocess output"
        )
    out = {s: load_betas(aligned_dir, s) for s in subjects}
    widths = {s: sb.n_voxels for s, sb in out.items()}
    if len(set(widths.values())) != 1:
        raise DataError(
            f"template-space voxel counts differ between subjects in '{aligned_dir}': {widths}"
        )
    return out


def _unaligned(aligned_dir: Path, subjects: list[str]) -> str | None:
    """Why Wills cannot run on this dataset, or None: one subject, or no alignment (the align
    stage records why, e.g. betas imported without anatomy)."""
    if len(subjects) < 2:
        return f"one model for several subjects needs at least 2 subjects; found {subjects}"
    path = aligned_dir / "alignment.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    if not record.get("available", True):
        return f"the align stage did not align these subjects: {record['reason']}"
    return None


def padded(sb: SubjectBetas, width: int) -> dict[str, np.ndarray]:
    """A subject's own voxels, zero-padded on the right to ``width`` columns."""
    return {
        split: np.pad(np.asarray(x, dtype=np.float32), ((0, 0), (0, width - x.shape[1])))
        for split, x in sb.betas.items()
    }


def train_wills(
    *,
    betas_dir: Path,
    aligned_dir: Path,
    features_dir: Path,
    out_dir: Path,
    params: WillsParams,
    base: BaseParams,
) -> dict[str, float]:
    subjects = list_subjects(betas_dir)
    reason = _unaligned(Path(aligned_dir), subjects)
    if reason:
        return fewshot.unavailable(out_dir, "wills", reason)
    store = FeatureStore(features_dir)
    device = resolve_device(params.device)
    new, others = fewshot.pick_holdout(subjects, params.fewshot.holdout)
    native = {s: load_betas(betas_dir, s) for s in subjects}
    aligned = aligned_betas(aligned_dir, subjects)
    for s in subjects:
        if not np.array_equal(native[s].stim["train"], aligned[s].stim["train"]):
            raise DataError(
                f"{s}'s training trials differ between '{betas_dir}' and '{aligned_dir}'; rerun "
                "the align stage"
            )
    space = fewshot.target_space(store, [native[s].stim["train"] for s in others], params.target)
    width = max(sb.n_voxels for sb in native.values())
    inputs = {
        True: {
            s: fewshot.subject_pairs(sb, store, space, params.target) for s, sb in aligned.items()
        },
        False: {
            s: fewshot.subject_pairs(sb, store, space, params.target, padded(sb, width))
            for s, sb in native.items()
        },
    }
    curves: dict[str, list[float]] = {name: [] for name in VARIANTS}
    table: dict[str, dict[str, float]] = {}
    for fraction in progress(params.fewshot.fractions, desc="wills fractions"):
        for is_aligned in (True, False):
            pairs = inputs[is_aligned]
            train = {s: pairs[s]["train"] for s in others}
            train[new] = fewshot.first_trials(pairs[new]["train"], fraction)
            tag = f"{'template' if is_aligned else 'own'}_voxels.f{fraction:g}"
            runs = _two_stages(train, pairs[new]["val"], new, params, device, base, tag)
            for has_experts, (model, result) in runs.items():
                name = next(k for k, v in VARIANTS.items() if v == (is_aligned, has_experts))
                view = SubjectView(model, new)
                decoded = predict(view, pairs[new]["test"][0], device)
                scores = fewshot.test_scores(decoded, pairs[new]["test"])
                curves[name].append(scores["brain_to_image"])
                if fraction != params.fewshot.fraction:
                    continue
                table[name] = {
                    "test_top1": scores["brain_to_image"],
                    "test_image_to_brain": scores["image_to_brain"],
                    "chance": scores["chance"],
                    "val_top1": result.val_top1,
                    "best_epoch": result.best_epoch,
                    "trials": len(train[new][0]),
                }
                fewshot.save_decoder_predictions(
                    out_dir / name,
                    new,
                    native[new].stim["test"],
                    decoded,
                    pairs[new]["test"],
                    space,
                    store.image_pooled(native[new].stim["test"]),
                )
                if name == "wills":
                    folder = out_dir / "models" / "wills"
                    save_checkpoint(folder, model, target=params.target, holdout=new)
                    space.save(folder / "target_stats.npz")
    table = {name: table[name] for name in VARIANTS}  # the ablations after the full model
    n_train = len(inputs[True][new]["train"][0])
    fewshot.plot_curve(
        out_dir / "plots" / "fewshot_curve.png",
        params.fewshot.fractions,
        n_train,
        curves,
        table["wills"]["chance"],
        f"Wills Aligner: held-out {new}",
    )
    _write_results(out_dir / "results.md", new, params, table, curves, n_train, width)
    metrics: dict[str, float] = {"available": 1.0, "padded_voxels": width}
    metrics["template_voxels"] = aligned[new].n_voxels
    for name, row in table.items():
        metrics |= {f"{name}.{k}": v for k, v in row.items()}
    metrics |= fewshot.curve_metrics(curves, params.fewshot.fractions)
    logger.info("wills (%s, %s of train): %s", new, params.fewshot.fraction, table)
    return metrics


def _two_stages(train, val, subject, params: WillsParams, device, base, tag: str) -> dict:
    """``{False: stage-1 (model, result), True: stage-2 (model, result)}``; stage 2 starts from
    a copy of stage 1's weights."""
    first = next(iter(train.values()))
    config = WillsConfig(
        subjects=tuple(train),
        n_voxels=first[0].shape[1],
        embed_dim=first[1].shape[2],
        n_tokens=first[1].shape[1],
        hidden=params.hidden,
        n_blocks=params.n_blocks,
        dropout_in=params.dropout_in,
        dropout=params.dropout,
        n_experts=params.n_experts,
        expert_dim=params.expert_dim,
    )
    out = {}
    torch.manual_seed(base.seed)
    model = Wills(config)
    for stage, budget in ((1, params.shared), (2, params.experts)):
        if stage == 2:
            model = _copy(model)
        model.train_stage(stage)
        result = fit_subjects(
            model,
            train,
            {subject: val},
            budget,
            device,
            base.seed,
            report_as=f"{tag}.stage{stage}.val_top1",
        )
        out[stage == 2] = (model, result)
    return out


def _copy(model: Wills) -> Wills:
    clone = Wills(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.to(next(model.parameters()).device)


def _write_results(path, new, params, table, curves, n_train, width) -> None:
    fs = params.fewshot
    columns = ("test_top1", "test_image_to_brain", "val_top1")
    row = table["wills"]
    lines = [
        f"# Wills Aligner: held-out {new}",
        "",
        f"Training data: every other subject's train split and the first {row['trials']:.0f} of "
        f"{new}'s {n_train} training trials ({fs.fraction:g}); epochs chosen on {new}'s val "
        f"split; test top-1 among {1 / row['chance']:.0f} images (chance {row['chance']:.4f}). "
        f"Without alignment, each subject's own voxels are zero-padded to {width} columns.",
        "",
        fewshot.markdown_table(table, columns),
        "",
        "## Test top-1 against the held-out subject's training data",
        "",
        fewshot.curve_table(curves, fs.fractions),
    ]
    path.write_text("\n".join(lines) + "\n")


def score_saved_wills(
    model_dir: Path,
    *,
    betas_dir: Path,
    aligned_dir: Path,
    features_dir: Path,
    params: WillsParams,
    base: BaseParams,
) -> ModelCard:
    """The saved model's validation top-1 on its held-out subject (its selection score)."""
    model = load_checkpoint(Path(model_dir), Wills, WillsConfig, "Wills Aligner")
    subject = json.loads((Path(model_dir) / "config.json").read_text())["holdout"]
    sb = aligned_betas(aligned_dir, [subject])[subject]
    return fewshot.score_saved(model, subject, sb, model_dir, features_dir, params.device)
