"""NeuroClips' video synthesis with the real AnimateDiff v3 + SparseCtrl RGB pipeline.

:func:`sample_pretrained` renders with a pipeline from
:func:`~mindpipe.models.video_diffusion.load_pretrained_animatediff` and steers it NeuroClips'
three ways:

* alpha: the blurry video (Perception Reconstructor) is VAE-encoded, noised to the first
  sampling timestep and used as the start latents. ``strength`` skips the first
  ``1 - strength`` of the DDIM steps, as img2img does; ``strength`` 1 (NeuroClips) noises the
  latents to the first of all steps. With no blurry video, sampling runs every step from pure
  noise and ``strength`` is not used.
* beta: the reconstructed keyframe's VAE latent is SparseCtrl RGB's condition on frame 0 only
  (``controlnet_frame_indices=[0]``). With no keyframe the control net is not run, the same as a
  conditioning scale of 0.
* gamma: the decoded caption is the text prompt, with classifier-free guidance.

``pipe.__call__`` cannot start from a partly noised video part-way down the schedule, so the
denoising loop is written out here. It is the pipeline's loop with FreeInit, IP-Adapter and guess
mode left out, and it reuses the pipeline's prompt encoding, sparse conditioning and decoding.
"""

from __future__ import annotations

import torch

from mindpipe.models.sampling import pipeline_start, resize_square, vae_latents


def _video_latents(pipe, frames: torch.Tensor, size: int) -> torch.Tensor:
    """Frames ``(N, 3, h, w)`` in [-1, 1] -> scaled VAE latents ``(1, C, N, h', w')`` (video)."""
    return vae_latents(pipe, frames, size).transpose(0, 1)[None]


def _sample_clip(
    pipe,
    caption: str,
    keyframe: torch.Tensor | None,
    blurry: torch.Tensor | None,
    *,
    steps: int,
    strength: float,
    generator: torch.Generator,
    n_frames: int,
    render: int,
    guidance_scale: float,
    negative_prompt: str,
) -> torch.Tensor:
    """One clip ``(F, 3, render, render)`` in [-1, 1] on CPU."""
    device, dtype = pipe.device, pipe.unet.dtype
    guided = guidance_scale > 1.0
    text, negative = pipe.encode_prompt(caption, device, 1, guided, negative_prompt)
    tokens = (torch.cat([negative, text]) if guided else text).repeat_interleave(n_frames, dim=0)

    side = render // pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, n_frames, side, side)
    # drawn on the CPU so that a seed gives the same video on any device
    noise = torch.randn(shape, generator=generator).to(device, dtype)
    start = None if blurry is None else _video_latents(pipe, blurry, render).to(dtype)
    latents, timesteps = pipeline_start(pipe, steps, noise, start, strength)

    cond = mask = None
    if keyframe is not None:
        cond, mask = pipe.prepare_sparse_control_conditioning(
            _video_latents(pipe, keyframe[None], render),
            n_frames,
            [0],
            device,
            pipe.controlnet.dtype,
        )

    step_kwargs = pipe.prepare_extra_step_kwargs(generator, 0.0)
    for t in timesteps:
        x = torch.cat([latents, latents]) if guided else latents
        x = pipe.scheduler.scale_model_input(x, t)
        down = mid = None
        if cond is not None:
            down, mid = pipe.controlnet(
                x,
                t,
                encoder_hidden_states=tokens,
                controlnet_cond=cond,
                conditioning_mask=mask,
                return_dict=False,
            )
        eps = pipe.unet(
            x,
            t,
            encoder_hidden_states=tokens,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        if guided:
            uncond, eps = eps.chunk(2)
            eps = uncond + guidance_scale * (eps - uncond)
        latents = pipe.scheduler.step(eps, t, latents, **step_kwargs).prev_sample
    video = pipe.decode_latents(latents.to(pipe.vae.dtype))  # (1, 3, F, H, W)
    return video[0].transpose(0, 1).clamp(-1.0, 1.0).cpu()


@torch.no_grad()
def sample_pretrained(
    pipe,
    captions: list[str],
    keyframe: torch.Tensor | None,
    blurry: torch.Tensor | None,
    *,
    steps: int,
    strength: float,
    seed: int,
    size: int,
    n_frames: int = 16,
    guidance_scale: float = 7.5,
    negative_prompt: str = "",
    render_size: int | None = None,
) -> torch.Tensor:
    """Videos ``(B, F, 3, size, size)`` in [-1, 1] on the CPU, one per caption.

    ``pipe`` is an ``AnimateDiffSparseControlNetPipeline`` with a DDIM-like scheduler and an RGB
    SparseCtrl (keyframe given as a VAE latent). ``keyframe`` ``(B, 3, h, w)`` and ``blurry``
    ``(B, n_frames, 3, h, w)`` are in [-1, 1] at any size. ``None`` leaves that guidance out (the
    ablations). The pipeline renders at ``render_size``, by default its native resolution
    (``unet.sample_size x vae_scale_factor``: 512 for SD 1.5), and the result is resized to
    ``size``.

    Clips are rendered one at a time because SparseCtrl takes one clip's conditioning frames per
    call. Clip ``i`` draws its noise from ``seed + i``, so the output is deterministic and a clip
    does not depend on the other clips in the batch.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1]; got {strength}")
    if blurry is not None and blurry.shape[1] != n_frames:
        raise ValueError(f"blurry video has {blurry.shape[1]} frames; n_frames is {n_frames}")
    render = render_size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    n = len(captions)
    keys = [None] * n if keyframe is None else keyframe
    blurs = [None] * n if blurry is None else blurry
    videos = []
    for i, (caption, key, blur) in enumerate(zip(captions, keys, blurs, strict=True)):
        clip = _sample_clip(
            pipe,
            caption,
            key,
            blur,
            steps=steps,
            strength=strength,
            generator=torch.Generator().manual_seed(seed + i),
            n_frames=n_frames,
            render=render,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
        )
        videos.append(resize_square(clip, size))
    return torch.stack(videos)
