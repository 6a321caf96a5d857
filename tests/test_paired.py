"""Paired comparison of per-item scores: known answers and bad input."""

import numpy as np
import pytest

from mindpipe.evaluate.paired import paired_difference


def test_a_constant_gain_is_reported_exactly():
    b = np.random.default_rng(0).random(50)
    d = paired_difference(b + 0.1, b)
    assert (d.mean, d.win_rate) == (pytest.approx(0.1), 1.0)
    assert d.ci_low == pytest.approx(0.1) and d.ci_high == pytest.approx(0.1)


def test_pairing_finds_a_small_gain_hidden_by_large_item_spread():
    rng = np.random.default_rng(1)
    item = rng.normal(0, 1.0, 200)  # shared by both methods: cancels in the pairs
    a, b = item + 0.02 + rng.normal(0, 0.01, 200), item + rng.normal(0, 0.01, 200)
    d = paired_difference(a, b)
    assert 0.0 < d.ci_low < 0.02 < d.ci_high
    assert d.win_rate > 0.8


def test_no_difference_gives_an_interval_around_zero_and_ties_are_not_wins():
    rng = np.random.default_rng(2)
    d = paired_difference(rng.normal(size=300), rng.normal(size=300))
    assert d.ci_low < 0.0 < d.ci_high
    assert paired_difference(np.ones(5), np.ones(5)).win_rate == 0.0


def test_same_seed_same_interval_and_metric_names():
    rng = np.random.default_rng(3)
    a, b = rng.random(40), rng.random(40)
    assert paired_difference(a, b, seed=4) == paired_difference(a, b, seed=4)
    assert set(paired_difference(a, b).as_metrics("p.x")) == {
        "p.x.mean",
        "p.x.win_rate",
        "p.x.ci_low",
        "p.x.ci_high",
    }


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.ones(3), np.ones(4), "equal length|one length"),
        (np.ones((2, 2)), np.ones((2, 2)), "1-D"),
        (np.ones(1), np.ones(1), ">= 2"),
        (np.array([1.0, np.nan]), np.ones(2), "NaN"),
    ],
)
def test_bad_input_is_refused(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_difference(a, b)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="n_boot"):
        paired_difference(np.ones(3), np.ones(3), n_boot=0)
    with pytest.raises(ValueError, match="level"):
        paired_difference(np.ones(3), np.ones(3), level=1.0)
