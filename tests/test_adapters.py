"""Real-data adapters on miniatures in the real layouts: conversion, and clear errors.

Each miniature (``mindpipe.io.adapters.miniature``) is written in the layout its release uses;
the adapter must convert it into the internal layout, and a wrong layout, a missing key, a
voxel-count mismatch or a truncated file must raise a DataError naming the expected file or key
and what was found, leaving no output behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image

from mindpipe.exceptions import DataError, ParamsError, ValidationError
from mindpipe.io.adapters import check_source, get_adapter, import_dataset, miniature
from mindpipe.io.adapters.cc2017 import detrend
from mindpipe.io.images import load_video
from mindpipe.io.trials import open_trial_betas, recorded_dataset
from mindpipe.params import BaseParams, SourceParams, parse_section

SOURCE = SourceParams(image_size=16)


def _import(kind: str, source: Path, out: Path, **params: object) -> dict[str, float]:
    return import_dataset(kind, source, out, SourceParams(image_size=16, **params), seed=0)


def _stimuli(data: Path) -> pd.DataFrame:
    return pd.read_csv(data / "stimuli" / "stimuli.tsv", sep="\t")


def _truncate(path: Path, keep: float = 0.5) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])


def _corrupt(path: Path, at: float = 0.8, n: int = 64) -> None:
    """Flip ``n`` bytes at fraction ``at`` of the file: a damaged (not truncated) gzip stream."""
    blob = bytearray(path.read_bytes())
    start = int(len(blob) * at)
    blob[start : start + n] = bytes(b ^ 0xFF for b in blob[start : start + n])
    path.write_bytes(bytes(blob))


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "temporary folder left behind"


# --------------------------------------------------------------------------- NSD


@pytest.fixture
def nsd(tmp_path: Path) -> Path:
    return miniature.write_nsd_mindeye(tmp_path / "nsd", n_train=24, n_test=6, n_voxels=40)


def test_nsd_mindeye2_release_converts(nsd: Path, tmp_path: Path) -> None:
    metrics = _import("nsd", nsd, tmp_path / "data")
    data = tmp_path / "data"
    assert metrics["n_stimuli"] == 30 and metrics["n_test_images"] == 6
    assert recorded_dataset(data) == "nsd"
    stimuli = _stimuli(data)
    # the shared (test) images are 73k indices 0..5; val carved from training by the seed
    assert set(stimuli.loc[stimuli["split"] == "test", "source_id"]) == set(range(6))
    assert (stimuli["split"] == "val").sum() == 2
    assert stimuli["caption"][0] == "a red thing number 0"
    with Image.open(data / stimuli["file"][0]) as img:
        assert img.size == (16, 16)
    tb = open_trial_betas(data, "sub-01")
    assert tb.shape == (90, 40)
    with h5py.File(nsd / "betas_all_subj01_fp32_renorm.hdf5") as handle:
        np.testing.assert_array_equal(tb.rows(slice(None)), handle["betas"][:])
    nsd_id = stimuli.set_index("stim_id").loc[tb.stim, "source_id"].to_numpy()
    test_trials = np.isin(nsd_id, range(6))
    assert test_trials.sum() == 18  # 3 repeats of each shared image, averaged by preprocess


def test_nsd_streams_in_chunks(nsd: Path, tmp_path: Path, monkeypatch) -> None:
    """A chunk smaller than the file gives the same betas (rows read a slice at a time)."""
    from mindpipe.io.adapters import nsd as nsd_adapter

    _import("nsd", nsd, tmp_path / "whole")
    monkeypatch.setattr(nsd_adapter, "CHUNK_ROWS", 7)
    _import("nsd", nsd, tmp_path / "chunked")
    a = open_trial_betas(tmp_path / "whole", "sub-01")
    b = open_trial_betas(tmp_path / "chunked", "sub-01")
    np.testing.assert_array_equal(a.rows(slice(None)), b.rows(slice(None)))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_nsd_failing_conversion_holds_no_file_open(nsd: Path, tmp_path: Path, monkeypatch) -> None:
    """A read failing half-way leaves no handle on the partial betas file (nor the folder)."""
    from mindpipe.io.adapters import nsd as nsd_adapter

    calls = []

    def failing(data, start, stop, what):
        calls.append(what)
        if calls.count("betas") > 1:
            raise DataError(f"cannot read rows {start}:{stop} (truncated file?)")
        return data[start:stop]

    open_at_cleanup = []
    rmtree = shutil.rmtree

    def recording_rmtree(path, *args, **kwargs):  # what is open when atomic_dir cleans up
        fds = [f for f in Path("/proc/self/fd").iterdir() if f.is_symlink()]
        open_at_cleanup.extend(os.readlink(f) for f in fds if os.path.exists(f))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(nsd_adapter, "CHUNK_ROWS", 16)
    monkeypatch.setattr(nsd_adapter, "read_rows", failing)
    monkeypatch.setattr(shutil, "rmtree", recording_rmtree)
    with pytest.raises(DataError, match="truncated"):
        _import("nsd", nsd, tmp_path / "data")
    _nothing_left(tmp_path / "data")
    assert open_at_cleanup and not [f for f in open_at_cleanup if "sub-01_betas.npy" in f]


def test_nsd_nifti_route_converts(tmp_path: Path) -> None:
    source = miniature.write_nsd_nifti(tmp_path / "nsd", n_sessions=2, trials_per_session=36)
    _import("nsd", source, tmp_path / "data")
    tb = open_trial_betas(tmp_path / "data", "sub-01")
    roi = nib.load(source / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz")
    mask = np.asarray(roi.dataobj) > 0
    assert tb.shape == (72, int(mask.sum()))
    np.testing.assert_array_equal(tb.voxel_index, np.flatnonzero(mask.ravel()))
    session = nib.load(
        source
        / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
        / "betas_session02.nii.gz"
    )
    expected = np.asarray(session.dataobj)[mask].T / 300.0  # % signal change
    np.testing.assert_allclose(tb.rows(slice(36, 72)), expected, rtol=1e-6)
    assert set(tb.session) == {"ses-01", "ses-02"}
    assert tb.meta["Grid"]["shape"] == list(mask.shape)
    stimuli = _stimuli(tmp_path / "data")
    design = scipy.io.loadmat(source / "nsddata/experiments/nsd/nsd_expdesign.mat")
    shared = set((design["sharedix"].ravel() - 1).tolist())
    assert set(stimuli.loc[stimuli["split"] == "test", "source_id"]) == shared


def test_nsd_nifti_session_gap_keeps_the_design_order(tmp_path: Path) -> None:
    """Session NN's trials are masterordering[(NN - 1) * n : NN * n], even with one missing."""
    source = miniature.write_nsd_nifti(tmp_path / "nsd", n_sessions=3, trials_per_session=36)
    folder = source / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    (folder / "betas_session02.nii.gz").unlink()
    _import("nsd", source, tmp_path / "data")
    tb = open_trial_betas(tmp_path / "data", "sub-01")
    assert tb.shape[0] == 72 and list(tb.session[35:37]) == ["ses-01", "ses-03"]
    design = scipy.io.loadmat(source / "nsddata/experiments/nsd/nsd_expdesign.mat")
    order = design["masterordering"].ravel().astype(int)
    nsd_id = _stimuli(tmp_path / "data").set_index("stim_id").loc[tb.stim, "source_id"]
    expected = np.concatenate([order[:36], order[72:108]]) - 1  # subjectim is the identity here
    np.testing.assert_array_equal(nsd_id.to_numpy(), expected)
    path = folder / "betas_session03.nii.gz"
    short = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(short.dataobj)[..., :30], short.affine), path)
    problems = check_source("nsd", source, SOURCE).inspection.problems
    assert any("same number" in p and "'betas_session03.nii.gz': 30" in p for p in problems)


@pytest.mark.parametrize("n_bytes", [50, 64])  # damage read with the data / with the header
def test_nsd_nifti_damaged_files_are_named(tmp_path: Path, n_bytes: int) -> None:
    """A damaged .gz stream (zlib.error) and a truncated ROI are DataErrors naming the file."""
    source = miniature.write_nsd_nifti(tmp_path / "nsd")
    session = "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    _corrupt(source / session / "betas_session02.nii.gz", 0.5, n_bytes)
    with pytest.raises(DataError, match=r"betas_session02.nii.gz' \(truncated or"):
        _import("nsd", source, tmp_path / "data")
    _nothing_left(tmp_path / "data")
    _truncate(source / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz", 0.7)
    problems = check_source("nsd", source, SOURCE).inspection.problems
    assert any("NSD ROI" in p and "nsdgeneral.nii.gz' (truncated" in p for p in problems)


def test_nsd_subject_selection(nsd: Path, tmp_path: Path) -> None:
    """A subject asked for twice is converted once; one not in the release is named."""
    _import("nsd", nsd, tmp_path / "data", subjects=("subj01", "subj01"))
    assert open_trial_betas(tmp_path / "data", "sub-01").shape == (90, 40)
    report = check_source("nsd", nsd, SourceParams(subjects=("subj01", "subj09")))
    assert report.inspection.problems == [
        f"base.source.subjects names ['subj09'], not found in '{nsd}'; found ['subj01']"
    ]


def test_nsd_pickled_captions_are_refused_not_loaded(nsd: Path, tmp_path: Path) -> None:
    """An object-array captions file would need unpickling: refused, named, nothing written."""
    captions = np.load(nsd / "COCO_73k_annots_curated.npy").astype(object)
    np.save(nsd / "COCO_73k_annots_curated.npy", captions, allow_pickle=True)
    with pytest.raises(DataError, match=r"COCO_73k_annots_curated\.npy.*pickled"):
        _import("nsd", nsd, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_nsd_nifti_betas_must_be_raw_int16(tmp_path: Path) -> None:
    """Dividing by 300 is right only for unscaled int16: a header scale or floats are named."""
    source = miniature.write_nsd_nifti(tmp_path / "nsd")
    path = source / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    path = path / "betas_session02.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    scaled = nib.Nifti1Image(data, img.affine)
    scaled.header.set_slope_inter(1 / 300, 0)
    nib.save(scaled, path)
    problems = check_source("nsd", source, SOURCE).inspection.problems
    assert any("session02.nii.gz' holds int16 values (scl_slope 0.00333" in p for p in problems)
    nib.save(nib.Nifti1Image(data / 300.0, img.affine), path)
    problems = check_source("nsd", source, SOURCE).inspection.problems
    assert any("holds float64 values" in p and "expected NSD's int16" in p for p in problems)


def test_nsd_wrong_layout_names_both_layouts(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "betas.h5").write_bytes(b"")
    report = check_source("nsd", tmp_path / "empty", SOURCE)
    assert not report.ok
    text = report.markdown()
    assert "betas_all_subj01_fp32_renorm.hdf5" in text and "betas_session01.nii.gz" in text
    assert "['betas.h5']" in text  # what was found


def test_nsd_missing_key(nsd: Path, tmp_path: Path) -> None:
    path = nsd / "betas_all_subj01_fp32_renorm.hdf5"
    with h5py.File(path, "w") as handle:
        handle["other"] = np.zeros((90, 40))
    with pytest.raises(DataError, match=r"expected key 'betas' .*found \['other'\]"):
        _import("nsd", nsd, tmp_path / "data")
    _nothing_left(tmp_path / "data")


def test_nsd_truncated_betas(nsd: Path, tmp_path: Path) -> None:
    _truncate(nsd / "betas_all_subj01_fp32_renorm.hdf5", 0.3)
    with pytest.raises(DataError, match=r"betas_all_subj01_fp32_renorm.hdf5.*truncated"):
        _import("nsd", nsd, tmp_path / "data")
    _nothing_left(tmp_path / "data")


def test_nsd_index_naming_rows_past_the_betas(nsd: Path) -> None:
    with h5py.File(nsd / "betas_all_subj01_fp32_renorm.hdf5", "w") as handle:
        handle["betas"] = np.zeros((50, 40), np.float32)  # the index names rows up to 89
    report = check_source("nsd", nsd, SOURCE)
    assert any("has 50 rows" in p for p in report.inspection.problems)


def test_nsd_truncated_index_shard(nsd: Path) -> None:
    _truncate(nsd / "wds/subj01/new_test/0.tar", 0.5)
    report = check_source("nsd", nsd, SOURCE)
    assert any("new_test/0.tar" in p and "truncated" in p for p in report.inspection.problems)


def test_nsd_nifti_grid_mismatch_and_missing_design_key(tmp_path: Path) -> None:
    source = miniature.write_nsd_nifti(tmp_path / "nsd")
    roi = source / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4)), roi)
    problems = check_source("nsd", source, SOURCE).inspection.problems
    assert any("betas_session01.nii.gz' has shape (5, 5, 4, 36)" in p for p in problems)
    design = source / "nsddata/experiments/nsd/nsd_expdesign.mat"
    mat = scipy.io.loadmat(design)
    scipy.io.savemat(design, {"masterordering": mat["masterordering"]})
    problems = check_source("nsd", source, SOURCE).inspection.problems
    assert any("expected keys ['subjectim', 'sharedix']" in p for p in problems)


# --------------------------------------------------------------------------- GOD


@pytest.fixture
def god(tmp_path: Path) -> Path:
    return miniature.write_god(tmp_path / "god")


def test_god_converts_with_held_out_categories(god: Path, tmp_path: Path) -> None:
    metrics = _import("god", god, tmp_path / "data")
    stimuli = _stimuli(tmp_path / "data")
    assert metrics["n_stimuli"] == 6 * 4 + 3
    test = stimuli[stimuli["split"] == "test"]
    assert len(test) == 3 and (test["held_out"] == 1).all()
    assert not set(test["category"]) & set(stimuli.loc[stimuli["split"] != "test", "category"])
    assert stimuli["caption"][0] == "a photo of a thing0"  # names from synset_words.txt
    assert stimuli["source_id"][0] == "n01000000_100"
    tb = open_trial_betas(tmp_path / "data", "sub-01")
    assert tb.shape == (6 * 4 + 3 * 5, 30)  # ROI_VC columns; the imagery sample is dropped
    assert tb.session[0] == "train-run-01"
    roi = _import("god", god, tmp_path / "v1", roi="ROI_V1")
    assert open_trial_betas(tmp_path / "v1", "sub-01").shape[1] == 15
    assert roi["n_samples"] == metrics["n_samples"]


def test_god_categories_sharing_a_synset_name_stay_apart(god: Path, tmp_path: Path) -> None:
    """Two wnids named alike (ImageNet's two 'crane's) must stay two categories."""
    lines = (god / "synset_words.txt").read_text().splitlines()
    held_out = lines[6].split()[0]  # the first test category
    lines[6] = f"{held_out} thing0, crane"  # named like the first training category
    (god / "synset_words.txt").write_text("\n".join(lines) + "\n")
    _import("god", god, tmp_path / "data")
    stimuli = _stimuli(tmp_path / "data")
    test = stimuli[stimuli["split"] == "test"]
    assert not set(test["category"]) & set(stimuli.loc[stimuli["split"] != "test", "category"])
    assert f"thing0 ({held_out})" in set(test["category"])
    categories = pd.read_csv(tmp_path / "data/stimuli/categories.tsv", sep="\t")
    assert len(categories) == 9 and categories["held_out"].sum() == 3


def test_god_missing_metadata_key(god: Path, tmp_path: Path) -> None:
    with h5py.File(god / "Subject1.h5", "a") as handle:
        keys = [k.decode() for k in handle["metadata/key"][()]]
        keys[keys.index("stimulus_id")] = "stimulus"
        del handle["metadata/key"]
        handle["metadata/key"] = np.array(keys, dtype="S")
    with pytest.raises(
        DataError,
        match=r"expected metadata key 'stimulus_id' \(older files: 'Label'\) in '.*Subject1.h5'",
    ):
        _import("god", god, tmp_path / "data")


def test_god_older_files_name_the_stimulus_label(tmp_path: Path) -> None:
    """BrainDecoderToolbox2-era files call the stimulus column 'Label': same conversion."""
    current = _import("god", miniature.write_god(tmp_path / "h5"), tmp_path / "a")
    older = miniature.write_god(tmp_path / "old", stimulus_key="Label")
    assert _import("god", older, tmp_path / "b") | {"seconds": 0} == current | {"seconds": 0}
    pd.testing.assert_frame_equal(_stimuli(tmp_path / "a"), _stimuli(tmp_path / "b"))


def test_god_metadata_columns_disagree_with_the_dataset(god: Path) -> None:
    with h5py.File(god / "Subject1.h5", "a") as handle:
        value = handle["metadata/value"][()]
        del handle["metadata/value"]
        handle["metadata/value"] = value[:, 1:]
    problems = check_source("god", god, SOURCE).inspection.problems
    assert any("metadata/value has shape (6, 32)" in p and "33 columns" in p for p in problems)


def test_god_missing_images_are_listed(god: Path) -> None:
    for path in (god / "images" / "test").iterdir():
        path.unlink()
    problems = check_source("god", god, SOURCE).inspection.problems
    assert any("3 test image(s) missing" in p and "images/test/n0" in p for p in problems)


def test_god_test_category_seen_in_training_fails_the_suite(god: Path, tmp_path: Path) -> None:
    first = sorted((god / "images" / "training").iterdir())[0]
    with h5py.File(god / "Subject1.h5", "a") as handle:
        data = handle["dataset"][()]
        train_label = data[0, -1]
        data[data[:, -3] == 2, -1] = np.floor(train_label) + 0.0009  # same category
        handle["dataset"][...] = data
    Image.open(first).save(god / "images" / "test" / "n01000000_900.JPEG")
    with pytest.raises(ValidationError, match=r"column 'category'.*where split == 'test'"):
        _import("god", god, tmp_path / "data")


def test_god_unreadable_image_leaves_nothing(god: Path, tmp_path: Path) -> None:
    """Inspection sees the file; conversion cannot read it: the error names it, no output."""
    path = sorted((god / "images" / "training").iterdir())[3]
    path.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=rf"cannot read GOD image '.*{path.name}'"):
        _import("god", god, tmp_path / "data")
    _nothing_left(tmp_path / "data")


# --------------------------------------------------------------------------- CC2017


@pytest.fixture
def cc2017(tmp_path: Path) -> Path:
    return miniature.write_cc2017(tmp_path / "cc")


def test_cc2017_converts_both_paradigms(cc2017: Path, tmp_path: Path) -> None:
    metrics = _import("cc2017", cc2017, tmp_path / "data")
    data = tmp_path / "data"
    assert metrics["n_clips"] == 5 * 6 and metrics["n_test_clips"] == 12
    tb = open_trial_betas(data, "sub-01")
    assert tb.shape == (3 * 6 * 2 + 2 * 6 * 3, 60)  # cortex only: 2 x 30 vertices
    run = nib.load(cc2017 / "subject1/fmri/seg1/cifti/seg1_2_Atlas.dtseries.nii")
    kept = np.asarray(run.dataobj)[2:8, :60]  # 12 volumes: 2 leading and 4 trailing dropped
    np.testing.assert_allclose(tb.rows(slice(6, 12)), detrend(kept.astype(float)), atol=1e-4)
    assert tb.session[6] == "seg1-rep-02"
    video = data / "video"
    assert recorded_dataset(video) == "cc2017"
    np.testing.assert_array_equal(open_trial_betas(video, "sub-01").stim, tb.stim)
    clips = _stimuli(video)
    assert load_video(video, clips["file"][0]).shape == (16, 16, 16, 3)  # 2 s at 8 FPS
    keyframes = _stimuli(data)
    assert (keyframes["split"] == clips["split"]).all()
    assert clips.loc[clips["split"] == "test", "source_id"].str.startswith("test").all()


def test_cc2017_runs_in_repeat_order_and_odd_names(tmp_path: Path) -> None:
    """test1_10 comes after test1_9 (not after test1_1); a run without a repeat is named."""
    source = miniature.write_cc2017(tmp_path / "cc", n_test_segments=1, test_repeats=10)
    _import("cc2017", source, tmp_path / "data")
    tb = open_trial_betas(tmp_path / "data", "sub-01")
    test = [s for s in dict.fromkeys(tb.session) if s.startswith("test1")]
    assert test == [f"test1-rep-{r:02d}" for r in range(1, 11)]
    folder = source / "subject1/fmri/seg1/cifti"
    (folder / "seg1_1_Atlas.dtseries.nii").rename(folder / "seg1_1b_Atlas.dtseries.nii")
    problems = check_source("cc2017", source, SOURCE).inspection.problems
    assert any("['seg1_1b_Atlas.dtseries.nii']" in p and "seg1_<repeat>" in p for p in problems)


def test_cc2017_vertex_mismatch_and_bad_volume_count(cc2017: Path) -> None:
    path = cc2017 / "subject1/fmri/seg2/cifti/seg2_1_Atlas.dtseries.nii"
    img = nib.load(path, mmap=False)  # the file is rewritten below
    series, models = img.header.get_axis(0), img.header.get_axis(1)
    nib.save(nib.Cifti2Image(np.asarray(img.dataobj)[:, 1:], header=(series, models[1:])), path)
    problems = check_source("cc2017", cc2017, SOURCE).inspection.problems
    assert any("has 59 cortical vertices" in p and "60" in p for p in problems)
    path = cc2017 / "subject1/fmri/seg1/cifti/seg1_1_Atlas.dtseries.nii"
    img = nib.load(path, mmap=False)
    short = nib.cifti2.SeriesAxis(0.0, 2.0, 8, "SECOND")
    nib.save(
        nib.Cifti2Image(np.asarray(img.dataobj)[:8], header=(short, img.header.get_axis(1))), path
    )
    problems = check_source("cc2017", cc2017, SOURCE).inspection.problems
    assert any("has 8 volumes; expected 11 or 12" in p for p in problems)


def test_cc2017_missing_frames_and_truncated_run(cc2017: Path, tmp_path: Path) -> None:
    for frame in (cc2017 / "stimuli/frames/test2").iterdir():
        frame.unlink()
    problems = check_source("cc2017", cc2017, SOURCE).inspection.problems
    assert any("stimuli/frames/test2/im-1.jpg" in p and "found 0" in p for p in problems)
    fresh = miniature.write_cc2017(tmp_path / "cc2")
    _truncate(fresh / "subject1/fmri/test1/cifti/test1_3_Atlas.dtseries.nii", 0.6)
    with pytest.raises(DataError, match=r"test1_3_Atlas.dtseries.nii.*truncated"):
        _import("cc2017", fresh, tmp_path / "data")
    _nothing_left(tmp_path / "data")


# --------------------------------------------------------------------------- BIDS


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    return miniature.write_bids(tmp_path / "lab", n_images=18, n_runs=3)


def test_bids_converts_to_the_internal_raw_layout(lab: Path, tmp_path: Path) -> None:
    from mindpipe.io import bids

    _import("bids", lab, tmp_path / "data", test_fraction=0.2)
    data = tmp_path / "data"
    runs = bids.discover_runs(data, "sub-01")
    assert [r.name for r in runs] == [f"sub-01_ses-01_task-vision_run-{i:02d}" for i in (1, 2, 3)]
    assert (
        runs[0].bold.stat().st_ino
        == (lab / "sub-01/func/sub-01_task-vision_run-1_bold.nii.gz").stat().st_ino
    )
    assert bids.read_sidecar_tr(runs[0].sidecar) == 2.0  # inherited from task-vision_bold.json
    events = bids.read_events(runs[0])
    assert len(events) == 18 and set(events["trial_type"]) == {"stimulus"}  # fixations dropped
    stimuli = _stimuli(data)
    assert set(stimuli["category"]) == {"face", "house", "tool"}
    assert (stimuli["split"] == "test").sum() == 4
    assert bids.load_mask(data, "sub-01").sum() > 0  # nilearn's EPI brain mask
    assert (data / "sub-01/anat/sub-01_T1w.nii.gz").is_file()  # kept for the align stage


def test_bids_errors(lab: Path) -> None:
    (lab / "task-vision_bold.json").unlink()
    problems = check_source("bids", lab, SOURCE).inspection.problems
    assert any("no RepetitionTime" in p and "task-vision_bold.json" in p for p in problems)
    (lab / "task-vision_bold.json").write_text(json.dumps({"RepetitionTime": 1.5}))
    problems = check_source("bids", lab, SOURCE).inspection.problems
    assert any("TR mismatch" in p and "header pixdim[4] says 2 s" in p for p in problems)
    (lab / "task-vision_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    mask = check_source("bids", lab, SourceParams(roi="masks/{subject}_mask.nii.gz"))
    assert any("mask (base.source.roi) not found" in p for p in mask.inspection.problems)
    events = lab / "sub-01/func/sub-01_task-vision_run-2_events.tsv"
    table = pd.read_csv(events, sep="\t")
    table.drop(columns="stim_file").to_csv(events, sep="\t", index=False)
    report = check_source("bids", lab, SOURCE)
    assert any("lacks required column(s) ['stim_file']" in p for p in report.inspection.problems)
    table.to_csv(events, sep="\t", index=False)
    (lab / "sub-01/anat/sub-01_T1w.nii.gz").unlink()
    problems = check_source("bids", lab, SOURCE).inspection.problems
    assert any("sub-01: no T1w image, which the align stage registers" in p for p in problems)


def test_bids_truncated_bold_is_named_and_leaves_nothing(lab: Path, tmp_path: Path) -> None:
    """The header reads (inspection passes); the EPI mask's data read fails, naming the run."""
    _truncate(lab / "sub-01/func/sub-01_task-vision_run-1_bold.nii.gz", 0.5)
    with pytest.raises(DataError, match=r"BOLD '.*sub-01_task-vision_run-1_bold.nii.gz'.*trunc"):
        _import("bids", lab, tmp_path / "data")
    _nothing_left(tmp_path / "data")


# --------------------------------------------------------------------------- params, registry


def test_params_select_the_dataset_and_name_bad_keys() -> None:
    base = parse_section(BaseParams, {"dataset": "god", "source": {"dir": "/x"}}, "base")
    assert base.dataset == "god" and base.source.dir == "/x" and base.source.val_fraction == 0.1
    with pytest.raises(ParamsError, match=r"'dataset' must be one of .*got 'nds' \(base.dataset\)"):
        parse_section(BaseParams, {"dataset": "nds"}, "base")
    with pytest.raises(ParamsError, match=r"base.source.folder: unknown key"):
        parse_section(BaseParams, {"source": {"folder": "/x"}}, "base")
    with pytest.raises(ParamsError, match=r"base.source.val_fraction"):
        parse_section(BaseParams, {"source": {"val_fraction": 1.5}}, "base")


def test_adapter_routes_agree_with_the_stages() -> None:
    """preprocess/validate_raw route by BETAS_DATASETS; each adapter declares its route."""
    from mindpipe.io.trials import BETAS_DATASETS

    kinds = ("nsd", "god", "cc2017", "bids")
    betas = {k for k in kinds if get_adapter(k).route == "betas"}
    assert betas == set(BETAS_DATASETS)
    assert {get_adapter(k).route for k in kinds} == {"betas", "bold"}


def test_unknown_kind_and_missing_source() -> None:
    with pytest.raises(ParamsError, match="supported: bids, cc2017, god, nsd"):
        get_adapter("hcp")
    with pytest.raises(ParamsError, match=r"base\.source\.dir is not set"):
        check_source("god", None, SOURCE)
