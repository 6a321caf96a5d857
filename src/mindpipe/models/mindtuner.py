"""MindTuner: a MindEye2-style multi-subject decoder, fine-tuned to a new subject with LoRA and
Skip-LoRA.

Each subject has its own linear map into a shared latent (MindEye2's per-subject "ridge", the
only subject-specific part of the pretrained model); a residual MLP backbone and a linear head
to the CLIP tokens are shared. To fine-tune on a new subject with little data, the backbone and
head stay frozen and learn only through low-rank adapters:

- **LoRA** on every backbone and head ``Linear``: ``W x + (alpha / r) B A x`` with ``B = 0`` at
  the start, so the adapted model begins as the pretrained one;
- **Skip-LoRA**, one per block: a low-rank *non-linear* map of the new subject's raw voxels,
  ``(alpha / r) GELU(B A v)``, added to the block's output (the subject's "visual fingerprint",
  which the paper argues is non-linear);
- a decorrelation term (:meth:`MindTuner.regulariser`): the mean absolute correlation between
  each block's output and its Skip-LoRA's, so the skip carries what the linear path does not.

The new subject's own linear map is trained from scratch, as in MindEye2's fine-tuning.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class MindTunerConfig:
    """Attributes
    ----------
    subjects, n_voxels : tuple
        The subjects the model reads, and each one's voxel count (its input map's width).
    embed_dim, n_tokens : int
        The CLIP target: ``n_tokens`` tokens of ``embed_dim``.
    hidden, n_blocks, dropout : backbone width, residual blocks, dropout.
    lora_rank : int
        0: a plain model (pretraining, or training from scratch). Above 0: LoRA of this rank on
        every backbone/head ``Linear`` and a Skip-LoRA per block for ``adapted_subject``.
    lora_alpha : float
        Adapter outputs are scaled by ``lora_alpha / lora_rank``.
    adapted_subject : str or None
        The subject being fine-tuned (its raw voxels feed the Skip-LoRAs).
    skip_lora : bool
        With LoRA, also the Skip-LoRAs (False: LoRA alone, an ablation).
    """

    subjects: tuple[str, ...]
    n_voxels: tuple[int, ...]
    embed_dim: int
    n_tokens: int = 1
    hidden: int = 256
    n_blocks: int = 2
    dropout: float = 0.15
    lora_rank: int = 0
    lora_alpha: float = 8.0
    adapted_subject: str | None = None
    skip_lora: bool = True

    def __post_init__(self) -> None:
        if len(self.subjects) != len(self.n_voxels) or len(set(self.subjects)) != len(
            self.subjects
        ):
            raise ValueError(
                f"need one voxel count per distinct subject; got {self.subjects} and "
                f"{self.n_voxels}"
            )
        if self.lora_rank and self.adapted_subject not in self.subjects:
            raise ValueError(
                f"adapted_subject {self.adapted_subject!r} is not one of {list(self.subjects)}"
            )

    def voxels_of(self, subject: str) -> int:
        if subject not in self.subjects:
            raise ValueError(f"subject {subject!r} is not one of {list(self.subjects)}")
        return self.n_voxels[self.subjects.index(subject)]

    def with_subject(
        self, subject: str, n_voxels: int, lora_rank: int, skip_lora: bool = True
    ) -> MindTunerConfig:
        """This model plus a new subject, adapted with LoRA (and Skip-LoRA) of ``lora_rank``."""
        if subject in self.subjects:
            raise ValueError(f"subject {subject!r} is already in the model")
        return dataclasses.replace(
            self,
            subjects=(*self.subjects, subject),
            n_voxels=(*self.n_voxels, n_voxels),
            lora_rank=lora_rank,
            adapted_subject=subject,
            skip_lora=skip_lora,
        )


class LoRALinear(nn.Linear):
    """A ``Linear`` with an optional low-rank update; the base weights keep ``Linear``'s names,
    so a plain model's state loads into it unchanged."""

    def __init__(self, n_in: int, n_out: int, rank: int, alpha: float) -> None:
        super().__init__(n_in, n_out)
        self.scale = alpha / rank if rank else 0.0
        if rank:
            self.lora_a = nn.Parameter(torch.randn(rank, n_in) / n_in**0.5)
            self.lora_b = nn.Parameter(torch.zeros(n_out, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.scale:
            out = out + self.scale * (x @ self.lora_a.T) @ self.lora_b.T
        return out


class SkipLoRA(nn.Module):
    """``(alpha / r) GELU(B A v)``, raw voxels ``v`` to the backbone width; zero at the start."""

    def __init__(self, n_voxels: int, hidden: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.randn(rank, n_voxels) / n_voxels**0.5)
        self.lora_b = nn.Parameter(torch.zeros(hidden, rank))

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.gelu((voxels @ self.lora_a.T) @ self.lora_b.T)


class ResidualBlock(nn.Module):
    """MindEye2's block: LayerNorm -> Linear -> GELU -> Dropout -> Linear (added by the caller)."""

    def __init__(self, hidden: int, dropout: float, rank: int, alpha: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = LoRALinear(hidden, hidden, rank, alpha)
        self.fc2 = LoRALinear(hidden, hidden, rank, alpha)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(nn.functional.gelu(self.fc1(self.norm(x)))))


def abs_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``|Pearson r|`` between ``a[i]`` and ``b[i]`` across features."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)
    return r.abs().mean()


class MindTuner(nn.Module):
    """``forward(voxels (B, V_subject), subject) -> (B, n_tokens, embed_dim)``."""

    def __init__(self, config: MindTunerConfig) -> None:
        super().__init__()
        self.config = cfg = config
        rank, alpha = cfg.lora_rank, cfg.lora_alpha
        self.ridges = nn.ModuleDict(
            {s: nn.Linear(v, cfg.hidden) for s, v in zip(cfg.subjects, cfg.n_voxels, strict=True)}
        )
        self.blocks = nn.ModuleList(
            ResidualBlock(cfg.hidden, cfg.dropout, rank, alpha) for _ in range(cfg.n_blocks)
        )
        self.head = LoRALinear(cfg.hidden, cfg.n_tokens * cfg.embed_dim, rank, alpha)
        skipping = rank and cfg.skip_lora
        adapted = cfg.voxels_of(cfg.adapted_subject) if skipping else 0
        self.skips = nn.ModuleList(
            SkipLoRA(adapted, cfg.hidden, rank, alpha)
            for _ in range(cfg.n_blocks if skipping else 0)
        )
        self._decorrelation: torch.Tensor | None = None

    def forward(self, voxels: torch.Tensor, subject: str) -> torch.Tensor:
        cfg = self.config
        width = cfg.voxels_of(subject)
        if voxels.dim() != 2 or voxels.shape[1] != width:
            raise ValueError(
                f"subject {subject!r} has {width} voxels; got input of shape {tuple(voxels.shape)}"
            )
        h = self.ridges[subject](voxels)
        skipping = bool(self.skips) and subject == cfg.adapted_subject
        correlations = []
        for i, block in enumerate(self.blocks):
            out = block(h)
            if skipping:
                skip = self.skips[i](voxels)
                correlations.append(abs_correlation(out, skip))
                out = out + skip
            h = h + out
        self._decorrelation = torch.stack(correlations).mean() if correlations else None
        return self.head(h).view(-1, cfg.n_tokens, cfg.embed_dim)

    def regulariser(self) -> torch.Tensor | None:
        """Skip-LoRA's decorrelation loss from the last forward pass (None without skips)."""
        return self._decorrelation

    def freeze_for_finetuning(self) -> int:
        """Leave trainable only the adapted subject's input map, LoRA and Skip-LoRA; returns the
        number of trainable parameters."""
        subject = self.config.adapted_subject
        if subject is None:
            raise ValueError("the model has no adapters: build it with with_subject(...)")
        for name, param in self.named_parameters():
            param.requires_grad = (
                "lora_" in name
                or name.startswith("skips.")
                or name.startswith(f"ridges.{subject}.")
            )
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """Copies of the weights fine-tuning must not change (everything but the adapters)."""
        return {
            name: param.detach().clone()
            for name, param in self.named_parameters()
            if not param.requires_grad
        }


def adapt(
    pretrained: MindTuner, subject: str, n_voxels: int, rank: int, skip: bool = True
) -> MindTuner:
    """A copy of ``pretrained`` with ``subject`` added and LoRA (and Skip-LoRA, unless ``skip``
    is False) attached, frozen for fine-tuning. The pretrained weights load unchanged; every
    new tensor is an adapter or the new subject's input map (anything else missing is a bug,
    and raises)."""
    model = MindTuner(pretrained.config.with_subject(subject, n_voxels, rank, skip))
    missing, unexpected = model.load_state_dict(pretrained.state_dict(), strict=False)
    new = [
        k
        for k in missing
        if "lora_" not in k and not k.startswith(("skips.", f"ridges.{subject}."))
    ]
    if new or unexpected:
        raise RuntimeError(f"pretrained weights do not fit: missing {new}, unexpected {unexpected}")
    model.freeze_for_finetuning()
    return model
