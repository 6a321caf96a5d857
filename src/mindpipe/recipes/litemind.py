"""The ``litemind`` stage: Lite-Mind's DFT backbone and MindEye's MLP, one pair per subject.

Both decoders map a subject's betas to the cached CLIP image embedding of the stimulus with the
same contrastive loss and budget, so the comparison is the backbone alone. Each writes its test
predictions under ``<decoder>/predictions/`` (the evaluate stage's contract) and its weights
under ``<decoder>/models/<subject>/`` (safetensors + config.json).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from mindpipe.evaluate.predictions import save_predictions
from mindpipe.evaluate.retrieval import cosine_similarity
from mindpipe.features.store import FeatureStore
from mindpipe.io.betas import list_subjects, load_betas
from mindpipe.models.checkpoint import save_checkpoint
from mindpipe.models.litemind import LiteMind, LiteMindConfig
from mindpipe.models.mindeye_mlp import MindEyeMLP, MindEyeMLPConfig
from mindpipe.params import BaseParams
from mindpipe.recipes.contrastive import TrainConfig, fit_contrastive, predict, resolve_device
from mindpipe.utils import progress

logger = logging.getLogger(__name__)

DECODERS = ("litemind", "mindeye_mlp")


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
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    device: str = "auto"


def build_decoder(kind: str, n_voxels: int, dim: int, params: LiteMindParams) -> torch.nn.Module:
    if kind == "litemind":
        patch = min(params.patch_size, n_voxels)
        return LiteMind(
            LiteMindConfig(
                n_voxels=n_voxels,
                embed_dim=dim,
                patch_size=patch,
                widths=params.widths,
                depths=params.depths,
                dropout=params.dropout,
                drop_path=params.drop_path,
            )
        )
    return MindEyeMLP(
        MindEyeMLPConfig(n_voxels, dim, hidden=params.mlp_hidden, n_blocks=params.mlp_blocks)
    )


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
        data = {s: (sb.betas[s], store.image_pooled(sb.stim[s])) for s in ("train", "val", "test")}
        for kind in DECODERS:
            torch.manual_seed(base.seed)
            model = build_decoder(kind, sb.n_voxels, store.dim, params)
            result = fit_contrastive(
                model, data["train"], data["val"], params.train, device, base.seed
            )
            test_x, test_y = data["test"]
            decoded = predict(model, test_x, device)
            save_predictions(
                out_dir / kind,
                subject,
                np.asarray(sb.stim["test"]),
                cosine_similarity(decoded, test_y),
                embedding=decoded.astype(np.float32),
                target=np.asarray(test_y, dtype=np.float32),
            )
            folder = out_dir / kind / "models" / subject
            save_checkpoint(folder, model, kind=type(model).__name__)
            n_params = sum(p.numel() for p in model.parameters())
            metrics |= {
                f"{kind}.{subject}.val_top1": result.val_top1,
                f"{kind}.{subject}.best_epoch": result.best_epoch,
                f"{kind}.{subject}.train_seconds": result.seconds,
                f"{kind}.n_params": n_params,
            }
            logger.info(
                "%s %s: val top-1 %.3f at epoch %d (%d params, %.1f s)",
                kind,
                subject,
                result.val_top1,
                result.best_epoch,
                n_params,
                result.seconds,
            )
    metrics["litemind.param_ratio_to_mlp"] = (
        metrics["litemind.n_params"] / metrics["mindeye_mlp.n_params"]
    )
    return metrics
