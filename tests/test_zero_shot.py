"""Zero-shot classification of decoded embeddings, on hand-made embeddings with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mindpipe.evaluate.report import ZeroShot


class FakeStore:
    """What ZeroShot reads from the feature store: one prompt embedding per category."""

    categories = ("apple", "boat", "cat", "dog")

    def prompt_pooled(self) -> np.ndarray:
        return np.eye(4, dtype=np.float32)


@pytest.fixture
def zero_shot() -> ZeroShot:
    stimuli = pd.DataFrame(
        {
            "stim_id": [0, 1, 2, 3],
            "category": ["apple", "cat", "dog", "dog"],
            "held_out": [0, 1, 1, 1],  # cat and dog are never trained on
        }
    )
    return ZeroShot(stimuli, FakeStore())


def test_both_protocols_on_a_known_answer(zero_shot):
    apple, cat, dog = np.eye(4)[[0, 2, 3]]
    embedding = np.stack(
        [
            apple,  # a seen-category image: not scored
            cat + 0.1 * apple,  # right in both protocols
            0.6 * apple + 0.5 * dog,  # nearest prompt is a seen category: right among novel only
            cat,  # wrong in both
        ]
    )
    scores = zero_shot.score({"stim_id": np.arange(4), "embedding": embedding})
    assert scores["zero_shot_top1"] == pytest.approx(1 / 3)
    assert scores["zero_shot_chance"] == pytest.approx(1 / 4)
    assert scores["zero_shot_novel_top1"] == pytest.approx(2 / 3)
    assert scores["zero_shot_novel_chance"] == pytest.approx(1 / 2)


def test_nothing_to_score_outside_clip_space_or_without_held_out_images(zero_shot):
    assert zero_shot.score({"stim_id": np.arange(4), "embedding": np.ones((4, 3))}) == {}
    assert zero_shot.score({"stim_id": np.arange(4), "similarity": np.eye(4)}) == {}
    assert zero_shot.score({"stim_id": np.array([0]), "embedding": np.ones((1, 4))}) == {}
