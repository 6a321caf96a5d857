"""Stimulus feature vectors from the stimulus table's annotations.

These are the visible attributes of each image (what COCO-style labels would give): category,
colour and texture one-hot, plus size and position. They are not the twin's hidden latents.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CATEGORICAL = ("category", "colour", "texture")
NUMERIC = ("size", "x", "y")


def attribute_features(stimuli: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Encode every stimulus as an attribute vector.

    Parameters
    ----------
    stimuli : DataFrame
        The stimulus table (columns ``stim_id`` and those in CATEGORICAL + NUMERIC).

    Returns
    -------
    features : (n_stimuli, n_features) float32
        Row ``i`` belongs to ``stimuli.iloc[i]``.
    names : list of str
        One name per column, e.g. ``category=star`` or ``size``.
    """
    blocks, names = [], []
    for column in CATEGORICAL:
        levels = sorted(stimuli[column].unique())
        blocks.append((stimuli[column].to_numpy()[:, None] == np.array(levels)[None]).astype(float))
        names += [f"{column}={level}" for level in levels]
    blocks.append(stimuli[list(NUMERIC)].to_numpy(dtype=float))
    names += list(NUMERIC)
    return np.concatenate(blocks, axis=1).astype(np.float32), names
