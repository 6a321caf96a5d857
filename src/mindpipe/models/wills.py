"""Wills Aligner: one decoder for every subject's template-space voxels, with a mixture of
brain experts (MoBE) for each subject's own cognition pattern.

Once every subject's voxels sit on one template grid (the ``align`` stage), a single shared
network reads them all: a stem (``Linear(V -> hidden)``), residual blocks and a linear head to
the CLIP tokens. Each block also holds ``n_experts`` small bottleneck MLPs (the experts); a
global router, conditioned on the subject, mixes them with softmax weights per block. Training
is two-stage, as in the paper: the shared network first learns what subjects have in common
(experts idle: their output layers start at zero and stay frozen), then the experts and the
router learn each subject's pattern with the shared network frozen.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mindpipe.models.mindeye_mlp import MindEyeMLP, MindEyeMLPConfig


@dataclasses.dataclass(frozen=True)
class WillsConfig(MindEyeMLPConfig):
    """MindEye's MLP config (``n_voxels``: the template-space input, the same for every
    subject) plus

    Attributes
    ----------
    subjects : tuple of str
        The subjects the router knows (at least one).
    n_experts : int
        Experts per block (0: no MoBE, the shared network alone).
    expert_dim : int
        Each expert's bottleneck width.
    """

    subjects: tuple[str, ...] = ()
    n_experts: int = 4
    expert_dim: int = 32

    def __post_init__(self) -> None:
        if not self.subjects or len(set(self.subjects)) != len(self.subjects):
            raise ValueError(f"need distinct subjects; got {self.subjects}")
        if self.n_experts < 0 or self.expert_dim < 1:
            raise ValueError(
                f"n_experts must be >= 0 and expert_dim >= 1; got {self.n_experts}, "
                f"{self.expert_dim}"
            )


class BrainExperts(nn.Module):
    """``n_experts`` bottleneck MLPs ``hidden -> expert_dim -> hidden``, mixed by given weights.

    The output projections start at zero, so adding the experts leaves the model unchanged
    until stage two trains them.
    """

    def __init__(self, hidden: int, n_experts: int, expert_dim: int) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.randn(n_experts, hidden, expert_dim) / hidden**0.5)
        self.up = nn.Parameter(torch.zeros(n_experts, expert_dim, hidden))

    def forward(self, h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``h (B, hidden)``, ``weights (n_experts,)`` -> the weighted sum of expert outputs."""
        z = nn.functional.gelu(torch.einsum("bh,khr->bkr", h, self.down))
        return torch.einsum("bkr,krh,k->bh", z, self.up, weights)


class Wills(MindEyeMLP):
    """``forward(voxels (B, n_voxels), subject) -> (B, n_tokens, embed_dim)``.

    The shared network is MindEye's residual MLP (stem, blocks, head); the experts add to each
    block's output.
    """

    def __init__(self, config: WillsConfig) -> None:
        super().__init__(config)
        cfg = config
        self.experts = nn.ModuleList(
            BrainExperts(cfg.hidden, cfg.n_experts, cfg.expert_dim)
            for _ in range(cfg.n_blocks if cfg.n_experts else 0)
        )
        # The global router: per subject, one logit per (block, expert); zeros mix evenly.
        router = torch.zeros(len(cfg.subjects), cfg.n_blocks, cfg.n_experts)
        self.router = nn.Parameter(router) if cfg.n_experts else None

    def routing(self, subject: str) -> torch.Tensor:
        """``(n_blocks, n_experts)`` mixing weights of ``subject``'s experts."""
        if subject not in self.config.subjects:
            raise ValueError(f"subject {subject!r} is not one of {list(self.config.subjects)}")
        return self.router[self.config.subjects.index(subject)].softmax(dim=-1)

    def forward(self, voxels: torch.Tensor, subject: str) -> torch.Tensor:
        cfg = self.config
        if voxels.dim() != 2 or voxels.shape[1] != cfg.n_voxels:
            raise ValueError(
                f"expected (batch, {cfg.n_voxels}) template-space voxels, got {tuple(voxels.shape)}"
            )
        h = self.stem(voxels)
        weights = self.routing(subject) if self.experts else None
        for i, block in enumerate(self.blocks):
            out = block(h)
            if self.experts:
                out = out + self.experts[i](h, weights[i])
            h = h + out
        return self.head(h).view(-1, cfg.n_tokens, cfg.embed_dim)

    def train_stage(self, stage: int) -> int:
        """Stage 1: the shared network learns, the experts and router are frozen; stage 2: the
        reverse. Returns the number of trainable parameters."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2; got {stage}")
        for name, param in self.named_parameters():
            plugin = name == "router" or name.startswith("experts.")
            param.requires_grad = plugin == (stage == 2)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
