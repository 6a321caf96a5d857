"""What the image and video generators share: the deterministic DDIM start, and resizing and
VAE-encoding images and starting the sampler for the real (latent) diffusion pipelines."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from torch.nn import functional as F


def ddim_start(
    train_timesteps: int,
    prediction_type: str,
    steps: int,
    seed: int,
    shape: tuple[int, ...],
    device: torch.device,
    blurry: torch.Tensor | None = None,
    strength: float = 1.0,
) -> tuple[DDIMScheduler, torch.Tensor, torch.Tensor]:
    """The scheduler, the starting sample and the timesteps left to run.

    Noise is drawn on the CPU from ``seed`` (same start on any device). With ``blurry`` and
    ``strength`` < 1 the start is ``blurry`` noised to the first kept step (img2img): the first
    ``1 - strength`` of the steps are skipped; when none are left, the start is ``blurry`` itself.
    """
    scheduler = DDIMScheduler(num_train_timesteps=train_timesteps, prediction_type=prediction_type)
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    timesteps = scheduler.timesteps
    if blurry is not None and strength < 1.0:
        timesteps = timesteps[len(timesteps) - round(steps * strength) :]
        blurry = blurry.to(device)
        x = scheduler.add_noise(blurry, x, timesteps[:1]) if len(timesteps) else blurry
    return scheduler, x, timesteps


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 3, h, w)`` -> ``(N, 3, size, size)``, antialiased so shrinking does not alias."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)


def vae_latents(pipe, images: torch.Tensor, size: int) -> torch.Tensor:
    """Images ``(N, 3, h, w)`` in [-1, 1], resized to ``size``: scaled VAE latents ``(N, C, ..)``.

    This takes the posterior mean, not a sample, so the result does not depend on any random
    state.
    """
    x = resize_square(images, size).to(pipe.device, pipe.vae.dtype)
    return pipe.vae.encode(x).latent_dist.mode() * pipe.vae.config.scaling_factor


def pipeline_start(
    pipe, steps: int, noise: torch.Tensor, start: torch.Tensor | None = None, strength: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A diffusers pipeline's starting latents and the timesteps left to run.

    Without ``start`` latents: pure ``noise`` over every step. With them (img2img): only the last
    ``strength`` of the steps run (at least one), from ``start`` noised to the first of them.
    """
    pipe.scheduler.set_timesteps(steps, device=noise.device)
    timesteps = pipe.scheduler.timesteps
    if start is None:
        return noise * pipe.scheduler.init_noise_sigma, timesteps
    timesteps = timesteps[steps - max(1, round(steps * strength)) :]
    return pipe.scheduler.add_noise(start, noise, timesteps[:1]), timesteps
