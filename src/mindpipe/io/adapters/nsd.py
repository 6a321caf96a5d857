"""NSD -> the internal layout: the MindEye2 release (HDF5 betas) or the NSD NIfTI betas.

Two release layouts are read (docs/real-data.md lists the files and what was verified):

- **MindEye2** (``pscotti/mindeyev2``): ``betas_all_subjNN_fp32_renorm.hdf5`` holds ``betas``
  (trials, nsdgeneral voxels: 15,724 for subj01); the webdataset shards
  ``wds/subjNN/{new_train,new_test}/*.tar`` hold one ``*.behav.npy`` per trial whose
  ``[0, 0]`` is the image's 0-based 73k index and ``[0, 5]`` the betas row; images come from
  ``coco_images_224_float16.hdf5`` (``images``, (73000, 3, 224, 224) float16 in [0, 1]).
- **NSD NIfTI**: per-session ``betas_sessionNN.nii.gz`` (X, Y, Z, 750) int16 = % signal change
  x 300, the ``nsdgeneral.nii.gz`` ROI (1 inside), the design ``nsd_expdesign.mat``
  (``masterordering``, ``subjectim``, ``sharedix``, 1-based) and ``nsd_stimuli.hdf5``
  (``imgBrick``, (73000, 425, 425, 3) uint8).

Both take captions from ``COCO_73k_annots_curated.npy`` (73000 rows, 5 captions each). The
test split is the shared images (``new_test`` / ``sharedix``); their three repeats are kept
as trials and averaged by ``preprocess``. Betas stream: HDF5 row slices and NIfTI volume
chunks go straight into a memory-mapped ``.npy``, so memory is bounded by a chunk.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from mindpipe.exceptions import DataError
from mindpipe.io.adapters.common import (
    Adapter,
    Inspection,
    carve_validation,
    h5_dataset,
    load_nifti,
    nifti_data,
    open_h5,
    read_rows,
    release_subjects,
    require_file,
    stimulus_table,
    subject_label,
    write_description,
    write_stimuli,
)
from mindpipe.io.trials import TrialBetasWriter
from mindpipe.params import SourceParams
from mindpipe.utils import progress

logger = logging.getLogger(__name__)

TRIALS_PER_SESSION = 750  # NSD scan sessions; MindEye2 betas rows follow NSD's trial order
NSD_TR = 1.6  # s, NSD's functional acquisition
NIFTI_SCALE = 300.0  # NIfTI betas are int16 % signal change x 300
CHUNK_ROWS = 256  # HDF5 rows (or NIfTI volumes) per read

ME_BETAS = "betas_all_{subject}_fp32_renorm.hdf5"
ME_IMAGES, ME_IMAGES_KEY = "coco_images_224_float16.hdf5", "images"
ME_WDS = ("new_train", "new_test")  # wds/<subject>/<split>/*.tar: train, test trials
BEHAV_IMAGE, BEHAV_ROW = 0, 5  # columns of behav.npy[0]: 73k index, betas row
ANNOTS = "COCO_73k_annots_curated.npy"
NIFTI_DIR = "nsddata_betas/ppdata/{subject}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
ROI_FILE = "nsddata/ppdata/{subject}/func1pt8mm/roi/{roi}.nii.gz"
EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
NSD_IMAGES, NSD_IMAGES_KEY = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "imgBrick"
_SUBJECT = re.compile(r"subj(\d{2})")
_SESSION = re.compile(r"^betas_session(\d+)\.nii(\.gz)?$")


@dataclasses.dataclass
class _Subject:
    """One subject to convert; ``trials`` has row, session, nsd_id, split (one per trial)."""

    name: str
    label: str
    trials: pd.DataFrame
    n_voxels: int
    betas: Path | None = None  # MindEye2 route
    sessions: list[Path] = dataclasses.field(default_factory=list)  # NIfTI route
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None


@dataclasses.dataclass
class _Plan:
    route: str  # "mindeye2" or "nifti"
    subjects: list[_Subject]
    images: Path
    annots: np.ndarray


# --------------------------------------------------------------------------- inspection


def inspect(source: Path, params: SourceParams) -> Inspection:
    """Check an NSD release (either layout) without reading the betas themselves."""
    source = Path(source)
    report = Inspection("nsd", source)
    mindeye = {
        m[0]: p
        for p in source.glob(ME_BETAS.format(subject="subj*"))
        if (m := _SUBJECT.search(p.name))
    }
    nifti = {
        p.name: p for p in source.glob("nsddata_betas/ppdata/subj*") if _SUBJECT.fullmatch(p.name)
    }
    route = "mindeye2" if mindeye else "nifti"
    expected = (
        f"'{ME_BETAS.format(subject='subj01')}' (MindEye2 release) or "
        f"'{NIFTI_DIR.format(subject='subj01')}/betas_session01.nii.gz' (NSD NIfTI betas)"
    )
    names = release_subjects(report, mindeye or nifti, params.subjects, expected)
    if not names:
        return report
    image_file = source / (ME_IMAGES if route == "mindeye2" else NSD_IMAGES)
    n_images = report.attempt(lambda: _image_count(image_file, route)) or 0
    annots = report.attempt(lambda: _load_annots(source / ANNOTS))
    design = report.attempt(lambda: _load_design(source / EXPDESIGN)) if route == "nifti" else None
    subjects = []
    for name in names:
        if route == "mindeye2":
            check = functools.partial(_inspect_mindeye, source, name, int(name[4:]))
        elif design is not None:
            check = functools.partial(_inspect_nifti, source, name, int(name[4:]), design, params)
        else:
            continue
        if (sub := report.attempt(check)) is not None:
            subjects.append(sub)
    trials = pd.concat(
        [s.trials.assign(subject=s.label) for s in subjects] or [pd.DataFrame()], ignore_index=True
    )
    if subjects:
        _check_index(report, trials, n_images, annots, image_file)
        report.tables["trials"] = (trials, _trial_specs(n_images), ("subject", "row"))
    report.counts = {
        "n_subjects": len(subjects),
        "n_trials": len(trials),
        "n_images": int(trials["nsd_id"].nunique()) if len(trials) else 0,
    }
    if not report.problems:
        report.plan = _Plan(route, subjects, image_file, annots)
    return report


def _check_index(
    report: Inspection, trials: pd.DataFrame, n_images: int, annots, image_file: Path
) -> None:
    """Image indices the conversion will read must exist in the image and caption files."""
    top = int(trials["nsd_id"].max())
    if n_images and top >= n_images:
        report.problems.append(
            f"trial index names 73k image {top} but '{image_file}' holds {n_images} images"
        )
    if annots is not None and top >= len(annots):
        report.problems.append(
            f"trial index names 73k image {top} but '{ANNOTS}' holds {len(annots)} caption rows"
        )


def _trial_specs(n_images: int) -> list:
    return [
        ("ExpectColumnValuesToNotBeNull", {"column": "nsd_id"}),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "nsd_id", "min_value": 0, "max_value": max(n_images - 1, 0)},
        ),
        ("ExpectColumnValuesToBeInSet", {"column": "split", "value_set": ["train", "test"]}),
        ("ExpectCompoundColumnsToBeUnique", {"column_list": ["subject", "row"]}),
        ("ExpectColumnValuesToBeBetween", {"column": "session", "min_value": 1}),
    ]


def _image_count(path: Path, route: str) -> int:
    with open_h5(path, "NSD images") as handle:
        key = ME_IMAGES_KEY if route == "mindeye2" else NSD_IMAGES_KEY
        data = h5_dataset(handle, key, "stimulus images", ndim=4)
        channels = data.shape[1] if route == "mindeye2" else data.shape[3]
        if channels != 3:
            layout = "(n, 3, H, W)" if route == "mindeye2" else "(n, H, W, 3)"
            raise DataError(f"expected '{key}' of shape {layout} in '{path}', got {data.shape}")
        return int(data.shape[0])


def _load_annots(path: Path) -> np.ndarray:
    """Captions, one row per 73k image: a string array (MindEye2 loads it without pickle).

    Object arrays are refused rather than unpickled: loading a pickle runs code from the file.
    """
    require_file(path, "COCO captions")
    try:
        annots = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(
                f"COCO captions '{path}' hold pickled objects, which are not loaded (a pickle "
                "can run code); save them as a string array, e.g. `arr.astype(str)`"
            ) from exc
        raise DataError(f"cannot read COCO captions '{path}' (truncated?): {exc}") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read COCO captions '{path}' (truncated?): {exc}") from exc
    if annots.ndim not in (1, 2) or annots.shape[0] == 0:
        raise DataError(f"expected (73000, 5) captions in '{path}', got shape {annots.shape}")
    return annots


def _inspect_mindeye(source: Path, name: str, number: int) -> _Subject:
    path = source / ME_BETAS.format(subject=name)
    with open_h5(path, "MindEye2 betas") as handle:
        data = h5_dataset(handle, "betas", "(trials, voxels) betas", ndim=2)
        n_rows, n_voxels = (int(s) for s in data.shape)
    parts = []
    for split, folder in zip(("train", "test"), ME_WDS, strict=True):
        where = source / "wds" / name / folder
        tars = sorted(where.glob("*.tar"))
        if not tars:
            raise DataError(
                f"{name}: no trial index shards: expected '{where}/*.tar' (MindEye2 webdataset)"
            )
        parts += [_read_behav(tar).assign(split=split) for tar in tars]
    trials = pd.concat(parts, ignore_index=True).sort_values("row", kind="stable")
    bad = trials["row"][(trials["row"] < 0) | (trials["row"] >= n_rows)]
    if len(bad):
        raise DataError(
            f"{name}: trial index names betas rows {sorted(bad.unique().tolist())[:5]} but "
            f"'{path}' has {n_rows} rows"
        )
    trials["session"] = trials["row"] // TRIALS_PER_SESSION + 1
    unused = n_rows - trials["row"].nunique()
    if unused:
        logger.warning("%s: %d betas rows are in no trial index shard; skipped", name, unused)
    return _Subject(name, subject_label(number), trials.reset_index(drop=True), n_voxels, path)


def _read_behav(tar: Path) -> pd.DataFrame:
    """(73k index, betas row) of every ``*.behav.npy`` member of one webdataset shard."""
    rows = []
    try:
        with tarfile.open(tar) as archive:
            members = [m for m in archive.getmembers() if m.name.endswith(".behav.npy")]
            for member in members:
                blob = archive.extractfile(member)
                behav = np.load(io.BytesIO(blob.read()), allow_pickle=False) if blob else None
                if behav is None or behav.ndim != 2 or behav.shape[1] <= BEHAV_ROW:
                    raise DataError(
                        f"'{tar}' member '{member.name}': expected a (1, 17) behav array, got "
                        f"{None if behav is None else behav.shape}"
                    )
                rows.append((int(behav[0, BEHAV_IMAGE]), int(behav[0, BEHAV_ROW])))
            if tar.stat().st_size - archive.offset < 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError("no end-of-archive marker after the last member")
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"cannot read trial index shard '{tar}' (truncated?): {exc}") from exc
    if not rows:
        raise DataError(f"trial index shard '{tar}' holds no '*.behav.npy' member")
    return pd.DataFrame(rows, columns=["nsd_id", "row"])


def _load_design(path: Path) -> dict[str, np.ndarray]:
    require_file(path, "NSD experiment design")
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, OSError, NotImplementedError) as exc:
        raise DataError(f"cannot read NSD experiment design '{path}' (truncated?): {exc}") from exc
    missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"expected keys {missing} in '{path}', found {found}")
    return {
        "masterordering": np.asarray(mat["masterordering"]).ravel().astype(np.int64),
        "subjectim": np.atleast_2d(np.asarray(mat["subjectim"])).astype(np.int64),
        "sharedix": np.asarray(mat["sharedix"]).ravel().astype(np.int64),
    }


def _inspect_nifti(
    source: Path, name: str, number: int, design: dict[str, np.ndarray], params: SourceParams
) -> _Subject:
    roi_path = source / ROI_FILE.format(subject=name, roi=params.roi or "nsdgeneral")
    roi = load_nifti(roi_path, "NSD ROI")
    if roi.ndim != 3:
        raise DataError(f"NSD ROI '{roi_path}' must be 3-D; got shape {roi.shape}")
    mask = nifti_data(roi, "NSD ROI") > 0
    if not mask.any():
        raise DataError(f"NSD ROI '{roi_path}' selects no voxel (no value > 0)")
    folder = source / NIFTI_DIR.format(subject=name)
    sessions = sorted(
        (int(m[1]), p) for p in folder.glob("betas_session*.nii*") if (m := _SESSION.match(p.name))
    )
    if not sessions:
        raise DataError(f"{name}: no betas sessions: expected '{folder}/betas_session01.nii.gz'")
    numbers = [s for s, _ in sessions]
    if numbers[0] < 1 or len(set(numbers)) < len(numbers):
        raise DataError(
            f"{name}: expected one 'betas_sessionNN.nii.gz' per session NN >= 1 in '{folder}'; "
            f"found {[p.name for _, p in sessions]}"
        )
    counts = []
    for _, path in sessions:
        img = load_nifti(path, "NSD betas session")
        if img.ndim != 4 or img.shape[:3] != mask.shape:
            raise DataError(
                f"'{path}' has shape {img.shape}; expected (X, Y, Z, trials) on the grid "
                f"{mask.shape} of the ROI '{roi_path}'"
            )
        if not np.allclose(img.affine, roi.affine, atol=1e-3):
            raise DataError(f"'{path}' and the ROI '{roi_path}' have different affines")
        _check_units(img, path)
        counts.append(int(img.shape[3]))
    if len(set(counts)) > 1:
        found = {p.name: c for (_, p), c in zip(sessions, counts, strict=True)}
        raise DataError(
            f"{name}: every session of '{folder}' must hold the same number of trials (NSD: "
            f"{TRIALS_PER_SESSION}); found {found}"
        )
    # masterordering is indexed by the trial's place in the whole experiment: session NN's
    # trials are (NN - 1) * n ... NN * n - 1, whichever sessions are present
    n = counts[0]
    index = np.concatenate([(s - 1) * n + np.arange(n) for s in numbers])
    order, subjectim = design["masterordering"], design["subjectim"]
    if number > subjectim.shape[0] or index[-1] >= order.size:
        raise DataError(
            f"{name}: sessions up to {numbers[-1]} of {n} trials need {index[-1] + 1} trials "
            f"but '{EXPDESIGN}' orders {order.size} trials for {subjectim.shape[0]} subjects"
        )
    nsd_id = subjectim[number - 1, order[index] - 1] - 1
    shared = set((design["sharedix"] - 1).tolist())
    trials = pd.DataFrame(
        {
            "row": np.arange(index.size),
            "session": np.repeat(numbers, counts),
            "nsd_id": nsd_id,
            "split": ["test" if i in shared else "train" for i in nsd_id.tolist()],
        }
    )
    return _Subject(
        name,
        subject_label(number),
        trials,
        int(mask.sum()),
        sessions=[p for _, p in sessions],
        mask=mask,
        affine=roi.affine,
    )


def _check_units(img, path: Path) -> None:
    """The conversion divides by 300: the values must be NSD's raw int16, unscaled by the header.

    A header scale (``scl_slope``/``scl_inter``) would be applied by nibabel first (and give
    float64 blocks), a float file is already in other units: dividing either by 300 is wrong.
    """
    dtype, slope, inter = img.get_data_dtype(), img.dataobj.slope, img.dataobj.inter
    if dtype != np.int16 or (slope, inter) != (1.0, 0.0):
        raise DataError(
            f"'{path}' holds {dtype} values (scl_slope {slope:g}, scl_inter {inter:g}); expected "
            f"NSD's int16 betas (% signal change x {NIFTI_SCALE:g}) with no header scale"
        )


# --------------------------------------------------------------------------- conversion


def convert(report: Inspection, out_dir: Path, params: SourceParams, seed: int) -> dict[str, float]:
    """Write stimuli (PNG, captions, splits) and every subject's betas into ``out_dir``."""
    plan: _Plan = report.plan
    trials = pd.concat([s.trials for s in plan.subjects], ignore_index=True)
    ids = np.unique(trials["nsd_id"].to_numpy())
    test = np.unique(trials.loc[trials["split"] == "test", "nsd_id"].to_numpy())
    val = carve_validation(np.setdiff1d(ids, test), params.val_fraction, seed, "images")
    split = np.where(np.isin(ids, test), "test", np.where(np.isin(ids, val), "val", "train"))
    table = stimulus_table(
        source_id=[str(i) for i in ids],
        caption=[_caption(plan.annots[i]) for i in ids],
        category=["nsd"] * ids.size,  # the MindEye2 release carries no category labels
        split=split.tolist(),
    )
    write_stimuli(out_dir, table, _iter_images(plan, ids), params.image_size)
    stim_of = {int(i): k for k, i in enumerate(ids)}
    for sub in progress(plan.subjects, desc="nsd: subjects"):
        stim = np.array([stim_of[int(i)] for i in sub.trials["nsd_id"]], dtype=np.int64)
        writer = TrialBetasWriter(out_dir, sub.label, len(sub.trials), sub.n_voxels)
        if plan.route == "mindeye2":
            _stream_mindeye(sub, stim, writer)
            voxels, grid = np.arange(sub.n_voxels), None
        else:
            _stream_nifti(sub, stim, writer)
            voxels = np.flatnonzero(sub.mask.ravel(order="C"))
            grid = {"shape": list(sub.mask.shape), "affine": sub.affine}
        writer.close(voxels, _meta(plan, sub, grid))
    write_description(out_dir, "nsd", report.source, [s.label for s in plan.subjects])
    return {
        "n_subjects": float(len(plan.subjects)),
        "n_stimuli": float(ids.size),
        "n_trials": float(len(trials)),
        "n_test_images": float(test.size),
    }


def _caption(row: np.ndarray | str) -> str:
    for text in np.atleast_1d(row).tolist():
        if isinstance(text, str | bytes) and str(text).strip():
            return (text.decode() if isinstance(text, bytes) else text).strip()
    return "an image"


def _iter_images(plan: _Plan, ids: np.ndarray):
    """Each image of ``ids`` (ascending) as ``(H, W, 3)`` uint8, read one at a time."""
    with open_h5(plan.images, "NSD images") as handle:
        key = ME_IMAGES_KEY if plan.route == "mindeye2" else NSD_IMAGES_KEY
        data = h5_dataset(handle, key, "stimulus images", ndim=4)
        for i in ids.tolist():
            image = read_rows(data, i, i + 1, "stimulus image")[0]
            if plan.route == "mindeye2":  # (3, H, W) float16 in [0, 1]
                image = np.clip(np.moveaxis(image.astype(np.float32), 0, -1) * 255.0, 0, 255)
                image = np.round(image).astype(np.uint8)
            yield image


def _stream_mindeye(sub: _Subject, stim: np.ndarray, writer: TrialBetasWriter) -> None:
    """Copy the indexed rows, ``CHUNK_ROWS`` file rows at a time, in row order."""
    rows = sub.trials["row"].to_numpy()
    session = np.array([f"ses-{s:02d}" for s in sub.trials["session"]])
    with open_h5(sub.betas, "MindEye2 betas") as handle:
        data = h5_dataset(handle, "betas", "(trials, voxels) betas", ndim=2)
        starts = range(int(rows[0]), int(rows[-1]) + 1, CHUNK_ROWS)
        for start in progress(starts, f"nsd: {sub.name} betas"):
            pick = np.flatnonzero((rows >= start) & (rows < start + CHUNK_ROWS))
            if pick.size == 0:
                continue
            block = read_rows(data, start, int(rows[pick[-1]]) + 1, "betas")
            writer.write(block[rows[pick] - start].astype(np.float32), stim[pick], session[pick])


def _stream_nifti(sub: _Subject, stim: np.ndarray, writer: TrialBetasWriter) -> None:
    """Session by session, ``CHUNK_ROWS`` volumes at a time: mask, unscale, append."""
    done = 0
    for path in progress(sub.sessions, f"nsd: {sub.name} sessions"):
        img = load_nifti(path, "NSD betas session")
        n = int(img.shape[3])
        label = f"ses-{int(_SESSION.match(path.name)[1]):02d}"
        for t0 in range(0, n, CHUNK_ROWS):
            t1 = min(t0 + CHUNK_ROWS, n)
            block = nifti_data(img, f"NSD betas session (volumes {t0}:{t1})", (..., slice(t0, t1)))
            rows = block[sub.mask].T.astype(np.float32) / NIFTI_SCALE
            writer.write(rows, stim[done + t0 : done + t1], label)
        done += n


def _meta(plan: _Plan, sub: _Subject, grid: dict | None) -> dict:
    units = (
        "as released by MindEye2 (betas_all_*_fp32_renorm: z-scored per session)"
        if plan.route == "mindeye2"
        else "% signal change (NSD int16 betas / 300)"
    )
    return {
        "Dataset": "nsd",
        "Source": str(sub.betas) if sub.betas else [str(p) for p in sub.sessions],
        "SourceSubject": sub.name,
        "Route": plan.route,
        "Units": units,
        "Voxels": "nsdgeneral",
        "RepetitionTime": NSD_TR,
        "Grid": grid,
    }


ADAPTER = Adapter(
    name="nsd",
    route="betas",
    layout=f"'{ME_BETAS}' + 'wds/' + '{ME_IMAGES}' + '{ANNOTS}' (MindEye2), or "
    f"'{NIFTI_DIR}/betas_session*.nii.gz' + '{ROI_FILE}' + '{EXPDESIGN}' + '{NSD_IMAGES}'",
    inspect=inspect,
    convert=convert,
)
