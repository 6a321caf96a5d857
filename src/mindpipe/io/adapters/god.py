"""GOD (Horikawa & Kamitani 2017, Generic Object Decoding) -> the internal layout.

The release's ``SubjectN.h5`` files are bdpy ``BData``: a 2-D ``dataset`` (samples x columns)
and a ``metadata`` group whose ``key``/``description``/``value`` rows flag columns (value 1):
the voxel columns (``VoxelData``, ``ROI_V1`` ... ``ROI_VC``) and one column each for
``DataType`` (1 training, 2 test perception, 3 test imagery), ``Run`` and the stimulus:
``stimulus_id`` in the HDF5 release, ``Label`` in the older BrainDecoderToolbox2 files (both
are read). A stimulus id
``<category>.<image>`` (e.g. 1518878.005958) names ImageNet image ``n01518878_5958``; its
integer part is the category, so the 1,200 training images fall in 150 categories and the 50
test images in 50 others, never trained on (zero-shot). Older files name the groups
``dataSet``/``metaData``; both are read.

GOD does not redistribute the ImageNet images: put them under ``images/training/`` and
``images/test/`` named by image id (``n01518878_5958.JPEG``). An optional ImageNet synset list
(``synset_words.txt`` or ``LOC_synset_mapping.txt``: ``n01518878 ostrich, Struthio camelus``)
names the categories; otherwise the WordNet ids are the names. Test perception trials (35
repeats per image) are kept and averaged by ``preprocess``; imagery trials are not converted.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from mindpipe.exceptions import DataError
from mindpipe.io.adapters.common import (
    Adapter,
    Inspection,
    carve_validation,
    h5_dataset,
    open_h5,
    open_image,
    read_rows,
    release_subjects,
    stimulus_table,
    subject_label,
    write_description,
    write_stimuli,
)
from mindpipe.io.trials import TrialBetasWriter
from mindpipe.params import SourceParams
from mindpipe.utils import progress

logger = logging.getLogger(__name__)

GOD_TR = 3.0  # s (samples are block averages of 9-s image blocks)
DATA_TYPES = {1: "train", 2: "test"}  # 3: imagery, not converted
IMAGE_DIRS = {"train": "images/training", "test": "images/test"}
IMAGE_SUFFIXES = (".JPEG", ".jpeg", ".jpg", ".JPG", ".png")
SYNSET_FILES = ("synset_words.txt", "LOC_synset_mapping.txt")
LABEL_KEYS = ("DataType", "Run")
#: The stimulus column: 'stimulus_id' in the HDF5 release (KamitaniLab/GenericObjectDecoding's
#: demo reads it since "use the latest data files"), 'Label' in the older files.
STIMULUS_KEYS = ("stimulus_id", "Label")
CHUNK_ROWS = 512
_SUBJECT = re.compile(r"^Subject(\d+)\.h5$")


@dataclasses.dataclass
class _Subject:
    name: str
    label: str
    path: Path
    voxel_columns: np.ndarray  # (n_voxels,) sorted dataset columns of the ROI
    samples: pd.DataFrame  # one row per converted sample: row, data_type, run, source_id, ...


@dataclasses.dataclass
class _Plan:
    subjects: list[_Subject]
    images: dict[str, Path]  # source_id -> image file
    names: dict[str, str]  # category id -> name


def inspect(source: Path, params: SourceParams) -> Inspection:
    """Check the bdpy files, their metadata and the image folders; read no voxel data."""
    source = Path(source)
    report = Inspection("god", source)
    found = {p.stem: p for p in source.glob("Subject*.h5") if _SUBJECT.match(p.name)}
    names = release_subjects(
        report, found, params.subjects, "bdpy files 'Subject1.h5' ... 'Subject5.h5'"
    )
    roi = params.roi or "ROI_VC"
    subjects = [
        s
        for name in names
        if (s := report.attempt(lambda n=name: _inspect_subject(found[n], n, roi))) is not None
    ]
    samples = pd.concat(
        [s.samples.assign(subject=s.label) for s in subjects] or [pd.DataFrame()],
        ignore_index=True,
    )
    images = {}
    if subjects:
        images = report.attempt(lambda: _find_images(source, samples)) or {}
        train_cats = sorted(set(samples.loc[samples["split"] == "train", "category"]))
        report.tables["samples"] = (samples, _sample_specs(train_cats), ("subject", "row"))
    report.counts = {
        "n_subjects": len(subjects),
        "n_samples": len(samples),
        "n_images": int(samples["source_id"].nunique()) if len(samples) else 0,
    }
    if not report.problems:
        report.plan = _Plan(subjects, images, _synset_names(source))
    return report


def _sample_specs(train_categories: list[str]) -> list:
    return [
        ("ExpectColumnValuesToBeInSet", {"column": "data_type", "value_set": [1, 2]}),
        ("ExpectColumnValuesToNotBeNull", {"column": "run"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "source_id"}),
        (
            "ExpectColumnValuesToNotBeInSet",
            {
                "column": "category",
                "value_set": train_categories,
                "row_condition": ("split", "==", "test"),
            },
        ),
    ]


def _bdata(handle: h5py.File) -> tuple[h5py.Dataset, list[str], np.ndarray]:
    """The ``dataset``, metadata keys and metadata values (n_keys, n_columns) of a BData file."""
    path = handle.filename
    data_key = next((k for k in ("dataset", "dataSet") if k in handle), "dataset")
    meta_key = next((k for k in ("metadata", "metaData") if k in handle), "metadata")
    data = h5_dataset(handle, data_key, "bdpy samples x columns", ndim=2)
    if meta_key not in handle or not isinstance(handle[meta_key], h5py.Group):
        raise DataError(
            f"expected group '{meta_key}' (bdpy metadata) in '{path}', found {sorted(handle)}"
        )
    keys_ds = h5_dataset(handle[meta_key], "key", "metadata keys", ndim=1)
    value = h5_dataset(handle[meta_key], "value", "metadata values", ndim=2)[()]
    keys = [k.decode() if isinstance(k, bytes) else str(k) for k in keys_ds[()]]
    if value.shape != (len(keys), data.shape[1]):
        raise DataError(
            f"'{path}': metadata/value has shape {value.shape} but there are {len(keys)} keys and "
            f"'{data_key}' has {data.shape[1]} columns; expected ({len(keys)}, {data.shape[1]})"
        )
    return data, keys, value


def _columns(keys: list[str], value: np.ndarray, key: str, path: Path) -> np.ndarray:
    """Dataset columns that metadata ``key`` flags with 1."""
    if key not in keys:
        raise DataError(f"expected metadata key '{key}' in '{path}', found {keys[:20]}")
    return np.flatnonzero(value[keys.index(key)] == 1)


def _inspect_subject(path: Path, name: str, roi: str) -> _Subject:
    with open_h5(path, "GOD bdpy file") as handle:
        data, keys, value = _bdata(handle)
        voxels = _columns(keys, value, roi, path)
        if voxels.size == 0:
            raise DataError(f"'{path}': ROI key '{roi}' flags no column (base.source.roi)")
        stimulus = next((k for k in STIMULUS_KEYS if k in keys), None)
        if stimulus is None:
            raise DataError(
                f"expected metadata key '{STIMULUS_KEYS[0]}' (older files: '{STIMULUS_KEYS[1]}') "
                f"in '{path}', found {keys[:20]}"
            )
        cols = {}
        for key in (*LABEL_KEYS, stimulus):
            flagged = _columns(keys, value, key, path)
            if flagged.size != 1:
                raise DataError(
                    f"'{path}': metadata '{key}' must flag 1 column, flags {flagged.size}"
                )
            cols[key] = int(flagged[0])
        order = sorted(cols.values())
        try:
            table = data[:, order]  # three columns of every sample (small)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"cannot read the label columns of '{path}' (truncated?): {exc}"
            ) from exc
    by_key = {k: table[:, order.index(c)] for k, c in cols.items()}
    data_type = by_key["DataType"].astype(np.int64)
    keep = np.isin(data_type, list(DATA_TYPES))
    label = by_key[stimulus][keep]
    category = np.floor(label).astype(np.int64)
    image = np.round((label - category) * 1e6).astype(np.int64)
    samples = pd.DataFrame(
        {
            "row": np.flatnonzero(keep),
            "data_type": data_type[keep],
            "run": by_key["Run"][keep].astype(np.int64),
            "split": [DATA_TYPES[t] for t in data_type[keep]],
            "category": [f"n{c:08d}" for c in category],
            "source_id": [f"n{c:08d}_{i}" for c, i in zip(category, image, strict=True)],
        }
    )
    number = int(_SUBJECT.match(path.name)[1])
    return _Subject(name, subject_label(number), path, voxels, samples)


def _find_images(source: Path, samples: pd.DataFrame) -> dict[str, Path]:
    """Each image id's file under images/training or images/test (any usual suffix)."""
    images, missing = {}, {}
    for split, ids in samples.groupby("split")["source_id"]:
        folder = source / IMAGE_DIRS[split]
        stems = {p.stem: p for p in folder.glob("*") if p.suffix in IMAGE_SUFFIXES}
        for image_id in sorted(set(ids)):
            if image_id in stems:
                images[image_id] = stems[image_id]
            else:
                missing.setdefault(split, []).append(image_id)
    if missing:
        lines = [
            f"{len(ids)} {split} image(s) missing, e.g. '{source / IMAGE_DIRS[split] / ids[0]}"
            f".JPEG'"
            for split, ids in missing.items()
        ]
        raise DataError(
            "; ".join(lines) + " (GOD does not redistribute the ImageNet images: put them there, "
            f"named by image id, any of {list(IMAGE_SUFFIXES)})"
        )
    return images


def _synset_names(source: Path) -> dict[str, str]:
    """``wnid -> first name`` from an optional ImageNet synset list; empty when there is none."""
    for name in SYNSET_FILES:
        path = source / name
        if path.is_file():
            names = {}
            for line in path.read_text().splitlines():
                wnid, _, words = line.strip().partition(" ")
                if wnid:
                    names[wnid] = words.split(",")[0].strip() or wnid
            return names
    return {}


def _category_names(wnids: list[str], synsets: dict[str, str]) -> list[str]:
    """Each stimulus's category name; a name two categories share gets its WordNet id.

    Synset lists repeat first names (``crane`` the bird and the machine): merged, a held-out
    category would swallow a seen one (and ``categories.tsv`` would flag both held out).
    """
    name_of = {w: synsets.get(w, w) for w in set(wnids)}
    shared = pd.Series(name_of).value_counts()
    shared = set(shared.index[shared > 1])
    return [f"{name_of[w]} ({w})" if name_of[w] in shared else name_of[w] for w in wnids]


def convert(report: Inspection, out_dir: Path, params: SourceParams, seed: int) -> dict[str, float]:
    """Write the stimuli (150 seen + 50 held-out categories) and every subject's samples."""
    plan: _Plan = report.plan
    samples = pd.concat([s.samples for s in plan.subjects], ignore_index=True)
    first = samples.drop_duplicates("source_id").assign(is_test=lambda t: t["split"] == "test")
    first = first.sort_values(["is_test", "source_id"])  # training images first
    ids = first["source_id"].to_numpy()
    test = first.loc[first["split"] == "test", "source_id"].to_numpy()
    val = carve_validation(np.setdiff1d(ids, test), params.val_fraction, seed, "images")
    split = np.where(np.isin(ids, test), "test", np.where(np.isin(ids, val), "val", "train"))
    names = _category_names(first["category"].tolist(), plan.names)
    table = stimulus_table(
        source_id=ids.tolist(),
        caption=[f"a photo of a {n}" for n in names],
        category=names,
        split=split.tolist(),
        held_out=(split == "test").astype(int).tolist(),
    )
    images = (plan.images[i] for i in ids)
    write_stimuli(out_dir, table, (open_image(p, "GOD image") for p in images), params.image_size)
    stim_of = {i: k for k, i in enumerate(ids)}
    for sub in progress(plan.subjects, desc="god: subjects"):
        _write_subject(out_dir, sub, stim_of)
    write_description(out_dir, "god", report.source, [s.label for s in plan.subjects])
    return {
        "n_subjects": float(len(plan.subjects)),
        "n_stimuli": float(len(ids)),
        "n_samples": float(len(samples)),
        "n_test_images": float(test.size),
    }


def _write_subject(out_dir: Path, sub: _Subject, stim_of: dict[str, int]) -> None:
    """Stream the ROI columns of the kept samples, ``CHUNK_ROWS`` rows at a time."""
    rows = sub.samples["row"].to_numpy()
    stim = np.array([stim_of[i] for i in sub.samples["source_id"]], dtype=np.int64)
    session = np.array(
        [f"{s}-run-{r:02d}" for s, r in zip(sub.samples["split"], sub.samples["run"], strict=True)]
    )
    writer = TrialBetasWriter(out_dir, sub.label, rows.size, sub.voxel_columns.size)
    with open_h5(sub.path, "GOD bdpy file") as handle:
        data, _, _ = _bdata(handle)
        for start in range(0, data.shape[0], CHUNK_ROWS):
            pick = np.flatnonzero((rows >= start) & (rows < start + CHUNK_ROWS))
            if pick.size == 0:
                continue
            block = read_rows(data, start, start + CHUNK_ROWS, "samples")
            values = block[rows[pick] - start][:, sub.voxel_columns].astype(np.float32)
            writer.write(values, stim[pick], session[pick])
    writer.close(
        sub.voxel_columns,
        {
            "Dataset": "god",
            "Source": str(sub.path),
            "SourceSubject": sub.name,
            "Units": "as released (bdpy samples: block-averaged preprocessed BOLD)",
            "Voxels": "columns of the bdpy dataset flagged by the ROI key",
            "RepetitionTime": GOD_TR,
            "Grid": None,
        },
    )


ADAPTER = Adapter(
    name="god",
    route="betas",
    layout="'Subject1.h5' ... (bdpy: dataset + metadata/{key,description,value}) and "
    "'images/training/<image id>.JPEG', 'images/test/<image id>.JPEG'",
    inspect=inspect,
    convert=convert,
)
