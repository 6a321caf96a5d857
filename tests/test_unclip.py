"""The unCLIP-style generator: seeded sampling, safetensors round trip, missing-weights error."""

from __future__ import annotations

import pytest
import torch

from mindpipe.exceptions import MissingWeightsError
from mindpipe.models.unclip import (
    UnCLIPGenerator,
    config_for,
    load_generator,
    save_generator,
)


@pytest.fixture(scope="module")
def generator() -> UnCLIPGenerator:
    torch.manual_seed(0)
    return UnCLIPGenerator(config_for(image_size=16, embed_dim=8)).eval()


def test_sampling_is_deterministic_from_seed(generator):
    emb = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    a = generator.sample(emb, steps=3, seed=5)
    b = generator.sample(emb, steps=3, seed=5)
    c = generator.sample(emb, steps=3, seed=6)
    assert a.shape == (2, 3, 16, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.abs().max()) <= 1.0


def test_blurry_start_at_zero_strength_returns_blurry(generator):
    emb = torch.zeros(1, 8)
    blurry = torch.full((1, 3, 16, 16), 0.25)
    out = generator.sample(emb, steps=4, seed=0, blurry=blurry, strength=0.0)
    assert torch.allclose(out, blurry)


def test_save_load_round_trip(generator, tmp_path):
    save_generator(generator, tmp_path / "gen")
    loaded = load_generator(tmp_path / "gen").eval()
    emb = torch.randn(1, 8)
    assert torch.equal(generator.sample(emb, steps=2), loaded.sample(emb, steps=2))


def test_missing_weights_raise_clear_error(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"config\.json"):
        load_generator(tmp_path)
