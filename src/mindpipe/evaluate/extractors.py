"""Feature networks for the image metrics: AlexNet layers 2 and 5, InceptionV3, EffNet-B1, SwAV.

Each extractor is a torchvision architecture, the layer MindEye2 reads, and its preprocessing
(square bilinear resize + ImageNet normalisation, as in shared/notes/metric_definitions.md). Real
weights come from a local file (a torchvision ``state_dict``; SwAV's ResNet-50 trunk); nothing
is downloaded. Without a file the documented fallback is the same architecture initialised from
seed 0: random features still rank pairs (two-way > 0.5 for good reconstructions) but the
numbers are not comparable with published ones, so results record which one was used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from mindpipe.evaluate.image_metrics import resize_images
from mindpipe.exceptions import MindpipeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ExtractorSpec:
    """Which network, which layer, at which input size."""

    build: Callable[[], torch.nn.Module]
    node: str
    size: int


SPECS: dict[str, ExtractorSpec] = {
    "alexnet2": ExtractorSpec(lambda: torchvision.models.alexnet(), "features.4", 256),
    "alexnet5": ExtractorSpec(lambda: torchvision.models.alexnet(), "features.11", 256),
    "inception": ExtractorSpec(
        lambda: torchvision.models.inception_v3(aux_logits=True, init_weights=True),
        "avgpool",
        342,
    ),
    "effnet": ExtractorSpec(lambda: torchvision.models.efficientnet_b1(), "avgpool", 255),
    "swav": ExtractorSpec(lambda: torchvision.models.resnet50(), "avgpool", 224),
}


class FeatureExtractor:
    """``extractor(images (N, H, W, 3) in [0, 1]) -> (N, D)`` features of one network layer."""

    def __init__(
        self,
        name: str,
        weights: str | Path | None = None,
        device: str = "cpu",
        size: int | None = None,
    ) -> None:
        if name not in SPECS:
            raise MindpipeError(f"unknown feature extractor {name!r}; known: {sorted(SPECS)}")
        spec = SPECS[name]
        torch.manual_seed(0)  # the documented fallback: fixed random initialisation
        net = spec.build().eval()
        self.pretrained = weights is not None
        if weights is not None:
            net.load_state_dict(load_state_dict(weights, name), strict=name != "swav")
        self.name, self.size, self.device = name, size or spec.size, torch.device(device)
        self.model = create_feature_extractor(
            net, train_return_nodes=[spec.node], eval_return_nodes=[spec.node]
        ).to(self.device)
        self.node = spec.node
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device)[:, None, None]
        self.std = torch.tensor(IMAGENET_STD, device=self.device)[:, None, None]

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch):
            chunk = resize_images(images[start : start + batch], self.size)
            x = torch.as_tensor(chunk, dtype=torch.float32, device=self.device).permute(0, 3, 1, 2)
            features = self.model((x - self.mean) / self.std)[self.node]
            out.append(features.flatten(1).cpu().numpy())
        return np.concatenate(out)


def load_state_dict(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    """A local torchvision/SwAV checkpoint, read without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise MindpipeError(f"weights for extractor {name!r} not found: '{path}'")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MindpipeError(
            f"cannot read weights for extractor {name!r} from '{path}': {exc}"
        ) from exc
    state = state.get("state_dict", state)
    return {k.removeprefix("module."): v for k, v in state.items()}
