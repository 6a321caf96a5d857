"""The ``reconstruct`` stage: images from fMRI through an unCLIP-style generator.

The generator (``models/unclip.py``) is trained on the TRAIN stimuli conditioned on their true
cached CLIP image embeddings, then fed each subject's test embeddings as decoded from fMRI by a
``litemind``-stage decoder, and once the true test embeddings (the ceiling: what a perfect
decoder would give). PixCorr and SSIM are scored against the stimuli and against a shuffled-pair
control (each reconstruction paired with the next test stimulus), so "looks like the stimulus"
is measured against "looks like a twin image in general".

As MindEye2 does, sampling can start from a blurry low-level reconstruction decoded from fMRI:
a ridge map from each subject's betas to the stimulus at ``image_size`` (penalty chosen on the
validation split's PixCorr), noised to ``blurry_strength`` of the DDIM steps (img2img), so the
layout comes from the retinotopic signal and the generator fills in what the embedding says.
The blurry images are saved and scored as a source of their own (``recon/blurry/``), and the
blurry decoders beside the generator (``model/blurry/<subject>/``).

The generator's validation score is the *val ceiling*: PixCorr/SSIM of the val stimuli rendered
from their true embeddings. With the blurry decoders' val PixCorr it is what the registry scores
a saved ``model/`` folder on (``score_saved_reconstruct``).

Training and sampling run at ``image_size`` (default 16 px for the 64 px default twin, so a
CPU-only run stays within a few minutes); reconstructions are upsampled bilinearly to the
stimulus size before scoring and saving.

With a local Stable unCLIP folder (``pretrained.unclip``, e.g. SD 2.1 unCLIP, whose image
encoder is CLIP ViT-L/14: use ``features.encoder: open_clip`` with the same CLIP), that pipeline
renders the reconstructions instead (``models/unclip_sampler.py``), from the same decoded
embeddings and blurry starts. The small generator is still trained and saved: NeuroClips draws
its keyframes with it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

from mindpipe.evaluate.image_metrics import pixcorr, ssim
from mindpipe.evaluate.predictions import find_decoders, load_predictions
from mindpipe.exceptions import DataError, ParamsError
from mindpipe.features.store import FeatureStore
from mindpipe.io import read_stimuli
from mindpipe.io.betas import SubjectBetas, list_subjects, load_betas
from mindpipe.io.images import load_images
from mindpipe.models.baselines import RidgeFit, load_ridge, save_ridge, select_ridge
from mindpipe.models.unclip import UnCLIPGenerator, config_for, load_generator, save_generator
from mindpipe.models.unclip_sampler import (
    embedding_width,
    load_pretrained_unclip,
    sample_pretrained_unclip,
)
from mindpipe.params import BaseParams, parse_section, section_dict
from mindpipe.recipes.contrastive import resolve_device
from mindpipe.stages import ModelCard
from mindpipe.utils import progress, write_json

logger = logging.getLogger(__name__)

BLURRY = "blurry"  # the low-level decode's own source folder and metrics prefix
SAVED_PARAMS = "reconstruct_params.json"  # beside the generator: how it was trained and sampled

#: ``render(embeddings (N, D) in CLIP units, blurry (N, 3, s, s) or None) -> uint8 images``
Render = Callable[[np.ndarray, torch.Tensor | None], np.ndarray]


@dataclasses.dataclass(frozen=True)
class PretrainedImage:
    """``reconstruct.pretrained``: a local Stable unCLIP folder; set, it renders the images."""

    unclip: str | None = None  # diffusers StableUnCLIPImg2ImgPipeline folder (SD 2.1 unCLIP)
    guidance_scale: float = 10.0  # classifier-free guidance on the embedding (the pipeline's)
    noise_level: int = 0  # unCLIP's noise augmentation of the embedding (0: none)
    render_size: int | None = None  # px; None: the pipeline's own (768 for SD 2.1 unCLIP)

    def __post_init__(self) -> None:
        if self.guidance_scale < 0:
            raise ParamsError(
                f"reconstruct.pretrained.guidance_scale must be >= 0; got {self.guidance_scale}"
            )
        if not 0 <= self.noise_level < 1000:  # unCLIP's embedding-noise schedule has 1000 steps
            raise ParamsError(
                f"reconstruct.pretrained.noise_level must be in [0, 1000); got {self.noise_level}"
            )
        if self.render_size is not None and (self.render_size < 8 or self.render_size % 8):
            raise ParamsError(
                "reconstruct.pretrained.render_size must be a positive multiple of 8 (the VAE's "
                f"downsampling); got {self.render_size}"
            )


@dataclasses.dataclass(frozen=True)
class ReconstructParams:
    """``reconstruct:`` section: generator size, training budget, sampler and grid."""

    decoder: str = "litemind"
    config: str = "micro"
    image_size: int = 16
    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    ema_decay: float = 0.99
    sample_steps: int = 10
    blurry_strength: float = 0.7  # img2img start from the low-level decode (1: pure noise)
    blurry_alphas: tuple[float, ...] = (1e2, 1e3, 1e4, 1e5)  # its ridge penalties (val PixCorr)
    grid_images: int = 8
    pretrained: PretrainedImage = dataclasses.field(default_factory=PretrainedImage)
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 < self.blurry_strength <= 1.0:
            raise ParamsError(
                f"'blurry_strength' must be in (0, 1]; got {self.blurry_strength} "
                "(reconstruct.blurry_strength)"
            )
        if not self.blurry_alphas or min(self.blurry_alphas) <= 0:
            raise ParamsError(
                f"'blurry_alphas' must be positive numbers; got {self.blurry_alphas} "
                "(reconstruct.blurry_alphas)"
            )


def to_unit_range(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, size, size)`` in [-1, 1] (area downsampling)."""
    x = torch.as_tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1.0
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    return x


def to_uint8(x: torch.Tensor, size: int) -> np.ndarray:
    """float ``(N, 3, h, w)`` in [-1, 1] -> uint8 ``(N, size, size, 3)`` (bilinear upsampling)."""
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
    x = ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def unit_rows(embedding: np.ndarray) -> torch.Tensor:
    """L2-normalised rows: decoders are trained on cosine similarity, so only direction counts."""
    e = torch.as_tensor(np.asarray(embedding, dtype=np.float32))
    return e / e.norm(dim=1, keepdim=True).clamp_min(1e-8)


def step_with_ema(
    loss: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    decay: float,
) -> None:
    """One optimiser step, then the EMA copy (what diffusion models sample with) moves along."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


def train_generator(
    images: torch.Tensor,
    embeddings: torch.Tensor,
    params: ReconstructParams,
    device: torch.device,
    seed: int,
) -> UnCLIPGenerator:
    """AdamW, learning rate cosine-decayed to 0; returns the EMA of the weights (eval mode).

    The EMA is what is sampled: a small generator trained for few steps jitters between
    minibatches, and averaging the last few hundred steps gives steadier reconstructions.
    """
    torch.manual_seed(seed)
    model = UnCLIPGenerator(config_for(params.image_size, embeddings.shape[1], params.config))
    model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=params.steps)
    gen = torch.Generator(device=device).manual_seed(seed)
    images, embeddings = images.to(device), embeddings.to(device)
    n = len(images)
    for _ in progress(range(params.steps), desc="reconstruct train"):
        idx = torch.randint(0, n, (min(params.batch_size, n),), generator=gen, device=device)
        loss = model.denoising_loss(images[idx], embeddings[idx], gen)
        step_with_ema(loss, opt, sched, model, ema, params.ema_decay)
    logger.info("reconstruct: final training loss %.4f", loss.item())
    return ema


def generate(
    model: UnCLIPGenerator,
    embeddings: torch.Tensor,
    params: ReconstructParams,
    out_size: int,
    seed: int,
    blurry: torch.Tensor | None = None,
    batch: int = 256,
) -> np.ndarray:
    """uint8 ``(N, out_size, out_size, 3)`` reconstructions, deterministic given ``seed``.

    ``blurry`` ``(N, 3, s, s)`` in [-1, 1] starts the sampler from those images noised to
    ``params.blurry_strength`` (img2img); without it sampling starts from noise.
    """
    device = next(model.parameters()).device
    chunks = [
        model.sample(
            embeddings[i : i + batch].to(device),
            params.sample_steps,
            seed + i,
            blurry=None if blurry is None else blurry[i : i + batch],
            strength=params.blurry_strength,
        )
        for i in range(0, len(embeddings), batch)
    ]
    return to_uint8(torch.cat(chunks), out_size)


def small_generator_renderer(
    model: UnCLIPGenerator, params: ReconstructParams, out_size: int, seed: int
) -> Render:
    """The trained generator, fed unit-length embeddings (it was trained on those)."""

    def render(embeddings: np.ndarray, blurry: torch.Tensor | None) -> np.ndarray:
        return generate(model, unit_rows(embeddings), params, out_size, seed, blurry=blurry)

    return render


def load_unclip_for(params: ReconstructParams, width: int, device: torch.device):
    """The local Stable unCLIP of ``params.pretrained.unclip``, checked against the features."""
    pipe = load_pretrained_unclip(params.pretrained.unclip, device)
    if embedding_width(pipe) != width:
        raise ParamsError(
            f"reconstruct.pretrained.unclip '{params.pretrained.unclip}' takes "
            f"{embedding_width(pipe)}-wide CLIP image embeddings but the cached features are "
            f"{width} wide: cache the features with the CLIP its image encoder was trained with "
            "(features.encoder: open_clip)"
        )
    return pipe


def pretrained_renderer(pipe, params: ReconstructParams, out_size: int, seed: int) -> Render:
    """Stable unCLIP, fed the embeddings in CLIP units."""
    p = params.pretrained

    def render(embeddings: np.ndarray, blurry: torch.Tensor | None) -> np.ndarray:
        images = sample_pretrained_unclip(
            pipe,
            torch.as_tensor(np.asarray(embeddings, dtype=np.float32)),
            blurry,
            steps=params.sample_steps,
            strength=params.blurry_strength,
            seed=seed,
            size=out_size,
            guidance_scale=p.guidance_scale,
            noise_level=p.noise_level,
            render_size=p.render_size,
        )
        return to_uint8(images, out_size)

    return render


def fit_blurry_decoder(
    sb: SubjectBetas, thumbnails: dict[int, torch.Tensor], alphas: tuple[float, ...]
) -> tuple[torch.Tensor, RidgeFit]:
    """Ridge from betas to the stimulus thumbnail; the penalty with the best val PixCorr.

    Returns the test split's blurry images ``(n_test, 3, s, s)`` in [-1, 1] (rows in
    ``sb.stim["test"]`` order) and the fit (``val_score``: its val PixCorr).
    """

    val_truth = thumbnail_pixels(thumbnails, sb.stim["val"])

    def val_pixcorr(pred: np.ndarray) -> float:
        return blurry_pixcorr(pred, val_truth)

    train = thumbnail_pixels(thumbnails, sb.stim["train"])
    fit = select_ridge(sb.betas["train"], train, sb.betas["val"], alphas, val_pixcorr)
    return blurry_images(fit, sb.betas["test"], thumbnails), fit


def blurry_images(fit: RidgeFit, betas: np.ndarray, thumbnails: dict) -> torch.Tensor:
    """The blurry decoder's images ``(N, 3, s, s)`` in [-1, 1]."""
    shape = next(iter(thumbnails.values())).shape
    pred = torch.as_tensor(fit.predict(betas), dtype=torch.float32)
    return pred.view(-1, *shape).clamp(-1, 1)


def thumbnail_pixels(thumbnails: dict[int, torch.Tensor], ids) -> np.ndarray:
    """Flattened ``(N, 3*s*s)`` thumbnails of stimuli ``ids``: the blurry decoder's targets."""
    return torch.stack([thumbnails[int(i)] for i in ids]).flatten(1).numpy()


def blurry_pixcorr(pred: np.ndarray, truth: np.ndarray) -> float:
    """PixCorr of flattened thumbnails (both ``(N, 3*s*s)`` in [-1, 1]) at the thumbnail size."""
    side = math.isqrt(truth.shape[1] // 3)
    shape = (3, side, side)
    return pixcorr(unit_images(pred, shape), unit_images(truth, shape), side)


def stimulus_thumbnails(
    images: np.ndarray, stimuli: pd.DataFrame, size: int
) -> dict[int, torch.Tensor]:
    """``{stim_id: (3, size, size) image in [-1, 1]}``: the blurry decoder's targets."""
    ids = stimuli["stim_id"].astype(int)
    return dict(zip(ids, to_unit_range(images, size), strict=True))


def unit_images(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Flattened ``(N, 3*s*s)`` images in [-1, 1] -> ``(N, s, s, 3)`` in [0, 1] for the metrics."""
    x = np.clip((np.asarray(flat).reshape(-1, *shape) + 1.0) / 2.0, 0.0, 1.0)
    return x.transpose(0, 2, 3, 1)


def score(recon: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """PixCorr and SSIM at the stimulus size, paired and against the shuffled-pair control.

    The control pairs reconstruction i with stimulus i+1 (a derangement, so no pair is right
    by chance); it is the score of an image that resembles the stimulus set but not the trial.
    """
    a, b = recon.astype(np.float64) / 255.0, truth.astype(np.float64) / 255.0
    shuffled = np.roll(b, 1, axis=0)
    size = truth.shape[1]
    return {
        "pixcorr": pixcorr(a, b, size),
        "pixcorr_shuffled": pixcorr(a, shuffled, size),
        "ssim": ssim(a, b, size),
        "ssim_shuffled": ssim(a, shuffled, size),
    }


def write_grid(
    path: Path,
    rows: list[np.ndarray],
    cell: int = 64,
    pad: int = 2,
    labels: list[str] | None = None,
) -> None:
    """One PNG, one row per uint8 image stack (same count each), cells upscaled to ``cell`` px;
    ``labels`` name the rows in a left margin."""
    n_rows, n_cols = len(rows), len(rows[0])
    side = cell + pad
    margin = 0 if labels is None else 8 + 6 * max(len(label) for label in labels)
    canvas = Image.new("RGB", (margin + n_cols * side + pad, n_rows * side + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, stack in enumerate(rows):
        if labels is not None:
            draw.text((4, pad + r * side + cell // 2), labels[r], fill="black", anchor="lm")
        for c, img in enumerate(stack):
            tile = Image.fromarray(img).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (margin + pad + c * side, pad + r * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def val_ceiling(
    render: Render, store: FeatureStore, data_dir: Path, stimuli: pd.DataFrame
) -> dict[str, float]:
    """PixCorr and SSIM of the val stimuli rendered from their true embeddings by the trained
    generator: how well it draws what a perfect decoder would give (its validation score)."""
    val = stimuli[stimuli["split"] == "val"]
    images = render(store.image_pooled(val["stim_id"].to_numpy()), None)
    scores = score(images, load_images(data_dir, val))
    return {f"val_ceiling.{k}": scores[k] for k in ("pixcorr", "ssim")}


def score_saved_reconstruct(
    model_dir: Path,
    *,
    data_dir: Path,
    betas_dir: Path,
    features_dir: Path,
    params: ReconstructParams,
    base: BaseParams,
    **_unused: Path,  # decoder_dir: the decoders are scored by their own stage
) -> ModelCard:
    """The saved generator's val-ceiling PixCorr and the blurry decoders' val PixCorr (mean
    over subjects, the score each penalty was chosen on). The signature is the generator's:
    CLIP image embeddings in, images out."""
    store = FeatureStore(features_dir)
    stimuli = read_stimuli(data_dir)
    images = load_images(data_dir, stimuli)
    generator = load_generator(Path(model_dir)).to(resolve_device(params.device))
    render = small_generator_renderer(generator, params, images.shape[1], base.seed)
    ceiling = val_ceiling(render, store, data_dir, stimuli)
    metrics = {"val_ceiling.pixcorr": ceiling["val_ceiling.pixcorr"]}
    thumbnails = stimulus_thumbnails(images, stimuli, params.image_size)
    fits, scores = {}, []
    for subject in list_subjects(betas_dir):
        fit, _ = load_ridge(Path(model_dir) / BLURRY / subject)
        sb = load_betas(betas_dir, subject)
        val = blurry_images(fit, sb.betas["val"], thumbnails).flatten(1).numpy()
        scores.append(blurry_pixcorr(val, thumbnail_pixels(thumbnails, sb.stim["val"])))
        fits[subject] = fit
    metrics[f"{BLURRY}.val_pixcorr"] = float(np.mean(scores))
    example = store.image_pooled(stimuli["stim_id"].to_numpy()[:2]).astype(np.float32)
    model = {"generator": generator, BLURRY: fits}
    return ModelCard(model, metrics, example, render(example, None))


def load_saved_params(model_dir: Path) -> ReconstructParams:
    """The params a saved generator was trained and sampled with (``reconstruct_fewshot``
    renders with them, so its images compare with this stage's)."""
    path = Path(model_dir) / SAVED_PARAMS
    if not path.is_file():
        raise DataError(f"'{path}' is missing: rerun the reconstruct stage")
    return parse_section(ReconstructParams, json.loads(path.read_text()), "reconstruct")


def decoded_embeddings(decoder_dir: Path, decoder: str) -> dict[str, dict[str, np.ndarray]]:
    """``{subject: predictions}`` of the chosen decoder; each must carry ``embedding``."""
    found = find_decoders("litemind", decoder_dir)
    if decoder not in found:
        raise ParamsError(
            f"reconstruct.decoder={decoder!r} has no predictions in '{decoder_dir}'; "
            f"available: {sorted(found)}"
        )
    preds = load_predictions(found[decoder])
    if not preds:
        raise DataError(f"'{found[decoder]}/predictions' holds no sub-*.npz files")
    for subject, arrays in preds.items():
        if "embedding" not in arrays:
            raise DataError(f"{decoder} predictions of {subject} lack the 'embedding' array")
    return preds


def reconstruct(
    *,
    data_dir: Path,
    betas_dir: Path,
    features_dir: Path,
    decoder_dir: Path,
    out_dir: Path,
    params: ReconstructParams,
    base: BaseParams,
) -> dict[str, float]:
    store = FeatureStore(features_dir)
    preds = decoded_embeddings(decoder_dir, params.decoder)
    device = resolve_device(params.device)
    stimuli = read_stimuli(data_dir)
    train = stimuli[stimuli["split"] == "train"]
    test = stimuli[stimuli["split"] == "test"].set_index("stim_id", drop=False)
    train_images = load_images(data_dir, train)
    size = train_images.shape[1]
    # a missing or mismatched pipeline stops the stage before any training
    pipe = None if params.pretrained.unclip is None else load_unclip_for(params, store.dim, device)

    start = time.perf_counter()
    model = train_generator(
        to_unit_range(train_images, params.image_size),
        unit_rows(store.image_pooled(train["stim_id"].to_numpy())),
        params,
        device,
        base.seed,
    )
    metrics: dict[str, float] = {"train_seconds": time.perf_counter() - start}
    save_generator(model.cpu(), out_dir / "model")
    write_json(out_dir / "model" / SAVED_PARAMS, section_dict(params))
    model.to(device)
    small = small_generator_renderer(model, params, size, base.seed)
    metrics |= val_ceiling(small, store, data_dir, stimuli)
    render = small if pipe is None else pretrained_renderer(pipe, params, size, base.seed)
    metrics["pretrained_unclip"] = float(pipe is not None)

    recon_dir = out_dir / "recon"
    (recon_dir / params.decoder).mkdir(parents=True)
    (recon_dir / BLURRY).mkdir()
    thumbnails = stimulus_thumbnails(load_images(data_dir, stimuli), stimuli, params.image_size)
    ids = np.asarray(next(iter(preds.values()))["stim_id"])  # the first subject's test order
    truth = load_images(data_dir, test.loc[ids])
    ceiling = render(store.image_pooled(ids), None)
    np.savez(recon_dir / "true_embedding.npz", stim_id=ids, images=ceiling)
    metrics |= {f"ceiling.{k}": v for k, v in score(ceiling, truth).items()}

    first_recon = None
    per_subject = []
    val_pixcorrs: list[float] = []  # the blurry decoders' (penalty selection)
    for subject, arrays in progress(preds.items(), desc="reconstruct subjects"):
        sb = load_betas(betas_dir, subject)
        sub_ids = np.asarray(arrays["stim_id"])
        if not np.array_equal(sub_ids, sb.stim["test"]):
            raise DataError(
                f"{params.decoder} predictions of {subject} are not in the test order of "
                f"'{betas_dir}/{subject}': rerun the litemind stage on these betas"
            )
        sub_truth = load_images(data_dir, test.loc[sub_ids])
        blurry, fit = fit_blurry_decoder(sb, thumbnails, params.blurry_alphas)
        save_ridge(out_dir / "model" / BLURRY / subject, fit, image_size=params.image_size)
        blurry_uint8 = to_uint8(blurry, size)
        recon = render(arrays["embedding"], blurry)
        for source, images in ((params.decoder, recon), (BLURRY, blurry_uint8)):
            np.savez(recon_dir / source / f"{subject}.npz", stim_id=sub_ids, images=images)
            scores = score(images, sub_truth)
            per_subject.append((source, scores))
            metrics |= {f"{source}.{subject}.{k}": v for k, v in scores.items()}
        metrics[f"{BLURRY}.{subject}.alpha"] = fit.alpha
        metrics[f"{BLURRY}.{subject}.val_pixcorr"] = fit.val_score
        val_pixcorrs.append(fit.val_score)
        first_recon = (recon, blurry_uint8) if first_recon is None else first_recon
    metrics[f"{BLURRY}.val_pixcorr"] = float(np.mean(val_pixcorrs))
    for source in (params.decoder, BLURRY):
        rows = [s for name, s in per_subject if name == source]
        for key in rows[0]:
            metrics[f"{source}.{key}"] = float(np.mean([r[key] for r in rows]))

    k = min(params.grid_images, len(ids))
    recon, blurry_uint8 = first_recon
    write_grid(
        out_dir / "plots" / "grid.png",
        [truth[:k], ceiling[:k], blurry_uint8[:k], recon[:k]],
        labels=["stimulus", "true embedding", BLURRY, params.decoder],
    )
    logger.info(
        "reconstruct: PixCorr ceiling %.3f (shuffled %.3f), %s %.3f; SSIM ceiling %.3f "
        "(shuffled %.3f), %s %.3f",
        metrics["ceiling.pixcorr"],
        metrics["ceiling.pixcorr_shuffled"],
        params.decoder,
        metrics[f"{params.decoder}.pixcorr"],
        metrics["ceiling.ssim"],
        metrics["ceiling.ssim_shuffled"],
        params.decoder,
        metrics[f"{params.decoder}.ssim"],
    )
    return metrics
