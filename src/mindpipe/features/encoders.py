"""The CLIPs the feature cache can use: the project's MLIP checkpoint or local open_clip weights.

An encoder turns images and texts into ``(pooled (B, D), tokens (B, T, D))`` float32 arrays in
the joint space, and has a ``fingerprint``: a hash of its weight files and preprocessing, which
keys the cache (a changed model never reuses old features). Nothing is downloaded: open_clip gets
a local file path, which is checked first (open_clip would otherwise try its model hub).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from mindpipe.exceptions import MindpipeError
from mindpipe.utils import hash_file, hash_obj


class ImageTextEncoder(Protocol):
    name: str
    dim: int
    fingerprint: str

    def encode_images(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...

    def encode_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]: ...


def _numpy(pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    return tuple(t.detach().float().cpu().numpy() for t in pair)  # type: ignore[return-value]


class MLIPEncoder:
    """The ``mlip`` stage's model (``<mlip_dir>/model/``)."""

    def __init__(self, model_dir: str | Path, device: torch.device) -> None:
        from mindpipe.models.mlip import load_mlip

        model_dir = Path(model_dir)
        self.model = load_mlip(model_dir, device)
        self.device = device
        self.name = "mlip"
        self.dim = self.model.config.embed_dim
        self.fingerprint = hash_obj(
            {
                "encoder": self.name,
                "weights": hash_file(model_dir / "model.safetensors"),
                "config": json.loads((model_dir / "config.json").read_text()),
                # tokens are unmerged into grid order; caches from merged-order tokens are stale
                "tokens": "grid",
            }
        )

    @torch.no_grad()
    def encode_images(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from mindpipe.models.mlip import preprocess_images

        pixels = preprocess_images(images, self.model.config).to(self.device)
        return _numpy(self.model.encode_image(pixels))

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        from mindpipe.models.mlip import tokenize

        return _numpy(self.model.encode_text(tokenize(texts, self.model.config).to(self.device)))


class OpenCLIPEncoder:
    """Real pretrained open_clip weights (e.g. ViT-L-14, ViT-bigG-14) from a local file."""

    def __init__(self, model_name: str, weights: str | Path, device: torch.device) -> None:
        import open_clip

        weights = Path(weights)
        if not weights.is_file():
            raise MindpipeError(
                f"open_clip weights not found: '{weights}' (features.open_clip_weights must be a "
                "local checkpoint file; nothing is downloaded)"
            )
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=str(weights), weights_only=True
            )
        except Exception as exc:  # torch/safetensors/open_clip raise many types for bad files
            raise MindpipeError(
                f"cannot load open_clip {model_name!r} from '{weights}': {exc}"
            ) from exc
        self.model = model.to(device).eval()
        self.model.visual.output_tokens = True
        if hasattr(self.model, "text"):  # CustomTextCLIP: the text tower returns tokens too
            self.model.text.output_tokens = True
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device
        self.name = f"open_clip:{model_name}"
        self.dim = int(self.encode_texts(["a"])[0].shape[-1])
        self.fingerprint = hash_obj(
            {"encoder": self.name, "weights": hash_file(weights), "preprocess": repr(preprocess)}
        )

    @torch.no_grad()
    def encode_images(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image

        pixels = torch.stack([self.preprocess(Image.fromarray(img)) for img in images])
        pooled, tokens = self.model.visual(pixels.to(self.device))
        proj = self.model.visual.proj
        return _numpy((pooled, tokens @ proj if proj is not None else tokens))

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = self.tokenizer(texts).to(self.device)
        model = self.model
        if hasattr(model, "text"):
            pooled, tokens = model.text(ids)
            proj = model.text.text_projection
        else:  # the standard CLIP class only returns the pooled embedding: redo its tower
            x = model.token_embedding(ids) + model.positional_embedding
            tokens = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
            pooled, proj = model.encode_text(ids), model.text_projection
        tokens = proj(tokens) if isinstance(proj, torch.nn.Linear) else tokens @ proj
        return _numpy((pooled, tokens))


@dataclasses.dataclass(frozen=True)
class EncoderChoice:
    kind: str  # "mlip" or "open_clip"
    open_clip_model: str
    open_clip_weights: str | None


def build_encoder(choice: EncoderChoice, mlip_dir: Path, device: torch.device) -> ImageTextEncoder:
    if choice.kind == "mlip":
        return MLIPEncoder(Path(mlip_dir) / "model", device)
    if choice.open_clip_weights is None:
        raise MindpipeError(
            "features.encoder is 'open_clip' but features.open_clip_weights is null"
        )
    return OpenCLIPEncoder(choice.open_clip_model, choice.open_clip_weights, device)
