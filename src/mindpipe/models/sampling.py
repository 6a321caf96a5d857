"""The deterministic DDIM start shared by the image and video generators."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler


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
