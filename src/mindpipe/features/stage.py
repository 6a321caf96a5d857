"""The ``features`` stage: CLIP embeddings of every stimulus image and caption, cached.

The encoder is the ``mlip`` stage's model by default, or real open_clip weights from a local
file. Features come from the content-addressed cache (``features.cache``) when this encoder
has seen the item before, and are computed batch by batch otherwise; the stage output
``features.h5`` (layout in ``features.store``) is then assembled in bounded-memory chunks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import h5py
import numpy as np

from mindpipe.exceptions import ParamsError
from mindpipe.features.cache import ARRAYS, FeatureCache, item_key
from mindpipe.features.encoders import EncoderChoice, ImageTextEncoder, build_encoder
from mindpipe.features.prompts import category_embeddings, check_templates
from mindpipe.features.store import FILE
from mindpipe.io import for_each_paradigm, read_stimuli
from mindpipe.io.images import load_image
from mindpipe.params import BaseParams
from mindpipe.recipes.contrastive import resolve_device
from mindpipe.utils import progress, write_json

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FeaturesParams:
    """``features:`` section."""

    encoder: str = "mlip"
    open_clip_model: str = "ViT-L-14"
    open_clip_weights: str | None = None
    prompts: tuple[str, ...] = ("a {}",)
    batch_size: int = 64
    cache_dir: str = ".cache/features"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.encoder not in ("mlip", "open_clip"):
            raise ParamsError(
                f"features.encoder must be 'mlip' or 'open_clip', got {self.encoder!r}"
            )
        if self.batch_size < 1:
            raise ParamsError(f"features.batch_size must be >= 1, got {self.batch_size}")
        check_templates(self.prompts, "features")


def cache_features(
    *, data_dir: Path, mlip_dir: Path, out_dir: Path, params: FeaturesParams, base: BaseParams
) -> dict[str, float]:
    """Features of the dataset's stimuli, and of its video clips (``out_dir/video``) if any."""
    choice = EncoderChoice(params.encoder, params.open_clip_model, params.open_clip_weights)
    encoder = build_encoder(choice, mlip_dir, resolve_device(params.device))
    return for_each_paradigm(
        lambda data, out: _cache_dataset(data, out, encoder, params), data_dir, out_dir
    )


def _cache_dataset(
    data_dir: Path, out_dir: Path, encoder: ImageTextEncoder, params: FeaturesParams
) -> dict[str, float]:
    """Encode one dataset's stimuli (a video clip by its first frame, the keyframe)."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    stimuli = read_stimuli(data_dir)
    captions = list(stimuli["caption"])
    files = [Path(data_dir) / f for f in stimuli["file"]]
    keys = [item_key(path, cap) for path, cap in zip(files, captions, strict=True)]
    cache = FeatureCache(params.cache_dir, encoder.fingerprint)
    index = cache.index()
    missing = sorted(
        {k: i for i, k in enumerate(keys) if k not in index}.items(), key=lambda kv: kv[1]
    )
    logger.info(
        "features: %d stimuli, %d cached, %d to encode",
        len(keys),
        len(keys) - len(missing),
        len(missing),
    )

    def encode(positions: list[int]) -> dict[str, np.ndarray]:
        rows = [missing[p][1] for p in positions]
        images = [load_image(data_dir, stimuli["file"].iloc[r]) for r in rows]
        image_pooled, image_tokens = encoder.encode_images(images)
        text_pooled, text_tokens = encoder.encode_texts([captions[r] for r in rows])
        return dict(
            zip(ARRAYS, (image_pooled, image_tokens, text_pooled, text_tokens), strict=True)
        )

    cache.add([k for k, _ in missing], encode, params.batch_size, progress)
    index = cache.index()
    _write_output(out_dir / FILE, stimuli, keys, cache, index, encoder, params)
    write_json(
        out_dir / "meta.json",
        {"encoder": encoder.name, "fingerprint": encoder.fingerprint, "dim": encoder.dim},
    )
    return {
        "n_stimuli": float(len(keys)),
        "n_encoded": float(len(missing)),
        "cache_hit_fraction": 1.0 - len(missing) / max(len(keys), 1),
        "dim": float(encoder.dim),
        "seconds": time.perf_counter() - start,
    }


def _write_output(
    path: Path,
    stimuli,
    keys: list[str],
    cache: FeatureCache,
    index: dict,
    encoder: ImageTextEncoder,
    params: FeaturesParams,
) -> None:
    """Copy this dataset's rows out of the cache, ``batch_size`` stimuli at a time."""
    categories = sorted(stimuli["category"].unique())
    with h5py.File(path, "w") as f:
        f.attrs.update(
            encoder=encoder.name,
            fingerprint=encoder.fingerprint,
            categories=json.dumps(categories),
            prompts=json.dumps(params.prompts),
        )
        f.create_dataset("stim_id", data=stimuli["stim_id"].to_numpy(np.int64))
        f.create_dataset(
            "prompt_pooled",
            data=category_embeddings(
                lambda texts: encoder.encode_texts(texts)[0], categories, params.prompts
            ),
        )
        step = params.batch_size
        for start in range(0, len(keys), step):
            chunk = list(dict.fromkeys(keys[start : start + step]))  # distinct, order kept
            where = [chunk.index(k) for k in keys[start : start + step]]
            for name in ARRAYS:
                rows = cache.read(chunk, index, name)[where]
                if name not in f:
                    f.create_dataset(name, shape=(len(keys), *rows.shape[1:]), dtype="float32")
                f[name][start : start + len(rows)] = rows
