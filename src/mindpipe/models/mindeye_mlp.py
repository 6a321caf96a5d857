"""MindEye's residual MLP backbone: the large baseline Lite-Mind is measured against.

``Linear(V -> hidden)`` then ``n_blocks`` residual ``Linear -> LayerNorm -> GELU -> Dropout``
blocks, then one ``Linear(hidden -> n_tokens * embed_dim)``. At MindEye's size (15,724 voxels,
hidden 4,096, 4 blocks, 257 x 768 CLIP tokens) this is the ~0.94 B-parameter network whose size
Lite-Mind cuts by ~98.7%; the twin uses a narrow one with the same shape.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class MindEyeMLPConfig:
    n_voxels: int
    embed_dim: int
    n_tokens: int = 1
    hidden: int = 512
    n_blocks: int = 4
    dropout_in: float = 0.5
    dropout: float = 0.15


def _layer(n_in: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.GELU(), nn.Dropout(dropout)
    )


class MindEyeMLP(nn.Module):
    """``forward(voxels (B, V)) -> (B, n_tokens, embed_dim)`` CLIP-space prediction."""

    def __init__(self, config: MindEyeMLPConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.stem = _layer(cfg.n_voxels, cfg.hidden, cfg.dropout_in)
        self.blocks = nn.ModuleList(
            _layer(cfg.hidden, cfg.hidden, cfg.dropout) for _ in range(cfg.n_blocks)
        )
        self.head = nn.Linear(cfg.hidden, cfg.n_tokens * cfg.embed_dim)

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if voxels.dim() != 2 or voxels.shape[1] != cfg.n_voxels:
            raise ValueError(f"expected (batch, {cfg.n_voxels}) voxels, got {tuple(voxels.shape)}")
        x = self.stem(voxels)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x).view(-1, cfg.n_tokens, cfg.embed_dim)
