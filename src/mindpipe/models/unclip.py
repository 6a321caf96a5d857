"""A small unCLIP-style image generator: a diffusers UNet conditioned on a CLIP image embedding.

The embedding is projected into the UNet's class-embedding slot (added to the timestep
embedding), the way unCLIP's decoder conditions on an image embedding without text. The UNet
predicts the clean image (``prediction_type="sample"``) rather than the noise: a small model
sampled with few deterministic DDIM steps (eta 0) then lands on the conditional mean
instead of amplifying its noise-prediction error at every step, which is what made an
epsilon-predicting draft score below a shuffled control on SSIM. Sampling is seeded, so the same
seed gives the same images; ``blurry`` images (MindEye2's low-level reconstruction) start the
sampler part-way (img2img at ``strength``).
With real Stable unCLIP weights the reconstruct stage renders with ``unclip_sampler`` instead.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from mindpipe.models.checkpoint import load_checkpoint, save_checkpoint
from mindpipe.models.sampling import ddim_start


@dataclasses.dataclass(frozen=True)
class UnCLIPConfig:
    """Everything needed to rebuild the generator (written as config.json next to weights)."""

    image_size: int
    embed_dim: int
    channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    train_timesteps: int = 1000
    prediction_type: str = "sample"  # what the UNet predicts: sample (x0), epsilon or v_prediction


def config_for(image_size: int, embed_dim: int, name: str = "tiny") -> UnCLIPConfig:
    """The one factory for generator configs: ``micro`` (CPU runs), ``tiny`` or ``small``."""
    widths = {"micro": (16, 32), "tiny": (32, 64), "small": (64, 128, 128)}
    if name not in widths:
        raise ValueError(f"unknown generator config {name!r}; known: {sorted(widths)}")
    return UnCLIPConfig(image_size=image_size, embed_dim=embed_dim, channels=widths[name])


class UnCLIPGenerator(nn.Module):
    """``forward(noisy (B,3,H,W), t (B,), embedding (B,D))`` -> the ``prediction_type`` target."""

    def __init__(self, config: UnCLIPConfig) -> None:
        super().__init__()
        self.config = cfg = config
        n = len(cfg.channels)
        self.unet = UNet2DModel(
            sample_size=cfg.image_size,
            in_channels=3,
            out_channels=3,
            block_out_channels=cfg.channels,
            layers_per_block=cfg.layers_per_block,
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            norm_num_groups=8,
            class_embed_type="identity",
        )
        self.project = nn.Sequential(
            nn.LayerNorm(cfg.embed_dim), nn.Linear(cfg.embed_dim, cfg.channels[0] * 4)
        )

    def forward(
        self, noisy: torch.Tensor, t: torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(noisy, t, class_labels=self.project(embedding)).sample

    def training_scheduler(self) -> DDPMScheduler:
        return DDPMScheduler(
            num_train_timesteps=self.config.train_timesteps,
            prediction_type=self.config.prediction_type,
        )

    def denoising_loss(
        self, clean: torch.Tensor, embedding: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """MSE of one random-timestep denoising step on images in [-1, 1] (the training loss).

        ``gen`` (on the images' device) draws the timesteps and noise, so a seeded recipe is
        reproducible.
        """
        scheduler = self.training_scheduler()
        n = clean.shape[0]
        t = torch.randint(0, self.config.train_timesteps, (n,), generator=gen, device=gen.device)
        noise = torch.randn(clean.shape, generator=gen, device=gen.device)
        noisy = scheduler.add_noise(clean, noise, t)
        target = {
            "sample": clean,
            "epsilon": noise,
            "v_prediction": scheduler.get_velocity(clean, noise, t),
        }[self.config.prediction_type]
        return nn.functional.mse_loss(self(noisy, t, embedding), target)

    @torch.no_grad()
    def sample(
        self,
        embedding: torch.Tensor,
        steps: int = 25,
        seed: int = 0,
        blurry: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """Images in [-1, 1] from embeddings; deterministic given ``seed``.

        With ``blurry`` images (in [-1, 1]) and ``strength`` < 1, sampling starts from the blurry
        image noised to that strength, so coarse layout comes from fMRI's low-level decode.
        """
        cfg, device = self.config, embedding.device
        shape = (embedding.shape[0], 3, cfg.image_size, cfg.image_size)
        scheduler, x, timesteps = ddim_start(
            cfg.train_timesteps, cfg.prediction_type, steps, seed, shape, device, blurry, strength
        )
        for t in timesteps:
            pred = self(x, t.expand(x.shape[0]).to(device), embedding)
            x = scheduler.step(pred, t, x, eta=0.0).prev_sample
        return x.clamp(-1, 1)


def save_generator(model: UnCLIPGenerator, folder: Path) -> None:
    """Write ``config.json`` + ``model.safetensors``."""
    save_checkpoint(folder, model)


def load_generator(folder: Path) -> UnCLIPGenerator:
    """Rebuild a generator written by :func:`save_generator`."""
    return load_checkpoint(folder, UnCLIPGenerator, UnCLIPConfig, "generator")
