"""The few-data setting the multi-subject stages (``mindtuner``, ``wills``) share.

One subject is held out: the others' whole training split is what a lab already has, and the
held-out subject contributes only the *first* ``fraction`` of its training trials, in the order
they were recorded (MindEye2's "1 hour" is the first of 40 sessions). Every model is selected on
the held-out subject's validation split and scored once on its test split, with MindEye2's
retrieval protocol. A curve repeats the comparison at several fractions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from mindpipe.evaluate.predictions import save_predictions
from mindpipe.evaluate.retrieval import cosine_similarity, retrieval_top1
from mindpipe.exceptions import DataError, ParamsError
from mindpipe.features.store import FeatureStore
from mindpipe.io.betas import SubjectBetas
from mindpipe.recipes.contrastive import SubjectView, predict, resolve_device, val_top1
from mindpipe.recipes.litemind import TargetSpace, clip_targets
from mindpipe.stages import ModelCard
from mindpipe.utils import write_json

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
Pair = tuple[np.ndarray, np.ndarray]  # (voxels (n, V), standardised targets (n, T, D))


@dataclasses.dataclass(frozen=True)
class FewShotParams:
    """Attributes
    ----------
    holdout : str or None
        The new subject (None: the last one).
    fraction : float
        Share of the held-out subject's training trials, first ones first, that the comparison
        in the stage's table uses (the "1 hour" setting).
    curve : tuple of float
        Fractions of the accuracy-vs-data curve (``plots/fewshot_curve.png``).
    """

    holdout: str | None = None
    fraction: float = 0.1
    curve: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)

    def __post_init__(self) -> None:
        bad = [f for f in (self.fraction, *self.curve) if not 0.0 < f <= 1.0]
        if bad:
            raise ParamsError(f"fractions must be in (0, 1]; got {bad} (fewshot.fraction/curve)")

    @property
    def fractions(self) -> tuple[float, ...]:
        """Every fraction trained, the table's included, in increasing order."""
        return tuple(sorted({self.fraction, *self.curve}))


def unavailable(out_dir: Path, stage: str, reason: str) -> dict[str, float]:
    """Record why the stage cannot run on this dataset (a one-subject release, betas without
    anatomy) and write nothing else: evaluate skips it, the runner registers no model."""
    logger.warning("%s skipped: %s", stage, reason)
    write_json(Path(out_dir) / "unavailable.json", {"available": False, "reason": reason})
    (Path(out_dir) / "results.md").write_text(f"# {stage}: not run\n\n{reason}.\n")
    return {"available": 0.0}


def pick_holdout(subjects: list[str], holdout: str | None) -> tuple[str, list[str]]:
    """``(held-out subject, the others)``; an unknown name lists the subjects. Needs at least
    two subjects (see :func:`unavailable`)."""
    if len(subjects) < 2:
        raise DataError(f"the few-data setting needs at least 2 subjects; found {subjects}")
    if holdout is None:
        holdout = subjects[-1]
    if holdout not in subjects:
        raise ParamsError(f"fewshot.holdout {holdout!r} is not one of the subjects {subjects}")
    return holdout, [s for s in subjects if s != holdout]


def first_trials(pair: Pair, fraction: float) -> Pair:
    """The first ``fraction`` of a training split's rows (at least two: one contrastive pair)."""
    n = max(math.ceil(fraction * len(pair[0])), 2)
    return pair[0][:n], pair[1][:n]


def target_space(store: FeatureStore, train_stims: list[np.ndarray], target: str) -> TargetSpace:
    """Standardisation of the CLIP targets, fitted on the training images (no brain data)."""
    return TargetSpace.fit(clip_targets(store, np.concatenate(train_stims), target))


def subject_pairs(
    sb: SubjectBetas, store: FeatureStore, space: TargetSpace, target: str, voxels=None
) -> dict[str, Pair]:
    """``{split: (voxels, standardised targets)}``; ``voxels`` replaces the betas if given."""
    voxels = voxels or sb.betas
    return {s: (voxels[s], space.encode(clip_targets(store, sb.stim[s], target))) for s in SPLITS}


def test_scores(decoded: np.ndarray, test: Pair) -> dict[str, float]:
    """MindEye2's top-1 retrieval among 300 test images (30 random batches), both directions,
    of the decoded test rows."""
    result = retrieval_top1(cosine_similarity(decoded, test[1].reshape(len(test[1]), -1)))
    return {k: result[k] for k in ("brain_to_image", "image_to_brain", "chance")}


def score_saved(
    model: torch.nn.Module,
    subject: str,
    sb: SubjectBetas,
    model_dir: Path,
    features_dir: Path,
    device_name: str,
) -> ModelCard:
    """A saved few-data model's validation top-1 on its held-out subject (the score its epoch
    was chosen on), from the target space and target saved beside it."""
    space = TargetSpace.load(Path(model_dir) / "target_stats.npz")
    target = json.loads((Path(model_dir) / "config.json").read_text())["target"]
    val = subject_pairs(sb, FeatureStore(features_dir), space, target)["val"]
    view = SubjectView(model, subject)
    device = resolve_device(device_name)
    example = np.asarray(val[0][:2], dtype=np.float32)
    score = val_top1(view.to(device), *val, device)
    return ModelCard(view, {"val_top1": score}, example, predict(view, example, device))


def save_decoder_predictions(
    folder: Path,
    subject: str,
    stim_id: np.ndarray,
    decoded: np.ndarray,
    test: Pair,
    space: TargetSpace,
    target_pooled: np.ndarray,
) -> None:
    """The evaluate stage's prediction file (see :mod:`mindpipe.evaluate.predictions`)."""
    save_predictions(
        folder,
        subject,
        np.asarray(stim_id),
        cosine_similarity(decoded, test[1].reshape(len(test[1]), -1)),
        embedding=space.pooled(decoded),
        target=target_pooled.astype(np.float32),
    )


def plot_curve(
    path: Path,
    fractions: tuple[float, ...],
    n_trials: int,
    curves: dict[str, list[float]],
    chance: float,
    title: str,
) -> None:
    """Test top-1 against the held-out subject's training trials used, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    trials = [max(math.ceil(f * n_trials), 2) for f in fractions]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(trials, values, marker="o", label=name)
    ax.axhline(chance, color="grey", linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_xticks(trials, [f"{t}\n({f:.0%})" for t, f in zip(trials, fractions, strict=True)])
    ax.minorticks_off()
    ax.set_xlabel("held-out subject's training trials (share of its train split)")
    ax.set_ylabel("test top-1, brain -> image")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(rows: dict[str, dict[str, float]], columns: tuple[str, ...]) -> str:
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        cells = [_cell(values[c]) if c in values else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float) -> str:
    """Counts as integers, scores to three decimals."""
    return f"{value:.0f}" if value >= 10 and float(value).is_integer() else f"{value:.3f}"


def curve_table(curves: dict[str, list[float]], fractions: tuple[float, ...]) -> str:
    """Markdown: one row per model, its test top-1 at each fraction."""
    columns = tuple(f"{f:g}" for f in fractions)
    rows = {name: dict(zip(columns, values, strict=True)) for name, values in curves.items()}
    return markdown_table(rows, columns)


def curve_metrics(curves: dict[str, list[float]], fractions: tuple[float, ...]) -> dict:
    """``{<model>.f<fraction>.test_top1: value}`` for MLflow."""
    return {
        f"{name}.f{f:g}.test_top1": v
        for name, values in curves.items()
        for f, v in zip(fractions, values, strict=True)
    }
