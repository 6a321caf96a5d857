"""Train an fMRI -> CLIP model contrastively, keeping the epoch that retrieves best on validation.

The loop every brain decoder shares (Lite-Mind, its MindEye MLP baseline, the multi-subject
models): mini-batches of (voxels, target embedding) pairs, an InfoNCE loss between the decoded
and true embeddings, AdamW with a cosine schedule, and checkpoint selection on the validation
split's top-1 retrieval (the papers' code selects on the test split; see shared/notes).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time

import numpy as np
import torch
from torch import nn

from mindpipe.evaluate.retrieval import cosine_similarity, retrieval_top1
from mindpipe.exceptions import ParamsError
from mindpipe.models.losses import info_nce

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.1
    logit_scale: float = 20.0  # fixed inverse temperature of the InfoNCE loss
    symmetric: bool = False  # Lite-Mind's loss is one-directional (images classify brains)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.logit_scale <= 0:
            raise ParamsError(
                "training needs epochs >= 1, batch_size >= 2, lr > 0 and logit_scale > 0; "
                f"got {self.epochs}, {self.batch_size}, {self.lr}, {self.logit_scale}"
            )


@dataclasses.dataclass
class TrainResult:
    best_epoch: int
    val_top1: float
    history: list[float]  # validation top-1 after every epoch
    seconds: float


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParamsError(f"device {name!r} requested but CUDA is not available; use 'auto'")
    return torch.device(name)


@torch.no_grad()
def predict(
    model: nn.Module, voxels: np.ndarray, device: torch.device, batch: int = 256
) -> np.ndarray:
    """Decoded embeddings ``(n, n_tokens * dim)`` for ``voxels (n, V)``, in eval mode."""
    model.eval()
    out = [
        model(torch.as_tensor(np.asarray(voxels[i : i + batch]), device=device)).flatten(1).cpu()
        for i in range(0, len(voxels), batch)
    ]
    return torch.cat(out).numpy()


def val_top1(model: nn.Module, voxels: np.ndarray, target: np.ndarray, device) -> float:
    similarity = cosine_similarity(predict(model, voxels, device), target.reshape(len(target), -1))
    return retrieval_top1(similarity, batch_size=len(target), repeats=1)["brain_to_image"]


def fit_contrastive(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    device: torch.device,
    seed: int,
) -> TrainResult:
    """Train ``model`` in place and load the weights of its best validation epoch.

    ``train``/``val`` are ``(voxels (n, V), target (n, ...))`` pairs; targets are CLIP embeddings.
    """
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(np.array(train[0], dtype=np.float32))
    y = torch.as_tensor(np.array(train[1], dtype=np.float32))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(len(x) // config.batch_size, 1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs * steps_per_epoch)
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    history = []
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            pred = model(x[idx].to(device))
            loss = info_nce(pred, y[idx].to(device), config.logit_scale, config.symmetric)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        score = val_top1(model, val[0], val[1], device)
        history.append(score)
        if score > best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    return TrainResult(best[1], best[0], history, time.perf_counter() - start)
