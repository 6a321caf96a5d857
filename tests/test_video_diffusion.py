"""The AnimateDiff + SparseCtrl-style video generator: shapes, seeded sampling, conditions,
safetensors round trip, learning, and local-weights errors."""

from __future__ import annotations

import pytest
import torch

from mindpipe.exceptions import MissingWeightsError
from mindpipe.models.video_diffusion import (
    VideoDiffusion,
    config_for,
    load_pretrained_animatediff,
    load_video_model,
    parameter_counts,
    save_video_model,
)

SIZE, FRAMES, DIM = 16, 8, 8


@pytest.fixture(scope="module")
def model() -> VideoDiffusion:
    torch.manual_seed(0)
    return VideoDiffusion(config_for(SIZE, FRAMES, DIM, "micro")).eval()


@pytest.fixture(scope="module")
def conditions() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "embedding": torch.randn(2, DIM, generator=gen),
        "keyframe": torch.rand(2, 3, SIZE, SIZE, generator=gen) * 2 - 1,
        "blurry": torch.rand(2, FRAMES, 3, SIZE, SIZE, generator=gen) * 2 - 1,
    }


def test_shapes_and_parts(model, conditions):
    cfg = model.config
    assert cfg.n_frames == FRAMES and cfg.fps == 8 and cfg.prediction_type == "sample"
    noisy = torch.randn(2, FRAMES, 3, SIZE, SIZE)
    t = torch.tensor([10, 900])
    assert model(noisy, t, **conditions).shape == noisy.shape
    assert model(noisy, t).shape == noisy.shape  # every condition absent
    counts = parameter_counts(model)
    assert counts["unet"] > 0 and counts["controlnet"] > 0
    out = model.sample(conditions["embedding"], steps=2)
    assert out.shape == (2, FRAMES, 3, SIZE, SIZE)
    assert model.sample(None, steps=1, batch=3).shape == (3, FRAMES, 3, SIZE, SIZE)


def test_sampling_is_deterministic_from_seed(model, conditions):
    a = model.sample(**conditions, steps=3, seed=5)
    b = model.sample(**conditions, steps=3, seed=5)
    c = model.sample(**conditions, steps=3, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.abs().max()) <= 1.0


def test_conditions_change_the_output(model, conditions):
    emb, key, blurry = conditions["embedding"], conditions["keyframe"], conditions["blurry"]
    full = model.sample(emb, key, blurry, steps=2)
    assert not torch.allclose(full, model.sample(emb, None, blurry, steps=2))
    assert not torch.allclose(full, model.sample(emb, key, None, steps=2))
    assert not torch.allclose(full, model.sample(None, key, blurry, steps=2))
    assert not torch.allclose(full, model.sample(emb, key, blurry, steps=2, guidance_scale=3.0))


def test_blurry_start_at_zero_strength_returns_blurry(model, conditions):
    blurry = torch.full((1, FRAMES, 3, SIZE, SIZE), 0.25)
    out = model.sample(conditions["embedding"][:1], blurry=blurry, steps=4, strength=0.0)
    assert torch.allclose(out, blurry)
    part = model.sample(conditions["embedding"][:1], blurry=blurry, steps=4, strength=0.5)
    assert part.shape == blurry.shape


def test_save_load_round_trip(model, conditions, tmp_path):
    save_video_model(model, tmp_path / "video")
    loaded = load_video_model(tmp_path / "video").eval()
    assert loaded.config == model.config
    assert torch.equal(model.sample(**conditions, steps=2), loaded.sample(**conditions, steps=2))


def test_training_steps_reduce_the_denoising_loss():
    torch.manual_seed(0)
    net = VideoDiffusion(config_for(SIZE, FRAMES, DIM, "micro"))
    frames = torch.linspace(-1, 1, FRAMES)[None, :, None, None, None]
    ramp = torch.linspace(-1, 1, SIZE)
    clean = (frames * 0.5 + ramp[None, None, None, None, :] * 0.5).expand(2, -1, 3, SIZE, -1)
    clean = clean.contiguous()
    blurry = torch.nn.functional.avg_pool2d(clean.flatten(0, 1), 4).repeat_interleave(4, -1)
    blurry = blurry.repeat_interleave(4, -2).view_as(clean)
    batch = (clean, torch.ones(2, DIM), clean[:, 0], blurry)

    def held_out_loss() -> float:
        with torch.no_grad():
            losses = [
                net.denoising_loss(*batch, torch.Generator().manual_seed(100 + i)) for i in range(4)
            ]
        return float(torch.stack(losses).mean())

    before = held_out_loss()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        loss = net.denoising_loss(*batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.5 * before, (before, after)


def test_missing_local_weights_raise_clear_error(tmp_path):
    sd, motion, ctrl = tmp_path / "sd15", tmp_path / "mm", tmp_path / "sparsectrl"
    with pytest.raises(MissingWeightsError, match=r"sd15.*model_index\.json"):
        load_pretrained_animatediff(sd, motion, ctrl)
    sd.mkdir()
    (sd / "model_index.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match=r"'[^']*mm'.*config\.json"):
        load_pretrained_animatediff(sd, motion, ctrl)
    motion.mkdir()
    (motion / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match=r"sparsectrl.*config\.json"):
        load_pretrained_animatediff(sd, motion, ctrl)
    with pytest.raises(MissingWeightsError, match=r"config\.json"):
        load_video_model(tmp_path)
