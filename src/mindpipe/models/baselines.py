"""Linear baseline: ridge regression from betas to stimulus feature vectors.

One model per subject, trained on every training trial; the penalty is chosen on the
validation split (never on test). Solved once per subject through the SVD of the centred
betas, so every candidate alpha costs one matrix product.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from mindpipe.evaluate.predictions import save_predictions
from mindpipe.evaluate.retrieval import cosine_similarity, retrieval_top1
from mindpipe.exceptions import MissingWeightsError, ParamsError
from mindpipe.features import attribute_features
from mindpipe.io.betas import list_subjects, load_betas, load_stimuli
from mindpipe.params import BaseParams
from mindpipe.stages import ModelCard
from mindpipe.utils import progress, write_json

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RidgeParams:
    """``baseline:`` section. ``alphas``: candidate penalties, picked on validation top-1."""

    alphas: tuple[float, ...] = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)

    def __post_init__(self) -> None:
        if not self.alphas or min(self.alphas) <= 0:
            raise ParamsError(f"baseline.alphas must be positive numbers; got {self.alphas}")


def ridge_path(
    x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ridge solutions for every alpha.

    Parameters
    ----------
    x : (n_samples, n_voxels)
    y : (n_samples, n_features)

    Returns
    -------
    list of (weights (n_voxels, n_features), bias (n_features,)), one per alpha.
    """
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
    uty = u.T @ (y - y_mean)
    solutions = []
    for alpha in alphas:
        w = vt.T @ ((s / (s**2 + alpha))[:, None] * uty)
        solutions.append((w, y_mean - x_mean @ w))
    return solutions


@dataclasses.dataclass(frozen=True)
class RidgeFit:
    weight: np.ndarray  # (n_voxels, n_features)
    bias: np.ndarray  # (n_features,)
    alpha: float
    val_score: Any  # what ``select_ridge``'s scorer returned for this alpha

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight + self.bias


def select_ridge(
    x: np.ndarray,
    y: np.ndarray,
    val_x: np.ndarray,
    alphas: tuple[float, ...],
    val_score: Callable[[np.ndarray], Any],
) -> RidgeFit:
    """Ridge from ``x`` to ``y`` at the alpha whose val predictions score highest.

    ``val_score`` maps the val predictions to a comparable score (higher is better; the first
    alpha wins ties).
    """
    solutions = ridge_path(np.asarray(x, dtype=np.float64), y, alphas)
    scores = [val_score(val_x @ w + b) for w, b in solutions]
    best = max(range(len(scores)), key=lambda k: scores[k])
    return RidgeFit(*solutions[best], alphas[best], scores[best])


def save_ridge(folder: Path, fit: RidgeFit, tensors: dict | None = None, **config) -> None:
    """``model.safetensors`` (weight, bias, ``tensors``) + ``config.json`` (alpha, ``config``)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"weight": fit.weight, "bias": fit.bias, **(tensors or {})}
    save_file(
        {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
        str(folder / "model.safetensors"),
    )
    write_json(folder / "config.json", {"kind": "ridge", "alpha": fit.alpha, **config})


def load_ridge(folder: Path) -> tuple[RidgeFit, dict[str, np.ndarray]]:
    """The fit saved by :func:`save_ridge`, and its extra tensors; a missing file is named."""
    weights, config = Path(folder) / "model.safetensors", Path(folder) / "config.json"
    for path in (weights, config):
        if not path.is_file():
            raise MissingWeightsError(f"ridge model file '{path}' is missing")
    tensors = load_file(str(weights))
    weight, bias = tensors.pop("weight"), tensors.pop("bias")
    alpha = json.loads(config.read_text())["alpha"]
    return RidgeFit(weight, bias, alpha, None), tensors


def score_saved_ridge(
    model_dir: Path, *, betas_dir: Path, params: RidgeParams, base: BaseParams
) -> ModelCard:
    """The saved ridge models' validation top-1 (mean over subjects), the score each alpha was
    chosen on. The signature is the first subject's model."""
    stimuli = load_stimuli(betas_dir)
    features, _ = attribute_features(stimuli)
    row = {stim: i for i, stim in enumerate(stimuli["stim_id"])}
    fits, scores, example = {}, [], None
    for subject in list_subjects(betas_dir):
        fit, stats = load_ridge(Path(model_dir) / subject)
        sb = load_betas(betas_dir, subject)
        val = (features[[row[i] for i in sb.stim["val"]]] - stats["feature_mean"]) / stats[
            "feature_std"
        ]
        voxels = np.asarray(sb.betas["val"], dtype=np.float32)
        scores.append(_val_score(fit.predict(voxels), val)[0])
        fits[subject] = fit
        if example is None:
            example = (voxels[:2], fit.predict(voxels[:2]).astype(np.float32))
    return ModelCard(fits, {"val_top1": float(np.mean(scores))}, *example)


def fit_ridge_baseline(
    *, betas_dir: Path, out_dir: Path, params: RidgeParams, base: BaseParams
) -> dict[str, float]:
    """The ``baseline`` stage: fit, select alpha on val, predict test, save models."""
    stimuli = load_stimuli(betas_dir)
    features, names = attribute_features(stimuli)
    row = {stim: i for i, stim in enumerate(stimuli["stim_id"])}
    metrics: dict[str, float] = {}
    for subject in progress(list_subjects(betas_dir), desc="ridge"):
        sb = load_betas(betas_dir, subject)
        target = {s: features[[row[i] for i in sb.stim[s]]] for s in ("train", "val", "test")}
        mean, std = target["train"].mean(axis=0), target["train"].std(axis=0)
        std[std == 0] = 1.0
        y_train = (target["train"] - mean) / std
        val_target = (target["val"] - mean) / std
        fit = select_ridge(
            sb.betas["train"],
            y_train,
            sb.betas["val"],
            params.alphas,
            functools.partial(_val_score, true=val_target),
        )
        test_pred = fit.predict(sb.betas["test"])
        test_true = (target["test"] - mean) / std
        save_predictions(
            out_dir / "ridge",
            subject,
            np.asarray(sb.stim["test"]),
            cosine_similarity(test_pred, test_true),
            embedding=test_pred.astype(np.float32),
            target=test_true.astype(np.float32),
        )
        save_ridge(
            out_dir / "ridge" / "models" / subject,
            fit,
            {"feature_mean": mean, "feature_std": std},
            features=names,
            n_voxels=int(fit.weight.shape[0]),
        )
        metrics[f"{subject}.alpha"] = fit.alpha
        metrics[f"{subject}.val_top1"] = fit.val_score[0]
        logger.info("%s: alpha=%g val top-1=%.3f", subject, fit.alpha, fit.val_score[0])
    return metrics


def _val_score(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(top-1 among all val images, mean feature correlation): ties in top-1 go to correlation."""
    top1 = retrieval_top1(cosine_similarity(pred, true), batch_size=len(true), repeats=1)
    pc = pred - pred.mean(0)
    tc = true - true.mean(0)
    corr = (pc * tc).sum(0) / np.maximum(
        np.linalg.norm(pc, axis=0) * np.linalg.norm(tc, axis=0), 1e-12
    )
    return top1["brain_to_image"], float(corr.mean())
