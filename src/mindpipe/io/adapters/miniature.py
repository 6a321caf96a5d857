"""Miniature releases in the real datasets' layouts, small and seeded (tests, benchmarks).

No dataset can be downloaded here, so each adapter is exercised on files these functions write
in the layout the real release uses (docs/real-data.md): NSD (MindEye2 HDF5 + webdataset
index, and the NIfTI betas route), GOD (bdpy HDF5 + ImageNet-named JPEGs), CC2017 (CIFTI-2
dense time series + 30-FPS frames) and a lab's BIDS dataset. Responses carry a known
low-rank image signal plus noise, so decoders downstream learn something. Sizes are
arguments: :func:`write_nsd_mindeye` also writes the benchmark's 30,000 x 15,724 file,
streaming it in chunks.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io
from PIL import Image

RANK = 8  # latent dimensions of the simulated image responses


class _Responses:
    """``latent[image] @ loadings + noise`` for any rows, without the full (n, v) matrix."""

    def __init__(self, n_images: int, n_voxels: int, noise: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.latent = rng.normal(size=(n_images, RANK)).astype(np.float32)
        self.loadings = (rng.normal(size=(RANK, n_voxels)) / np.sqrt(RANK)).astype(np.float32)
        self.noise = noise
        self.rng = rng

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(len(images), n_voxels) float32 responses to these images (one row each)."""
        signal = self.latent[images] @ self.loadings
        return signal + self.noise * self.rng.standard_normal(signal.shape, dtype=np.float32)


def _image(index: int, size: int, seed: int) -> np.ndarray:
    """A seeded picture: a coloured background with a square of another colour (uint8 RGB)."""
    rng = np.random.default_rng([seed, index])
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = rng.integers(0, 256, 3)
    a, b = sorted(rng.integers(0, size, 2))
    image[a : b + 1, a : b + 1] = rng.integers(0, 256, 3)
    return image


def _captions(n: int) -> np.ndarray:
    words = ("red", "blue", "green", "small", "large", "striped")
    return np.array(
        [[f"a {words[i % 6]} thing number {i}", "", "", "", ""] for i in range(n)], dtype="<U40"
    )


# --------------------------------------------------------------------------- NSD


def write_nsd_mindeye(
    root: str | Path,
    subjects: tuple[int, ...] = (1,),
    n_train: int = 24,
    n_test: int = 6,
    repeats: int = 3,
    n_voxels: int = 40,
    image_size: int = 16,
    noise: float = 0.5,
    seed: int = 0,
    chunk: int = 1000,
    dtype: str = "float32",
) -> Path:
    """The MindEye2 release: betas HDF5 per subject, COCO image HDF5, captions, wds index.

    Every image is shown ``repeats`` times; the first ``n_test`` 73k indices are the shared
    test images. Betas (``dtype``; the release's are float32) are written ``chunk`` rows at a
    time, so a realistic 30,000 x 15,724 file never sits in memory.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n_images = n_train + n_test
    with h5py.File(root / "coco_images_224_float16.hdf5", "w") as handle:
        images = handle.create_dataset(
            "images", shape=(n_images, 3, image_size, image_size), dtype=np.float16
        )
        for i in range(n_images):
            images[i] = np.moveaxis(_image(i, image_size, seed), -1, 0) / 255.0
    np.save(root / "COCO_73k_annots_curated.npy", _captions(n_images))
    responses = _Responses(n_images, n_voxels, noise, seed)
    for number in subjects:
        rng = np.random.default_rng([seed, number])
        trial_image = rng.permutation(np.repeat(np.arange(n_images), repeats))
        name = f"subj{number:02d}"
        with h5py.File(root / f"betas_all_{name}_fp32_renorm.hdf5", "w") as handle:
            data = handle.create_dataset(
                "betas",
                shape=(trial_image.size, n_voxels),
                dtype=dtype,
                chunks=(min(64, trial_image.size), n_voxels),
            )
            for start in range(0, trial_image.size, chunk):
                data[start : start + chunk] = responses(trial_image[start : start + chunk])
        test = trial_image < n_test
        for split, rows in (
            ("new_train", np.flatnonzero(~test)),
            ("new_test", np.flatnonzero(test)),
        ):
            _write_shard(root / "wds" / name / split / "0.tar", trial_image, rows)
    return root


def _write_shard(path: Path, trial_image: np.ndarray, rows: np.ndarray) -> None:
    """One webdataset shard: a ``*.behav.npy`` (1, 17) per trial, [0, 0] image, [0, 5] row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for row in rows:
            behav = np.full((1, 17), -1.0, dtype=np.float32)
            behav[0, 0], behav[0, 5] = trial_image[row], row
            buffer = io.BytesIO()
            np.save(buffer, behav)
            info = tarfile.TarInfo(f"sample{row:09d}.behav.npy")
            info.size = buffer.tell()
            buffer.seek(0)
            archive.addfile(info, buffer)


def write_nsd_nifti(
    root: str | Path,
    subject: int = 1,
    n_images: int = 24,
    n_shared: int = 6,
    n_sessions: int = 2,
    trials_per_session: int = 36,
    grid: tuple[int, int, int] = (5, 5, 4),
    image_size: int = 16,
    noise: float = 0.5,
    seed: int = 0,
) -> Path:
    """The NSD NIfTI route: int16 (x300) session betas, nsdgeneral, the design .mat, imgBrick.

    The 73k space here has ``n_images`` images; the first ``n_shared`` are ``sharedix``.
    Real sessions have 750 trials; the adapter reads each session's own count.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    name = f"subj{subject:02d}"
    stimuli = root / "nsddata_stimuli/stimuli/nsd"
    stimuli.mkdir(parents=True, exist_ok=True)
    with h5py.File(stimuli / "nsd_stimuli.hdf5", "w") as handle:
        handle["imgBrick"] = np.stack([_image(i, image_size, seed) for i in range(n_images)])
    np.save(root / "COCO_73k_annots_curated.npy", _captions(n_images))
    n_trials = n_sessions * trials_per_session
    subjectim = np.tile(np.arange(1, n_images + 1), (8, 1))  # 1-based 73k ids per subject
    order = rng.permutation(np.resize(np.arange(1, n_images + 1), n_trials))
    design = root / "nsddata/experiments/nsd"
    design.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        design / "nsd_expdesign.mat",
        {
            "masterordering": order[None, :].astype(np.float64),
            "subjectim": subjectim.astype(np.float64),
            "sharedix": np.arange(1, n_shared + 1)[None, :].astype(np.float64),
        },
    )
    roi = np.full(grid, -1, dtype=np.int16)
    roi[1:-1, 1:-1, 1:-1] = 0
    roi[1:-1, 1:-1, 1:-2] = 1  # the nsdgeneral voxels
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    roi_dir = root / f"nsddata/ppdata/{name}/func1pt8mm/roi"
    roi_dir.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(roi, affine), roi_dir / "nsdgeneral.nii.gz")
    mask = roi > 0
    responses = _Responses(n_images, int(mask.sum()), noise, seed)
    betas_dir = root / f"nsddata_betas/ppdata/{name}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    betas_dir.mkdir(parents=True, exist_ok=True)
    for s in range(n_sessions):
        images = order[s * trials_per_session : (s + 1) * trials_per_session] - 1
        volume = np.zeros((*grid, images.size), dtype=np.int16)
        psc = 2.0 * responses(images) + 1.0  # % signal change, a session offset
        volume[mask] = np.round(psc.T * 300.0).astype(np.int16)
        nib.save(nib.Nifti1Image(volume, affine), betas_dir / f"betas_session{s + 1:02d}.nii.gz")
    return root


# --------------------------------------------------------------------------- GOD


def write_god(
    root: str | Path,
    subjects: tuple[int, ...] = (1,),
    n_train_categories: int = 6,
    per_category: int = 4,
    n_test_categories: int = 3,
    test_repeats: int = 5,
    n_voxels: int = 30,
    image_size: int = 20,
    noise: float = 0.5,
    seed: int = 0,
    stimulus_key: str = "stimulus_id",
) -> Path:
    """bdpy ``SubjectN.h5`` files, ImageNet-named JPEGs and a synset list.

    Training images are shown once, test images ``test_repeats`` times (GOD: 35), one test
    image per category never trained on; a few imagery samples (DataType 3) are included.
    The stimulus column is ``stimulus_key`` (the HDF5 release's; older files: ``Label``).
    """
    root = Path(root)
    wnids = [f"n{1000000 + 17 * k:08d}" for k in range(n_train_categories + n_test_categories)]
    train = [(c, 100 + i) for c in range(n_train_categories) for i in range(per_category)]
    test = [(n_train_categories + c, 900 + c) for c in range(n_test_categories)]
    for split, items in (("training", train), ("test", test)):
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for k, (c, i) in enumerate(items):
            pixels = _image(k + (1000 if split == "test" else 0), image_size + 6, seed)
            Image.fromarray(pixels[:, 3:-3]).save(folder / f"{wnids[c]}_{i}.JPEG", quality=95)
    (root / "synset_words.txt").write_text(
        "".join(f"{w} thing{k}, other name\n" for k, w in enumerate(wnids))
    )
    items = train + test
    responses = _Responses(len(items), n_voxels, noise, seed)
    for number in subjects:
        _write_bdata(
            root / f"Subject{number}.h5",
            items,
            len(train),
            test_repeats,
            responses,
            wnids,
            stimulus_key,
        )
    return root


def _write_bdata(path, items, n_train, test_repeats, responses, wnids, stimulus_key) -> None:
    """One bdpy BData HDF5 (``dataset`` + ``metadata/{key,description,value}``)."""
    index = list(range(n_train)) + [n_train + k for k in range(len(items) - n_train)] * test_repeats
    data_type = [1] * n_train + [2] * (len(index) - n_train)
    index += [n_train]  # an imagery sample: not converted
    data_type += [3]
    run = [1 + k // 8 for k in range(n_train)] + [
        1 + k // (2 * (len(items) - n_train)) for k in range(len(index) - n_train)
    ]
    label = [float(wnids[c][1:]) + i * 1e-6 for c, i in (items[k] for k in index)]
    voxels = responses(np.array(index))
    n_vox = voxels.shape[1]
    dataset = np.column_stack([voxels, data_type, run, label]).astype(np.float64)
    keys = ["VoxelData", "ROI_VC", "ROI_V1", "DataType", "Run", stimulus_key]
    value = np.full((len(keys), dataset.shape[1]), np.nan)
    value[0:2, :n_vox] = 1
    value[2, : n_vox // 2] = 1
    for k, col in zip(range(3, 6), range(n_vox, n_vox + 3), strict=True):
        value[k, col] = 1
    with h5py.File(path, "w") as handle:
        handle["dataset"] = dataset
        handle["metadata/key"] = np.array(keys, dtype="S")
        handle["metadata/description"] = np.array([f"{k} = 1" for k in keys], dtype="S")
        handle["metadata/value"] = value


# --------------------------------------------------------------------------- CC2017


def write_cc2017(
    root: str | Path,
    subjects: tuple[int, ...] = (1,),
    n_train_segments: int = 3,
    n_test_segments: int = 2,
    clips_per_segment: int = 6,
    train_repeats: int = 2,
    test_repeats: int = 3,
    n_vertices: int = 30,
    frame_size: int = 16,
    noise: float = 0.5,
    seed: int = 0,
) -> Path:
    """``subjectN/fmri/<segment>/cifti/<segment>_<rep>_Atlas.dtseries.nii`` and 30-FPS frames.

    Runs have ``clips + 5`` or ``clips + 6`` volumes (1 or 2 leading, 4 trailing dropped), a
    cortex of ``n_vertices`` per hemisphere and a few subcortical voxels (not converted).
    """
    root = Path(root)
    segments = [f"seg{k + 1}" for k in range(n_train_segments)]
    segments += [f"test{k + 1}" for k in range(n_test_segments)]
    for s, segment in enumerate(segments):
        _write_frames(root / "stimuli" / "frames" / segment, s, clips_per_segment, frame_size, seed)
    half = n_vertices
    mask = np.zeros((2, 2, 2), dtype=bool)
    mask[0, 0, :] = True
    models = (
        nib.cifti2.BrainModelAxis.from_surface(np.arange(half), half, "CortexLeft")
        + nib.cifti2.BrainModelAxis.from_surface(np.arange(half), half, "CortexRight")
        + nib.cifti2.BrainModelAxis.from_mask(mask, name="thalamus_left", affine=np.eye(4))
    )
    n_clips = len(segments) * clips_per_segment
    responses = _Responses(n_clips, 2 * half, noise, seed)
    rng = np.random.default_rng(seed)
    for number in subjects:
        for s, segment in enumerate(segments):
            reps = test_repeats if segment.startswith("test") else train_repeats
            clips = s * clips_per_segment + np.arange(clips_per_segment)
            for rep in range(1, reps + 1):
                lead = 1 if rep % 2 else 2
                n_vols = clips_per_segment + lead + 4
                data = rng.normal(size=(n_vols, len(models))).astype(np.float32)
                data[lead : lead + clips_per_segment, : 2 * half] = responses(clips)
                data += 100.0 + np.linspace(0, 3, n_vols, dtype=np.float32)[:, None]  # drift
                series = nib.cifti2.SeriesAxis(start=0.0, step=2.0, size=n_vols, unit="SECOND")
                folder = root / f"subject{number}" / "fmri" / segment / "cifti"
                folder.mkdir(parents=True, exist_ok=True)
                img = nib.Cifti2Image(data, header=(series, models))
                nib.save(img, folder / f"{segment}_{rep}_Atlas.dtseries.nii")
    return root


def _write_frames(folder: Path, segment: int, n_clips: int, size: int, seed: int) -> None:
    """60 JPEG frames per clip (30 FPS): a square moving across a clip-specific background."""
    folder.mkdir(parents=True, exist_ok=True)
    for clip in range(n_clips):
        base = _image(segment * 100 + clip, size, seed)
        for k in range(60):
            frame = base.copy()
            x = k * (size - 4) // 60
            frame[size // 2 - 2 : size // 2 + 2, x : x + 4] = 255
            n = clip * 60 + k + 1
            Image.fromarray(frame).save(folder / f"im-{n}.jpg", quality=95)


# --------------------------------------------------------------------------- BIDS


#: Where the BIDS miniature's BOLD grid starts in scanner mm: over the occipital lobe, so its
#: voxels land in the visual cortex of MNI152 under :func:`bids_scanner_to_mni`.
BIDS_BOLD_ORIGIN_MM = (-18.0, -100.0, -10.0)


def bids_scanner_to_mni(seed: int, index: int) -> np.ndarray:
    """The true 4 x 4 scanner mm -> MNI152 mm mapping of the BIDS miniature's subject
    ``index``: a rotation of up to 8 degrees, a scaling of up to 5% and a shift of up to 15 mm."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng([seed, index, 152])
    rotation = Rotation.from_euler("xyz", rng.uniform(-8, 8, 3), degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation * rng.uniform(0.95, 1.05)
    affine[:3, 3] = rng.uniform(-15, 15, 3)
    return affine


def _write_bids_t1w(path: Path, scanner_to_mni: np.ndarray, voxel_mm: float = 4.0) -> None:
    """nilearn's MNI152 T1 seen through the inverse of ``scanner_to_mni``: the subject's head
    in scanner space, on a ``voxel_mm`` grid."""
    from nilearn.datasets import load_mni152_template
    from scipy.ndimage import map_coordinates

    mni = load_mni152_template(resolution=2)
    shape = (48, 58, 48)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = (-96.0, -130.0, -80.0)
    ijk = np.indices(shape).reshape(3, -1).T
    to_mni_voxels = np.linalg.inv(mni.affine) @ scanner_to_mni @ affine
    points = ijk @ to_mni_voxels[:3, :3].T + to_mni_voxels[:3, 3]
    values = map_coordinates(np.asarray(mni.dataobj, dtype=np.float32), points.T, order=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(values.reshape(shape).astype(np.float32), affine), path)


def write_bids(
    root: str | Path,
    subjects: tuple[str, ...] = ("sub-01",),
    n_images: int = 18,
    repeats: int = 3,
    n_runs: int = 3,
    shape: tuple[int, int, int] = (12, 12, 10),
    tr: float = 2.0,
    spacing: float = 6.0,
    noise_sd: float = 0.3,
    seed: int = 0,
) -> Path:
    """A lab's BIDS dataset: runs without sessions, events naming ``stimuli/`` files,
    fixation rows without one, the TR in the top-level ``task-vision_bold.json``, and a T1w
    image per subject in the BOLD runs' scanner space (:func:`bids_scanner_to_mni` gives its
    true mapping to MNI152)."""
    from mindpipe.preprocess.glm import trial_regressors

    root = Path(root)
    rng = np.random.default_rng(seed)
    kinds = ("face", "house", "tool")
    files = [f"images/{kinds[i % 3]}_{i:02d}.png" for i in range(n_images)]
    (root / "stimuli" / "images").mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        Image.fromarray(_image(i, 24, seed)).save(root / "stimuli" / f)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "lab scans", "BIDSVersion": "1.9.0"})
    )
    (root / "task-vision_bold.json").write_text(
        json.dumps({"RepetitionTime": tr, "TaskName": "vision"})
    )
    brain = np.zeros(shape, dtype=bool)
    brain[2:-2, 2:-2, 2:-2] = True  # large enough to survive nilearn's EPI-mask opening
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = BIDS_BOLD_ORIGIN_MM
    trials = np.repeat(np.arange(n_images), repeats)
    per_run = int(np.ceil(trials.size / n_runs))
    n_vols = int(np.ceil((4.0 + per_run * spacing + 16.0) / tr))
    for index, subject in enumerate(subjects):
        anat = root / subject / "anat" / f"{subject}_T1w.nii.gz"
        _write_bids_t1w(anat, bids_scanner_to_mni(seed, index))
        func = root / subject / "func"
        func.mkdir(parents=True, exist_ok=True)
        amplitude = 2.0 * rng.normal(size=(n_images, int(brain.sum())))
        order = rng.permutation(trials)
        for r in range(n_runs):
            stim = order[r * per_run : (r + 1) * per_run]
            onsets = 4.0 + spacing * np.arange(stim.size)
            psc = trial_regressors(onsets, np.full(stim.size, 2.0), n_vols, tr) @ amplitude[stim]
            psc += rng.normal(0.0, noise_sd, psc.shape)
            data = np.zeros((*shape, n_vols), dtype=np.float32)
            data[brain] = 1000.0 * (1.0 + psc.T / 100.0)
            img = nib.Nifti1Image(np.round(data).astype(np.int16), affine)
            img.header.set_xyzt_units("mm", "sec")
            img.header["pixdim"][4] = tr
            stem = f"{subject}_task-vision_run-{r + 1}"
            nib.save(img, func / f"{stem}_bold.nii.gz")
            events = pd.DataFrame(
                {
                    "onset": np.concatenate([onsets, onsets + 3.0]),
                    "duration": np.concatenate([np.full(stim.size, 2.0), np.full(stim.size, 1.0)]),
                    "trial_type": [kinds[i % 3] for i in stim] + ["fixation"] * stim.size,
                    "stim_file": [files[i] for i in stim] + ["n/a"] * stim.size,
                }
            ).sort_values("onset")
            events.to_csv(func / f"{stem}_events.tsv", sep="\t", index=False)
    return root
