"""Stimulus images: read the PNGs that ``stimuli.tsv`` names, one batch at a time.

Every image consumer (the CLIP pretraining, the feature cache, reconstruction targets) reads
pixels through here, so a missing or corrupt file gets one message naming it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageSequence, UnidentifiedImageError

from mindpipe.exceptions import DataError


def load_image(data_dir: str | Path, file: str) -> np.ndarray:
    """One stimulus as an RGB ``(H, W, 3)`` uint8 array; ``file`` is relative to ``data_dir``."""
    path = Path(data_dir) / file
    if not path.is_file():
        raise DataError(f"stimulus image {str(path)!r} is missing (named in stimuli.tsv)")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DataError(f"cannot read stimulus image {str(path)!r}: {exc}") from exc


def load_video(data_dir: str | Path, file: str) -> np.ndarray:
    """One stimulus clip (an animated PNG or GIF) as RGB ``(F, H, W, 3)`` uint8.

    Pillow's writers merge repeated frames into one longer frame; those are expanded back by
    duration (in units of the shortest common frame time), so a still stretch keeps its frames.
    """
    path = Path(data_dir) / file
    if not path.is_file():
        raise DataError(f"stimulus video {str(path)!r} is missing (named in stimuli.tsv)")
    try:
        with Image.open(path) as img:
            frames, durations = [], []
            for frame in ImageSequence.Iterator(img):
                frames.append(np.asarray(frame.convert("RGB"), np.uint8))
                durations.append(int(frame.info.get("duration") or 0))
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DataError(f"cannot read stimulus video {str(path)!r}: {exc}") from exc
    unit = math.gcd(*durations)
    repeats = [d // unit for d in durations] if min(durations) > 0 else 1
    return np.repeat(np.stack(frames), repeats, axis=0)


def load_images(data_dir: str | Path, stimuli: pd.DataFrame) -> np.ndarray:
    """Every image of ``stimuli`` (rows in table order) as ``(N, H, W, 3)`` uint8.

    All images must share one size; use :func:`iter_image_batches` when they do not fit in memory.
    """
    images = [load_image(data_dir, file) for file in stimuli["file"]]
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise DataError(f"stimulus images in {str(data_dir)!r} differ in size: {sorted(shapes)}")
    return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)


def iter_image_batches(
    data_dir: str | Path, stimuli: pd.DataFrame, batch_size: int
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Yield ``(stim_ids, images)`` in table order, ``batch_size`` images at a time.

    Images are returned as a list because real datasets mix sizes; bounded memory either way.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(stimuli), batch_size):
        rows = stimuli.iloc[start : start + batch_size]
        images = [load_image(data_dir, file) for file in rows["file"]]
        yield rows["stim_id"].to_numpy(dtype=np.int64), images
