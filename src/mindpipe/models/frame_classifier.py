"""The N-way metrics' classifier for the twin's frames: category, colour and texture heads.

NeuroClips scores N-way top-1 with an ImageNet classifier (ViT-B/16), whose 1,000 classes are
what makes 50-way possible. The twin has 12 categories, so this classifier predicts the joint
class (category, colour, texture): 12 x 6 x 4 = 288 classes, its probability the product of
the three heads' (the attributes are drawn independently). Any model that maps frames to class
probabilities plugs into ``evaluate.video_metrics.n_way_top1`` the same way.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class FrameClassifierConfig:
    heads: tuple[int, ...]  # classes per attribute, e.g. (n_categories, n_colours, n_textures)
    channels: tuple[int, ...] = (16, 32, 64)


class FrameClassifier(nn.Module):
    """``forward(frames (N, 3, H, W) in [-1, 1])`` -> one logit tensor per head."""

    def __init__(self, config: FrameClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 3
        for c in config.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GELU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleList(nn.Linear(c_in, n) for n in config.heads)

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        h = self.features(frames)
        return [head(h) for head in self.heads]

    @torch.no_grad()
    def joint_probs(self, frames: torch.Tensor, batch: int = 512) -> np.ndarray:
        """``(N, prod(heads))`` probabilities of the joint class (row-major over the heads)."""
        self.eval()
        out = []
        for i in range(0, len(frames), batch):
            probs = [logits.softmax(-1) for logits in self(frames[i : i + batch])]
            joint = probs[0]
            for p in probs[1:]:
                joint = (joint[:, :, None] * p[:, None, :]).flatten(1)
            out.append(joint.cpu())
        return torch.cat(out).numpy()


def fit_frame_classifier(
    frames: torch.Tensor,
    labels: torch.Tensor,
    config: FrameClassifierConfig,
    epochs: int,
    seed: int,
    batch_size: int = 128,
) -> FrameClassifier:
    """Train on ``frames (N, 3, H, W)`` with ``labels (N, n_heads)``; returns it in eval mode."""
    torch.manual_seed(seed)
    model = FrameClassifier(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(frames), generator=gen)
        for start in range(0, len(frames), batch_size):
            idx = order[start : start + batch_size]
            logits = model(frames[idx])
            loss = sum(
                nn.functional.cross_entropy(lg, labels[idx, k]) for k, lg in enumerate(logits)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()
