"""The ``neuroclips`` stage: fMRI -> video with NeuroClips' two reconstructors and a video model.

Per subject, on the dataset's video paradigm (``data/video``, CC2017-like clips at 8 FPS):

1. **Perception Reconstructor** (``models/perception.py``): fMRI -> a blurry low-resolution
   video (3 FPS, ``blurry_size`` px) fitted to the downsampled clips (``perception.loss``);
   epoch chosen on val.
2. **Semantics Reconstructor**: fMRI -> the CLIP embedding of the clip's keyframe (its first
   frame), MindEye's residual MLP trained contrastively (``recipes/contrastive.py``, epoch
   chosen on val); the keyframe image comes from the ``reconstruct`` stage's unCLIP generator,
   started from the first blurry frame, and the caption by retrieval among the training captions.
3. **Video synthesis** (``models/video_diffusion.py``): an AnimateDiff-style motion UNet with a
   SparseCtrl-style control net, trained once on the training clips (not on any subject), is
   conditioned on the keyframe and the blurry video and prompted with the decoded embedding;
   sampling starts from the blurry video noised to ``video.blurry_strength`` (alpha guidance).

4. **Multi-fMRI fusion**: where the decoded embeddings of neighbouring clips are close enough
   (a cut chosen on val, against the twin's scene labels), the later clip is generated again
   from the earlier one's last frame, so one video runs on for up to ``fusion_max_clips``
   clips (6 s at 3). NeuroClips judges "same class" with CLIP the same way.

Test clips are scored (``evaluate/video_metrics.py``) for the full model, the fused videos,
the paper's ablations (no keyframe, no blurry video), the blurry video alone and a retrieval
baseline that shows the training clip whose keyframe embedding is nearest to the decoded one;
SSIM and ST-SSIM also clip by clip, the full model against each of the others
(``evaluate/paired.py``).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers import AnimateDiffSparseControlNetPipeline
from PIL import Image

from mindpipe.evaluate import video_metrics as vm
from mindpipe.evaluate.paired import paired_difference
from mindpipe.evaluate.retrieval import cosine_similarity
from mindpipe.exceptions import DataError, ParamsError
from mindpipe.features.encoders import MLIPEncoder
from mindpipe.features.store import FeatureStore
from mindpipe.io import VIDEO_DATASET, read_stimuli, video_dataset
from mindpipe.io.betas import load_betas
from mindpipe.io.images import load_video
from mindpipe.models.animatediff_sampler import sample_pretrained
from mindpipe.models.checkpoint import load_checkpoint, save_checkpoint
from mindpipe.models.frame_classifier import FrameClassifierConfig, fit_frame_classifier
from mindpipe.models.mindeye_mlp import MindEyeMLP, MindEyeMLPConfig
from mindpipe.models.perception import PerceptionConfig, PerceptionReconstructor
from mindpipe.models.unclip import load_generator
from mindpipe.models.video_diffusion import (
    VideoDiffusion,
    config_for,
    load_pretrained_animatediff,
    save_video_model,
)
from mindpipe.params import BaseParams
from mindpipe.recipes.contrastive import (
    TrainConfig,
    fit_contrastive,
    predict,
    resolve_device,
    val_top1,
)
from mindpipe.recipes.reconstruct import step_with_ema, unit_rows, write_grid
from mindpipe.stages import ModelCard
from mindpipe.utils import progress, write_json

logger = logging.getLogger(__name__)

VARIANTS = ("neuroclips", "fused", "no_keyframe", "no_blurry", "blurry_only", "retrieval")
PAIRED_METRICS = ("ssim", "st_ssim")  # compared clip by clip: the full model vs each variant
METRIC_FPS = 3  # NeuroClips scores its 8-FPS videos at 3 FPS (6 frames per 2-s clip)


@dataclasses.dataclass(frozen=True)
class PerceptionTrain:
    hidden: int = 256
    channels: int = 32
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    loss: str = "mse"  # or "l1" (NeuroClips, on VAE latents)


@dataclasses.dataclass(frozen=True)
class VideoTrain:
    config: str = "tiny"  # models/video_diffusion.py config_for names
    steps: int = 1500
    batch_size: int = 8
    lr: float = 2e-3
    ema_decay: float = 0.99
    sample_steps: int = 10
    blurry_strength: float = 0.8  # alpha guidance: start from the blurry video noised this much
    blurry_contrast_min: float = 0.3  # training blurry videos get a random contrast in [this, 1]


@dataclasses.dataclass(frozen=True)
class PretrainedVideo:
    """Local diffusers folders of the paper's video model; all three set = use them."""

    stable_diffusion: str | None = None  # SD-1.5 pipeline folder (NeuroClips: RealisticVision)
    motion_adapter: str | None = None  # AnimateDiff v3 MotionAdapter
    sparsectrl: str | None = None  # SparseCtrl RGB SparseControlNetModel
    guidance_scale: float = 7.5  # classifier-free guidance on the decoded caption

    @property
    def enabled(self) -> bool:
        return self.stable_diffusion is not None


@dataclasses.dataclass(frozen=True)
class NeuroClipsParams:
    """``neuroclips:`` section."""

    subjects: tuple[str, ...] = ("sub-01",)
    blurry_size: int = 8
    perception: PerceptionTrain = dataclasses.field(default_factory=PerceptionTrain)
    semantics_hidden: int = 512
    semantics_blocks: int = 2
    semantics: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    video: VideoTrain = dataclasses.field(default_factory=VideoTrain)
    pretrained: PretrainedVideo = dataclasses.field(default_factory=PretrainedVideo)
    keyframe_steps: int = 10
    keyframe_strength: float = 0.7  # img2img from the first blurry frame (1: from noise)
    classifier_epochs: int = 100
    n_way: tuple[int, ...] = (2, 50)
    n_way_trials: int = 100
    gif_clips: int = 4
    fusion_max_clips: int = 3  # multi-fMRI fusion: clips one video may span (3: 6 s; 1: off)
    fusion_threshold: float | None = None  # neighbour cosine; None: chosen on val scene labels
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.subjects:
            raise ParamsError("neuroclips.subjects: name at least one subject")
        for name, value in (
            ("video.blurry_strength", self.video.blurry_strength),
            ("keyframe_strength", self.keyframe_strength),
        ):
            if not 0.0 < value <= 1.0:
                raise ParamsError(f"neuroclips.{name} must be in (0, 1]; got {value}")
        folders = dataclasses.asdict(self.pretrained)
        del folders["guidance_scale"]
        missing = [k for k, v in folders.items() if v is None]
        if missing and len(missing) < len(folders):
            raise ParamsError(
                f"neuroclips.pretrained: set all of {sorted(folders)} or none; missing {missing}"
            )
        if not 0.0 <= self.video.blurry_contrast_min <= 1.0:
            raise ParamsError(
                f"neuroclips.video.blurry_contrast_min must be in [0, 1]; got "
                f"{self.video.blurry_contrast_min}"
            )
        if self.perception.loss not in ("mse", "l1"):
            raise ParamsError(
                f"neuroclips.perception.loss must be 'mse' or 'l1'; got {self.perception.loss!r}"
            )
        if self.fusion_max_clips < 1:
            raise ParamsError(
                f"neuroclips.fusion_max_clips must be >= 1; got {self.fusion_max_clips}"
            )
        if self.blurry_size < 4:
            raise ParamsError(f"neuroclips.blurry_size must be >= 4; got {self.blurry_size}")


# ------------------------------------------------------------------------------------------------
# Video tensors
# ------------------------------------------------------------------------------------------------
def load_clips(video_dir: Path, files: list[str]) -> np.ndarray:
    """Every clip as uint8 ``(N, F, H, W, 3)``; clips of another shape than the first are named."""
    clips = [load_video(video_dir, f) for f in progress(files, "load clips")]
    odd = [f for f, c in zip(files, clips, strict=True) if c.shape != clips[0].shape]
    if odd:
        raise DataError(
            f"clips in '{video_dir}' differ in frames or size: {files[0]} is "
            f"{clips[0].shape}, but {odd[:3]} are not (NeuroClips needs one clip length)"
        )
    return np.stack(clips)


def clip_fps(n_frames: int) -> int:
    """Frames per second of a clip: clips last one TR of 2 s (CC2017 and the twin)."""
    return round(n_frames / 2.0)


def to_unit(clips: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, F, H, W, 3)`` -> float ``(N, F, 3, H, W)`` in [-1, 1]."""
    return torch.as_tensor(clips, dtype=torch.float32).permute(0, 1, 4, 2, 3) / 127.5 - 1.0


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """float ``(N, F, 3, H, W)`` in [-1, 1] -> uint8 ``(N, F, H, W, 3)``."""
    x = ((video.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 1, 3, 4, 2).cpu().numpy()


def resize_frames(video: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, F, 3, H, W)`` -> ``(N, F, 3, size, size)``: area to shrink, bilinear to grow."""
    n, f = video.shape[:2]
    mode = "area" if size < video.shape[-1] else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    out = torch.nn.functional.interpolate(
        video.flatten(0, 1), size=(size, size), mode=mode, **kwargs
    )
    return out.view(n, f, 3, size, size)


def blurry_target(video: torch.Tensor, fps: int, size: int) -> torch.Tensor:
    """The Perception Reconstructor's target: 3-FPS frames at ``size`` px."""
    idx = torch.as_tensor(vm.frame_indices(video.shape[1], fps, METRIC_FPS))
    return resize_frames(video[:, idx], size)


def expand_blurry(blurry: torch.Tensor, n_frames: int, size: int) -> torch.Tensor:
    """Blurry 3-FPS frames -> ``n_frames`` frames at ``size`` px, linear in time (NeuroClips)."""
    t = torch.linspace(0, blurry.shape[1] - 1, n_frames)
    lo = t.floor().long().clamp(max=blurry.shape[1] - 1)
    hi = (lo + 1).clamp(max=blurry.shape[1] - 1)
    w = (t - lo)[None, :, None, None, None]
    frames = (1 - w) * blurry[:, lo] + w * blurry[:, hi]
    return resize_frames(frames, size)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def fit_perception(
    train: tuple[np.ndarray, torch.Tensor],
    val: tuple[np.ndarray, torch.Tensor],
    params: NeuroClipsParams,
    device: torch.device,
    seed: int,
) -> tuple[PerceptionReconstructor, float]:
    """Train the Perception Reconstructor; returns the model of the best val PixCorr, and it.

    NeuroClips regresses SD-VAE latents with L1 and keeps the checkpoint of best PixCorr (on its
    test set; here on val). On RGB pixels L1's median is the background wherever a shape may or
    may not be, so ``loss: mse`` (the default) is used: its mean keeps a faint blob of the right
    colour where the shape probably is, which is what the video model can build on.
    """
    cfg = params.perception
    torch.manual_seed(seed)
    target = train[1]
    model = PerceptionReconstructor(
        PerceptionConfig(
            n_voxels=train[0].shape[1],
            n_frames=target.shape[1],
            out_size=target.shape[-1],
            hidden=cfg.hidden,
            channels=cfg.channels,
        )
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x = torch.as_tensor(np.array(train[0], np.float32))  # a copy: betas may be read-only mmaps
    steps = max(len(x) // cfg.batch_size, 1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    best = (-float("inf"), copy.deepcopy(model.state_dict()))
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for k in range(steps):
            idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            error = model(x[idx].to(device)) - target[idx].to(device)
            loss = error.square().mean() if cfg.loss == "mse" else error.abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        score = pixcorr(perceive(model, val[0], device), val[1])
        if score > best[0]:
            best = (score, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[1])
    return model.eval(), best[0]


def pixcorr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean Pearson correlation of each predicted video's pixels with its target's (PixCorr)."""
    p, t = pred.flatten(1), target.flatten(1)
    p, t = p - p.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    return (p * t).sum(1).div(p.norm(dim=1) * t.norm(dim=1) + 1e-8).mean().item()


@torch.no_grad()
def perceive(
    model: PerceptionReconstructor, voxels: np.ndarray, device: torch.device
) -> torch.Tensor:
    model.eval()
    x = torch.as_tensor(np.array(voxels, np.float32))
    return torch.cat([model(x[i : i + 256].to(device)).cpu() for i in range(0, len(x), 256)])


def fit_video_model(
    clips: torch.Tensor,
    embeddings: torch.Tensor,
    fps: int,
    params: NeuroClipsParams,
    device: torch.device,
    seed: int,
    keyframe_size: int,
) -> VideoDiffusion:
    """Train the video model on clips with their true conditions; returns the EMA weights.

    Conditions are what the reconstructors approximate: the clip's first frame at the keyframe
    generator's resolution (keyframe), the clip reduced to the Perception Reconstructor's target
    and expanded back (blurry video), and the keyframe's CLIP embedding (the prompt). Decoded
    blurry videos regress to the mean (about half the contrast of the targets on the twin), so
    each training clip's blurry condition gets a random contrast in [blurry_contrast_min, 1]
    (condition augmentation, as cascaded diffusion models do for their low-resolution inputs).
    """
    cfg = params.video
    torch.manual_seed(seed)
    n, f, _, _, size = clips.shape
    model = VideoDiffusion(config_for(size, f, embeddings.shape[1], cfg.config)).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    gen = torch.Generator(device=device).manual_seed(seed)
    blurry = expand_blurry(blurry_target(clips, fps, params.blurry_size), f, size)
    keyframes = resize_frames(resize_frames(clips[:, :1], keyframe_size), size)[:, 0]
    for _ in progress(range(cfg.steps), desc="neuroclips video model"):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen, device=device).cpu()
        video = clips[idx].to(device)
        loss = model.denoising_loss(
            video,
            embeddings[idx].to(device),
            keyframes[idx].to(device),
            lower_contrast(blurry[idx].to(device), cfg.blurry_contrast_min, gen),
            gen,
        )
        step_with_ema(loss, opt, sched, model, ema, cfg.ema_decay)
    logger.info("neuroclips: video model final loss %.4f", loss.item())
    return ema


def lower_contrast(video: torch.Tensor, low: float, gen: torch.Generator) -> torch.Tensor:
    """Each video ``(B, F, 3, H, W)`` pulled towards its mean colour by a factor in [low, 1]."""
    factor = low + (1 - low) * torch.rand(len(video), generator=gen, device=video.device)
    mean = video.mean(dim=(1, 3, 4), keepdim=True)
    return mean + factor[:, None, None, None, None] * (video - mean)


def _video_model(
    clips: torch.Tensor,
    embeddings: torch.Tensor,
    fps: int,
    params: NeuroClipsParams,
    device: torch.device,
    base: BaseParams,
    keyframe_size: int,
) -> VideoDiffusion | AnimateDiffSparseControlNetPipeline:
    """The real AnimateDiff + SparseCtrl from local folders when configured, else our own."""
    p = params.pretrained
    if p.enabled:
        logger.info("neuroclips: AnimateDiff + SparseCtrl from %s", p.stable_diffusion)
        return load_pretrained_animatediff(
            p.stable_diffusion, p.motion_adapter, p.sparsectrl, device=str(device)
        )
    return fit_video_model(clips, embeddings, fps, params, device, base.seed, keyframe_size)


@torch.no_grad()
def synthesize(
    model: VideoDiffusion | AnimateDiffSparseControlNetPipeline,
    embedding: torch.Tensor,
    captions: list[str],
    keyframe: torch.Tensor | None,
    blurry: torch.Tensor | None,
    params: NeuroClipsParams,
    seed: int,
    clip_shape: tuple[int, int],
    batch: int = 32,
) -> torch.Tensor:
    """Videos ``(N, frames, 3, size, size)`` for ``clip_shape = (frames, size)``.

    ``None`` leaves a condition out (the ablations).

    The project's model is prompted with the decoded embedding, the real pipeline (local
    weights) with the decoded caption, as NeuroClips prompts AnimateDiff.
    """
    strength = params.video.blurry_strength if blurry is not None else 1.0
    if isinstance(model, AnimateDiffSparseControlNetPipeline):
        return sample_pretrained(
            model,
            captions,
            keyframe,
            blurry,
            steps=params.video.sample_steps,
            strength=strength,
            seed=seed,
            size=clip_shape[1],
            n_frames=clip_shape[0],
            guidance_scale=params.pretrained.guidance_scale,
        )
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(embedding), batch):
        part = slice(i, i + batch)
        out.append(
            model.sample(
                embedding[part].to(device),
                keyframe=None if keyframe is None else keyframe[part].to(device),
                blurry=None if blurry is None else blurry[part].to(device),
                steps=params.video.sample_steps,
                seed=seed + i,
                strength=strength,
            ).cpu()
        )
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------
# Multi-fMRI fusion: one video across neighbouring clips of the same scene
# ------------------------------------------------------------------------------------------------
def previous_clip(ids: np.ndarray) -> np.ndarray:
    """Index in ``ids`` of the clip played just before each one (stim_id - 1); -1: none."""
    where = {int(s): i for i, s in enumerate(ids)}
    return np.array([where.get(int(s) - 1, -1) for s in ids], dtype=np.int64)


def neighbour_similarity(embedding: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """Cosine of each clip's decoded embedding with its predecessor's (nan without one)."""
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True).clip(1e-12)
    sim = np.einsum("nd,nd->n", unit, unit[np.maximum(prev, 0)])
    return np.where(prev >= 0, sim, np.nan)


def choose_threshold(similarity: np.ndarray, same: np.ndarray) -> float:
    """The cut on neighbour similarity that best tells a scene going on from a new one
    (accuracy over the pairs given), midway between the similarities it separates; ties go
    to the higher cut, which fuses less."""
    values = np.unique(similarity)
    cuts = np.append(values, np.inf)
    accuracy = np.array([np.mean((similarity >= c) == same) for c in cuts])
    best = len(cuts) - 1 - int(np.argmax(accuracy[::-1]))
    if best == 0 or best == len(values):
        return float(cuts[best])
    return float((values[best - 1] + values[best]) / 2)


def fusion_places(prev: np.ndarray, continues: np.ndarray, max_clips: int) -> np.ndarray:
    """Each clip's place in its fused video: 0 opens one; ``k`` follows the clip at ``k - 1``
    where ``continues`` links them and the video holds fewer than ``max_clips`` clips."""
    linked = continues & (prev >= 0)
    place = np.zeros(len(prev), dtype=np.int64)
    while True:  # settles after as many passes as the longest linked run has clips
        new = np.where(linked, place[np.maximum(prev, 0)] + 1, 0)
        new[new >= max_clips] = 0
        if np.array_equal(new, place):
            return place
        place = new


def fuse_videos(
    videos: torch.Tensor,
    prev: np.ndarray,
    place: np.ndarray,
    regenerate: Callable[[np.ndarray, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """NeuroClips' fusion: a clip that continues a scene is generated again with the last frame
    of the previous (already fused) clip as its keyframe; ``regenerate(rows, keyframes)``."""
    fused = videos.clone()
    for p in range(1, int(place.max(initial=0)) + 1):
        rows = np.flatnonzero(place == p)
        fused[rows] = regenerate(rows, fused[prev[rows], -1])
    return fused


def resynthesize(
    rows: np.ndarray,
    keyframes: torch.Tensor,
    *,
    model: VideoDiffusion | AnimateDiffSparseControlNetPipeline,
    embedding: torch.Tensor,
    captions: np.ndarray,
    blurry: torch.Tensor,
    params: NeuroClipsParams,
    seed: int,
    clip_shape: tuple[int, int],
) -> torch.Tensor:
    """``synthesize`` for clips ``rows`` with other keyframes (``fuse_videos``' callback)."""
    return synthesize(
        model,
        embedding[rows],
        list(captions[rows]),
        keyframes,
        blurry[rows],
        params,
        seed,
        clip_shape,
    )


def fused_scenes(prev: np.ndarray, place: np.ndarray) -> list[list[int]]:
    """Rows of each fused video, in playing order (a single clip is a video of one)."""
    following = {int(prev[i]): i for i in np.flatnonzero(place > 0)}
    scenes = []
    for first in np.flatnonzero(place == 0):
        rows = [int(first)]
        while rows[-1] in following:
            rows.append(following[rows[-1]])
        scenes.append(rows)
    return scenes


def fusion_decisions(
    embedding: np.ndarray,
    ids: np.ndarray,
    val: tuple[np.ndarray, np.ndarray],
    table: pd.DataFrame,
    params: NeuroClipsParams,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Which test clips continue their predecessor's scene, from decoded embeddings.

    The cut on neighbour similarity is ``fusion_threshold`` or, when the stimulus table has
    ``scene`` labels (the twin), the one that best matches them on val; with neither (CC2017
    has no shot labels) fusion is off, and says so. Returns ``prev``, each clip's place in its
    fused video, and the decisions' scores against the true scenes.
    """
    threshold = params.fusion_threshold
    has_scenes = "scene" in table.columns
    prev = previous_clip(ids)
    if threshold is None and not has_scenes:
        logger.warning(
            "neuroclips: fusion off: the stimulus table has no 'scene' column to choose the cut "
            "on, and neuroclips.fusion_threshold is not set"
        )
        return prev, np.zeros(len(ids), dtype=np.int64), {"enabled": 0.0, "fused_share": 0.0}
    scores: dict[str, float] = {"enabled": 1.0}
    if has_scenes:
        val_embedding, val_ids = val
        val_prev = previous_clip(val_ids)
        pairs = val_prev >= 0
        val_same = _same_scene(table, val_ids, val_prev)[pairs]
        val_sim = neighbour_similarity(val_embedding, val_prev)[pairs]
        if threshold is None:
            threshold = choose_threshold(val_sim, val_same)
        scores["val_accuracy"] = float(np.mean((val_sim >= threshold) == val_same))
    continues = neighbour_similarity(embedding, prev) >= threshold  # nan (no pair): False
    place = fusion_places(prev, continues, params.fusion_max_clips)
    scores["fused_share"] = float(np.mean(place > 0))
    if np.isfinite(threshold):  # inf: nothing continued on val, so nothing is fused
        scores["threshold"] = float(threshold)
    if has_scenes:
        pairs = prev >= 0
        same, said = _same_scene(table, ids, prev)[pairs], continues[pairs]
        scores |= {
            "test_accuracy": float(np.mean(said == same)),
            "test_precision": float(same[said].mean()) if said.any() else 0.0,
            "test_recall": float(said[same].mean()) if same.any() else 0.0,
            "test_continue_rate": float(same.mean()),
        }
    return prev, place, scores


def _same_scene(table: pd.DataFrame, ids: np.ndarray, prev: np.ndarray) -> np.ndarray:
    scene = table.loc[ids, "scene"].to_numpy()
    return (prev >= 0) & (scene == scene[np.maximum(prev, 0)])


# ------------------------------------------------------------------------------------------------
# Scoring and pictures
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Scorer:
    """Everything the video metrics need besides the videos: the classifier and the CLIP."""

    classifier: torch.nn.Module
    encoder: MLIPEncoder
    fps: int
    params: NeuroClipsParams
    seed: int

    def __call__(
        self, pred: np.ndarray, truth: np.ndarray
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Metrics of uint8 videos ``(N, F, H, W, 3)``, frame-level ones at 3 FPS, and each
        clip's ``PAIRED_METRICS`` (for the paired comparisons)."""
        idx = vm.frame_indices(pred.shape[1], self.fps, METRIC_FPS)
        p, t = pred.astype(np.float64) / 255.0, truth.astype(np.float64) / 255.0
        per_clip = {
            "ssim": vm.frame_ssim_per_clip(p[:, idx], t[:, idx]),
            "st_ssim": vm.st_ssim_per_clip(p, t),
        }
        scores = {k: float(v.mean()) for k, v in per_clip.items()} | {
            "psnr": vm.frame_psnr(p[:, idx], t[:, idx]),
            "clip_pcc": vm.clip_pcc(self._embed(pred[:, idx])),
        }
        pred_probs = self._probs(pred[:, idx])
        truth_probs = self._probs(truth[:, idx])
        for n in self.params.n_way:
            if n - 1 > pred_probs.shape[1] - 3:
                continue
            scores[f"frame_{n}way"] = vm.n_way_top1(
                pred_probs, truth_probs, n, self.params.n_way_trials, self.seed
            )
        return scores, per_clip

    def _embed(self, frames: np.ndarray) -> np.ndarray:
        n, f = frames.shape[:2]
        pooled, _ = self.encoder.encode_images(list(frames.reshape(n * f, *frames.shape[2:])))
        return pooled.reshape(n, f, -1)

    def _probs(self, frames: np.ndarray) -> np.ndarray:
        flat = to_unit(frames.reshape(1, -1, *frames.shape[2:]))[0]
        return self.classifier.joint_probs(flat)


@torch.no_grad()
def category_accuracy(
    classifier: torch.nn.Module, clips: torch.Tensor, categories: np.ndarray
) -> float:
    """Top-1 category accuracy of the frame classifier over every frame of ``clips``."""
    n, f = clips.shape[:2]
    logits = classifier(clips.flatten(0, 1))[0].view(n, f, -1)
    return float((logits.argmax(-1).numpy() == categories[:, None]).mean())


def attribute_labels(table: pd.DataFrame) -> tuple[np.ndarray, tuple[int, ...]]:
    """Integer (category, colour, texture) labels of each row, and the number of values of each."""
    columns = ("category", "colour", "texture")
    codes = [pd.Categorical(table[c]) for c in columns]
    labels = np.stack([c.codes for c in codes], axis=1).astype(np.int64)
    return labels, tuple(len(c.categories) for c in codes)


def write_gif(path: Path, frames: np.ndarray, fps: int, scale: int = 4) -> None:
    """An animated GIF of uint8 ``(F, H, W, 3)`` frames at ``fps``, upscaled for viewing.

    GIF delays are whole centiseconds, so 8 FPS (125 ms) alternates 120 and 130 ms: each frame
    ends on the 10-ms tick nearest its true time and the clip lasts exactly F / fps seconds.
    """
    ends = np.round(np.arange(1, len(frames) + 1) * 100 / fps) * 10
    durations = np.diff(ends, prepend=0).astype(int).tolist()
    images = [
        Image.fromarray(f).resize(
            (f.shape[1] * scale, f.shape[0] * scale), Image.Resampling.NEAREST
        )
        for f in frames
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)


def side_by_side(rows: list[np.ndarray]) -> np.ndarray:
    """Concatenate uint8 videos ``(F, H, W, 3)`` left to right with a 1-px white gap."""
    f, h = rows[0].shape[:2]
    gap = np.full((f, h, 1, 3), 255, np.uint8)
    parts = [p for r in rows for p in (r, gap)][:-1]
    return np.concatenate(parts, axis=2)


# ------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------
def neuroclips(
    *,
    data_dir: Path,
    betas_dir: Path,
    features_dir: Path,
    mlip_dir: Path,
    reconstruct_dir: Path,
    out_dir: Path,
    params: NeuroClipsParams,
    base: BaseParams,
) -> dict[str, float]:
    video_dir = video_dataset(data_dir)
    if video_dir is None:
        raise DataError(
            f"neuroclips needs a video paradigm at '{Path(data_dir) / VIDEO_DATASET}' "
            "(the twin writes one when twin video_train > 0)"
        )
    start = time.perf_counter()
    device = resolve_device(params.device)
    table = read_stimuli(video_dir).set_index("stim_id", drop=False)
    clips_u8 = load_clips(video_dir, list(table["file"]))
    row_of = {sid: i for i, sid in enumerate(table["stim_id"])}
    clips = to_unit(clips_u8)
    n_frames, size = clips.shape[1], clips.shape[-1]
    fps = clip_fps(n_frames)
    store = FeatureStore(Path(features_dir) / VIDEO_DATASET)
    train_ids = table.index[table["split"] == "train"].to_numpy()
    rows = lambda ids: np.array([row_of[i] for i in ids])  # noqa: E731

    generator = load_generator(Path(reconstruct_dir) / "model").to(device)
    train_keys = unit_rows(store.image_pooled(train_ids))  # keyframe embeddings
    video_model = _video_model(
        clips[rows(train_ids)],
        train_keys,
        fps,
        params,
        device,
        base,
        generator.config.image_size,
    )
    if isinstance(video_model, VideoDiffusion):
        save_video_model(video_model.cpu(), out_dir / "models" / "video")
        video_model.to(device)
    labels, heads = attribute_labels(table)
    train_frames = clips[rows(train_ids)][:, :: max(n_frames // 4, 1)]
    classifier = fit_frame_classifier(
        train_frames.flatten(0, 1),
        torch.as_tensor(labels[rows(train_ids)]).repeat_interleave(train_frames.shape[1], 0),
        FrameClassifierConfig(heads=heads),
        params.classifier_epochs,
        base.seed,
    )
    val_rows = rows(table.index[table["split"] == "val"].to_numpy())
    classifier_accuracy = category_accuracy(classifier, clips[val_rows], labels[val_rows, 0])
    scorer = Scorer(
        classifier, MLIPEncoder(Path(mlip_dir) / "model", device), fps, params, base.seed
    )
    train_captions = table.loc[train_ids, "caption"].to_numpy()

    metrics: dict[str, float] = {
        "video_model_seconds": time.perf_counter() - start,
        # N-way scores mean little if this is near chance (1 / categories): see video_metrics
        "frame_classifier.val_category_accuracy": classifier_accuracy,
    }
    per_subject: dict[str, dict[str, float]] = {}
    per_clip: dict[tuple[str, str], list[np.ndarray]] = collections.defaultdict(list)
    for subject in progress(params.subjects, desc="neuroclips subjects"):
        sb = load_betas(Path(betas_dir) / VIDEO_DATASET, subject)
        target = {
            s: blurry_target(clips[rows(sb.stim[s])], fps, params.blurry_size) for s in sb.stim
        }
        perception, val_pixcorr = fit_perception(
            (sb.betas["train"], target["train"]),
            (sb.betas["val"], target["val"]),
            params,
            device,
            base.seed,
        )
        torch.manual_seed(base.seed)
        semantics = MindEyeMLP(
            MindEyeMLPConfig(
                sb.n_voxels,
                store.dim,
                hidden=params.semantics_hidden,
                n_blocks=params.semantics_blocks,
            )
        )
        sr = fit_contrastive(
            semantics,
            (sb.betas["train"], store.image_pooled(sb.stim["train"])),
            (sb.betas["val"], store.image_pooled(sb.stim["val"])),
            params.semantics,
            device,
            base.seed,
            report_as=f"{subject}.semantics.val_top1",
        )
        test_ids = np.asarray(sb.stim["test"])
        truth = clips_u8[rows(test_ids)]
        embedding = unit_rows(predict(semantics, sb.betas["test"], device))
        similarity = cosine_similarity(embedding.numpy(), train_keys.numpy())
        nearest = train_ids[similarity.argmax(axis=1)]
        captions = train_captions[similarity.argmax(axis=1)]
        blurry = expand_blurry(perceive(perception, sb.betas["test"], device), n_frames, size)
        # As the paper describes (its released code starts from noise): the keyframe starts
        # from the first blurry frame, so it inherits the decoded layout.
        first_blurry = resize_frames(blurry[:, :1], generator.config.image_size)[:, 0]
        keyframe = resize_frames(
            generator.sample(
                embedding.to(device),
                params.keyframe_steps,
                base.seed,
                blurry=first_blurry.to(device),
                strength=params.keyframe_strength,
            ).cpu()[:, None],
            size,
        )[:, 0]
        render = partial(
            synthesize,
            video_model,
            embedding,
            list(captions),
            params=params,
            seed=base.seed,
            clip_shape=(n_frames, size),
        )
        val_embedding = predict(semantics, sb.betas["val"], device)
        prev, place, fusion = fusion_decisions(
            embedding.numpy(), test_ids, (val_embedding, np.asarray(sb.stim["val"])), table, params
        )
        full = render(keyframe, blurry)
        videos = {
            "neuroclips": full,
            "fused": fuse_videos(
                full,
                prev,
                place,
                partial(
                    resynthesize,
                    model=video_model,
                    embedding=embedding,
                    captions=captions,
                    blurry=blurry,
                    params=params,
                    seed=base.seed,
                    clip_shape=(n_frames, size),
                ),
            ),
            "no_keyframe": render(None, blurry),
            "no_blurry": render(keyframe, None),
            "blurry_only": blurry,
            "retrieval": clips[rows(nearest)],
        }
        videos_u8 = {name: to_uint8(v) for name, v in videos.items()}
        scores = {}
        for name, video in videos_u8.items():
            scores[name], clip_scores = scorer(video, truth)
            for metric, values in clip_scores.items():
                per_clip[name, metric].append(values)
        scores["semantics"] = {
            "val_top1": sr.val_top1,
            "caption_category_match": float(
                np.mean(
                    table.loc[nearest, "category"].to_numpy()
                    == table.loc[test_ids, "category"].to_numpy()
                )
            ),
        }
        scores["perception"] = {"val_pixcorr": val_pixcorr}
        scores["fusion"] = fusion
        per_subject[subject] = {f"{g}.{k}": v for g, d in scores.items() for k, v in d.items()}
        metrics |= {f"{subject}.{k}": v for k, v in per_subject[subject].items()}
        _write_subject_outputs(
            out_dir,
            subject,
            test_ids,
            videos_u8,
            truth,
            to_uint8(keyframe[:, None])[:, 0],
            captions,
            table,
            fps,
            params,
            perception,
            semantics,
            fused_scenes(prev, place),
        )
    for key in next(iter(per_subject.values())):
        metrics[key] = float(np.mean([s[key] for s in per_subject.values()]))
    metrics |= paired_comparisons(per_clip, base.seed)
    metrics["seconds"] = time.perf_counter() - start
    _write_results(out_dir / "results.md", metrics, params)
    first = out_dir / "videos" / params.subjects[0]
    (out_dir / "plots").mkdir()
    shutil.copyfile(first / "grid.png", out_dir / "plots" / "grid.png")
    shutil.copyfile(sorted(first.glob("clip-*.gif"))[0], out_dir / "plots" / "sample.gif")
    scene_gifs = sorted(first.glob("scene-*.gif"))
    if scene_gifs:
        shutil.copyfile(scene_gifs[0], out_dir / "plots" / "sample_scene.gif")
    return metrics


def score_saved_reconstructors(
    model_dir: Path,
    *,
    data_dir: Path,
    betas_dir: Path,
    features_dir: Path,
    params: NeuroClipsParams,
    base: BaseParams,
    **_unused: Path,  # mlip_dir, reconstruct_dir: the video model is not scored here
) -> ModelCard:
    """The saved reconstructors' validation scores, each the one its checkpoint was chosen on
    (means over ``params.subjects``): the Perception Reconstructor's PixCorr against the
    blurry target, the Semantics Reconstructor's top-1 retrieval of the keyframe embedding.
    The signature is the first subject's Semantics Reconstructor."""
    device = resolve_device(params.device)
    video_dir = video_dataset(data_dir)
    table = read_stimuli(video_dir).set_index("stim_id", drop=False)
    store = FeatureStore(Path(features_dir) / VIDEO_DATASET)
    models, pixcorrs, top1s, example = {}, [], [], None
    for subject in params.subjects:
        folder = Path(model_dir) / subject
        perception = load_checkpoint(
            folder / "perception", PerceptionReconstructor, PerceptionConfig, "perception"
        ).to(device)
        semantics = load_checkpoint(
            folder / "semantics", MindEyeMLP, MindEyeMLPConfig, "semantics"
        ).to(device)
        sb = load_betas(Path(betas_dir) / VIDEO_DATASET, subject)
        val_ids = list(sb.stim["val"])
        clips = to_unit(load_clips(video_dir, list(table.loc[val_ids, "file"])))
        fps = clip_fps(clips.shape[1])
        target = blurry_target(clips, fps, params.blurry_size)
        pixcorrs.append(pixcorr(perceive(perception, sb.betas["val"], device), target))
        top1s.append(val_top1(semantics, sb.betas["val"], store.image_pooled(val_ids), device))
        models[subject] = {"perception": perception, "semantics": semantics}
        if example is None:
            voxels = np.asarray(sb.betas["val"][:2], dtype=np.float32)
            example = (voxels, predict(semantics, voxels, device))
    metrics = {
        "perception.val_pixcorr": float(np.mean(pixcorrs)),
        "semantics.val_top1": float(np.mean(top1s)),
    }
    return ModelCard(models, metrics, *example)


def _write_subject_outputs(
    out_dir: Path,
    subject: str,
    test_ids: np.ndarray,
    videos: dict[str, np.ndarray],
    truth: np.ndarray,
    keyframes: np.ndarray,
    captions: np.ndarray,
    table: pd.DataFrame,
    fps: int,
    params: NeuroClipsParams,
    perception: torch.nn.Module,
    semantics: torch.nn.Module,
    scenes: list[list[int]],
) -> None:
    """Reconstructions (npz), GIFs stimulus | blurry | keyframe | result and, for fused videos
    of several clips, stimulus | fused video; grid, captions, models."""
    folder = out_dir / "videos" / subject
    folder.mkdir(parents=True)
    np.savez(folder / "reconstructions.npz", stim_id=test_ids, **videos)
    k = min(params.gif_clips, len(test_ids))
    for i in range(k):
        still = np.repeat(keyframes[i][None], truth.shape[1], axis=0)
        panel = side_by_side([truth[i], videos["blurry_only"][i], still, videos["neuroclips"][i]])
        write_gif(folder / f"clip-{test_ids[i]:05d}.gif", panel, fps)
    for rows in [r for r in scenes if len(r) > 1][: params.gif_clips]:
        panel = side_by_side([np.concatenate(truth[rows]), np.concatenate(videos["fused"][rows])])
        write_gif(folder / f"scene-{test_ids[rows[0]]:05d}.gif", panel, fps)
    grid_rows = []
    for i in range(k):
        pick = vm.frame_indices(truth.shape[1], fps, METRIC_FPS)
        for video in (truth, videos["blurry_only"], videos["neuroclips"]):
            grid_rows.append(video[i][pick])
    write_grid(folder / "grid.png", grid_rows, cell=48)
    write_json(
        folder / "captions.json",
        {
            int(sid): {"decoded": str(cap), "true": str(table.loc[sid, "caption"])}
            for sid, cap in zip(test_ids, captions, strict=True)
        },
    )
    save_checkpoint(out_dir / "models" / subject / "perception", perception)
    save_checkpoint(out_dir / "models" / subject / "semantics", semantics)


def paired_comparisons(
    per_clip: dict[tuple[str, str], list[np.ndarray]], seed: int
) -> dict[str, float]:
    """The full model against each other variant, clip by clip over every subject's test clips:
    ``paired.<variant>.<metric>.{mean,win_rate,ci_low,ci_high}`` (full minus variant)."""
    out: dict[str, float] = {}
    for variant in VARIANTS[1:]:
        for metric in PAIRED_METRICS:
            diff = paired_difference(
                np.concatenate(per_clip["neuroclips", metric]),
                np.concatenate(per_clip[variant, metric]),
                seed=seed,
            )
            out |= diff.as_metrics(f"paired.{variant}.{metric}")
    return out


def _write_results(path: Path, metrics: dict[str, float], params: NeuroClipsParams) -> None:
    names = ["ssim", "psnr", "st_ssim", "clip_pcc", *(f"frame_{n}way" for n in params.n_way)]
    names = [n for n in names if f"neuroclips.{n}" in metrics]
    lines = [
        "# NeuroClips on the video twin (test clips, mean over subjects "
        f"{', '.join(params.subjects)})",
        "",
        "| variant | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for variant in VARIANTS:
        cells = [f"{metrics[f'{variant}.{n}']:.3f}" for n in names]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Frame-level metrics at {METRIC_FPS} FPS, st_ssim over all frames; N-way chance: "
        + ", ".join(f"{n}-way {vm.n_way_chance(n):.3f}" for n in params.n_way),
        "",
        f"Semantics reconstructor val top-1 {metrics['semantics.val_top1']:.3f}; decoded caption "
        f"names the right category for {metrics['semantics.caption_category_match']:.3f} of clips; "
        "frame classifier (N-way) val category accuracy "
        f"{metrics['frame_classifier.val_category_accuracy']:.3f}.",
        "",
        (
            "Fusion (*fused*): a clip whose decoded embedding has cosine >= "
            f"{metrics.get('fusion.threshold', np.inf):.3f} with its predecessor's is generated "
            f"again from the previous clip's last frame, up to {params.fusion_max_clips} clips "
            f"({2 * params.fusion_max_clips} s) per video; {metrics['fusion.fused_share']:.3f} "
            "of test clips were."
            if metrics["fusion.enabled"]
            else "Fusion off (*fused* = neuroclips): no scene labels to choose the cut on; set "
            "neuroclips.fusion_threshold."
        )
        + (
            f" Scene-continuation calls on test: accuracy {metrics['fusion.test_accuracy']:.3f}, "
            f"precision {metrics['fusion.test_precision']:.3f}, recall "
            f"{metrics['fusion.test_recall']:.3f} ({metrics['fusion.test_continue_rate']:.3f} "
            "of neighbouring test clips really continue a scene)."
            if "fusion.test_accuracy" in metrics
            else ""
        ),
        "",
        "## neuroclips minus each variant, clip by clip (all subjects' test clips)",
        "",
        "| variant | " + " | ".join(f"{m}: mean [95% CI], won" for m in PAIRED_METRICS) + " |",
        "|---" * (len(PAIRED_METRICS) + 1) + "|",
    ]
    for variant in VARIANTS[1:]:
        cells = []
        for m in PAIRED_METRICS:
            d = {k: metrics[f"paired.{variant}.{m}.{k}"] for k in ("mean", "ci_low", "ci_high")}
            won = metrics[f"paired.{variant}.{m}.win_rate"]
            cells.append(f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], {won:.2f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")
