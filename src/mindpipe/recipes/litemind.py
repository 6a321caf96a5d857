"""The ``litemind`` stage: Lite-Mind's DFT backbone and MindEye's MLP, one pair per subject.

Both decoders map a subject's betas to the cached CLIP image embedding of the stimulus with the
same contrastive loss and budget, so the comparison is the backbone alone. The target is, as in
both papers, every CLIP token: the pooled embedding followed by the patch tokens in grid order
(``target: tokens``; Lite-Mind's 257 x 768 for ViT-L/14), or the pooled embedding alone
(``target: pooled``, Lite-Mind's ``cls_only``). Each target dimension is standardised with the
training images' mean and sd, so every dimension counts in the cosine rather than the few that
carry most of the raw variance; retrieval compares flattened predictions with the standardised
test targets. Each decoder writes its test predictions under ``<decoder>/predictions/`` (the
evaluate stage's contract; ``embedding`` is the decoded pooled embedding, back in CLIP units,
which zero-shot and the reconstruct stage read) and its weights under
``<decoder>/models/<subject>/`` (safetensors + config.json, plus ``target_stats.npz``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from mindpipe.evaluate.predictions import save_predictions
from mindpipe.evaluate.retrieval import cosine_similarity, retrieval_top1
from mindpipe.exceptions import ParamsError
from mindpipe.features.store import FeatureStore
from mindpipe.io.betas import list_subjects, load_betas
from mindpipe.models.baselines import save_ridge, select_ridge
from mindpipe.models.checkpoint import load_checkpoint, save_checkpoint
from mindpipe.models.litemind import LiteMind, LiteMindConfig
from mindpipe.models.mindeye_mlp import MindEyeMLP, MindEyeMLPConfig
from mindpipe.params import BaseParams
from mindpipe.recipes.contrastive import (
    TrainConfig,
    fit_contrastive,
    predict,
    resolve_device,
    val_top1,
)
from mindpipe.stages import ModelCard
from mindpipe.utils import progress

logger = logging.getLogger(__name__)

NETWORKS = ("litemind", "mindeye_mlp")
DECODERS = (*NETWORKS, "ridge_clip")  # ridge_clip: the closed-form baseline in the same space
SPLITS = ("train", "val", "test")
TARGETS = ("tokens", "pooled")


@dataclasses.dataclass(frozen=True)
class LiteMindParams:
    """``litemind:`` section: backbone sizes, the MLP baseline's size, and the shared budget."""

    patch_size: int = 16
    widths: tuple[int, ...] = (64, 32)
    depths: tuple[int, ...] = (2, 2)
    dropout: float = 0.1
    drop_path: float = 0.1
    mlp_hidden: int = 512
    mlp_blocks: int = 4
    target: str = "tokens"  # "tokens" (pooled + patch tokens, the papers') or "pooled"
    ridge_alphas: tuple[float, ...] = (1e2, 1e3, 1e4, 1e5)  # ridge_clip penalties, chosen on val
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.ridge_alphas or min(self.ridge_alphas) <= 0:
            raise ParamsError(
                f"'ridge_alphas' must be positive numbers; got {self.ridge_alphas} "
                "(litemind.ridge_alphas)"
            )
        if self.target not in TARGETS:
            raise ParamsError(
                f"'target' must be one of {list(TARGETS)}; got {self.target!r} (litemind.target)"
            )


@dataclasses.dataclass(frozen=True)
class TargetSpace:
    """The decoders' standardised target: ``(n, n_tokens, dim)`` rows, token 0 the pooled one."""

    mean: np.ndarray  # (n_tokens, dim), over the training images
    std: np.ndarray
    norm: float  # mean L2 norm of the flattened standardised training targets

    @classmethod
    def fit(cls, target: np.ndarray) -> TargetSpace:
        mean, std = target.mean(axis=0), target.std(axis=0) + 1e-6
        flat = ((target - mean) / std).reshape(len(target), -1)
        return cls(mean, std, float(np.linalg.norm(flat, axis=1).mean()))

    def encode(self, target: np.ndarray) -> np.ndarray:
        return ((target - self.mean) / self.std).astype(np.float32)

    def pooled(self, decoded: np.ndarray) -> np.ndarray:
        """The pooled embedding, in CLIP units, of flattened decoded rows.

        Contrastive decoders learn a direction, not a length (Lite-Mind's rows come out about
        30x shorter than the targets, which would leave every pooled embedding at the training
        mean), so each row is first scaled to the training targets' mean norm.
        """
        flat = decoded.reshape(len(decoded), -1)
        length = np.linalg.norm(flat, axis=1, keepdims=True)
        flat = flat * (self.norm / np.maximum(length, 1e-12))
        first = flat.reshape(len(flat), *self.mean.shape)[:, 0]
        return (first * self.std[0] + self.mean[0]).astype(np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, std=self.std, norm=self.norm)

    @classmethod
    def load(cls, path: Path) -> TargetSpace:
        with np.load(path) as stats:
            return cls(stats["mean"], stats["std"], float(stats["norm"]))


def clip_targets(store: FeatureStore, stim_ids: np.ndarray, target: str) -> np.ndarray:
    """``(n, 1 + T, D)`` pooled + patch tokens, or ``(n, 1, D)`` pooled, of each stimulus."""
    pooled = store.image_pooled(stim_ids)[:, None]
    if target == "pooled":
        return pooled
    return np.concatenate([pooled, store.image_tokens(stim_ids)], axis=1)


def build_decoder(
    kind: str, n_voxels: int, n_tokens: int, dim: int, params: LiteMindParams
) -> torch.nn.Module:
    if kind == "litemind":
        patch = min(params.patch_size, n_voxels)
        return LiteMind(
            LiteMindConfig(
                n_voxels=n_voxels,
                embed_dim=dim,
                n_tokens=n_tokens,
                patch_size=patch,
                widths=params.widths,
                depths=params.depths,
                dropout=params.dropout,
                drop_path=params.drop_path,
            )
        )
    return MindEyeMLP(
        MindEyeMLPConfig(
            n_voxels, dim, n_tokens=n_tokens, hidden=params.mlp_hidden, n_blocks=params.mlp_blocks
        )
    )


def fit_ridge_decoder(
    data: dict[str, tuple[np.ndarray, np.ndarray]], alphas: tuple[float, ...], folder: Path
) -> tuple[np.ndarray, dict[str, float]]:
    """Ridge from betas to the flattened standardised targets; alpha chosen on val top-1.

    Saves ``weight (V, n_tokens * D)`` and ``bias`` to ``folder/model.safetensors``; returns the
    decoded test rows and the selection metrics.
    """
    (x, y), (val_x, val_y) = data["train"], data["val"]
    val_y = val_y.reshape(len(val_y), -1)

    def val_top1(pred: np.ndarray) -> float:
        return retrieval_top1(cosine_similarity(pred, val_y), len(val_y), 1)["brain_to_image"]

    fit = select_ridge(x, y.reshape(len(y), -1), val_x, alphas, val_top1)
    save_ridge(folder, fit)
    decoded = fit.predict(data["test"][0]).astype(np.float32)
    return decoded, {"val_top1": fit.val_score, "alpha": fit.alpha}


def score_saved_litemind(
    model_dir: Path,
    *,
    betas_dir: Path,
    features_dir: Path,
    params: LiteMindParams,
    base: BaseParams,
) -> ModelCard:
    """The saved Lite-Mind decoders' validation top-1 (mean over subjects), the score each
    subject's epoch was chosen on. The signature is the first subject's model."""
    store = FeatureStore(features_dir)
    device = resolve_device(params.device)
    models, scores, example = {}, [], None
    for subject in list_subjects(betas_dir):
        folder = Path(model_dir) / subject
        model = load_checkpoint(folder, LiteMind, LiteMindConfig, f"Lite-Mind {subject}")
        space = TargetSpace.load(folder / "target_stats.npz")
        sb = load_betas(betas_dir, subject)
        target = space.encode(clip_targets(store, sb.stim["val"], params.target))
        scores.append(val_top1(model.to(device), sb.betas["val"], target, device))
        models[subject] = model
        if example is None:
            voxels = np.asarray(sb.betas["val"][:2], dtype=np.float32)
            example = (voxels, predict(model, voxels, device))
    return ModelCard(models, {"val_top1": float(np.mean(scores))}, *example)


def train_litemind(
    *,
    betas_dir: Path,
    features_dir: Path,
    out_dir: Path,
    params: LiteMindParams,
    base: BaseParams,
) -> dict[str, float]:
    store = FeatureStore(features_dir)
    device = resolve_device(params.device)
    metrics: dict[str, float] = {}
    for subject in progress(list_subjects(betas_dir), desc="litemind subjects"):
        sb = load_betas(betas_dir, subject)
        targets = {s: clip_targets(store, sb.stim[s], params.target) for s in SPLITS}
        space = TargetSpace.fit(targets["train"])
        data = {s: (sb.betas[s], space.encode(targets[s])) for s in SPLITS}
        n_tokens = targets["train"].shape[1]
        for kind in DECODERS:
            folder = out_dir / kind / "models" / subject
            if kind == "ridge_clip":
                decoded, info = fit_ridge_decoder(data, params.ridge_alphas, folder)
            else:
                torch.manual_seed(base.seed)
                model = build_decoder(kind, sb.n_voxels, n_tokens, store.dim, params)
                result = fit_contrastive(
                    model,
                    data["train"],
                    data["val"],
                    params.train,
                    device,
                    base.seed,
                    report_as=f"{kind}.{subject}.val_top1",
                )
                decoded = predict(model, data["test"][0], device)
                save_checkpoint(folder, model, kind=type(model).__name__, target=params.target)
                info = {
                    "val_top1": result.val_top1,
                    "best_epoch": result.best_epoch,
                    "train_seconds": result.seconds,
                }
                metrics[f"{kind}.n_params"] = sum(p.numel() for p in model.parameters())
            space.save(folder / "target_stats.npz")
            test_y = data["test"][1]
            save_predictions(
                out_dir / kind,
                subject,
                np.asarray(sb.stim["test"]),
                cosine_similarity(decoded, test_y.reshape(len(test_y), -1)),
                embedding=space.pooled(decoded),
                target=targets["test"][:, 0].astype(np.float32),
            )
            metrics |= {f"{kind}.{subject}.{k}": v for k, v in info.items()}
            logger.info("%s %s: %s", kind, subject, {k: round(v, 3) for k, v in info.items()})
    metrics["litemind.param_ratio_to_mlp"] = (
        metrics["litemind.n_params"] / metrics["mindeye_mlp.n_params"]
    )
    return metrics
