"""A content-addressed cache of CLIP features, shared by every run on this machine.

Entries live under ``<cache_dir>/<encoder fingerprint>/`` and are keyed by a hash of the item
itself (image bytes + caption), so the same stimulus under another id, or another dataset with
the same ids, can never be confused. Each run that encodes something appends one HDF5 shard,
written to a temporary name and renamed: an interrupted run leaves no partial shard, and two
runs never write the same file.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

ARRAYS = ("image_pooled", "image_tokens", "text_pooled", "text_tokens")


def item_key(image_path: Path, caption: str) -> str:
    digest = hashlib.sha256(Path(image_path).read_bytes())
    digest.update(caption.encode())
    return digest.hexdigest()[:32]


class FeatureCache:
    def __init__(self, cache_dir: str | Path, fingerprint: str) -> None:
        self.folder = Path(cache_dir) / fingerprint
        self.folder.mkdir(parents=True, exist_ok=True)

    def index(self) -> dict[str, tuple[Path, int]]:
        """``{key: (shard, row)}`` of everything cached for this encoder."""
        found: dict[str, tuple[Path, int]] = {}
        for shard in sorted(self.folder.glob("shard-*.h5")):
            with h5py.File(shard, "r") as f:
                for row, key in enumerate(f["key"].asstr()[:]):
                    found.setdefault(key, (shard, row))
        return found

    def add(
        self,
        keys: list[str],
        encode: Callable[[list[int]], dict[str, np.ndarray]],
        batch_size: int,
        progress: Callable = lambda it, **_: it,
    ) -> None:
        """Encode ``keys`` batch by batch (``encode(positions) -> arrays``) into one new shard."""
        if not keys:
            return
        tmp = self.folder / f".shard-{uuid.uuid4().hex}.h5.tmp"
        try:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("key", data=np.array(keys, dtype="S32"))
                for start in progress(range(0, len(keys), batch_size), desc="encode"):
                    positions = list(range(start, min(start + batch_size, len(keys))))
                    arrays = encode(positions)
                    for name in ARRAYS:
                        if name not in f:
                            shape = (len(keys), *arrays[name].shape[1:])
                            f.create_dataset(name, shape=shape, dtype="float32")
                        f[name][positions[0] : positions[-1] + 1] = arrays[name]
            os.replace(tmp, self.folder / f"shard-{uuid.uuid4().hex}.h5")
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, keys: list[str], index: dict[str, tuple[Path, int]], name: str) -> np.ndarray:
        """Rows of array ``name`` for distinct ``keys`` (all cached), in that order."""
        out: np.ndarray | None = None
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for pos, key in enumerate(keys):
            shard, row = index[key]
            by_shard.setdefault(shard, []).append((row, pos))
        for shard, pairs in by_shard.items():
            with h5py.File(shard, "r") as f:
                data = f[name]
                if out is None:
                    out = np.empty((len(keys), *data.shape[1:]), dtype=data.dtype)
                rows = np.array(sorted(pairs))
                out[rows[:, 1]] = data[rows[:, 0]]  # h5py wants increasing indices
        if out is None:
            raise ValueError("read() needs at least one key")
        return out
