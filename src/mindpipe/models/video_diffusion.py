"""NeuroClips' video generator as a tiny AnimateDiff + SparseCtrl model in pixel space.

NeuroClips renders each 2-s clip with AnimateDiff v3 (an SD-1.5 UNet whose 2-D blocks are
interleaved with motion modules = temporal self-attention over the frames) steered three ways:
alpha, the blurry video from the Perception Reconstructor is noised and used as the sampler's
start; beta, the reconstructed keyframe enters a SparseCtrl RGB control net on frame 0 only (with
a mask channel saying which frames carry a condition); gamma, the keyframe's caption prompts the
UNet through cross-attention. This module keeps that structure with diffusers' own classes at a
size that trains on a CPU: a :class:`~diffusers.UNetMotionModel` and a
:class:`~diffusers.models.controlnets.controlnet_sparsectrl.SparseControlNetModel` (the control
net's residuals are added to the UNet's skip connections, as in the diffusers pipeline) working
on RGB frames with no VAE, and the CLIP embedding of the semantic decode projected to the single
cross-attention token that the text prompt would be (repeated per frame, as the pipeline does).

Deviations, each because the real model is a pretrained latent model and this one is trained
from scratch on RGB:

* Pixel space with a lossless space-to-depth (``patch`` 2: a frame enters as ``(12, H/2, W/2)``
  and leaves through the inverse pixel shuffle) in place of SD's 8x VAE latent: temporal attention
  at every pixel of every resolution dominates the cost, and a quarter of the positions is what
  brings a training step of the ``tiny`` config under ~0.5 s on two CPU threads.
* The control net's condition per frame is ``[blurry frame (3), blurry-given flag (1), keyframe
  on frame 0 else zeros (3)]`` plus SparseCtrl's own mask channel (1 on frame 0 when a keyframe is
  given), so the control net reads both the keyframe and the blurry video; real SparseCtrl RGB
  sees only the keyframe latent and the blurry video enters only as the noised start. The blurry
  flag tells "no blurry video" (zeros) from a mid-grey one.
* ControlNet's zero-initialised convolutions protect a frozen pretrained UNet at the start of
  fine-tuning; with both nets trained jointly from scratch they only delay learning the
  conditions, so they get PyTorch's default initialisation.
* As in :mod:`mindpipe.models.unclip`, the UNet predicts the clean video (``prediction_type
  "sample"``), sampled with deterministic DDIM (eta 0).
* Cross-attention only in the lowest-resolution blocks and the mid blocks; one attention head;
  one motion-module layer per block (AnimateDiff v3: 8 heads, cross-attention at 3 resolutions).
* Each condition is dropped independently during training (``keyframe_dropout``,
  ``blurry_dropout``, ``embedding_dropout``) so that sampling without a keyframe, a blurry video
  or an embedding (NeuroClips' ablations) is in-distribution; ``None`` at inference means exactly
  what a dropped condition meant in training (zeros and mask 0, or the learned null token).
  Classifier-free guidance on the embedding is available (``guidance_scale``) but off by default.

Real AnimateDiff / SparseCtrl weights are only read from local folders (never downloaded).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNetMotionModel
from diffusers.models.controlnets.controlnet_sparsectrl import SparseControlNetModel
from torch import nn

from mindpipe.models.checkpoint import load_checkpoint, require_local_weights, save_checkpoint
from mindpipe.models.sampling import ddim_start

#: Per-frame control channels before SparseCtrl's mask: blurry RGB, blurry flag, keyframe RGB.
CONTROL_CHANNELS = 7


@dataclasses.dataclass(frozen=True)
class VideoDiffusionConfig:
    """Everything needed to rebuild the generator (written as config.json next to weights)."""

    frame_size: int
    embed_dim: int
    n_frames: int = 16  # 2 s at 8 FPS, as NeuroClips renders
    channels: tuple[int, ...] = (16, 32, 64)
    patch: int = 2  # space-to-depth factor: frames enter the UNet as (3 p^2, H/p, W/p)
    layers_per_block: int = 1
    # per down block (mirrored for the up blocks); the mid blocks always cross-attend
    cross_attention: tuple[bool, ...] = (False, False, True)
    attention_heads: int = 1  # spatial self/cross attention heads
    motion_heads: int = 1  # temporal attention heads in the motion modules
    motion_layers: int = 1  # transformer layers per motion module
    token_dim: int = 64  # width of the cross-attention token the embedding is projected to
    norm_groups: int = 8
    train_timesteps: int = 1000
    prediction_type: str = "sample"  # what the UNet predicts: sample (x0), epsilon or v_prediction
    keyframe_dropout: float = 0.15
    blurry_dropout: float = 0.15
    embedding_dropout: float = 0.15
    fps: int = 8


# Sized for CPU training (batch 8 x 16 frames x 32 px: ~0.4 s per step on 2 threads for tiny).
# Only the lowest-resolution down/up blocks and the mid blocks cross-attend to the token; the
# motion modules (temporal attention) sit at every resolution, as in AnimateDiff.
_SIZES = {
    "micro": {"channels": (16, 32), "cross_attention": (False, True), "token_dim": 32},
    "tiny": {"channels": (16, 32, 64), "cross_attention": (False, False, True), "token_dim": 64},
}


def config_for(
    frame_size: int, n_frames: int, embed_dim: int, name: str = "tiny"
) -> VideoDiffusionConfig:
    """The one factory for video generator configs: ``micro`` (tests) or ``tiny`` (pipeline)."""
    if name not in _SIZES:
        raise ValueError(f"unknown video generator config {name!r}; known: {sorted(_SIZES)}")
    return VideoDiffusionConfig(
        frame_size=frame_size, n_frames=n_frames, embed_dim=embed_dim, **_SIZES[name]
    )


def _reinit_zero_convs(controlnet: SparseControlNetModel) -> None:
    """Default init for ControlNet's zero convolutions (no frozen pretrained UNet to protect)."""
    zero = [controlnet.controlnet_cond_embedding, controlnet.controlnet_mid_block]
    for conv in [*zero, *controlnet.controlnet_down_blocks]:
        conv.reset_parameters()


class VideoDiffusion(nn.Module):
    """``forward(noisy (B,F,3,H,W), t (B,), embedding, keyframe, blurry)`` -> the target."""

    def __init__(self, config: VideoDiffusionConfig) -> None:
        super().__init__()
        self.config = cfg = config
        if len(cfg.cross_attention) != len(cfg.channels):
            raise ValueError("cross_attention needs one flag per entry of channels")
        if cfg.frame_size % cfg.patch:
            raise ValueError(f"frame_size {cfg.frame_size} is not a multiple of patch {cfg.patch}")
        down = tuple(
            "CrossAttnDownBlockMotion" if x else "DownBlockMotion" for x in cfg.cross_attention
        )
        up = tuple(
            "CrossAttnUpBlockMotion" if x else "UpBlockMotion" for x in cfg.cross_attention[::-1]
        )
        r2 = cfg.patch**2
        shared = {
            "in_channels": 3 * r2,
            "down_block_types": down,
            "block_out_channels": cfg.channels,
            "layers_per_block": cfg.layers_per_block,
            "norm_num_groups": cfg.norm_groups,
            "cross_attention_dim": cfg.token_dim,
            "temporal_transformer_layers_per_block": cfg.motion_layers,
            "motion_max_seq_length": max(32, cfg.n_frames),
            "motion_num_attention_heads": cfg.motion_heads,
        }
        self.unet = UNetMotionModel(
            sample_size=cfg.frame_size,
            out_channels=3 * r2,
            up_block_types=up,
            num_attention_heads=cfg.attention_heads,
            **shared,
        )
        self.controlnet = SparseControlNetModel(
            conditioning_channels=CONTROL_CHANNELS * r2,
            num_attention_heads=cfg.attention_heads,
            concat_conditioning_mask=True,
            use_simplified_condition_embedding=True,
            **shared,
        )
        _reinit_zero_convs(self.controlnet)
        self.project = nn.Sequential(
            nn.LayerNorm(cfg.embed_dim), nn.Linear(cfg.embed_dim, cfg.token_dim)
        )
        self.null_token = nn.Parameter(torch.zeros(1, 1, cfg.token_dim))

    def _tokens(
        self, embedding: torch.Tensor | None, batch: int, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One cross-attention token per clip: the projected embedding or the learned null."""
        null = self.null_token.expand(batch, 1, -1)
        if embedding is None:
            return null
        token = self.project(embedding)[:, None]
        return token if keep is None else torch.where(keep[:, None, None], token, null)

    def _control(
        self,
        keyframe: torch.Tensor | None,
        blurry: torch.Tensor | None,
        like: torch.Tensor,
        keep_key: torch.Tensor | None = None,
        keep_blurry: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SparseCtrl condition ``(B, F, 7, H, W)`` and mask ``(B, F, 1, H, W)`` like ``like``."""
        b, f, _, h, w = like.shape
        cond = like.new_zeros(b, f, CONTROL_CHANNELS, h, w)
        mask = like.new_zeros(b, f, 1, h, w)
        if blurry is not None:
            on = (
                1.0
                if keep_blurry is None
                else keep_blurry.to(like.dtype)[:, None, None, None, None]
            )
            cond[:, :, :3] = blurry * on
            cond[:, :, 3:4] = on
        if keyframe is not None:
            on = 1.0 if keep_key is None else keep_key.to(like.dtype)[:, None, None, None]
            cond[:, 0, 4:] = keyframe * on
            mask[:, 0] = on
        return cond, mask

    def _predict(
        self, noisy: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, cond, mask
    ) -> torch.Tensor:
        r = self.config.patch
        # space-to-depth, then diffusers' video layout (B, C, F, H, W)
        sample = nn.functional.pixel_unshuffle(noisy, r).transpose(1, 2)
        cond = nn.functional.pixel_unshuffle(cond, r).transpose(1, 2)
        mask = mask[..., ::r, ::r].transpose(1, 2)
        tokens = tokens.repeat_interleave(noisy.shape[1], dim=0)  # per frame, as the pipeline
        down, mid = self.controlnet(
            sample,
            t,
            encoder_hidden_states=tokens,
            controlnet_cond=cond,
            conditioning_mask=mask,
            return_dict=False,
        )
        out = self.unet(
            sample,
            t,
            encoder_hidden_states=tokens,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        return nn.functional.pixel_shuffle(out.transpose(1, 2), r)

    def forward(
        self,
        noisy: torch.Tensor,
        t: torch.Tensor,
        embedding: torch.Tensor | None = None,
        keyframe: torch.Tensor | None = None,
        blurry: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ``prediction_type`` target ``(B, F, 3, H, W)``; ``None`` = condition absent."""
        cond, mask = self._control(keyframe, blurry, noisy)
        return self._predict(noisy, t, self._tokens(embedding, noisy.shape[0]), cond, mask)

    def training_scheduler(self) -> DDPMScheduler:
        return DDPMScheduler(
            num_train_timesteps=self.config.train_timesteps,
            prediction_type=self.config.prediction_type,
        )

    def denoising_loss(
        self,
        clean: torch.Tensor,
        embedding: torch.Tensor | None,
        keyframe: torch.Tensor | None,
        blurry: torch.Tensor | None,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """MSE of one random-timestep denoising step on videos ``(B, F, 3, H, W)`` in [-1, 1].

        ``gen`` (on the videos' device) draws the timesteps, the noise and which clips lose their
        keyframe / blurry video / embedding (``cond_dropout``), so a seeded recipe is reproducible.
        """
        cfg = self.config
        scheduler = self.training_scheduler()
        n = clean.shape[0]
        t = torch.randint(0, cfg.train_timesteps, (n,), generator=gen, device=gen.device)
        noise = torch.randn(clean.shape, generator=gen, device=gen.device)
        drop = torch.rand(3, n, generator=gen, device=gen.device)
        keep_key = drop[0] >= cfg.keyframe_dropout
        keep_blurry = drop[1] >= cfg.blurry_dropout
        keep_emb = drop[2] >= cfg.embedding_dropout
        noisy = scheduler.add_noise(clean, noise, t)
        target = {
            "sample": clean,
            "epsilon": noise,
            "v_prediction": scheduler.get_velocity(clean, noise, t),
        }[cfg.prediction_type]
        cond, mask = self._control(keyframe, blurry, noisy, keep_key, keep_blurry)
        pred = self._predict(noisy, t, self._tokens(embedding, n, keep_emb), cond, mask)
        return nn.functional.mse_loss(pred, target)

    @torch.no_grad()
    def sample(
        self,
        embedding: torch.Tensor | None,
        keyframe: torch.Tensor | None = None,
        blurry: torch.Tensor | None = None,
        steps: int = 25,
        seed: int = 0,
        strength: float = 1.0,
        guidance_scale: float = 1.0,
        batch: int | None = None,
    ) -> torch.Tensor:
        """Videos ``(B, F, 3, H, W)`` in [-1, 1]; deterministic given ``seed``.

        ``keyframe`` ``(B, 3, H, W)`` conditions frame 0 (beta guidance), ``embedding`` ``(B, D)``
        the cross-attention token (gamma), ``blurry`` ``(B, F, 3, H, W)`` the control net and, with
        ``strength`` < 1, the start: sampling begins from the blurry video noised to that
        strength (alpha guidance; NeuroClips noises to the first of its 25 DDIM steps, i.e.
        ``strength`` 1). ``guidance_scale`` != 1 adds classifier-free guidance on the embedding
        (one extra UNet pass per step). ``batch`` is the clip count when every condition is None.
        """
        cfg = self.config
        given = [x for x in (embedding, keyframe, blurry) if x is not None]
        n = given[0].shape[0] if given else batch
        if n is None:
            raise ValueError("sample() needs a condition or batch= to know how many clips")
        device = next(self.parameters()).device
        shape = (n, cfg.n_frames, 3, cfg.frame_size, cfg.frame_size)
        scheduler, x, timesteps = ddim_start(
            cfg.train_timesteps, cfg.prediction_type, steps, seed, shape, device, blurry, strength
        )
        cond, mask = self._control(keyframe, blurry, x)
        tokens = self._tokens(embedding, n)
        cfg_on = guidance_scale != 1.0 and embedding is not None
        if cfg_on:
            tokens = torch.cat([self._tokens(None, n), tokens])
            cond, mask = torch.cat([cond, cond]), torch.cat([mask, mask])
        for t in timesteps:
            tt = t.expand(x.shape[0]).to(device)
            if cfg_on:
                uncond, pred = self._predict(
                    torch.cat([x, x]), tt.repeat(2), tokens, cond, mask
                ).chunk(2)
                pred = uncond + guidance_scale * (pred - uncond)
            else:
                pred = self._predict(x, tt, tokens, cond, mask)
            x = scheduler.step(pred, t, x, eta=0.0).prev_sample
        return x.clamp(-1, 1)


def parameter_counts(model: VideoDiffusion) -> dict[str, int]:
    """Parameters of the UNet, the control net and the embedding projection (incl. null token)."""

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    rest = count(model) - count(model.unet) - count(model.controlnet)
    return {"unet": count(model.unet), "controlnet": count(model.controlnet), "projection": rest}


def save_video_model(model: VideoDiffusion, folder: Path) -> None:
    """Write ``config.json`` + ``model.safetensors``."""
    save_checkpoint(folder, model)


def load_video_model(folder: Path) -> VideoDiffusion:
    """Rebuild a generator written by :func:`save_video_model`."""
    return load_checkpoint(folder, VideoDiffusion, VideoDiffusionConfig, "video generator")


def load_pretrained_animatediff(
    sd_dir: str | Path,
    motion_adapter_dir: str | Path,
    sparsectrl_dir: str | Path,
    device: str = "cpu",
):
    """AnimateDiff v3 + SparseCtrl RGB from local diffusers folders; never downloads.

    ``sd_dir`` is an SD-1.5 pipeline folder (NeuroClips: RealisticVision V6.0 B1),
    ``motion_adapter_dir`` a :class:`~diffusers.MotionAdapter` (``v3_sd15_mm``) and
    ``sparsectrl_dir`` a SparseControlNetModel (``v3_sd15_sparsectrl_rgb``). The scheduler is
    NeuroClips' DDIM (linear betas 0.00085 -> 0.012, steps_offset 1, no clipping). A missing
    folder or one without ``model_index.json`` / ``config.json`` raises MissingWeightsError
    naming it.
    """
    sd, motion, ctrl = Path(sd_dir), Path(motion_adapter_dir), Path(sparsectrl_dir)
    require_local_weights(
        sd, "model_index.json", "Stable Diffusion 1.5", "neuroclips.pretrained.stable_diffusion"
    )
    require_local_weights(
        motion, "config.json", "AnimateDiff motion adapter", "neuroclips.pretrained.motion_adapter"
    )
    require_local_weights(ctrl, "config.json", "SparseCtrl", "neuroclips.pretrained.sparsectrl")
    from diffusers import AnimateDiffSparseControlNetPipeline, MotionAdapter

    adapter = MotionAdapter.from_pretrained(str(motion), local_files_only=True)
    controlnet = SparseControlNetModel.from_pretrained(str(ctrl), local_files_only=True)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        steps_offset=1,
        clip_sample=False,
    )
    pipe = AnimateDiffSparseControlNetPipeline.from_pretrained(
        str(sd),
        motion_adapter=adapter,
        controlnet=controlnet,
        scheduler=scheduler,
        local_files_only=True,
    )
    return pipe.to(device)
