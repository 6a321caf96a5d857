"""Lite-Mind's DFT backbone: fMRI voxels -> CLIP embeddings through Fourier-domain token mixing.

The voxel vector is cut into patches (tokens); four-ish stages of blocks mix the tokens with a
learnable spectral filter and a per-channel complex "frequency projector" along the patch axis;
a head maps the result into CLIP space. Layer by layer it follows the official implementation
(see shared/notes/neuroclips_litemind.md, section 1.3), scaled by :class:`LiteMindConfig`:

* block: ``x + DropPath(FreMLP(LN(DropPath(MLP(LN(Filter(LN(x))))))))`` (one residual, as released);
* filter: ``irfft(sum_k cos((2k+1)pi/2K) W_k X^3)`` with ``X = rfft(tokens)`` (complex cube);
* FreMLP: per-channel complex gain + bias, ReLU on real and imaginary parts, soft-shrink;
* head ``tokens``: channels -> CLIP tokens, patches -> CLIP dims (the full model; the
  LayerNorm comes before the token projection, not after, so one token is not normalised away);
  head ``pooled``: mean over patches -> CLIP dims (the paper's ``cls_only`` variant).

With head ``tokens`` every predicted token is one shared ``Linear(patches -> embed_dim)`` of a
patch-length vector, so all tokens live in an ``n_patches``-dimensional affine subspace of CLIP
space (34 dimensions of 768 in the paper): keep ``n_patches`` near ``embed_dim`` when it matters.

One deliberate difference: inverse FFTs use the true token count, so an odd number of patches
keeps all its tokens (the release drops one inside every filter).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class LiteMindConfig:
    """Sizes of one subject's backbone.

    ``n_voxels`` and ``embed_dim`` come from the data (the subject's voxel count and the CLIP
    width); the rest are params. ``n_tokens`` CLIP tokens are predicted, each ``embed_dim`` wide
    (1 = the pooled embedding only).
    """

    n_voxels: int
    embed_dim: int
    n_tokens: int = 1
    patch_size: int = 32
    widths: tuple[int, ...] = (64, 32)
    depths: tuple[int, ...] = (2, 2)
    filter_terms: int = 2
    head: str = "tokens"  # "tokens" (the full model) or "pooled" (cls_only)
    dropout: float = 0.1
    drop_path: float = 0.1
    shrink: float = 0.01

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.n_voxels < self.patch_size:
            raise ValueError(
                f"patch_size must be in [1, n_voxels={self.n_voxels}], got {self.patch_size}"
            )
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ValueError(f"widths {self.widths} and depths {self.depths} must pair up")
        if self.head not in ("pooled", "tokens"):
            raise ValueError(f"head must be 'pooled' or 'tokens', got {self.head!r}")
        if self.head == "pooled" and self.n_tokens != 1:
            raise ValueError("head 'pooled' predicts one token; use head 'tokens' for more")

    @property
    def n_patches(self) -> int:
        return self.n_voxels // self.patch_size  # the trailing remainder is dropped, as released


class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's branch with probability ``p`` while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


class SpectralFilter(nn.Module):
    """The "spectrum compression" filter: a learned cubic filter on the patch-axis spectrum."""

    def __init__(self, n_patches: int, width: int, terms: int) -> None:
        super().__init__()
        n_freq = n_patches // 2 + 1
        self.weights = nn.Parameter(torch.randn(terms, n_freq, width, 2) * 0.02)
        k = torch.arange(terms, dtype=torch.float32)
        self.register_buffer("coef", torch.cos((2 * k + 1) * math.pi / (2 * terms)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        spec = torch.fft.rfft(x.float(), dim=1, norm="ortho")
        weight = torch.einsum("k,kfc->fc", self.coef.to(torch.cfloat), self._complex())
        out = weight * spec * spec * spec
        return torch.fft.irfft(out, n=n, dim=1, norm="ortho").to(x.dtype)

    def _complex(self) -> torch.Tensor:
        return torch.view_as_complex(self.weights)


class FrequencyProjector(nn.Module):
    """FreMLP: a per-channel complex gain and bias in the patch-axis spectrum, then soft-shrink."""

    def __init__(self, width: int, shrink: float) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(2, width) * 0.02)  # real, imaginary
        self.bias = nn.Parameter(torch.randn(2, width) * 0.02)
        self.shrink = shrink

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        spec = torch.fft.rfft(x.float(), dim=1, norm="ortho")
        (gr, gi), (br, bi) = self.gain, self.bias
        real = torch.relu(spec.real * gr - spec.imag * gi + br)
        imag = torch.relu(spec.imag * gr + spec.real * gi + bi)
        out = torch.complex(
            nn.functional.softshrink(real, self.shrink), nn.functional.softshrink(imag, self.shrink)
        )
        return torch.fft.irfft(out, n=n, dim=1, norm="ortho").to(x.dtype)


class DFTBlock(nn.Module):
    def __init__(self, n_patches: int, width: int, cfg: LiteMindConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(width, eps=1e-6) for _ in range(3))
        self.filter = SpectralFilter(n_patches, width, cfg.filter_terms)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(4 * width, width),
            nn.Dropout(cfg.dropout),
        )
        self.projector = FrequencyProjector(width, cfg.shrink)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop_path(self.mlp(self.norm2(self.filter(self.norm1(x)))))
        return x + self.drop_path(self.projector(self.norm3(h)))


class LiteMind(nn.Module):
    """``forward(voxels (B, V)) -> (B, n_tokens, embed_dim)`` CLIP-space prediction."""

    def __init__(self, config: LiteMindConfig) -> None:
        super().__init__()
        self.config = cfg = config
        n, first = cfg.n_patches, cfg.widths[0]
        self.patchify = nn.Conv1d(1, first, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, first))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.dropout = nn.Dropout(cfg.dropout)
        n_blocks = sum(cfg.depths)
        rates = [cfg.drop_path * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        layers: list[nn.Module] = []
        for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths, strict=True)):
            if i:
                layers.append(nn.Linear(cfg.widths[i - 1], width))
            for _ in range(depth):
                layers.append(DFTBlock(n, width, cfg, rates.pop(0)))
        self.stages = nn.Sequential(*layers)
        last = cfg.widths[-1]
        self.head_norm = nn.LayerNorm(last, eps=1e-6)
        if cfg.head == "tokens":
            self.to_tokens = nn.Linear(last, cfg.n_tokens)
            self.head = nn.Linear(n, cfg.embed_dim)
        else:
            self.head = nn.Linear(last, cfg.embed_dim)
        self.apply(_init_weights)

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if voxels.dim() != 2 or voxels.shape[1] != cfg.n_voxels:
            raise ValueError(f"expected (batch, {cfg.n_voxels}) voxels, got {tuple(voxels.shape)}")
        x = self.patchify(voxels[:, None, : cfg.n_patches * cfg.patch_size]).transpose(1, 2)
        x = self.stages(self.dropout(x + self.pos_embed))  # (B, patches, width)
        x = self.head_norm(x)
        if cfg.head == "tokens":
            return self.head(self.to_tokens(x).transpose(1, 2))  # via (B, n_tokens, patches)
        return self.head(x.mean(dim=1))[:, None]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
