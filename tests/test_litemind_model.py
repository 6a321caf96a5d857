"""Lite-Mind's DFT backbone and the MindEye MLP it is compared with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mindpipe.models.litemind import LiteMind, LiteMindConfig
from mindpipe.models.mindeye_mlp import MindEyeMLP, MindEyeMLPConfig
from mindpipe.recipes.litemind import TargetSpace


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_sizes_give_the_claimed_parameter_saving():
    """Lite-Mind's subj01 model vs MindEye's MLP: the paper claims ~98.7% fewer parameters."""
    with torch.device("meta"):  # counts without allocating ~4 GB
        lite = LiteMind(
            LiteMindConfig(
                n_voxels=15724,
                embed_dim=768,
                n_tokens=257,
                patch_size=450,
                widths=(512, 256, 128, 257),
                depths=(2, 10, 2, 4),
                head="tokens",
            )
        )
        mlp = MindEyeMLP(MindEyeMLPConfig(15724, 768, n_tokens=257, hidden=4096, n_blocks=4))
    assert lite.config.n_patches == 34
    saving = 1 - n_params(lite) / n_params(mlp)
    assert 0.985 < saving < 0.99


@pytest.mark.parametrize("head,n_tokens", [("pooled", 1), ("tokens", 5)])
def test_backbone_maps_voxels_to_clip_tokens_and_learns(head, n_tokens):
    torch.manual_seed(0)
    cfg = LiteMindConfig(n_voxels=107, embed_dim=16, n_tokens=n_tokens, patch_size=5, head=head)
    model = LiteMind(cfg)  # 21 patches: odd, so the inverse FFTs must keep every token
    voxels = torch.randn(16, 107)
    target = (voxels @ torch.randn(107, n_tokens * 16) / 10).view(16, n_tokens, 16)
    assert model(voxels).shape == (16, n_tokens, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()  # no dropout: the loss must fall monotonically enough to compare ends
    losses = []
    for _ in range(100):
        loss = torch.nn.functional.mse_loss(model(voxels), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model.stages[0].filter.weights.grad.abs().sum() > 0  # the spectral filter trains


def test_wrong_voxel_count_is_a_clear_error():
    model = LiteMind(LiteMindConfig(n_voxels=64, embed_dim=8, patch_size=16))
    with pytest.raises(ValueError, match=r"\(batch, 64\)"):
        model(torch.randn(2, 63))
    with pytest.raises(ValueError, match="patch_size"):
        LiteMindConfig(n_voxels=10, embed_dim=8, patch_size=16)


def test_target_space_round_trips_and_ignores_the_decoded_length():
    """Decoders learn directions: a decoded row at any length maps to the same pooled embedding."""
    rng = np.random.default_rng(0)
    targets = rng.normal(3.0, 2.0, (200, 5, 8)).astype(np.float32)  # pooled + 4 tokens
    space = TargetSpace.fit(targets)
    encoded = space.encode(targets).reshape(200, -1)
    assert space.norm == pytest.approx(np.linalg.norm(encoded, axis=1).mean())
    at_norm = encoded * (space.norm / np.linalg.norm(encoded, axis=1, keepdims=True))
    expected = space.pooled(at_norm)
    assert np.allclose(space.pooled(0.01 * at_norm), expected, atol=1e-5)
    assert np.allclose(space.pooled(30.0 * at_norm), expected, atol=1e-4)
    # rows already at the mean norm come back as the original pooled embeddings
    typical = np.abs(np.linalg.norm(encoded, axis=1) / space.norm - 1) < 0.01
    assert typical.sum() >= 5
    assert np.allclose(expected[typical], targets[typical, 0], atol=0.1)
