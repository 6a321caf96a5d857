"""mindpipe.io.bids: discovery, loading, and one precise DataError per kind of bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fakes import write_fake_dataset
from mindpipe.exceptions import DataError
from mindpipe.io import bids


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    """A one-subject fake dataset (2 sessions x 2 runs) under ``tmp_path/data``."""
    write_fake_dataset(tmp_path / "data")
    return tmp_path / "data"


def _run(data: Path, index: int = 0) -> bids.Run:
    return bids.discover_runs(data, "sub-01")[index]


def _esc(path: Path) -> str:
    return re.escape(str(path))


def test_discovery_and_loading(fake: Path) -> None:
    assert bids.discover_subjects(fake) == ["sub-01"]
    runs = bids.discover_runs(fake, "sub-01")
    assert [(r.session, r.run) for r in runs] == [
        ("ses-01", 1),
        ("ses-01", 2),
        ("ses-02", 1),
        ("ses-02", 2),
    ]
    assert runs[0].name == "sub-01_ses-01_task-images_run-01"
    shape, affine, tr = bids.load_bold_header(runs[0])
    mask = bids.load_mask(fake, "sub-01", shape, affine)
    bold = bids.load_bold(runs[0], mask)
    assert bold.data.dtype == np.float32
    assert bold.data.shape == (shape[3], mask.sum())
    assert tr == bold.tr == 2.0
    assert bold.duration == shape[3] * 2.0
    full = bids.load_bold(runs[0])
    assert full.data.shape == shape
    np.testing.assert_array_equal(full.data[mask].T, bold.data)
    events = bids.read_events(runs[0])
    assert events["stim_id"].dtype == np.int64
    stimuli = bids.read_stimuli(fake)
    bids.check_stimuli(stimuli)
    bids.check_events(events, runs[0].events, bold.duration, stimuli["stim_id"])


def test_missing_dataset_and_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset directory not found: .*nowhere"):
        bids.discover_subjects(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no subjects in .*empty.*sub-<label>"):
        bids.discover_subjects(tmp_path / "empty")


def test_subject_without_runs(fake: Path) -> None:
    for f in (fake / "sub-01" / "func").glob("*_bold.nii.gz"):
        f.unlink()
    with pytest.raises(DataError, match="sub-01: no functional runs"):
        bids.discover_runs(fake, "sub-01")


def test_badly_named_bold(fake: Path) -> None:
    src = next((fake / "sub-01" / "func").glob("*_bold.nii.gz"))
    bad = src.with_name("sub-01_task-images_run-01_bold.nii.gz")
    src.rename(bad)
    with pytest.raises(DataError, match=f"unexpected BOLD file name '{_esc(bad)}'"):
        bids.discover_runs(fake, "sub-01")


@pytest.mark.parametrize(
    ("suffix", "what"), [("_events.tsv", "events file"), ("_bold.json", "JSON sidecar")]
)
def test_missing_companion_names_expected_path(fake: Path, suffix: str, what: str) -> None:
    run = _run(fake)
    missing = run.bold.with_name(run.name + suffix)
    missing.unlink()
    with pytest.raises(DataError, match=f"missing {what} for .*: expected '{_esc(missing)}'"):
        bids.discover_runs(fake, "sub-01")


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_gzip(fake: Path, keep: float) -> None:
    run = _run(fake)
    blob = run.bold.read_bytes()
    run.bold.write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(DataError, match=f"{_esc(run.bold)}.*(truncated|corrupt)"):
        bids.load_bold(run)


def test_corrupt_header(fake: Path) -> None:
    run = _run(fake)
    run.bold.write_bytes(run.bold.read_bytes()[:40])  # not even a full header
    with pytest.raises(DataError, match=f"cannot read .*BOLD '{_esc(run.bold)}'"):
        bids.load_bold_header(run)
    run.bold.write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match=f"cannot read BOLD '{_esc(run.bold)}'"):
        bids.load_bold(run)


def test_bold_not_4d(fake: Path) -> None:
    run = _run(fake)
    nib.save(nib.Nifti1Image(np.ones((5, 5, 4), np.int16), np.eye(4)), run.bold)
    with pytest.raises(DataError, match=rf"{_esc(run.bold)}' must be 4D .*found shape \(5, 5, 4\)"):
        bids.load_bold(run)


def test_tr_mismatch(fake: Path) -> None:
    run = _run(fake)
    run.sidecar.write_text(json.dumps({"RepetitionTime": 1.5}))
    with pytest.raises(
        DataError, match=r"TR mismatch .*pixdim\[4\] says 2 s.*RepetitionTime says 1.5 s"
    ):
        bids.load_bold_header(run)


@pytest.mark.parametrize(
    ("content", "match"),
    [("{not json", "is not valid JSON"), ('{"TaskName": "x"}', "expected a positive number")],
)
def test_bad_sidecar(fake: Path, content: str, match: str) -> None:
    run = _run(fake)
    run.sidecar.write_text(content)
    with pytest.raises(DataError, match=f"{_esc(run.sidecar)}.*{match}|{match}"):
        bids.load_bold_header(run)


def test_time_unit_must_be_known(fake: Path) -> None:
    run = _run(fake)
    img = nib.load(run.bold)
    img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
    img.header.set_xyzt_units("mm", "unknown")
    nib.save(img, run.bold)
    with pytest.raises(DataError, match=r"time unit must be one of .*found 'unknown'"):
        bids.load_bold_header(run)


def test_nonfinite_values_are_counted(fake: Path) -> None:
    run = _run(fake)
    img = nib.load(run.bold)
    data = img.get_fdata(dtype=np.float32)
    data[2, 2, 2, :3] = np.nan
    data[2, 2, 1, 5] = np.inf
    out = nib.Nifti1Image(data, img.affine)
    out.header.set_xyzt_units("mm", "sec")
    out.header["pixdim"][4] = 2.0
    nib.save(out, run.bold)
    mask = bids.load_mask(fake, "sub-01")
    with pytest.raises(
        DataError, match=rf"{_esc(run.bold)}' holds 4 non-finite .*\(3 NaN, 1 inf\)"
    ):
        bids.load_bold(run, mask)


def test_events_past_end_of_run(fake: Path) -> None:
    run = _run(fake)
    shape, _, tr = bids.load_bold_header(run)
    events = bids.read_events(run)
    events.loc[events.index[-1], "onset"] = shape[3] * tr - 1.0
    with pytest.raises(DataError, match=f"{_esc(run.events)}': 1 event.* end after the run"):
        bids.check_events(events, run.events, shape[3] * tr)


def test_unknown_stim_id(fake: Path) -> None:
    run = _run(fake)
    table = pd.read_csv(run.events, sep="\t")
    table.loc[0, "stim_id"] = 999
    table.to_csv(run.events, sep="\t", index=False)
    stim_ids = bids.read_stimuli(fake)["stim_id"]
    with pytest.raises(
        DataError, match=rf"{_esc(run.events)}': 1 stim_id\(s\) not in stimuli.tsv: \[999\]"
    ):
        bids.check_events(bids.read_events(run), run.events, 1e9, stim_ids)


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        ("onset", -1.0, "onsets must be >= 0"),
        ("duration", 0.0, "durations must be > 0"),
        ("trial_type", "blank", r"trial_type must be one of \['stimulus'\]; found \['blank'\]"),
    ],
)
def test_bad_event_values(fake: Path, column: str, value: object, match: str) -> None:
    run = _run(fake)
    events = bids.read_events(run)
    events.loc[0, column] = value
    with pytest.raises(DataError, match=match):
        bids.check_events(events, run.events, 1e9)


def test_onsets_not_increasing(fake: Path) -> None:
    run = _run(fake)
    events = bids.read_events(run)
    events.loc[1, "onset"] = events.loc[0, "onset"]
    with pytest.raises(DataError, match="onsets must be strictly increasing; data row 1 "):
        bids.check_events(events, run.events, 1e9)


def test_missing_column_and_non_numeric(fake: Path) -> None:
    run = _run(fake)
    table = pd.read_csv(run.events, sep="\t", dtype=str)
    table.drop(columns="duration").to_csv(run.events, sep="\t", index=False)
    with pytest.raises(
        DataError, match=rf"{_esc(run.events)}' lacks required column\(s\) \['duration'\]"
    ):
        bids.read_events(run)
    table.loc[2, "onset"] = "soon"
    table.to_csv(run.events, sep="\t", index=False)
    with pytest.raises(
        DataError, match=r"column 'onset' must be numeric .*rows \[2\] \(0-based\): \['soon'\]"
    ):
        bids.read_events(run)


def test_stimuli_table_problems(fake: Path) -> None:
    path = fake / "stimuli" / "stimuli.tsv"
    table = pd.read_csv(path, sep="\t")
    table.drop(columns="split").to_csv(path, sep="\t", index=False)
    with pytest.raises(
        DataError, match=r"stimulus table .* lacks required column\(s\) \['split'\]"
    ):
        bids.read_stimuli(fake)
    table.loc[1, "stim_id"] = 0
    table.loc[2, "split"] = "dev"
    with pytest.raises(DataError, match=r"stim_id must be unique; duplicated \[0\]"):
        bids.check_stimuli(table, path)
    table.loc[1, "stim_id"] = 1
    with pytest.raises(DataError, match=r"split must be one of .*found \['dev'\]"):
        bids.check_stimuli(table, path)
    path.unlink()
    with pytest.raises(DataError, match=f"stimulus table not found: expected '{_esc(path)}'"):
        bids.read_stimuli(fake)


def test_mask_grid_mismatch(fake: Path) -> None:
    run = _run(fake)
    shape, affine, _ = bids.load_bold_header(run)
    path = bids.mask_path(fake, "sub-01")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), affine), path)
    with pytest.raises(
        DataError, match=r"mask grid does not match .*\(4, 4, 4\), BOLD has \(5, 5, 4\)"
    ):
        bids.load_mask(fake, "sub-01", shape, affine)
    nib.save(nib.Nifti1Image(np.ones(shape[:3], np.uint8), np.eye(4)), path)
    with pytest.raises(DataError, match="mask grid does not match the BOLD grid: affine"):
        bids.load_mask(fake, "sub-01", shape, affine)
    with pytest.raises(DataError, match=f"BOLD grid of '{_esc(run.bold)}' has affine"):
        bids.check_same_grid(run, shape, affine, shape, np.eye(4), path)


@pytest.mark.parametrize(
    ("values", "match"), [(0, "is empty"), (2, r"must hold only 0/1; found \[0.0, 2.0\]")]
)
def test_bad_mask_values(fake: Path, values: int, match: str) -> None:
    path = bids.mask_path(fake, "sub-01")
    mask = np.zeros((5, 5, 4), np.uint8)
    mask[2, 2, 2] = values
    nib.save(nib.Nifti1Image(mask, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    with pytest.raises(DataError, match=match):
        bids.load_mask(fake, "sub-01")


def test_missing_mask(fake: Path) -> None:
    path = bids.mask_path(fake, "sub-01")
    path.unlink()
    with pytest.raises(DataError, match=f"visual mask not found: expected '{_esc(path)}'"):
        bids.load_mask(fake, "sub-01")
