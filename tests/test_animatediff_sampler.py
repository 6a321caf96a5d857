"""NeuroClips sampling with a real AnimateDiff + SparseCtrl RGB pipeline. The pipeline here is tiny
and randomly initialised, built from configs (nothing is downloaded). The tests cover shapes and
range, seeding, each guidance (alpha, beta, gamma), agreement with ``pipe.__call__``, and loading
the pipeline from local folders."""

from __future__ import annotations

import pytest
import torch
from diffusers import AnimateDiffSparseControlNetPipeline
from PIL import Image

from fakes import tiny_animatediff_components, write_tiny_animatediff
from mindpipe.models.animatediff_sampler import sample_pretrained
from mindpipe.models.video_diffusion import load_pretrained_animatediff

FRAMES, SIZE, STEPS = 4, 32, 2  # the tiny VAE halves the size: 16 x 16 latents
CAPTIONS = ["a cat on a sofa", "a red car"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are so small that a second thread only adds overhead. On a busy machine
    the threads also wait for each other: a call takes 1-10 s on 2 threads and 0.2 s on 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def components(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return tiny_animatediff_components(tmp_path_factory.mktemp("tiny_animatediff"))


@pytest.fixture(scope="module")
def pipe(components: dict) -> AnimateDiffSparseControlNetPipeline:
    pipe = AnimateDiffSparseControlNetPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    # smooth videos, as the Perception Reconstructor's are
    blurry = torch.rand(2, FRAMES, 3, 4, 4, generator=gen) * 2 - 1
    blurry = torch.nn.functional.interpolate(blurry.flatten(0, 1), size=SIZE, mode="bilinear")
    return {
        "keyframe": torch.rand(2, 3, SIZE, SIZE, generator=gen) * 2 - 1,
        "blurry": blurry.view(2, FRAMES, 3, SIZE, SIZE),
    }


def _sample(pipe, keyframe=None, blurry=None, *, captions=CAPTIONS, **kwargs) -> torch.Tensor:
    kwargs = {"steps": STEPS, "strength": 1.0, "seed": 0, "size": SIZE} | kwargs
    return sample_pretrained(pipe, captions, keyframe, blurry, n_frames=FRAMES, **kwargs)


def test_shape_range_and_seed(pipe, inputs):
    video = _sample(pipe, **inputs)
    assert video.shape == (2, FRAMES, 3, SIZE, SIZE) and video.device.type == "cpu"
    assert torch.isfinite(video).all() and video.min() >= -1 and video.max() <= 1
    assert torch.equal(video, _sample(pipe, **inputs))
    assert not torch.allclose(video, _sample(pipe, **inputs, seed=1))
    # clip i uses seed + i, whatever else is in the batch
    second = _sample(
        pipe, inputs["keyframe"][1:], inputs["blurry"][1:], captions=CAPTIONS[1:], seed=1
    )
    assert torch.allclose(video[1:], second, atol=1e-6)
    # rendered at 32 px (the pipeline's own size), returned at any size
    assert _sample(pipe, **inputs, size=24).shape == (2, FRAMES, 3, 24, 24)


def test_each_guidance_changes_the_video(pipe, inputs):
    full = _sample(pipe, **inputs)
    for ablated in (
        _sample(pipe, blurry=inputs["blurry"]),  # no keyframe: the control net is not run
        _sample(pipe, keyframe=inputs["keyframe"]),  # no blurry video: start from pure noise
        _sample(pipe, **inputs, captions=["a dog", "a boat"]),  # another prompt
    ):
        assert ablated.shape == full.shape and torch.isfinite(ablated).all()
        assert (ablated - full).abs().mean() > 1e-3


def test_lower_strength_stays_closer_to_the_blurry_video(pipe, inputs):
    # the reference is the blurry video through the VAE (the tiny VAE is far from lossless)
    with torch.no_grad():
        frames = inputs["blurry"].flatten(0, 1)
        latents = pipe.vae.encode(frames).latent_dist.mode()
        roundtrip = pipe.vae.decode(latents).sample.clamp(-1, 1).view_as(inputs["blurry"])

    def distance(strength: float) -> float:
        video = _sample(pipe, **inputs, steps=4, strength=strength)
        return (video - roundtrip).abs().mean().item()

    # of the 4 DDIM steps (t = 751, 501, 251, 1) strength 0.25 runs only the last one, from the
    # encoded blurry video barely noised; strength 1 starts at t = 751 where little of it is left
    near, mid, far = distance(0.25), distance(0.5), distance(1.0)
    assert near < mid < far and near < 0.5 * far, (near, mid, far)


def test_matches_the_pipeline_call_without_control(pipe):
    """Same seed, no keyframe (vs. conditioning scale 0), no blurry video: the loop is the
    pipeline's own."""
    ours = _sample(pipe, captions=CAPTIONS[:1], seed=3)
    theirs = pipe(
        CAPTIONS[0],
        num_frames=FRAMES,
        num_inference_steps=STEPS,
        conditioning_frames=[Image.new("RGB", (SIZE, SIZE))],
        controlnet_conditioning_scale=0.0,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).frames
    assert torch.allclose(ours, theirs * 2 - 1, atol=1e-4)


def test_bad_arguments(pipe, inputs):
    with pytest.raises(ValueError, match="strength"):
        _sample(pipe, **inputs, strength=0.0)
    with pytest.raises(ValueError, match="frames"):
        _sample(pipe, blurry=inputs["blurry"][:, :2])
    with pytest.raises(ValueError):  # one keyframe per caption
        _sample(pipe, keyframe=inputs["keyframe"][:1])


def test_load_pretrained_animatediff_from_local_folders(components, pipe, inputs, tmp_path):
    folders = write_tiny_animatediff(components, tmp_path)
    loaded = load_pretrained_animatediff(*folders)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, AnimateDiffSparseControlNetPipeline)
    # the SD folder's UNet2DConditionModel + the adapter rebuild the same motion UNet
    assert torch.allclose(_sample(loaded, **inputs), _sample(pipe, **inputs), atol=1e-5)
