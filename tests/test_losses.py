"""The brain decoders' contrastive losses on hand-made inputs with known answers."""

import pytest
import torch

from mindpipe.exceptions import ParamsError
from mindpipe.models.losses import info_nce, mixco_nce, soft_clip
from mindpipe.recipes.contrastive import TrainConfig, mix_voxels


def _pairs(n: int = 6, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)


def test_mixco_without_mixing_is_symmetric_info_nce():
    pred, target = _pairs()
    n = len(pred)
    unmixed = mixco_nce(pred, target, 10.0, torch.ones(n), torch.arange(n))
    assert unmixed == pytest.approx(info_nce(pred, target, 10.0, symmetric=True).item(), 1e-6)


def test_mixco_soft_label_rewards_the_mixed_prediction():
    # Orthogonal targets; sample 0 was mixed 50/50 with sample 1.
    target = torch.eye(4)
    beta, partner = torch.tensor([0.5, 1.0, 1.0, 1.0]), torch.tensor([1, 1, 2, 3])
    mixed_pred = target.clone()
    mixed_pred[0] = (target[0] + target[1]) / 2
    loss_mixed = mixco_nce(mixed_pred, target, 20.0, beta, partner)
    loss_one_sided = mixco_nce(target.clone(), target, 20.0, beta, partner)
    assert loss_mixed < loss_one_sided


def test_soft_clip_on_orthogonal_targets_is_symmetric_info_nce():
    # Orthogonal targets make the soft labels one-hot, up to exp(-scale) of mass.
    target = torch.eye(5)
    pred = target + 0.3 * torch.randn(5, 5, generator=torch.Generator().manual_seed(1))
    soft = soft_clip(pred, target, 30.0)
    hard = info_nce(pred, target, 30.0, symmetric=True)
    assert soft == pytest.approx(hard.item(), abs=1e-6)


def test_soft_clip_shares_label_mass_between_near_duplicate_targets():
    # Targets 0 and 1 are near duplicates: predicting either one for both costs little.
    target = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.141, 0.0], [0.0, 0.0, 1.0]])
    swapped = target[[1, 0, 2]]

    def penalty(loss):  # extra loss of the swapped prediction over the exact one
        return (loss(swapped, target, 10.0) - loss(target, target, 10.0)).item()

    def hard(pred, tgt, scale):
        return info_nce(pred, tgt, scale, symmetric=True)

    assert 0 <= penalty(soft_clip) < 0.5 * penalty(hard)


def test_mix_voxels_is_a_seeded_convex_mix():
    voxels = torch.randn(32, 7, generator=torch.Generator().manual_seed(2))
    mixed, beta, partner = mix_voxels(voxels, 0.15, torch.Generator().manual_seed(3))
    again, beta_again, _ = mix_voxels(voxels, 0.15, torch.Generator().manual_seed(3))
    assert torch.equal(mixed, again) and torch.equal(beta, beta_again)
    assert 8 < (beta == 1).sum() < 24  # about half the rows are left unmixed
    own = partner == torch.arange(32)  # unmixed rows, or mixed with themselves
    assert torch.allclose(mixed[own], voxels[own])
    expected = beta[:, None] * voxels + (1 - beta[:, None]) * voxels[partner]
    assert torch.allclose(mixed, expected)
    assert ((beta > 0) & (beta <= 1)).all()


@pytest.mark.parametrize(
    "field, value", [("loss", "mse"), ("mixco_fraction", 1.5), ("mixco_beta", 0.0)]
)
def test_train_config_refuses_bad_loss_params(field, value):
    with pytest.raises(ParamsError, match=field):
        TrainConfig(**{field: value})
