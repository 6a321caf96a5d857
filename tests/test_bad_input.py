"""Bad input through the CLI: a clear error naming the file or param, exit 1, no outputs."""

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from mindpipe.cli import main

ROOT = Path(__file__).resolve().parents[1]
RUN = "sub-01/func/sub-01_ses-01_task-images_run-01"


def truncate_bold(data: Path) -> str:
    path = data / f"{RUN}_bold.nii.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) * 6 // 10])
    return path.name


def drop_volumes(data: Path) -> str:
    """A run too short for its events (shape disagrees with events.tsv)."""
    path = data / f"{RUN}_bold.nii.gz"
    img = nib.load(path)
    short = nib.Nifti1Image(np.asarray(img.dataobj)[..., :20], img.affine, img.header)
    nib.save(short, path)
    return f"{Path(RUN).name}_events.tsv"


def wrong_tr(data: Path) -> str:
    path = data / f"{RUN}_bold.json"
    path.write_text(json.dumps({"RepetitionTime": 1.5, "TaskName": "images"}))
    return path.name


def nan_values(data: Path) -> str:
    path = data / f"{RUN}_bold.nii.gz"
    img = nib.load(path)
    values = np.asarray(img.dataobj, dtype=np.float32)
    values[5, 5, 5, :3] = np.nan
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(values, img.affine, header), path)
    return path.name


def missing_events(data: Path) -> str:
    (data / f"{RUN}_events.tsv").unlink()
    return f"{Path(RUN).name}_events.tsv"


def not_gzip(data: Path) -> str:
    path = data / f"{RUN}_bold.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a NIfTI file"))
    return path.name


CORRUPTIONS = [truncate_bold, drop_volumes, wrong_tr, nan_values, missing_events, not_gzip]


@pytest.fixture
def project(tmp_path, twin_tiny, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(twin_tiny, data)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(profile="tiny", data_dir="data")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")
    return tmp_path


def assert_nothing_written(project: Path, stage: str) -> None:
    artifacts = project / "artifacts"
    assert not (artifacts / stage).exists()
    assert not list(artifacts.glob(f".{stage}*")), "temporary output left behind"


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("stage", ["validate_raw", "preprocess"])
def test_corrupt_input_is_named_and_nothing_is_written(project, capsys, corrupt, stage):
    if stage == "preprocess":  # the gate passed earlier; preprocess must still refuse bad data
        (project / "artifacts" / "validate_raw").mkdir(parents=True)
    culprit = corrupt(project / "data")
    assert main(["stage", stage]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mindpipe: error:")
    assert culprit in err
    assert_nothing_written(project, stage)


def test_unknown_param_names_section_and_key(project, capsys):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["preprocess"]["min_ncsnrr"] = 0.1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["stage", "validate_raw"]) == 1  # every stage checks the whole file first
    assert "preprocess.min_ncsnrr: unknown key" in capsys.readouterr().err
    assert_nothing_written(project, "validate_raw")


def test_console_script_exits_non_zero(project):
    missing_events(project / "data")
    result = subprocess.run(
        [sys.executable, "-m", "mindpipe.cli", "stage", "validate_raw"],
        capture_output=True,
        text=True,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlruns.db", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "_events.tsv" in result.stderr
    assert "Traceback" not in result.stderr
