"""Image reconstruction with the real Stable unCLIP (SD 2.1 unCLIP) from local weights.

:func:`sample_pretrained_unclip` renders images from fMRI-decoded CLIP image embeddings with a
pipeline from :func:`load_pretrained_unclip`, as MindEye2 renders from its decoded embedding:

* the embedding is unCLIP's condition, noise-augmented at ``noise_level`` as the pipeline does,
  with classifier-free guidance against a zero embedding under an empty prompt;
* a blurry low-level image, when given, is VAE-encoded and noised to the first kept DDIM step,
  as img2img does: ``strength`` keeps the last ``strength`` of the steps.

``pipe.__call__`` cannot start part-way down the schedule from an image, so its loop is written
out here; without a blurry image it gives the pipeline's own images (a test checks). The sampler
is DDIM with eta 0 whatever scheduler the folder ships, so a seed fixes the images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mindpipe.models.checkpoint import require_local_weights
from mindpipe.models.sampling import pipeline_start, resize_square, vae_latents


def load_pretrained_unclip(local_dir: str | Path, device: str | torch.device = "cpu"):
    """``StableUnCLIPImg2ImgPipeline`` from a local diffusers folder; never downloads.

    A missing folder or one without ``model_index.json`` raises MissingWeightsError naming it.
    """
    folder = Path(local_dir)
    require_local_weights(
        folder, "model_index.json", "Stable unCLIP", "reconstruct.pretrained.unclip"
    )
    from diffusers import DDIMScheduler, StableUnCLIPImg2ImgPipeline

    pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def embedding_width(pipe) -> int:
    """Width of the CLIP image embeddings the pipeline is conditioned on (768 for ViT-L/14)."""
    return int(pipe.image_normalizer.mean.shape[-1])


@torch.no_grad()
def sample_pretrained_unclip(
    pipe,
    embeddings: torch.Tensor,
    blurry: torch.Tensor | None = None,
    *,
    steps: int,
    strength: float,
    seed: int,
    size: int,
    guidance_scale: float = 10.0,
    noise_level: int = 0,
    render_size: int | None = None,
    batch: int = 8,
) -> torch.Tensor:
    """Images ``(N, 3, size, size)`` in [-1, 1] on the CPU, one per embedding.

    ``embeddings`` ``(N, D)`` are CLIP image embeddings in the image encoder's own units (not
    normalised); ``blurry`` ``(N, 3, h, w)`` in [-1, 1] at any size starts the sampler (``None``:
    from pure noise, ``strength`` unused). The pipeline renders at ``render_size``, by default its
    native resolution (``unet.sample_size x vae_scale_factor``: 768 for SD 2.1 unCLIP), and the
    result is resized to ``size``. Image ``i`` draws its noise from ``seed + i``, so it does not
    depend on the other images or on ``batch``.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1]; got {strength}")
    width = embedding_width(pipe)
    if embeddings.dim() != 2 or embeddings.shape[1] != width:
        raise ValueError(
            f"the unCLIP pipeline takes ({width},)-wide CLIP image embeddings; "
            f"got shape {tuple(embeddings.shape)}"
        )
    if blurry is not None and len(blurry) != len(embeddings):
        raise ValueError(f"{len(blurry)} blurry images for {len(embeddings)} embeddings")
    render = render_size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = []
    for i in range(0, len(embeddings), batch):
        images.append(
            _sample_batch(
                pipe,
                embeddings[i : i + batch],
                None if blurry is None else blurry[i : i + batch],
                seed=seed + i,
                steps=steps,
                strength=strength,
                render=render,
                guidance_scale=guidance_scale,
                noise_level=noise_level,
            )
        )
    return resize_square(torch.cat(images), size)


def _sample_batch(
    pipe,
    embeddings: torch.Tensor,
    blurry: torch.Tensor | None,
    *,
    seed: int,
    steps: int,
    strength: float,
    render: int,
    guidance_scale: float,
    noise_level: int,
) -> torch.Tensor:
    device, dtype = pipe.device, pipe.unet.dtype
    n, guided = len(embeddings), guidance_scale > 1.0
    side = render // pipe.vae_scale_factor
    latent_shape = (pipe.unet.config.in_channels, side, side)
    # per image and in the pipeline's order (embedding noise, then latents), drawn on the CPU so
    # that a seed gives the same image on any device and in any batch
    gens = [torch.Generator().manual_seed(seed + k) for k in range(n)]
    draws = [
        (torch.randn(embeddings.shape[1:], generator=g), torch.randn(latent_shape, generator=g))
        for g in gens
    ]
    embed_noise = torch.stack([d[0] for d in draws]).to(device, dtype)
    noise = torch.stack([d[1] for d in draws]).to(device, dtype)

    text, negative = pipe.encode_prompt("", device, n, guided)
    tokens = torch.cat([negative, text]) if guided else text
    cond = pipe.noise_image_embeddings(embeddings.to(device, dtype), noise_level, noise=embed_noise)
    if guided:
        cond = torch.cat([torch.zeros_like(cond), cond])

    start = None if blurry is None else vae_latents(pipe, blurry, render).to(dtype)
    latents, timesteps = pipeline_start(pipe, steps, noise, start, strength)

    for t in timesteps:
        x = torch.cat([latents, latents]) if guided else latents
        x = pipe.scheduler.scale_model_input(x, t)
        eps = pipe.unet(x, t, encoder_hidden_states=tokens, class_labels=cond).sample
        if guided:
            uncond, eps = eps.chunk(2)
            eps = uncond + guidance_scale * (eps - uncond)
        latents = pipe.scheduler.step(eps, t, latents, eta=0.0).prev_sample
    images = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
    return images.clamp(-1.0, 1.0).float().cpu()
