"""Category prompts for zero-shot classification, ensembled over templates as CLIP does.

A category's text embedding is the mean of the L2-normalised embeddings of every template
filled with its name (CLIP's prompt ensembling), re-normalised.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mindpipe.exceptions import ParamsError


def check_templates(templates: tuple[str, ...], section: str) -> None:
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ParamsError(f"{section}.prompts: each template needs exactly one '{{}}'; got {bad}")


def prompt_texts(categories: list[str], templates: tuple[str, ...]) -> list[str]:
    return [t.format(c) for c in categories for t in templates]


def category_embeddings(
    encode_texts: Callable[[list[str]], np.ndarray],
    categories: list[str],
    templates: tuple[str, ...],
) -> np.ndarray:
    """``(n_categories, D)`` unit vectors: the template ensemble of each category."""
    emb = np.asarray(encode_texts(prompt_texts(categories, templates)), dtype=np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    mean = emb.reshape(len(categories), len(templates), -1).mean(axis=1)
    return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(
        np.float32
    )
