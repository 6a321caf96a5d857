"""PmcmFL's multimodal classifier and prototype library (Bao et al., arXiv 2312.13508).

Three modalities map into one ``dim``-wide space: fMRI betas (one encoder per site, because
voxel counts differ), CLIP image features and CLIP caption features. Fusion and head follow the
released code: LayerNorm each representation, concatenate, Linear, divide by the number of
modalities, tanh; head Linear(d, 2d) -> LayerNorm -> GELU -> Linear(2d, C).

The prototype library holds, per modality (and for the fused representation), one vector per
class plus how many items produced it, so the server can weight sites by real counts (the
paper's "non-zero" check misses unseen classes, see the method notes).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

MODALITIES = ("fmri", "image", "text")
PROTO_KEYS = (*MODALITIES, "fusion")


@dataclasses.dataclass(frozen=True)
class PmcmFLConfig:
    """Sizes of one site's model; ``n_voxels`` is that site's fMRI input width."""

    n_voxels: int
    feature_dim: int
    n_classes: int
    dim: int = 64
    dropout: float = 0.1
    fmri_input_dropout: float = 0.5  # MindEye's MLP drops half its input voxels too


def _encoder(n_in: int, dim: int, dropout: float, input_dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(
        nn.Dropout(input_dropout),
        nn.Linear(n_in, dim),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(dim, dim),
    )


class PmcmFLClassifier(nn.Module):
    """Per-modality encoders -> fusion -> class logits; missing reps are filled by the caller."""

    def __init__(self, cfg: PmcmFLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Input dropout keeps the site's fMRI encoder from memorising its training items, which
        # would leave the shared image and caption encoders little gradient.
        self.fmri = _encoder(cfg.n_voxels, cfg.dim, cfg.dropout, cfg.fmri_input_dropout)
        self.image = _encoder(cfg.feature_dim, cfg.dim, cfg.dropout)
        self.text = _encoder(cfg.feature_dim, cfg.dim, cfg.dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.dim) for _ in MODALITIES)
        self.fuse_proj = nn.Linear(len(MODALITIES) * cfg.dim, cfg.dim)
        self.head = nn.Sequential(
            nn.Linear(cfg.dim, 2 * cfg.dim),
            nn.LayerNorm(2 * cfg.dim),
            nn.GELU(),
            nn.Linear(2 * cfg.dim, cfg.n_classes),
        )

    def encode(self, fmri: torch.Tensor, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(n, 3, dim)`` representations in ``MODALITIES`` order (missing rows are garbage)."""
        return torch.stack([self.fmri(fmri), self.image(image), self.text(text)], dim=1)

    def fuse(self, reps: torch.Tensor) -> torch.Tensor:
        parts = [norm(reps[:, i]) for i, norm in enumerate(self.norms)]
        return torch.tanh(self.fuse_proj(torch.cat(parts, dim=1)) / len(MODALITIES))

    def shared_keys(self) -> list[str]:
        """Parameters every site shares (everything but the site's own fMRI encoder)."""
        return [k for k in self.state_dict() if not k.startswith("fmri.")]


@dataclasses.dataclass
class PrototypeLibrary:
    """``protos`` (4, C, dim) for ``PROTO_KEYS``; ``counts`` (4, C) items behind each vector."""

    protos: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls, n_classes: int, dim: int) -> PrototypeLibrary:
        k = len(PROTO_KEYS)
        return cls(np.zeros((k, n_classes, dim), np.float32), np.zeros((k, n_classes), np.float32))

    @classmethod
    def from_reps(
        cls,
        reps: np.ndarray,
        fused: np.ndarray,
        labels: np.ndarray,
        present: np.ndarray,
        n_classes: int,
    ) -> PrototypeLibrary:
        """Class means of each modality over items that have it; fusion over complete items."""
        lib = cls.empty(n_classes, reps.shape[2])
        masks = [present[:, i] for i in range(len(MODALITIES))] + [present.all(axis=1)]
        values = [reps[:, i] for i in range(len(MODALITIES))] + [fused]
        for k, (mask, value) in enumerate(zip(masks, values, strict=True)):
            for c in range(n_classes):
                rows = mask & (labels == c)
                lib.counts[k, c] = rows.sum()
                if rows.any():
                    lib.protos[k, c] = value[rows].mean(axis=0)
        return lib

    @classmethod
    def aggregate(cls, libs: list[PrototypeLibrary]) -> PrototypeLibrary:
        """Count-weighted mean per class and key; a class no site saw stays zero with count 0."""
        counts = np.sum([lib.counts for lib in libs], axis=0)
        weighted = np.sum([lib.protos * lib.counts[..., None] for lib in libs], axis=0)
        protos = weighted / np.maximum(counts, 1.0)[..., None]
        return cls(protos.astype(np.float32), counts.astype(np.float32))

    def known(self) -> np.ndarray:
        return self.counts > 0
