"""NeuroClips' Perception Reconstructor: fMRI -> a blurry, low-resolution video.

The layout follows the paper's design at a small size (shared/notes, section 2.5):

1. **Inception Extension**: one fMRI sample becomes ``n_frames`` frame codes (Linear V -> h,
   GELU, a residual block, Linear h -> n_frames * h), so each frame gets its own features;
2. a shared MLP maps each frame code to a ``channels x base x base`` map;
3. a **temporal upsampler**: per-frame 2-D convolutions and upsampling (x2 per stage), each
   stage followed by temporal self-attention across the clip's frames at every pixel, mixed with
   a learnable weight ``eta`` (initialised to 1 = spatial only, as in the paper's code).

The output is RGB in [-1, 1] at ``base * 2 ** n_up`` pixels; the paper predicts an SD-VAE latent
instead, which the twin's tiny videos do not need.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class PerceptionConfig:
    n_voxels: int
    n_frames: int = 6  # 3 FPS over a 2-s clip, as NeuroClips
    out_size: int = 8  # px per side of the blurry video
    hidden: int = 256
    channels: int = 32
    base: int = 2  # side of the first feature map; out_size = base * 2 ** n_up
    dropout: float = 0.15

    @property
    def n_up(self) -> int:
        n = (self.out_size // self.base).bit_length() - 1
        if self.base * 2**n != self.out_size:
            raise ValueError(f"out_size {self.out_size} must be base {self.base} x a power of 2")
        return n


class TemporalAttention(nn.Module):
    """Self-attention over the frame axis at every pixel, blended with its input by ``eta``."""

    def __init__(self, channels: int, n_frames: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(8, channels), channels)
        self.attn = nn.MultiheadAttention(channels, num_heads=1, batch_first=True)
        self.position = nn.Parameter(torch.zeros(1, n_frames, channels))
        self.eta = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, C, H, W)
        b, f, c, h, w = x.shape
        seq = self.norm(x.flatten(0, 1)).view(b, f, c, h * w).permute(0, 3, 1, 2)
        seq = seq.reshape(b * h * w, f, c) + self.position
        mixed, _ = self.attn(seq, seq, seq, need_weights=False)
        mixed = mixed.view(b, h * w, f, c).permute(0, 2, 3, 1).reshape(b, f, c, h, w)
        return self.eta * x + (1 - self.eta) * (x + mixed)


class UpStage(nn.Module):
    """Frame-wise conv block with a 2x upsampling, then temporal attention."""

    def __init__(self, channels: int, n_frames: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(min(8, channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.temporal = TemporalAttention(channels, n_frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f = x.shape[:2]
        y = self.conv(x.flatten(0, 1))
        return self.temporal(y.view(b, f, *y.shape[1:]))


class PerceptionReconstructor(nn.Module):
    """``forward(voxels (B, V))`` -> blurry video ``(B, n_frames, 3, out_size, out_size)``."""

    def __init__(self, config: PerceptionConfig) -> None:
        super().__init__()
        self.config = cfg = config
        h = cfg.hidden
        self.extend_in = nn.Sequential(
            nn.Linear(cfg.n_voxels, h), nn.GELU(), nn.Dropout(cfg.dropout)
        )
        self.extend_block = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, h), nn.GELU())
        self.extend_out = nn.Linear(h, cfg.n_frames * h)
        self.to_map = nn.Sequential(
            nn.LayerNorm(h), nn.GELU(), nn.Linear(h, cfg.channels * cfg.base**2)
        )
        self.up = nn.ModuleList(UpStage(cfg.channels, cfg.n_frames) for _ in range(cfg.n_up))
        self.out = nn.Conv2d(cfg.channels, 3, 3, padding=1)

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = self.extend_in(voxels)
        x = self.extend_out(x + self.extend_block(x)).view(-1, cfg.n_frames, cfg.hidden)
        x = self.to_map(x).view(-1, cfg.n_frames, cfg.channels, cfg.base, cfg.base)
        for stage in self.up:
            x = stage(x)
        b, f = x.shape[:2]
        return torch.tanh(self.out(x.flatten(0, 1))).view(b, f, 3, cfg.out_size, cfg.out_size)
