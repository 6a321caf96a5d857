"""CC2017 (Wen et al. 2017, video-fMRI) -> the internal layout, image and video paradigms.

The release (Purdue, ``video_fmri_dataset``) has per subject
``subjectN/fmri/segK/cifti/segK_R_Atlas.dtseries.nii`` (18 training movie segments, 2
repeats) and ``testK/cifti/testK_R_Atlas.dtseries.nii`` (5 test segments, 10 repeats):
CIFTI-2 dense time series on the fs_LR cortical surface plus subcortical voxels, TR 2 s. As in
the authors' own processing, the surface vertices (``CORTEX_LEFT``/``CORTEX_RIGHT``, 59,412)
are kept, the first 1 (245-volume runs) or 2 (246) and the last 4 volumes dropped, leaving one
volume per 2-s clip of the 8-min segment (240), and each run is detrended (4th-order
polynomial). Volume ``t`` is the response to clip ``t``: 4,320 training and 1,200 test clips.

The movies ship as MP4 (30 FPS); the environment has no video decoder, so the frames are read
as the authors extract them: ``stimuli/frames/segK/im-1.jpg ...`` (``ffmpeg -i segK.mp4
stimuli/frames/segK/im-%d.jpg``). Clip ``t`` is frames ``60 t .. 60 t + 59``; it is written as
16 frames at 8 FPS (``data/video``), and its first frame (the keyframe) is the image paradigm's
stimulus, so the image decoders and NeuroClips read the same responses.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from mindpipe.exceptions import DataError
from mindpipe.io.adapters.common import (
    CLIP_FPS,
    CLIP_FRAMES,
    NIFTI_ERRORS,
    Adapter,
    Inspection,
    carve_validation,
    link_or_copy,
    open_image,
    release_subjects,
    stimulus_table,
    subject_label,
    write_clips,
    write_description,
    write_stimuli,
)
from mindpipe.io.bids import VIDEO_DATASET
from mindpipe.io.trials import TrialBetasWriter, trial_files
from mindpipe.params import SourceParams
from mindpipe.utils import progress

logger = logging.getLogger(__name__)

TR = 2.0  # s, one clip per volume
SOURCE_FPS = 30  # the movies' frame rate
FRAMES_PER_CLIP = int(TR * SOURCE_FPS)
TRIM_END = 4  # volumes dropped at the end of every run (the authors' processing)
TRIM_START = (1, 2)  # ... and at the start: 1 for n_clips + 5 volumes, 2 for n_clips + 6
DETREND_ORDER = 4
CORTEX = ("CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT")
FRAMES_DIR = "stimuli/frames"
_SUBJECT = re.compile(r"^subject(\d+)$")
_SEGMENT = re.compile(r"^(seg|test)(\d+)$")
_RUN = re.compile(r"^(?P<segment>(?:seg|test)\d+)_(?P<rep>\d+)_Atlas\.dtseries\.nii$")


@dataclasses.dataclass(frozen=True)
class _Run:
    segment: str
    rep: int
    path: Path
    start: int  # first kept volume


@dataclasses.dataclass
class _Subject:
    name: str
    label: str
    runs: list[_Run]
    cortex: np.ndarray  # (n_vertices,) grayordinate indices kept


@dataclasses.dataclass
class _Plan:
    subjects: list[_Subject]
    clips: dict[str, int]  # segment -> clips


def _segment_key(segment: str) -> tuple[int, int]:
    kind, number = _SEGMENT.match(segment).groups()
    return int(kind == "test"), int(number)


def inspect(source: Path, params: SourceParams) -> Inspection:
    """Check runs (CIFTI headers, volumes, TR, vertices) and frame folders; no data read."""
    source = Path(source)
    report = Inspection("cc2017", source)
    found = {p.name: p for p in source.glob("subject*") if _SUBJECT.match(p.name)}
    expected = "'subject1/fmri/seg1/cifti/seg1_1_Atlas.dtseries.nii' ..."
    names = release_subjects(report, found, params.subjects, expected)
    clips: dict[str, int] = {}
    subjects, rows = [], []
    for name in names:
        sub = report.attempt(lambda n=name: _inspect_subject(source, n, clips, rows))
        if sub is not None:
            subjects.append(sub)
    table = pd.DataFrame(rows)
    if len(table):
        report.tables["runs"] = (table, _run_specs(), ("subject", "file"))
    report.counts = {
        "n_subjects": len(subjects),
        "n_runs": len(table),
        "n_clips": sum(clips.values()),
    }
    if not report.problems:
        report.plan = _Plan(
            subjects, dict(sorted(clips.items(), key=lambda kv: _segment_key(kv[0])))
        )
    return report


def _run_specs() -> list:
    return [
        ("ExpectColumnValuesToBeInSet", {"column": "tr", "value_set": [TR]}),
        ("ExpectColumnValuesToBeInSet", {"column": "split", "value_set": ["train", "test"]}),
        ("ExpectColumnValuesToBeBetween", {"column": "n_clips", "min_value": 1}),
        ("ExpectColumnValuesToBeInSet", {"column": "extra_volumes", "value_set": [5, 6]}),
        ("ExpectColumnValuesToBeBetween", {"column": "n_vertices", "min_value": 1}),
    ]


def _inspect_subject(source: Path, name: str, clips: dict[str, int], rows: list) -> _Subject:
    fmri = source / name / "fmri"
    segments = sorted((p.name for p in fmri.glob("*") if _SEGMENT.match(p.name)), key=_segment_key)
    if not segments:
        raise DataError(
            f"{name}: no movie segments: expected '{fmri}/seg1/cifti/' ... 'test1/cifti/'"
        )
    runs, cortex = [], None
    for segment in segments:
        n_clips = clips.get(segment) or _count_clips(source, segment)
        clips[segment] = n_clips
        files = _run_files(fmri / segment / "cifti", segment)
        if not files:
            raise DataError(
                f"{name}: no runs of {segment}: expected '{fmri / segment / 'cifti'}/"
                f"{segment}_1_Atlas.dtseries.nii'"
            )
        for rep, path in files:
            n_vols, tr, kept = _cifti_header(path)
            if cortex is not None and kept.size != cortex.size:
                raise DataError(
                    f"'{path}' has {kept.size} cortical vertices but {runs[0].path.name} has "
                    f"{cortex.size}: every run of {name} must share one surface"
                )
            cortex = kept
            extra = n_vols - n_clips
            split = "test" if segment.startswith("test") else "train"
            rows.append(
                dict(
                    subject=name,
                    file=path.name,
                    split=split,
                    tr=tr,
                    n_vols=n_vols,
                    n_clips=n_clips,
                    extra_volumes=extra,
                    n_vertices=kept.size,
                )
            )
            if extra - TRIM_END not in TRIM_START:
                raise DataError(
                    f"'{path}' has {n_vols} volumes; expected {n_clips + 5} or {n_clips + 6} "
                    f"for the {n_clips} 2-s clips of {segment}'s frames (1 or 2 leading and 4 "
                    "trailing volumes are dropped)"
                )
            runs.append(_Run(segment, rep, path, extra - TRIM_END))
    return _Subject(name, subject_label(int(_SUBJECT.match(name)[1])), runs, cortex)


def _run_files(folder: Path, segment: str) -> list[tuple[int, Path]]:
    """``(repeat, file)`` of every ``<segment>_<rep>_Atlas.dtseries.nii``, in repeat order.

    Raises
    ------
    DataError
        A file that matches ``<segment>_*_Atlas.dtseries.nii`` without a numeric repeat.
    """
    runs, odd = [], []
    for path in folder.glob(f"{segment}_*_Atlas.dtseries.nii"):
        match = _RUN.match(path.name)
        if match and match["segment"] == segment:
            runs.append((int(match["rep"]), path))
        else:
            odd.append(path.name)
    if odd:
        raise DataError(
            f"'{folder}' holds {sorted(odd)}: expected runs named "
            f"'{segment}_<repeat>_Atlas.dtseries.nii' (repeat 1, 2, ...)"
        )
    return sorted(runs)


def _count_clips(source: Path, segment: str) -> int:
    folder = source / FRAMES_DIR / segment
    n_frames = len(list(folder.glob("im-*.jpg"))) if folder.is_dir() else 0
    if n_frames < FRAMES_PER_CLIP:
        movie = source / "stimuli" / f"{segment}.mp4"
        hint = (
            f"; extract them with `ffmpeg -i {movie} {folder}/im-%d.jpg`" if movie.is_file() else ""
        )
        raise DataError(
            f"expected the frames of {segment} (30 FPS JPEGs) at '{folder}/im-1.jpg' ...; found "
            f"{n_frames}{hint}"
        )
    return n_frames // FRAMES_PER_CLIP


def _cifti_header(path: Path) -> tuple[int, float, np.ndarray]:
    """Volumes, TR (s) and the cortical grayordinate indices of one dtseries, from its header."""
    try:
        img = nib.load(path)
    except (*NIFTI_ERRORS, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"cannot read CIFTI '{path}' (truncated or not CIFTI-2): {exc}") from exc
    if not isinstance(img, nib.Cifti2Image) or len(img.shape) != 2:
        raise DataError(f"'{path}' must be a CIFTI-2 dense time series; got {type(img).__name__}")
    series, models = img.header.get_axis(0), img.header.get_axis(1)
    if not isinstance(series, nib.cifti2.SeriesAxis) or not isinstance(
        models, nib.cifti2.BrainModelAxis
    ):
        raise DataError(
            f"'{path}': expected (series, brain models) axes; got {type(series).__name__}"
        )
    scale = {"SECOND": 1.0, "MILLISECOND": 1e-3}.get(series.unit.upper(), 0.0)
    kept = np.flatnonzero(np.isin(models.name, CORTEX))
    if kept.size == 0:
        raise DataError(f"'{path}' has no cortical surface vertices ({list(CORTEX)})")
    return int(img.shape[0]), float(series.step) * scale, kept


def convert(report: Inspection, out_dir: Path, params: SourceParams, seed: int) -> dict[str, float]:
    """Keyframes (``data/``), clips (``data/video``) and every subject's clip responses."""
    plan: _Plan = report.plan
    ids = [f"{seg}/{t:03d}" for seg, n in plan.clips.items() for t in range(n)]
    segment = np.array([i.split("/")[0] for i in ids])
    test = np.char.startswith(segment, "test")
    train_rows = np.flatnonzero(~test)
    val = carve_validation(train_rows, params.val_fraction, seed, "clips")
    split = np.where(test, "test", np.where(np.isin(np.arange(len(ids)), val), "val", "train"))
    columns = dict(
        source_id=ids,
        caption=[f"a frame of the movie {s}" for s in segment],
        category=["cc2017"] * len(ids),  # the release carries no category labels
        split=split.tolist(),
    )
    size = params.image_size
    write_stimuli(out_dir, stimulus_table(**columns), _frames(report.source, ids, True), size)
    video = out_dir / VIDEO_DATASET
    write_clips(
        video, stimulus_table(**columns, folder="videos"), _frames(report.source, ids), size
    )
    stim_of = {i: k for k, i in enumerate(ids)}
    for sub in progress(plan.subjects, desc="cc2017: subjects"):
        _write_subject(out_dir, sub, stim_of, plan.clips)
        for name in ("betas", "trials", "voxels", "sidecar"):
            link_or_copy(
                getattr(trial_files(out_dir, sub.label), name),
                getattr(trial_files(video, sub.label), name),
            )
    labels = [s.label for s in plan.subjects]
    write_description(out_dir, "cc2017", report.source, labels)
    write_description(video, "cc2017", report.source, labels)
    return {
        "n_subjects": float(len(plan.subjects)),
        "n_clips": float(len(ids)),
        "n_test_clips": float(test.sum()),
    }


def _frames(source: Path, ids: list[str], keyframe: bool = False):
    """Each clip's keyframe ``(H, W, 3)``, or its 16 frames at 8 FPS ``(16, H, W, 3)``."""
    picks = [0] if keyframe else [int(k * SOURCE_FPS / CLIP_FPS) for k in range(CLIP_FRAMES)]
    for clip in ids:
        segment, t = clip.split("/")
        first = int(t) * FRAMES_PER_CLIP
        folder = source / FRAMES_DIR / segment
        frames = [
            np.asarray(open_image(folder / f"im-{first + k + 1}.jpg", "movie frame")) for k in picks
        ]
        yield frames[0] if keyframe else np.stack(frames)


def detrend(x: np.ndarray, order: int = DETREND_ORDER) -> np.ndarray:
    """Remove a polynomial trend of ``order`` from each column of ``x`` (n_vols, n_vertices)."""
    t = np.linspace(-1.0, 1.0, x.shape[0])
    basis = np.polynomial.legendre.legvander(t, order)  # (n_vols, order + 1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    return (x - basis @ coef).astype(np.float32)


def _write_subject(
    out_dir: Path, sub: _Subject, stim_of: dict[str, int], clips: dict[str, int]
) -> None:
    """One run at a time: cortex, trim, detrend, one row per clip."""
    n_rows = sum(clips[r.segment] for r in sub.runs)
    writer = TrialBetasWriter(out_dir, sub.label, n_rows, sub.cortex.size)
    for run in progress(sub.runs, f"cc2017: {sub.name} runs"):
        n = clips[run.segment]
        try:
            data = np.asarray(nib.load(run.path, mmap=False).dataobj, dtype=np.float32)
        except NIFTI_ERRORS as exc:
            raise DataError(
                f"cannot read the data of '{run.path}' (truncated file?): {exc}"
            ) from exc
        kept = detrend(data[run.start : run.start + n][:, sub.cortex].astype(np.float64))
        stim = [stim_of[f"{run.segment}/{t:03d}"] for t in range(n)]
        writer.write(kept, np.array(stim), f"{run.segment}-rep-{run.rep:02d}")
    writer.close(
        sub.cortex,
        {
            "Dataset": "cc2017",
            "Source": str(sub.runs[0].path.parents[2]),
            "SourceSubject": sub.name,
            "Units": f"BOLD of the clip's volume, polynomial (order {DETREND_ORDER}) detrended",
            "Voxels": "cortical surface grayordinates (fs_LR 32k), CIFTI column index",
            "RepetitionTime": TR,
            "Grid": None,
        },
    )


ADAPTER = Adapter(
    name="cc2017",
    route="betas",
    layout="'subjectN/fmri/{segK,testK}/cifti/<segment>_<rep>_Atlas.dtseries.nii' and "
    f"'{FRAMES_DIR}/<segment>/im-<n>.jpg' (30 FPS)",
    inspect=inspect,
    convert=convert,
)
