"""Read the ``features`` stage's output without loading it: rows by stimulus id, on demand.

``artifacts/features/features.h5`` holds, for every stimulus of ``stimuli.tsv`` (in its order):
``stim_id`` (n,), ``image_pooled`` (n, D), ``image_tokens`` (n, T, D), ``text_pooled`` (n, D),
``text_tokens`` (n, L, D), plus ``prompt_pooled`` (n_categories, D) for the category prompts
(attributes ``categories`` and ``prompts``, the templates ensembled, as JSON lists). Embeddings
are as the encoder gives them (not normalised). Attributes ``encoder``, ``fingerprint`` name
the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from mindpipe.exceptions import DataError

FILE = "features.h5"


class FeatureStore:
    def __init__(self, features_dir: str | Path) -> None:
        self.path = Path(features_dir) / FILE
        if not self.path.is_file():
            raise DataError(f"feature file '{self.path}' is missing: run the features stage")
        try:
            with h5py.File(self.path, "r") as f:
                self.stim_id = f["stim_id"][:]
                self.dim = int(f["image_pooled"].shape[1])
                self.encoder = str(f.attrs["encoder"])
                self.fingerprint = str(f.attrs["fingerprint"])
                self.categories: list[str] = json.loads(f.attrs["categories"])
                self.prompts: list[str] = json.loads(f.attrs["prompts"])
        except (OSError, KeyError) as exc:
            raise DataError(
                f"feature file '{self.path}' is unreadable or incomplete: {exc}"
            ) from exc
        self._row = {int(s): i for i, s in enumerate(self.stim_id)}

    def rows(self, stim_ids: np.ndarray) -> np.ndarray:
        try:
            return np.array([self._row[int(s)] for s in np.asarray(stim_ids).ravel()], dtype=int)
        except KeyError as exc:
            raise DataError(f"stimulus {exc.args[0]} has no features in '{self.path}'") from None

    def _read(self, name: str, stim_ids: np.ndarray) -> np.ndarray:
        rows = self.rows(stim_ids)
        unique, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing rows
        with h5py.File(self.path, "r") as f:
            return f[name][unique][inverse]

    def image_pooled(self, stim_ids: np.ndarray) -> np.ndarray:
        return self._read("image_pooled", stim_ids)

    def image_tokens(self, stim_ids: np.ndarray) -> np.ndarray:
        return self._read("image_tokens", stim_ids)

    def text_pooled(self, stim_ids: np.ndarray) -> np.ndarray:
        return self._read("text_pooled", stim_ids)

    def text_tokens(self, stim_ids: np.ndarray) -> np.ndarray:
        return self._read("text_tokens", stim_ids)

    def prompt_pooled(self) -> np.ndarray:
        """``(n_categories, D)`` unit rows: the prompt ensemble of ``categories[i]``."""
        with h5py.File(self.path, "r") as f:
            return f["prompt_pooled"][:]
