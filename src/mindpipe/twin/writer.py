"""Write the twin dataset to disk in the layout of docs/data-format.md, byte-reproducibly.

Every file is a pure function of (profile, overrides, seed): NIfTI gzip headers carry mtime 0
(nibabel's default), PNGs carry no timestamps, TSV floats have a fixed format, JSON keys are
sorted, and ``.npz`` members get a fixed zip date (``numpy.savez`` would stamp the current time).
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image

from mindpipe import __version__
from mindpipe.twin import anatomy, bold, responses, stimuli, video
from mindpipe.twin.config import TwinConfig, config_dict, get_profile, rng_for
from mindpipe.utils import atomic_dir, progress, write_json

logger = logging.getLogger(__name__)

BIDS_VERSION = "1.9.0"
TASK = "images"
TRUTH_DIR = Path("derivatives") / "twin-truth"
FLOAT_FORMAT = "%.4f"


def generate(out_dir: str | Path, profile: str = "tiny", seed: int = 0, **overrides: Any) -> Path:
    """Generate the twin dataset into ``out_dir`` (replaced atomically).

    Parameters
    ----------
    out_dir : path
        The dataset root (``data/`` in the pipeline). Written to a temporary sibling first and
        renamed into place only when complete.
    profile : str
        ``"tiny"`` (tests, seconds) or ``"default"`` (the README run).
    seed : int
        Seeds every random draw; the same profile, overrides and seed give identical bytes.
    **overrides
        Any :class:`~mindpipe.twin.config.TwinConfig` field.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ParamsError
        Unknown profile or setting, or a setting out of range.
    """
    cfg = get_profile(profile, **overrides)
    out_dir = Path(out_dir)
    start = time.perf_counter()
    with atomic_dir(out_dir) as root:
        write_dataset(root, cfg, seed)
    logger.info(
        "twin '%s' (seed %d) written to %s in %.1f s",
        cfg.profile,
        seed,
        out_dir,
        time.perf_counter() - start,
    )
    return out_dir


def write_dataset(root: Path, cfg: TwinConfig, seed: int) -> None:
    """Write every file of the dataset under ``root`` (an existing, empty directory).

    The image paradigm goes to ``root``; the video paradigm, when the config has clips, to
    ``root/video`` as a dataset of its own (same subjects and anatomies, ``task-video``).
    """
    table = stimuli.sample_stimuli(cfg, seed)
    images = _write_stimuli(root / "stimuli", table, cfg, seed)
    energy = stimuli.contrast_energy(images, cfg)
    del images
    _write_template(root / "template", cfg)
    _write_paradigm(root, table, energy, cfg, seed, TASK)
    if cfg.video_train > 0:
        clips_table = video.sample_clips(cfg, seed)
        vcfg = video.paradigm_config(cfg)
        clips = video.render_clips(clips_table, cfg, seed)
        _write_clips(root / "video" / "stimuli", clips_table, clips, cfg, seed)
        energy = video.clip_energy(clips, cfg)
        del clips
        modulate = video.direction_tuning(clips_table, cfg, seed)
        _write_paradigm(root / "video", clips_table, energy, vcfg, seed, video.TASK, modulate)


def _write_paradigm(
    root: Path,
    table: pd.DataFrame,
    energy: np.ndarray,
    cfg: TwinConfig,
    seed: int,
    task: str,
    modulate: Callable | None = None,
) -> None:
    """Subjects, their runs and ground truth, and the dataset's description files."""
    truth_dir = root / TRUTH_DIR
    truth_dir.mkdir(parents=True)
    latents = stimuli.stimulus_latents(cfg, seed, table)
    reference = stimuli.reference_latents(cfg, seed)
    np.save(truth_dir / "stimuli_latents.npy", latents)

    subjects = [f"sub-{i:02d}" for i in range(1, cfg.n_subjects + 1)]
    summaries = {}
    for number, label in enumerate(progress(subjects, desc=f"twin subjects ({task})"), start=1):
        summaries[label] = _write_subject(
            root, label, number, table, energy, latents, reference, cfg, seed, task, modulate
        )

    _write_tsv(root / "participants.tsv", pd.DataFrame({"participant_id": subjects}))
    generated_by = [{"Name": "mindpipe twin", "Version": __version__}]
    write_json(
        root / "dataset_description.json",
        {
            "Name": "mindpipe twin",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "GeneratedBy": generated_by,
            "profile": cfg.profile,
            "seed": seed,
        },
    )
    write_json(
        truth_dir / "dataset_description.json",
        {
            "Name": "mindpipe twin ground truth",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": generated_by,
        },
    )
    write_json(truth_dir / "twin.json", _twin_json(cfg, seed, summaries))


def _write_stimuli(folder: Path, table: pd.DataFrame, cfg: TwinConfig, seed: int) -> np.ndarray:
    """PNGs, ``stimuli.tsv`` and ``categories.tsv``; returns the images (n, S, S, 3) uint8."""
    (folder / "images").mkdir(parents=True)
    images = stimuli.render_table(table, cfg, seed)
    for path, image in zip(table["file"], images, strict=True):
        Image.fromarray(image).save(folder.parent / path, format="PNG")
    _write_tsv(folder / "stimuli.tsv", table)
    _write_tsv(folder / "categories.tsv", stimuli.category_table(cfg, seed))
    return images


def _write_clips(
    folder: Path, table: pd.DataFrame, clips: np.ndarray, cfg: TwinConfig, seed: int
) -> None:
    """One animated PNG per clip (lossless; its first frame is the keyframe) and the tables."""
    (folder / "videos").mkdir(parents=True)
    duration_ms = 1000 // cfg.video_fps
    for path, frames in zip(table["file"], clips, strict=True):
        first, *rest = (Image.fromarray(frame) for frame in frames)
        first.save(
            folder.parent / path,
            format="PNG",
            save_all=True,
            append_images=rest,
            duration=duration_ms,
            loop=0,
        )
    _write_tsv(folder / "stimuli.tsv", table)
    _write_tsv(folder / "categories.tsv", stimuli.category_table(cfg, seed))


def _write_template(folder: Path, cfg: TwinConfig) -> None:
    folder.mkdir(parents=True)
    tpl = anatomy.make_template(cfg)
    save_nifti(tpl.t1, tpl.affine, folder / "tpl-twin_T1w.nii.gz", code="template")
    save_nifti(
        tpl.visual_mask, tpl.affine, folder / "tpl-twin_desc-visual_mask.nii.gz", code="template"
    )


def _write_subject(
    root: Path,
    label: str,
    number: int,
    table: pd.DataFrame,
    energy: np.ndarray,
    latents: np.ndarray,
    reference: np.ndarray,
    cfg: TwinConfig,
    seed: int,
    task: str,
    modulate: Callable | None,
) -> dict[str, Any]:
    """Anatomy, mask, truth and every run of one subject; returns a summary for twin.json.

    ``modulate(encoding, anatomy, subject)``, when given, adjusts the encoding model to the
    paradigm (the video paradigm's direction tuning).
    """
    anat = anatomy.make_subject(cfg, seed, number)
    enc = responses.encode_subject(anat, energy, latents, reference, cfg, seed, number)
    if modulate is not None:
        enc = modulate(enc, anat, number)
    plans = bold.make_schedule(table, cfg, seed, number)
    files = table.set_index("stim_id")["file"]
    n_sessions = plans[-1].session
    noise = bold.draw_subject_noise(anat, n_sessions, cfg, seed, number)

    (root / label / "anat").mkdir(parents=True)
    func = root / label / "func"
    func.mkdir()
    save_nifti(anat.t1, anat.t1_affine, root / label / "anat" / f"{label}_T1w.nii.gz")
    mask = np.zeros(int(np.prod(anat.bold_shape)), dtype=np.uint8)
    mask[anat.mask_index] = 1
    save_nifti(
        mask.reshape(anat.bold_shape), anat.bold_affine, func / f"{label}_desc-visual_mask.nii.gz"
    )

    truth = root / TRUTH_DIR
    write_json(truth / f"{label}_transform.json", anat.transform.to_dict())
    save_npz(
        truth / f"{label}_encoding.npz",
        voxel_index=anat.mask_index.astype(np.int64),
        amplitude=enc.amplitude.astype(np.float32),
        kind=enc.kind.astype(np.uint8),
        noise_sd=noise.noise_sd[anat.mask_in_brain].astype(np.float32),
    )

    for index, plan in enumerate(progress(plans, desc=f"{label} runs")):
        rng = rng_for(seed, "subject", number, "run", index)
        data = bold.synthesize_run(plan, anat, enc, noise, cfg, rng)
        stem = f"{label}_ses-{plan.session:02d}_task-{task}_run-{plan.run:02d}"
        save_nifti(data, anat.bold_affine, func / f"{stem}_bold.nii.gz", tr=cfg.tr_s)
        write_json(func / f"{stem}_bold.json", {"RepetitionTime": cfg.tr_s, "TaskName": task})
        _write_tsv(func / f"{stem}_events.tsv", plan.events(cfg, files))

    logger.debug(
        "%s: BOLD grid %s, %d brain voxels, %d mask voxels (%d retinotopic), %d runs",
        label,
        anat.bold_shape,
        len(anat.brain_index),
        len(anat.mask_index),
        int((anat.kind == 0).sum()),
        len(plans),
    )
    return {
        "hrf_time_scale": round(noise.hrf_time_scale, 10),
        "session_gain": np.round(noise.session_gain, 10).tolist(),
        "bold_shape": list(anat.bold_shape),
        "n_brain_voxels": len(anat.brain_index),
        "n_mask_voxels": len(anat.mask_index),
        "n_retinotopic": int((anat.kind == 0).sum()),
        "n_runs": len(plans),
        "n_sessions": n_sessions,
    }


def _twin_json(cfg: TwinConfig, seed: int, subjects: dict[str, Any]) -> dict[str, Any]:
    d = cfg.category_dim
    return {
        "profile": cfg.profile,
        "seed": seed,
        "generator_version": __version__,
        "config": config_dict(cfg),
        "derived": {
            "held_out_categories": stimuli.choose_held_out(cfg, seed),
            "latent_layout": {
                "category": [0, d],
                "colour": [d, d + 3],
                "texture": [d + 3, d + 6],
                "size": [d + 6, d + 7],
            },
            "retinotopic_limit": anatomy.retinotopic_limit(cfg),
            "amplitude": "peak % signal change of an isolated trial (regressor peak = 1)",
            "hrf": "SPM double gamma (delay 6 s, undershoot 16 s, ratio 0.167) at t / "
            "hrf_time_scale",
            "subjects": subjects,
        },
    }


# ------------------------------------------------------------------------------------------------
# Deterministic file writers
# ------------------------------------------------------------------------------------------------
def save_nifti(
    data: np.ndarray,
    affine: np.ndarray,
    path: Path,
    *,
    code: str = "scanner",
    tr: float | None = None,
) -> None:
    """Save an image with its dtype kept (no scaling), sform = qform = ``affine``.

    For 4-D images ``tr`` goes into ``pixdim[4]`` with ``xyzt_units`` = mm + s.
    """
    img = nib.Nifti1Image(data, affine)
    header = img.header
    header.set_data_dtype(data.dtype)
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    if tr is not None:
        header.set_zooms((*header.get_zooms()[:3], tr))
        header.set_xyzt_units("mm", "sec")
    else:
        header.set_xyzt_units("mm")
    nib.save(img, path)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like ``numpy.savez`` (uncompressed) but with a fixed member timestamp, so bytes repeat."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, buffer.getvalue())


def _write_tsv(path: Path, table: pd.DataFrame) -> None:
    table.to_csv(path, sep="\t", index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
