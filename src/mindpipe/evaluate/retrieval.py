"""Top-1 retrieval among N candidates, both directions, as MindEye2 reports it.

MindEye2 draws 30 random batches of 300 test images and counts, within each batch, how often
the matching pair has the highest similarity. Its code labels the directions the other way
round (see ../shared/notes/metric_definitions.md); here the names say what is retrieved.
"""

from __future__ import annotations

import numpy as np


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, d) x (m, d) -> (n, m) cosine similarities."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def retrieval_top1(
    similarity: np.ndarray, batch_size: int = 300, repeats: int = 30, seed: int = 42
) -> dict[str, float]:
    """Top-1 accuracy of picking the matching pair among ``batch_size`` candidates.

    Parameters
    ----------
    similarity : (n, n) array
        ``similarity[i, j]`` scores brain sample ``i`` against image ``j``; pair ``i`` matches
        image ``i``.
    batch_size : int
        Candidates per batch; when ``n`` is smaller every batch is all ``n`` items (and the
        repeats all coincide), reported as ``batch_size`` in the result.
    repeats : int
        Number of random batches averaged.
    seed : int
        ``np.random.RandomState`` seed of the batch draws (42 reproduces MindEye2's batches).

    Returns
    -------
    dict with ``brain_to_image`` (for each brain sample, is its image the best match?),
    ``image_to_brain`` (for each image, is its brain sample the best match?), ``chance``
    and ``batch_size``. Ties count as failures.
    """
    n = similarity.shape[0]
    if similarity.shape != (n, n):
        raise ValueError(f"similarity must be square (brain x image), got {similarity.shape}")
    batch = min(batch_size, n)
    rng = np.random.RandomState(seed)
    fwd, bwd = [], []
    for _ in range(repeats if batch < n else 1):
        idx = rng.choice(n, batch, replace=False)
        sub = similarity[np.ix_(idx, idx)]
        diag = np.diag(sub)
        fwd.append(np.mean((sub < diag[:, None]).sum(axis=1) == batch - 1))
        bwd.append(np.mean((sub < diag[None, :]).sum(axis=0) == batch - 1))
    return {
        "brain_to_image": float(np.mean(fwd)),
        "image_to_brain": float(np.mean(bwd)),
        "chance": 1.0 / batch,
        "batch_size": float(batch),
    }
