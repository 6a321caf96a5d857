"""Contrastive losses shared by the CLIP pretraining and the brain decoders."""

from __future__ import annotations

import torch
from torch import nn


def info_nce(
    pred: torch.Tensor, target: torch.Tensor, scale: float | torch.Tensor, symmetric: bool
) -> torch.Tensor:
    """Cross-entropy of matching each target row to its own prediction among the batch.

    Rows are flattened and L2-normalised; ``scale`` is the inverse temperature (CLIP learns it,
    Lite-Mind fixes it). One-directional (targets classify predictions) unless ``symmetric``.
    """
    pred = nn.functional.normalize(pred.flatten(1), dim=-1)
    target = nn.functional.normalize(target.flatten(1), dim=-1)
    return logits_loss(scale * target @ pred.T, symmetric)


def logits_loss(logits: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """InfoNCE from a square similarity matrix whose diagonal holds the matching pairs."""
    labels = torch.arange(len(logits), device=logits.device)
    loss = nn.functional.cross_entropy(logits, labels)
    if symmetric:
        loss = (loss + nn.functional.cross_entropy(logits.T, labels)) / 2
    return loss


def token_similarity(
    image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP's late interaction: token-wise max cosine, averaged, for every image x text pair.

    Returns ``(image_to_text, text_to_image)``, both ``(B_image, B_text)``: the mean over image
    tokens of their best-matching text token, and the mean over real (unpadded) text tokens of
    their best-matching image token.
    """
    img = nn.functional.normalize(image_tokens, dim=-1)
    txt = nn.functional.normalize(text_tokens, dim=-1)
    sim = torch.einsum("ind,jmd->ijnm", img, txt)  # (Bi, Bt, Ni, Nt)
    sim_for_max = sim.masked_fill(~text_mask[None, :, None, :], -2.0)
    i2t = sim_for_max.max(dim=3).values.mean(dim=2)
    mask = text_mask[None, :, :].float()
    t2i = (sim.max(dim=2).values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return i2t, t2i


def token_alignment_loss(
    image_tokens: torch.Tensor,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    scale: torch.Tensor,
    group: int | None = None,
) -> torch.Tensor:
    """InfoNCE over the batch on FILIP token-level similarities, both directions.

    Late interaction costs batch^2 x tokens^2; with ``group`` the negatives of each pair are
    the other pairs of its group of ``group`` consecutive pairs, which cuts that by
    batch / group at the price of fewer negatives.
    """
    size = len(image_tokens) if group is None else group
    losses = []
    for start in range(0, len(image_tokens), size):
        part = slice(start, start + size)
        if len(image_tokens[part]) < 2:
            continue  # a group of one has no negatives
        i2t, t2i = token_similarity(image_tokens[part], text_tokens[part], text_mask[part])
        losses.append((logits_loss(scale * i2t, False) + logits_loss(scale * t2i.T, False)) / 2)
    return torch.stack(losses).mean()


def mixco_nce(
    pred: torch.Tensor,
    target: torch.Tensor,
    scale: float,
    beta: torch.Tensor,
    partner: torch.Tensor,
) -> torch.Tensor:
    """MindEye's BiMixCo: InfoNCE with soft labels for inputs mixed with a partner sample.

    Sample ``i`` was made as ``beta[i] * x[i] + (1 - beta[i]) * x[partner[i]]`` (unmixed
    samples have ``beta = 1``, ``partner = i``), so its label puts ``beta[i]`` on target ``i``
    and the rest on target ``partner[i]``. Both directions, averaged.
    """
    pred = nn.functional.normalize(pred.flatten(1), dim=-1)
    target = nn.functional.normalize(target.flatten(1), dim=-1)
    logits = scale * pred @ target.T
    rows = torch.arange(len(pred), device=pred.device)
    labels = torch.zeros_like(logits)
    labels[rows, rows] = beta
    labels[rows, partner] += 1 - beta
    forward = -(logits.log_softmax(dim=1) * labels).sum(1).mean()
    backward = -(logits.T.log_softmax(dim=1) * labels.T).sum(1).mean()
    return (forward + backward) / 2


def soft_clip(pred: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """MindEye's SoftCLIP: the labels are the targets' own similarity distribution.

    Near-duplicate targets (the twin's images that differ in one attribute) then share the
    label mass instead of being pushed apart as hard negatives. Both directions, averaged.
    """
    pred = nn.functional.normalize(pred.flatten(1), dim=-1)
    target = nn.functional.normalize(target.flatten(1), dim=-1)
    labels = (scale * target @ target.T).softmax(dim=1)
    logits = scale * pred @ target.T
    forward = -(logits.log_softmax(dim=1) * labels).sum(1).mean()
    backward = -(logits.T.log_softmax(dim=1) * labels).sum(1).mean()
    return (forward + backward) / 2
