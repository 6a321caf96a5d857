"""Train an fMRI -> CLIP model contrastively, keeping the epoch that retrieves best on validation.

The loop every brain decoder shares (Lite-Mind, its MindEye MLP baseline, the multi-subject
models): mini-batches of (voxels, target embedding) pairs, a contrastive loss between the decoded
and true embeddings, AdamW with a cosine schedule, and checkpoint selection on the validation
split's top-1 retrieval (the papers' code selects on the test split; see shared/notes).

Losses (``TrainConfig.loss``): ``info_nce``, Lite-Mind's (one direction unless ``symmetric``), or
``mixco_softclip``, MindEye's: BiMixCo on voxels mixed with a partner for the first
``mixco_fraction`` of the epochs (a data augmentation that small datasets need), then SoftCLIP.
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
from mindpipe.models.losses import info_nce, mixco_nce, soft_clip
from mindpipe.reporting import report

logger = logging.getLogger(__name__)


LOSSES = ("info_nce", "mixco_softclip")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.1
    logit_scale: float = 20.0  # fixed inverse temperature of the InfoNCE loss
    symmetric: bool = False  # Lite-Mind's loss is one-directional (images classify brains)
    loss: str = "info_nce"  # or "mixco_softclip" (MindEye: BiMixCo, then SoftCLIP)
    mixco_fraction: float = 0.33  # share of the epochs trained with BiMixCo (MindEye: 1/3)
    mixco_beta: float = 0.15  # Beta(a, a) of the mixing coefficients (MindEye: 0.15)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.logit_scale <= 0:
            raise ParamsError(
                "training needs epochs >= 1, batch_size >= 2, lr > 0 and logit_scale > 0; "
                f"got {self.epochs}, {self.batch_size}, {self.lr}, {self.logit_scale}"
            )
        if self.loss not in LOSSES:
            raise ParamsError(f"'loss' must be one of {list(LOSSES)}; got {self.loss!r}")
        if not 0.0 <= self.mixco_fraction <= 1.0 or self.mixco_beta <= 0:
            raise ParamsError(
                "'mixco_fraction' must be in [0, 1] and 'mixco_beta' > 0; "
                f"got {self.mixco_fraction}, {self.mixco_beta}"
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


def mix_voxels(
    voxels: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MindEye's MixCo input: half the batch mixed with a random partner, Beta(a, a) weights.

    Returns the mixed voxels, ``beta (B,)`` (1 for unmixed rows) and ``partner (B,)``.
    """
    n = len(voxels)
    partner = torch.randperm(n, generator=generator).to(voxels.device)
    mixed_rows = torch.rand(n, generator=generator).to(voxels.device) < 0.5
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    draws = torch.from_numpy(rng.beta(alpha, alpha, n)).to(voxels)
    beta = torch.where(mixed_rows, draws, torch.ones_like(draws))
    partner = torch.where(mixed_rows, partner, torch.arange(n, device=voxels.device))
    out = beta[:, None] * voxels + (1 - beta[:, None]) * voxels[partner]
    return out, beta, partner


def fit_contrastive(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    device: torch.device,
    seed: int,
    *,
    report_as: str,
) -> TrainResult:
    """Train ``model`` in place and load the weights of its best validation epoch.

    ``train``/``val`` are ``(voxels (n, V), target (n, ...))`` pairs; targets are CLIP embeddings.
    Each epoch's validation top-1 is announced as ``report_as`` (see :mod:`mindpipe.reporting`).
    """
    return fit_subjects(
        _OneSubject(model), {"": train}, {"": val}, config, device, seed, report_as=report_as
    )


class _OneSubject(nn.Module):
    """A single-subject model seen through the multi-subject call ``model(voxels, subject)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, voxels: torch.Tensor, subject: str) -> torch.Tensor:
        return self.model(voxels)


class SubjectView(nn.Module):
    """One subject of a multi-subject model, called like a single-subject one: ``model(voxels)``
    (what :func:`predict` and :func:`val_top1` call)."""

    def __init__(self, model: nn.Module, subject: str) -> None:
        super().__init__()
        self.model, self.subject = model, subject

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        return self.model(voxels, self.subject)


def fit_subjects(
    model: nn.Module,
    train: dict[str, tuple[np.ndarray, np.ndarray]],
    val: dict[str, tuple[np.ndarray, np.ndarray]],
    config: TrainConfig,
    device: torch.device,
    seed: int,
    *,
    report_as: str,
    regulariser_weight: float = 0.0,
) -> TrainResult:
    """Train a multi-subject ``model(voxels, subject)`` in place; keep its best validation epoch.

    Every step takes an equal share of ``config.batch_size`` from each subject of ``train``
    (MindEye2's multi-subject batches: each subject keeps its own voxel count) and scores the
    concatenated batch with one contrastive loss, so negatives cross subjects and similar
    images seen by different subjects share SoftCLIP's label mass. An epoch is as many steps as
    the largest subject fills; a smaller subject's shuffled rows wrap around (a new subject with
    little data is seen more often). Only parameters with ``requires_grad`` learn (adapters over a
    frozen backbone). With ``regulariser_weight``, ``model.regulariser()`` (a scalar the last
    forward pass left, or None) is added to the loss. The validation score is the mean top-1
    over the subjects of ``val``.
    """
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    data = {
        s: tuple(torch.as_tensor(np.array(a, dtype=np.float32)) for a in xy)
        for s, xy in train.items()
    }
    share = max(config.batch_size // len(data), 2)
    model.to(device)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = max(max(len(x) for x, _ in data.values()) // share, 1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs * steps_per_epoch)
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    history = []
    mixco_epochs = round(config.mixco_fraction * config.epochs)
    for epoch in range(config.epochs):
        model.train()
        orders = {s: torch.randperm(len(x), generator=generator) for s, (x, _) in data.items()}
        for step in range(steps_per_epoch):
            batch = [
                (s, x[idx].to(device), y[idx].to(device))
                for s, (x, y) in data.items()
                for idx in [orders[s][_wrapped(step, min(share, len(x)), len(x))]]
            ]
            loss = _batch_loss(model, batch, config, epoch < mixco_epochs, generator)
            if regulariser_weight:
                extra = model.regulariser()
                if extra is not None:
                    loss = loss + regulariser_weight * extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        score = float(
            np.mean([val_top1(SubjectView(model, s), x, y, device) for s, (x, y) in val.items()])
        )
        history.append(score)
        report(report_as, epoch, score)
        if score > best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    return TrainResult(best[1], best[0], history, time.perf_counter() - start)


def _wrapped(step: int, size: int, n: int) -> torch.Tensor:
    """Positions ``step * size`` to ``(step + 1) * size`` of a shuffled order of ``n`` rows,
    wrapping around its end."""
    return torch.arange(step * size, (step + 1) * size) % n


def _batch_loss(
    model: nn.Module,
    batch: list[tuple[str, torch.Tensor, torch.Tensor]],
    config: TrainConfig,
    mixco: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """One contrastive loss over every subject's share of the step (see :func:`fit_subjects`)."""
    target = torch.cat([y for _, _, y in batch])
    if config.loss == "info_nce":
        pred = torch.cat([model(x, s) for s, x, _ in batch])
        return info_nce(pred, target, config.logit_scale, config.symmetric)
    if not mixco:
        return soft_clip(torch.cat([model(x, s) for s, x, _ in batch]), target, config.logit_scale)
    preds, betas, partners, offset = [], [], [], 0
    for subject, voxels, _ in batch:  # voxels mix within a subject: their columns differ
        mixed, beta, partner = mix_voxels(voxels, config.mixco_beta, generator)
        preds.append(model(mixed, subject))
        betas.append(beta)
        partners.append(partner + offset)
        offset += len(voxels)
    pred = torch.cat(preds)
    return mixco_nce(pred, target, config.logit_scale, torch.cat(betas), torch.cat(partners))
