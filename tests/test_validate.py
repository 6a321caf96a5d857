"""mindpipe.validate: the validate_raw stage and the betas gate (Great Expectations)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fakes import write_fake_dataset
from mindpipe.exceptions import DataError, ValidationError
from mindpipe.params import BaseParams
from mindpipe.validate import ValidateRawParams, check_betas_summary, validate_raw

FUNC = Path("sub-01") / "func"
RUN1 = "sub-01_ses-01_task-images_run-01"
RUN2 = "sub-02_ses-02_task-images_run-02"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_fake_dataset(tmp_path / "data", n_subjects=2)
    return tmp_path / "data"


def _validate(data: Path, out: Path, **params: object) -> dict[str, float]:
    return validate_raw(
        data_dir=data, out_dir=out, params=ValidateRawParams(**params), base=BaseParams()
    )


def _edit_tsv(path: Path, edit: Callable[[pd.DataFrame], None]) -> None:
    table = pd.read_csv(path, sep="\t")
    edit(table)
    table.to_csv(path, sep="\t", index=False)


def test_validate_raw_passes(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    metrics = _validate(data, out)
    assert metrics["n_subjects"] == 2
    assert metrics["n_runs"] == 8
    assert metrics["n_events"] == 2 * 48
    assert metrics["n_failed"] == 0
    assert metrics["n_expectations"] > 20
    report = json.loads((out / "report.json").read_text())
    assert report["success"] is True
    assert len(report["expectations"]) == metrics["n_expectations"]
    assert (out / "report.md").read_text().startswith("# validate_raw: PASSED")


def test_structural_problems_are_all_reported(data: Path, tmp_path: Path) -> None:
    bold = data / FUNC / f"{RUN1}_bold.nii.gz"
    bold.write_bytes(bold.read_bytes()[: bold.stat().st_size // 2])
    events = data / "sub-02" / "func" / f"{RUN2}_events.tsv"
    events.unlink()
    sidecar = data / FUNC / "sub-01_ses-02_task-images_run-01_bold.json"
    sidecar.write_text(json.dumps({"RepetitionTime": 1.0}))
    out = tmp_path / "out"
    with pytest.raises(DataError, match="3 structural problem") as info:
        _validate(data, out)
    assert not isinstance(info.value, ValidationError)
    msg = str(info.value)
    assert re.search(f"{re.escape(str(bold))}.*truncated", msg)
    assert f"expected '{events}'" in msg
    assert "TR mismatch" in msg and str(sidecar) in msg
    report = json.loads((out / "report.json").read_text())
    assert report["success"] is False and len(report["structural_problems"]) == 3


def test_read_data_false_skips_decompression(data: Path, tmp_path: Path) -> None:
    bold = data / FUNC / f"{RUN1}_bold.nii.gz"
    bold.write_bytes(bold.read_bytes()[: int(bold.stat().st_size * 0.9)])
    _validate(data, tmp_path / "quick", read_data=False)
    with pytest.raises(DataError, match="truncated"):
        _validate(data, tmp_path / "full")


def test_nan_and_mask_grid_are_structural(data: Path, tmp_path: Path) -> None:
    mask = data / FUNC / "sub-01_desc-visual_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.eye(4)), mask)
    with pytest.raises(DataError, match=r"1 structural problem.*\n.*mask grid does not match"):
        _validate(data, tmp_path / "out")


def _set_event(column: str, value: object, row: int = 0) -> Callable[[Path], None]:
    def corrupt(data: Path) -> None:
        def edit(t: pd.DataFrame) -> None:
            t[column] = t[column].astype(object)
            t.loc[row, column] = value

        _edit_tsv(data / FUNC / f"{RUN1}_events.tsv", edit)

    return corrupt


def _set_stimulus(column: str, row: int, value: object) -> Callable[[Path], None]:
    def corrupt(data: Path) -> None:
        def edit(t: pd.DataFrame) -> None:
            t[column] = t[column].astype(object)
            t.loc[row, column] = value

        _edit_tsv(data / "stimuli" / "stimuli.tsv", edit)

    return corrupt


def _late(data: Path) -> None:
    def edit(t: pd.DataFrame) -> None:
        t.loc[t.index[-1], "onset"] = 1e4

    _edit_tsv(data / FUNC / f"{RUN1}_events.tsv", edit)


@pytest.mark.parametrize(
    ("corrupt", "pattern"),
    [
        (
            _set_event("stim_id", 999),
            r"\[events\] column 'stim_id': expect_column_values_to_be_in_set\(value_set=<18 "
            rf"values>\) failed: 1 of 96 rows unexpected: 999 x1; in {RUN1}_events.tsv",
        ),
        (
            _late,
            r"\[events\] column 'run_length,end': expect_column_pair_values_a_to_be_greater_than_b"
            rf"\(or_equal=True\) failed: 1 of 96 rows unexpected: \(92.0, 10002.0\) x1; in {RUN1}",
        ),
        (
            _set_event("onset", 200.0, row=1),
            r"column 'onset_increment': expect_column_values_to_be_between\(min_value=0.*"
            rf"strict_min=True\) failed: 1 of 96 rows unexpected.*in {RUN1}_events.tsv",
        ),
        (_set_event("onset", -2.0), r"column 'onset': expect_column_values_to_be_between.*-2.0"),
        (_set_event("duration", 0.0), r"column 'duration': .*strict_min=True.*0.0 x1"),
        (_set_event("trial_type", "blank"), r"column 'trial_type': .*'blank' x1"),
        (
            _set_stimulus("stim_id", 1, 0),
            r"\[stimuli\] column 'stim_id': expect_column_values_to_be_unique.*0 x2",
        ),
        (_set_stimulus("split", 0, "dev"), r"\[stimuli\] column 'split': .*'dev' x1; in 0"),
        (
            _set_stimulus("category", 0, "star"),
            r"\[stimuli\] column 'category': expect_column_values_to_not_be_in_set\(value_set="
            r"\['star'\]\) where split != 'test' failed: 1 of 15 rows unexpected: "
            r"'star' x1; in 0",
        ),
        (_set_stimulus("held_out", 17, 2), r"column 'held_out': .*2 x1; in 17"),
        (
            _set_stimulus("split", 17, "train"),
            r"column 'split': .*\) where held_out == 1 failed: 1 of 3 rows unexpected: 'train'",
        ),
    ],
)
def test_expectation_failures_are_readable(
    data: Path, tmp_path: Path, corrupt: Callable[[Path], None], pattern: str
) -> None:
    corrupt(data)
    out = tmp_path / "out"
    with pytest.raises(ValidationError, match=pattern) as info:
        _validate(data, out)
    assert str(info.value).startswith(f"raw dataset '{data}': ")
    report = json.loads((out / "report.json").read_text())
    assert report["success"] is False
    assert report["counts"]["n_failed"] >= 1
    assert "FAILED" in (out / "report.md").read_text()


def test_missing_image_file(data: Path, tmp_path: Path) -> None:
    (data / "stimuli" / "images" / "stim-00004.png").unlink()
    with pytest.raises(ValidationError, match=r"column 'file_exists'.*False x1; in 4"):
        _validate(data, tmp_path / "out")
    _validate(data, tmp_path / "out2", check_image_files=False)


def _summary(**changes: object) -> pd.DataFrame:
    rows = []
    for sub in ("sub-01", "sub-02"):
        for split, n in (("train", 90), ("val", 3), ("test", 3)):
            rows.append(
                {"subject": sub, "split": split, "n_rows": n, "n_voxels": 20, "n_nonfinite": 0,
                 "mean": 0.0, "std": 1.0 if split == "train" else 0.8, "min": -3.0, "max": 3.0,
                 "tr": 2.0, "expected_rows": n}
            )  # fmt: skip
    table = pd.DataFrame(rows)
    for key, value in changes.items():
        column, row = key.rsplit("__", 1)
        table[column] = table[column].astype(object) if isinstance(value, str) else table[column]
        table.loc[int(row), column] = value
    return table


def test_betas_gate_passes() -> None:
    checks = check_betas_summary(_summary())
    assert checks and all(c.success for c in checks)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"n_nonfinite__1": 5}, r"column 'n_nonfinite'.*5 x1; in sub-01 val"),
        (
            {"n_rows__3": 89},
            r"column 'n_rows,expected_rows': expect_column_pair_values_to_be_equal"
            r".*in sub-02 train",
        ),
        ({"n_voxels__0": 0}, r"column 'n_voxels'.*min_value=1.*in sub-01 train"),
        ({"std__4": 7.5}, r"column 'std'.*max_value=2.0.*7.5 x1; in sub-02 val"),
        (
            {"tr__5": 1.5},
            r"column 'tr': expect_column_unique_value_count_to_be_between.*observed 2",
        ),
        (
            {"n_rows__0": 0, "expected_rows__0": 0},
            r"column 'n_rows'.*\(min_value=1.0\) where split == 'train' failed.*in sub-01 train",
        ),
    ],
)
def test_betas_gate_failures(changes: dict, pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern) as info:
        check_betas_summary(_summary(**changes))
    assert str(info.value).startswith("betas gate (preprocess summary.tsv): ")


def test_betas_gate_missing_column() -> None:
    with pytest.raises(ValidationError, match=r"column 'std': expect_column_to_exist.*missing"):
        check_betas_summary(_summary().drop(columns="std"))


def test_great_expectations_is_imported_lazily() -> None:
    code = (
        "import sys, mindpipe.validate, mindpipe.preprocess, mindpipe.io;"
        "print('great_expectations' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_validate_raw_on_tiny_twin(twin_tiny: Path, tmp_path: Path) -> None:
    metrics = _validate(twin_tiny, tmp_path / "out")
    assert metrics["n_failed"] == 0
    assert metrics["n_subjects"] == len(list(twin_tiny.glob("sub-*")))


def test_data_check_prints_the_report_and_writes_nothing(twin_tiny, tmp_path, capsys):
    from mindpipe.cli import main

    before = sorted(p.name for p in twin_tiny.rglob("*"))
    assert main(["data", "check", str(twin_tiny), "--params", str(tmp_path / "none.yaml")]) == 0
    assert "validate_raw: PASSED" in capsys.readouterr().out
    assert sorted(p.name for p in twin_tiny.rglob("*")) == before


def test_data_check_names_what_is_missing(twin_tiny, tmp_path, capsys):
    import shutil

    from mindpipe.cli import main

    broken = tmp_path / "data"
    shutil.copytree(twin_tiny, broken)
    events = sorted(broken.rglob("*_events.tsv"))[0]
    events.unlink()
    assert main(["data", "check", str(broken), "--params", str(tmp_path / "none.yaml")]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and events.name in captured.out + captured.err
