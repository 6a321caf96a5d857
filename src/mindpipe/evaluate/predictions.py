"""The contract between decoders and the evaluate stage.

A decoder stage writes ``predictions/<subject>.npz`` in its output folder (the decoder is named
after the stage), or, when it trains several decoders, one ``<decoder>/predictions/`` folder
each. Every file holds ``stim_id`` (n,) and ``similarity`` (n, n): row ``i`` is the decoded
test sample of image ``stim_id[i]``, column ``j`` the candidate image ``stim_id[j]``. Embedding
decoders also store ``embedding`` (n, d), their decoded vectors, and ``target`` (n, d), the true
ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mindpipe.exceptions import DataError


def save_predictions(
    out_dir: Path, subject: str, stim_id: np.ndarray, similarity: np.ndarray, **extra: np.ndarray
) -> None:
    if similarity.shape != (len(stim_id), len(stim_id)):
        raise ValueError(f"similarity {similarity.shape} does not match {len(stim_id)} stimuli")
    folder = out_dir / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{subject}.npz", stim_id=stim_id, similarity=similarity, **extra)


def load_predictions(decoder_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{subject: arrays}`` for every predictions file of one decoder (may be empty)."""
    out = {}
    for path in sorted((Path(decoder_dir) / "predictions").glob("sub-*.npz")):
        with np.load(path, allow_pickle=False) as npz:
            arrays = dict(npz)
        missing = {"stim_id", "similarity"} - set(arrays)
        if missing:
            raise DataError(f"'{path}' lacks arrays {sorted(missing)}")
        out[path.stem] = arrays
    return out


def find_decoders(stage: str, stage_dir: Path) -> dict[str, Path]:
    """``{decoder name: folder holding predictions/}`` for one decoder stage's output folder."""
    stage_dir = Path(stage_dir)
    if (stage_dir / "predictions").is_dir():
        return {stage: stage_dir}
    found = {sub.name: sub for sub in sorted(stage_dir.iterdir()) if (sub / "predictions").is_dir()}
    if not found:
        raise DataError(
            f"stage {stage!r} wrote no predictions: expected '{stage_dir}/predictions/' or "
            f"'{stage_dir}/<decoder>/predictions/'"
        )
    return found
