"""Top-1 retrieval on hand-made similarity matrices with known answers."""

import numpy as np
import pytest

from mindpipe.evaluate.retrieval import cosine_similarity, retrieval_top1


def test_perfect_decoder_scores_one_both_ways():
    result = retrieval_top1(np.eye(50) + 0.01, batch_size=20, repeats=5)
    assert result["brain_to_image"] == 1.0
    assert result["image_to_brain"] == 1.0
    assert result["chance"] == pytest.approx(1 / 20)


def test_random_similarity_is_near_chance():
    rng = np.random.default_rng(0)
    result = retrieval_top1(rng.normal(size=(400, 400)), batch_size=300, repeats=30)
    assert result["brain_to_image"] == pytest.approx(1 / 300, abs=0.01)


def test_directions_are_not_confused():
    # One "hub" image is the best match of every brain sample: brain->image is right only for
    # the hub's own sample, while image->brain is always right (each image's own sample scores
    # highest in its column).
    n = 10
    sim = np.eye(n) * 1.0
    sim[:, 0] = 2.0
    sim[0, 0] = 3.0
    result = retrieval_top1(sim, batch_size=n, repeats=1)
    assert result["brain_to_image"] == pytest.approx(1 / n)
    assert result["image_to_brain"] == pytest.approx(1.0)


def test_ties_count_as_failures():
    assert retrieval_top1(np.ones((5, 5)), batch_size=5)["brain_to_image"] == 0.0


def test_small_sets_use_every_item_once():
    result = retrieval_top1(np.eye(12), batch_size=300, repeats=30)
    assert result["batch_size"] == 12


def test_same_seed_same_batches():
    sim = np.random.default_rng(1).normal(size=(500, 500)) + 2 * np.eye(500)
    assert retrieval_top1(sim, seed=3) == retrieval_top1(sim, seed=3)
    assert retrieval_top1(sim, seed=3) != retrieval_top1(sim, seed=4)


def test_non_square_similarity_is_rejected():
    with pytest.raises(ValueError, match="square"):
        retrieval_top1(np.zeros((3, 4)))


def test_cosine_similarity_matches_definition():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_similarity(a, a), [[1, 2**-0.5], [2**-0.5, 1]])
