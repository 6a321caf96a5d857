"""Image metrics of the ``reconstruct`` stage's images, for the comparison table.

MindEye2's suite (shared/notes/metric_definitions.md): PixCorr and SSIM at 425 px, two-way
identification on AlexNet layers 2 and 5 and InceptionV3, correlation distance on EfficientNet-B1
and SwAV. Which networks run is a param (each costs a forward pass over every reconstruction on
a CPU); weights come from local files, else the extractors' documented seed-0 fallback, and the
results say which. Scored per subject, then averaged, like the retrieval metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mindpipe.evaluate.extractors import FeatureExtractor
from mindpipe.evaluate.image_metrics import (
    MINDEYE2_SIZE,
    correlation_distance,
    pixcorr,
    resize_images,
    ssim,
    two_way_identification,
)
from mindpipe.exceptions import DataError
from mindpipe.io import read_stimuli
from mindpipe.io.images import load_images

TWO_WAY = ("alexnet2", "alexnet5", "inception")  # higher is better, chance 0.5
DISTANCE = ("effnet", "swav")  # lower is better
CEILING = "true_embedding"  # the generator fed the stimuli's own CLIP embeddings


def load_reconstructions(recon_dir: Path) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """``{source: {subject: {"stim_id", "images"}}}`` from ``recon/<decoder>/sub-*.npz`` and
    the ceiling ``recon/true_embedding.npz`` (as subject ``all``)."""
    recon_dir = Path(recon_dir)
    if not recon_dir.is_dir():
        raise DataError(f"no reconstructions folder '{recon_dir}'")
    found: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    ceiling = recon_dir / f"{CEILING}.npz"
    if ceiling.is_file():
        found[CEILING] = {"all": _read(ceiling)}
    for folder in sorted(p for p in recon_dir.iterdir() if p.is_dir()):
        subjects = {f.stem: _read(f) for f in sorted(folder.glob("sub-*.npz"))}
        if subjects:
            found[folder.name] = subjects
    if not found:
        raise DataError(f"'{recon_dir}' holds no reconstructions (<decoder>/sub-*.npz)")
    return found


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        if "stim_id" not in npz or "images" not in npz:
            raise DataError(f"'{path}' lacks 'stim_id' or 'images'")
        return {"stim_id": npz["stim_id"], "images": npz["images"]}


class ReconstructionScorer:
    """Scores reconstructions against the stimuli; stimulus features are computed once."""

    def __init__(
        self,
        data_dir: Path,
        extractors: tuple[str, ...],
        weights_dir: Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.stimuli = read_stimuli(data_dir).set_index("stim_id", drop=False)
        self.networks = {
            name: FeatureExtractor(name, _weights_file(weights_dir, name), device)
            for name in extractors
        }
        self._truth_features: dict[tuple[str, bytes], np.ndarray] = {}

    @property
    def pretrained(self) -> dict[str, bool]:
        return {name: net.pretrained for name, net in self.networks.items()}

    def score(
        self, stim_id: np.ndarray, images: np.ndarray
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Metrics of the reconstructions, and of the shuffled-pair control.

        The control scores reconstruction i against stimulus i-1 (a derangement): what any
        on-distribution image gets. It reuses the reconstructions' features, and pixel metrics
        run in chunks so memory stays bounded at 425 px.
        """
        truth = load_images(self.data_dir, self.stimuli.loc[stim_id]).astype(np.float64) / 255.0
        recon = images.astype(np.float64) / 255.0
        if recon.shape != truth.shape or len(recon) < 2:
            raise DataError(f"reconstructions {recon.shape} vs stimuli {truth.shape}")
        control_truth = np.roll(truth, 1, axis=0)
        paired = _pixel_metrics(recon, truth)
        control = _pixel_metrics(recon, control_truth)
        for name, net in self.networks.items():
            key = (name, np.asarray(stim_id).tobytes())
            if key not in self._truth_features:
                self._truth_features[key] = net(truth)
            pred, real = net(recon), self._truth_features[key]
            metric = correlation_distance if name in DISTANCE else two_way_identification
            paired[name] = metric(pred, real)
            control[name] = metric(pred, np.roll(real, 1, axis=0))
        return paired, control


def _pixel_metrics(recon: np.ndarray, truth: np.ndarray, chunk: int = 50) -> dict[str, float]:
    """PixCorr and SSIM at MindEye2's 425 px, averaged over images ``chunk`` at a time."""
    totals = {"pixcorr": 0.0, "ssim": 0.0}
    for start in range(0, len(recon), chunk):
        a = resize_images(recon[start : start + chunk], MINDEYE2_SIZE)
        b = resize_images(truth[start : start + chunk], MINDEYE2_SIZE)
        totals["pixcorr"] += pixcorr(a, b) * len(a)
        totals["ssim"] += ssim(a, b) * len(a)
    return {k: v / len(recon) for k, v in totals.items()}


def _weights_file(weights_dir: Path | None, name: str) -> Path | None:
    """``<weights_dir>/<name>.safetensors`` (or ``.pth``); None without a folder (the fallback).

    A folder that lacks a requested network's file is an error, not a quiet fallback.
    """
    if weights_dir is None:
        return None
    candidates = [Path(weights_dir) / f"{name}{suffix}" for suffix in (".safetensors", ".pth")]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(
        f"evaluate.extractor_weights_dir: no weights for {name!r}; expected "
        f"'{candidates[0]}' or '{candidates[1]}'"
    )
