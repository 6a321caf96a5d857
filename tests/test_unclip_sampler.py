"""Reconstruction with a real Stable unCLIP pipeline. The pipeline is tiny and randomly
initialised, built from SD 2.1 unCLIP's classes (nothing is downloaded). The tests cover shape,
range and seeding, that the embedding and the blurry start steer the image, agreement with
``pipe.__call__``, loading from a local folder, and the errors."""

from __future__ import annotations

import pytest
import torch

from fakes import tiny_unclip_pipeline
from mindpipe.exceptions import MissingWeightsError
from mindpipe.models.unclip_sampler import (
    embedding_width,
    load_pretrained_unclip,
    sample_pretrained_unclip,
)

EMBED, SIZE, STEPS = 12, 32, 2  # the tiny VAE halves the size: 16 x 16 latents


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are so small that a second thread only adds overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):
    return tiny_unclip_pipeline(tmp_path_factory.mktemp("tiny_unclip"), EMBED)


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    blurry = torch.rand(3, 3, 4, 4, generator=gen) * 2 - 1  # smooth, as the ridge decode's are
    return {
        "embeddings": torch.randn(3, EMBED, generator=gen) * 3,
        "blurry": torch.nn.functional.interpolate(blurry, size=SIZE, mode="bilinear"),
    }


def _sample(pipe, embeddings, blurry=None, **kwargs) -> torch.Tensor:
    kwargs = {"steps": STEPS, "strength": 1.0, "seed": 0, "size": SIZE} | kwargs
    return sample_pretrained_unclip(pipe, embeddings, blurry, **kwargs)


def test_shape_range_and_seed(pipe, inputs):
    images = _sample(pipe, **inputs)
    assert images.shape == (3, 3, SIZE, SIZE) and images.device.type == "cpu"
    assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, _sample(pipe, **inputs))
    assert not torch.allclose(images, _sample(pipe, **inputs, seed=1))
    # image i uses seed + i, whatever the batch
    alone = _sample(pipe, inputs["embeddings"][1:2], inputs["blurry"][1:2], seed=1)
    assert torch.allclose(images[1:2], alone, atol=1e-5)
    assert torch.allclose(images, _sample(pipe, **inputs, batch=2), atol=1e-5)
    # rendered at 32 px (the pipeline's own size), returned at any size
    assert _sample(pipe, **inputs, size=20).shape == (3, 3, 20, 20)


def test_embedding_and_blurry_start_steer_the_image(pipe, inputs):
    full = _sample(pipe, **inputs)
    other = _sample(pipe, inputs["embeddings"].flip(0), inputs["blurry"])
    from_noise = _sample(pipe, inputs["embeddings"])
    for changed in (other, from_noise):
        assert (changed - full).abs().mean() > 1e-3


def test_lower_strength_stays_closer_to_the_blurry_image(pipe, inputs):
    with torch.no_grad():  # the reference is the blurry image through the (lossy) tiny VAE
        latents = pipe.vae.encode(inputs["blurry"]).latent_dist.mode()
        roundtrip = pipe.vae.decode(latents).sample.clamp(-1, 1)

    def distance(strength: float) -> float:
        return (_sample(pipe, **inputs, steps=4, strength=strength) - roundtrip).abs().mean().item()

    near, mid, far = distance(0.25), distance(0.5), distance(1.0)
    assert near < mid < far and near < 0.5 * far, (near, mid, far)


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_matches_the_pipeline_call_without_a_blurry_start(pipe, inputs, guidance_scale):
    emb = inputs["embeddings"][:1]
    ours = _sample(pipe, emb, seed=3, guidance_scale=guidance_scale, noise_level=100)
    theirs = pipe(
        image_embeds=emb,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        noise_level=100,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).images
    assert torch.allclose(ours, theirs * 2 - 1, atol=1e-4)


def test_bad_arguments(pipe, inputs):
    with pytest.raises(ValueError, match="strength"):
        _sample(pipe, **inputs, strength=0.0)
    with pytest.raises(ValueError, match=rf"\({EMBED},\)-wide"):
        _sample(pipe, torch.zeros(2, EMBED + 1))
    with pytest.raises(ValueError, match="blurry"):
        _sample(pipe, inputs["embeddings"], inputs["blurry"][:1])


def test_load_from_a_local_folder(pipe, inputs, tmp_path):
    with pytest.raises(MissingWeightsError, match=r"reconstruct\.pretrained\.unclip"):
        load_pretrained_unclip(tmp_path / "nope")
    pipe.save_pretrained(tmp_path / "unclip")
    loaded = load_pretrained_unclip(tmp_path / "unclip")
    assert embedding_width(loaded) == EMBED
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert torch.allclose(_sample(loaded, **inputs), _sample(pipe, **inputs), atol=1e-5)
