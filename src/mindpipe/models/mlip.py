"""MLIP: a CLIP whose image encoder adds a frequency view and merges tokens.

MLIP (ICML 2024, no public code; shared/notes section 4) changes CLIP in three ways, all here:

* a frequency stage: after the first transformer block the patch-token grid goes through a 2-D
  FFT, a learnable global filter (GFNet style) and back, giving frequency tokens and a frequency
  global embedding that is trained against the caption like the spatial one;
* token-level alignment: image (spatial and frequency) tokens are matched to caption tokens with
  FILIP's late interaction (``models.losses.token_alignment_loss``);
* token merging: after the blocks in ``merge_after`` the least important patch tokens are merged
  into their most similar kept token (size-weighted average). Importance mixes the similarity to
  the class token (a proxy for its attention) with the token's high-frequency energy; merged
  tokens carry a size that biases attention (ToMe's proportional attention). ``merge_ratio`` is
  the fraction of patch tokens removed in total, spread over the merge points.

Merging reorders tokens image by image, so ``encode_image`` "unmerges" its output (ToMe's trick
for dense tasks): every grid patch gets the final token it was merged into, and token ``i`` is
always patch ``i`` in row-major order. Downstream targets (flattened tokens for brain decoders)
need that fixed layout; the training losses use the merged tokens.

The patch embedding is ViT's strided convolution (``stem: patch``) or a small convolutional stem
(``stem: conv``: stride-2 3x3 convolutions down to the patch grid, "early convolutions help
transformers see better", Xiao et al. 2021), which lets a small model on little data see shape.

Plain CLIP is the same class with ``frequency_view=False`` and ``merge_ratio=0``. Blocks and the
text tower are open_clip's. Configs are JSON files in ``models/configs/`` (``mlip-tiny``...).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from open_clip.transformer import ResidualAttentionBlock, TextTransformer
from safetensors.torch import load_file
from torch import nn

from mindpipe.exceptions import MindpipeError
from mindpipe.models.checkpoint import save_checkpoint

CONFIG_DIR = Path(__file__).parent / "configs"
PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
MEAN, STD = (0.481, 0.458, 0.408), (0.269, 0.261, 0.276)  # CLIP's normalisation


@dataclasses.dataclass(frozen=True)
class MLIPConfig:
    image_size: int = 32
    patch_size: int = 4
    width: int = 64
    layers: int = 4
    heads: int = 4
    embed_dim: int = 64
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 16
    vocab: tuple[str, ...] = (PAD, UNK, EOS)
    frequency_view: bool = True
    merge_ratio: float = 0.0
    merge_after: tuple[int, ...] = (1, 2)
    importance_mix: float = 0.5  # weight of the class-token similarity vs high-frequency energy
    stem: str = "patch"  # "patch" (one strided conv) or "conv" (stride-2 3x3 convs, see above)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size")
        if not 0.0 <= self.merge_ratio < 1.0:
            raise ValueError(f"merge_ratio must be in [0, 1), got {self.merge_ratio}")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"stem must be 'patch' or 'conv', got {self.stem!r}")
        if self.stem == "conv" and self.patch_size & (self.patch_size - 1):
            raise ValueError(f"stem 'conv' needs a power-of-two patch_size, got {self.patch_size}")
        if any(not 0 <= k < self.layers for k in self.merge_after):
            raise ValueError(
                f"merge_after {self.merge_after} must index blocks 0..{self.layers - 1}"
            )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def tokens_removed(self) -> list[int]:
        """How many patch tokens each merge point removes (sums to ``merge_ratio`` of them)."""
        total = round(self.merge_ratio * self.grid**2)
        k = len(self.merge_after)
        return [total // k + (i < total % k) for i in range(k)] if k else []


def load_config(name: str, **overrides) -> MLIPConfig:
    """A named config from ``models/configs/<name>.json`` with some fields replaced."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("mlip-*.json"))
        raise MindpipeError(f"unknown MLIP config {name!r} ({path}); known: {known}")
    return _config_from_dict({**json.loads(path.read_text()), **overrides})


def _config_from_dict(values: dict) -> MLIPConfig:
    fields = {f.name for f in dataclasses.fields(MLIPConfig)}
    unknown = set(values) - fields
    if unknown:
        raise MindpipeError(f"unknown MLIP config keys {sorted(unknown)}")
    tuples = {k: tuple(v) for k, v in values.items() if isinstance(v, list)}
    return MLIPConfig(**{**values, **tuples})


def build_vocab(captions: list[str]) -> tuple[str, ...]:
    """Word vocabulary of a caption corpus, sorted so the same corpus gives the same ids."""
    words = sorted({w for c in captions for w in _words(c)})
    return (PAD, UNK, EOS, *words)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def tokenize(captions: list[str], config: MLIPConfig) -> torch.Tensor:
    """Word ids ``(B, context_length)``: words, then ``<eos>``, then padding; truncated to fit."""
    index = {w: i for i, w in enumerate(config.vocab)}
    ids = torch.zeros(len(captions), config.context_length, dtype=torch.long)
    for row, text in enumerate(captions):
        words = [index.get(w, index[UNK]) for w in _words(text)][: config.context_length - 1]
        ids[row, : len(words) + 1] = torch.tensor([*words, index[EOS]])
    return ids


def preprocess_images(images: list[np.ndarray], config: MLIPConfig) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` images -> normalised ``(B, 3, S, S)`` float at the model's size."""
    x = torch.stack([torch.tensor(np.asarray(img)).permute(2, 0, 1) for img in images])
    x = x.float() / 255.0
    if x.shape[-1] != config.image_size or x.shape[-2] != config.image_size:
        size = (config.image_size, config.image_size)
        x = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
    mean = torch.tensor(MEAN)[:, None, None]
    return (x - mean) / torch.tensor(STD)[:, None, None]


class GlobalFilter(nn.Module):
    """GFNet's global filter: rfft2 over the token grid, a learnable complex weight, irfft2."""

    def __init__(self, grid: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(grid, grid // 2 + 1, width, 2) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, g, g, C)
        spec = torch.fft.rfft2(x.float(), dim=(1, 2), norm="ortho")
        spec = spec * torch.view_as_complex(self.weight)
        return torch.fft.irfft2(spec, s=x.shape[1:3], dim=(1, 2), norm="ortho").to(x.dtype)


class MLIP(nn.Module):
    """``encode_image`` / ``encode_text`` -> (pooled (B, D), tokens (B, T, D)), not normalised."""

    def __init__(self, config: MLIPConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.patch_embed = _patch_embedding(cfg)
        scale = cfg.width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid**2 + 1, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.width, cfg.heads) for _ in range(cfg.layers)
        )
        self.ln_post = nn.LayerNorm(cfg.width)
        self.image_projection = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        if cfg.frequency_view:
            self.frequency_filter = GlobalFilter(cfg.grid, cfg.width)
            self.ln_frequency = nn.LayerNorm(cfg.width)
            self.frequency_projection = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        self.text = TextTransformer(
            context_length=cfg.context_length,
            vocab_size=len(cfg.vocab),
            width=cfg.text_width,
            heads=cfg.text_heads,
            layers=cfg.text_layers,
            output_dim=cfg.embed_dim,
            pool_type="eos",
            eos_id=cfg.vocab.index(EOS),
            output_tokens=True,
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled ``(B, D)`` and grid-ordered patch tokens ``(B, grid**2, D)`` (unmerged)."""
        pooled, tokens, _, source = self._encode_image(pixels)
        return pooled, tokens.gather(1, source[..., None].expand(-1, -1, tokens.shape[-1]))

    def encode_image_views(
        self, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Spatial pooled + (merged) tokens, and the frequency view's (pooled, tokens)."""
        pooled, tokens, frequency, _ = self._encode_image(pixels)
        return pooled, tokens, frequency

    def _encode_image(self, pixels: torch.Tensor):
        """The views above plus ``source (B, grid**2)``: the final token of every grid patch."""
        cfg = self.config
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, g*g, C)
        source = torch.arange(x.shape[1], device=x.device).expand(len(x), -1)
        cls = self.class_embedding.expand(len(x), 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        size = torch.ones(x.shape[:2], device=x.device)  # how many patches each token holds
        frequency, high_energy = None, None
        removals = dict(zip(cfg.merge_after, cfg.tokens_removed(), strict=True))
        for k, block in enumerate(self.blocks):
            x = block(x, attn_mask=self._size_bias(size))
            if k == 0 and cfg.frequency_view:
                frequency, high_energy = self._frequency_view(x)
            if removals.get(k):
                energy = high_energy if high_energy is not None else x[:, 1:].norm(dim=-1)
                x, size, high_energy, new_index = self._merge(x, size, energy, removals[k])
                source = new_index.gather(1, source)
        x = self.ln_post(x)
        tokens = self.image_projection(x)
        return tokens[:, 0], tokens[:, 1:], frequency, source

    def _frequency_view(
        self, x: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = self.config.grid
        grid = x[:, 1:].reshape(len(x), g, g, -1)
        filtered = self.frequency_filter(grid).reshape(len(x), g * g, -1)
        tokens = self.frequency_projection(self.ln_frequency(filtered))
        pooled = tokens.mean(dim=1)
        # high-frequency energy: what the grid holds beyond its local mean (a 3x3 box low-pass)
        low = nn.functional.avg_pool2d(
            grid.permute(0, 3, 1, 2), 3, stride=1, padding=1, count_include_pad=False
        ).permute(0, 2, 3, 1)
        energy = (grid - low).pow(2).sum(-1).reshape(len(x), g * g)
        return (pooled, tokens), energy

    def _merge(
        self, x: torch.Tensor, size: torch.Tensor, energy: torch.Tensor, r: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Merge the ``r`` least important patch tokens into their most similar kept token.

        Also returns ``new_index (B, n_patch_tokens)``: where each input patch token went.
        """
        cls, patches = x[:, :1], x[:, 1:]
        mix = self.config.importance_mix
        unit = nn.functional.normalize(patches, dim=-1)
        to_cls = (unit @ nn.functional.normalize(cls, dim=-1).transpose(1, 2)).squeeze(-1)
        importance = mix * _rank01(to_cls) + (1 - mix) * _rank01(energy)
        order = importance.argsort(dim=1, descending=True)
        keep, drop = order[:, :-r], order[:, -r:]
        gather = lambda t, idx: t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
        kept_unit, drop_unit = gather(unit, keep), gather(unit, drop)
        target = (drop_unit @ kept_unit.transpose(1, 2)).argmax(dim=-1)  # (B, r) into keep
        psize = size[:, 1:]
        kept_size, drop_size = psize.gather(1, keep), psize.gather(1, drop)
        weighted = gather(patches, keep) * kept_size[..., None]
        weighted = weighted.scatter_add(
            1,
            target[..., None].expand(-1, -1, x.shape[-1]),
            gather(patches, drop) * drop_size[..., None],
        )
        new_size = kept_size.scatter_add(1, target, drop_size)
        merged = weighted / new_size[..., None]
        x = torch.cat([cls, merged], dim=1)
        size = torch.cat([size[:, :1], new_size], dim=1)
        new_index = torch.empty_like(order)
        new_index.scatter_(1, keep, torch.arange(keep.shape[1], device=x.device).expand_as(keep))
        new_index.scatter_(1, drop, target)
        return x, size, energy.gather(1, keep), new_index

    def _size_bias(self, size: torch.Tensor) -> torch.Tensor | None:
        """Proportional attention: a token standing for s patches gets log(s) more logit."""
        if bool((size == 1).all()):
            return None
        bias = size.log()[:, None, :].expand(-1, size.shape[1], -1)
        return bias.repeat_interleave(self.config.heads, dim=0)

    def encode_text(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.text(token_ids)
        return pooled, tokens @ self.text.text_projection


def _patch_embedding(cfg: MLIPConfig) -> nn.Module:
    """Pixels ``(B, 3, S, S)`` -> ``(B, width, grid, grid)``."""
    if cfg.stem == "patch":
        return nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size, bias=False)
    n_down = cfg.patch_size.bit_length() - 1
    channels = [3] + [max(cfg.width // 2 ** (n_down - i), 8) for i in range(1, n_down + 1)]
    layers: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise(channels):
        layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.GroupNorm(4, c_out), nn.GELU()]
    layers.append(nn.Conv2d(channels[-1], cfg.width, 1, bias=False))
    return nn.Sequential(*layers)


def _rank01(score: torch.Tensor) -> torch.Tensor:
    """Scores to their within-row rank in [0, 1], so two scales can be mixed fairly."""
    ranks = score.argsort(dim=1).argsort(dim=1).float()
    return ranks / max(score.shape[1] - 1, 1)


def build_mlip(config: MLIPConfig) -> MLIP:
    return MLIP(config)


def save_mlip(model: MLIP, directory: str | Path) -> None:
    """``directory/model.safetensors`` + ``directory/config.json`` (the folder is created)."""
    save_checkpoint(directory, model)


def load_mlip(directory: str | Path, device: str | torch.device = "cpu") -> MLIP:
    """The model saved by :func:`save_mlip`; a clear error names a missing or corrupt file."""
    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise MindpipeError(f"MLIP checkpoint file '{path}' is missing")
    try:
        config = _config_from_dict(json.loads(config_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise MindpipeError(f"MLIP config '{config_path}' is invalid: {exc}") from exc
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise MindpipeError(f"MLIP weights '{weights_path}' cannot be read: {exc}") from exc
    model = MLIP(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise MindpipeError(
            f"MLIP weights '{weights_path}' do not match its config: {exc}"
        ) from exc
    return model.to(device).eval()
