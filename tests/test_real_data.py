"""Each real-data adapter end to end: a miniature release in the real layout goes through
``mindpipe data check``, ``mindpipe data import`` and the tiny DAG's stages via the CLI.

The stages are those of the image decoders (validate_raw -> preprocess -> mlip -> features ->
baseline, oracle, litemind -> reconstruct -> evaluate); CC2017's video paradigm also goes
through NeuroClips (marked slow). Models are the tiny presets, trimmed further: a few seconds
per dataset once the libraries are imported.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fakes import TINY_MODELS, write_params
from mindpipe.align.resample import Grid
from mindpipe.cli import ensure_data, main
from mindpipe.exceptions import DataError
from mindpipe.io.adapters import miniature
from mindpipe.params import BaseParams, SourceParams

DECODING = (
    "validate_raw",
    "preprocess",
    "align",
    "mlip",
    "features",
    "baseline",
    "oracle",
    "litemind",
    "mindtuner",
    "wills",
    "reconstruct",
    "reconstruct_fewshot",
    "evaluate",
)
FAST = {  # the tiny presets, trimmed further (each section replaces params.yaml's whole)
    "mlip": {**TINY_MODELS["mlip"], "epochs": 2},
    "litemind": {**TINY_MODELS["litemind"], "train": {"epochs": 3}},
    "reconstruct": {"steps": 5, "batch_size": 8, "sample_steps": 2, "grid_images": 2},
    "evaluate": {"image_extractors": []},
    "align": {"registration_mm": 4.0},  # MNI152 at 2 mm registers ~8x faster at 4 mm
}


@pytest.fixture(autouse=True)
def _tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")


def _project(
    tmp_path: Path,
    kind: str,
    write: Callable[[Path], Path],
    preprocess: dict | None = None,
) -> Path:
    """A release under ``tmp_path/release`` and a params.yaml pointing at it."""
    source = write(tmp_path / "release")
    base = {"dataset": kind, "source": {"dir": str(source), "image_size": 16}}
    sections = {**FAST, "preprocess": preprocess or {}}
    return write_params(tmp_path, Path("data"), base=base, **sections)


def _run(stages: tuple[str, ...]) -> None:
    for stage in stages:
        assert main(["stage", stage]) == 0, stage


def _metrics(stage: str) -> dict[str, float]:
    return json.loads(Path(f"artifacts/{stage}/metrics.json").read_text())


def _check_decoding_outputs(n_subjects: int = 1, anatomy: bool = False) -> dict[str, float]:
    summary = pd.read_csv("artifacts/preprocess/summary.tsv", sep="\t")
    assert len(summary) == 3 * n_subjects
    assert (summary["n_rows"] == summary["expected_rows"]).all()
    assert _metrics("oracle") == {"available": 0.0}  # no twin ground truth on real data
    assert _metrics("align")["available"] == float(anatomy)  # betas come without a T1w
    for stage in ("mindtuner", "wills"):  # one subject: no other subjects to learn from
        assert _metrics(stage) == {"available": 0.0}
        assert "at least 2 subjects" in Path(f"artifacts/{stage}/results.md").read_text()
    assert _metrics("reconstruct_fewshot") == {"available": 0.0}  # so nothing to render
    metrics = _metrics("evaluate")
    for key in ("ridge.brain_to_image", "litemind.brain_to_image", "mindeye_mlp.image_to_brain"):
        assert math.isfinite(metrics[key]), key
    assert "| litemind |" in Path("artifacts/evaluate/report.md").read_text()
    return metrics


def test_nsd_mindeye2_release_through_the_dag(tmp_path: Path, capsys) -> None:
    _project(tmp_path, "nsd", miniature.write_nsd_mindeye)
    assert main(["data", "check"]) == 0
    assert "# data check (nsd): PASSED" in capsys.readouterr().out
    assert main(["data", "import"]) == 0
    assert main(["data", "import"]) == 1  # data/ exists: never replaced silently
    assert "pass --force" in capsys.readouterr().err
    assert main(["data", "check", "data"]) == 0  # the converted folder: the validate_raw gate
    assert "# validate_raw: PASSED" in capsys.readouterr().out
    _run(DECODING)
    metrics = _check_decoding_outputs()
    assert "litemind.zero_shot_top1" not in metrics  # no held-out categories in NSD
    assert np.load("artifacts/preprocess/sub-01/betas_test.npy").shape[0] == 6  # 3 reps averaged


@pytest.mark.slow  # the NIfTI route shares everything after inspection with MindEye2's
def test_nsd_nifti_release_through_the_dag(tmp_path: Path) -> None:
    _project(tmp_path, "nsd", miniature.write_nsd_nifti)
    assert main(["data", "import"]) == 0
    _run(DECODING)
    _check_decoding_outputs()
    meta = json.loads(Path("artifacts/preprocess/sub-01/meta.json").read_text())
    assert meta["grid"]["shape"] == [5, 5, 4]


def test_god_release_through_the_dag_with_zero_shot(tmp_path: Path) -> None:
    _project(tmp_path, "god", miniature.write_god, {"min_ncsnr": None, "n_voxels": None})
    assert main(["data", "import"]) == 0
    _run(DECODING)
    metrics = _check_decoding_outputs()
    assert metrics["litemind.zero_shot_chance"] == pytest.approx(1 / 9)  # 6 seen + 3 held out
    assert metrics["litemind.zero_shot_novel_chance"] == pytest.approx(1 / 3)  # GOD's protocol
    assert 0.0 <= metrics["litemind.zero_shot_top1"] <= 1.0


@pytest.mark.slow
def test_cc2017_release_through_the_dag(tmp_path: Path) -> None:
    _project(tmp_path, "cc2017", miniature.write_cc2017)
    assert main(["data", "import"]) == 0
    _run(DECODING)
    _check_decoding_outputs()
    clips = np.load("artifacts/preprocess/video/sub-01/stim_test.npy")
    assert clips.size == 12  # 2 test segments x 6 clips, 3 repeats averaged


@pytest.mark.slow
def test_cc2017_video_paradigm_through_neuroclips(tmp_path: Path) -> None:
    _project(tmp_path, "cc2017", miniature.write_cc2017)
    assert main(["data", "import"]) == 0
    _run(("validate_raw", "preprocess", "mlip", "features", "litemind", "reconstruct"))
    assert main(["stage", "neuroclips"]) == 0
    recon = np.load("artifacts/neuroclips/videos/sub-01/reconstructions.npz")
    assert recon["neuroclips"].shape[1:] == (16, 16, 16, 3)  # 16 frames, 8 FPS, 16 px


def test_lab_bids_dataset_through_the_glm_and_the_dag(tmp_path: Path) -> None:
    _project(tmp_path, "bids", miniature.write_bids)
    assert main(["data", "import"]) == 0
    _run(DECODING)
    _check_decoding_outputs(anatomy=True)
    meta = json.loads(Path("artifacts/preprocess/sub-01/meta.json").read_text())
    assert meta["glm"]["method"] == "lss" and meta["n_runs"] == 3
    # alignment to nilearn's MNI152: the template voxels land where the subject's scanner
    # space truly puts them (the miniature's T1w is MNI152 under a known mapping)
    alignment = json.loads(Path("artifacts/align/alignment.json").read_text())
    assert "MNI152" in alignment["template"]
    grid = Grid(tuple(alignment["grid"]["shape"]), np.asarray(alignment["grid"]["affine"]))
    template_mm = grid.centres(np.load("artifacts/align/sub-01/voxel_index.npy"))
    subject_mm = np.load("artifacts/align/sub-01/template_to_subject_mm.npy")
    truth = miniature.bids_scanner_to_mni(0, 0)
    error = np.linalg.norm(subject_mm @ truth[:3, :3].T + truth[:3, 3] - template_mm, axis=1)
    before = np.linalg.norm(template_mm @ truth[:3, :3].T + truth[:3, 3] - template_mm, axis=1)
    assert error.mean() < 1.5 < 5 < before.mean()  # mm; the BOLD voxels are 3 mm


def test_data_check_prints_what_is_missing(tmp_path: Path, capsys) -> None:
    source = miniature.write_god(tmp_path / "god")
    (source / "Subject1.h5").unlink()
    assert main(["data", "check", "--dataset", "god", str(source)]) == 1
    captured = capsys.readouterr()
    assert "# data check (god): FAILED" in captured.out
    assert "expected bdpy files 'Subject1.h5'" in captured.out
    assert "not ready to import" in captured.err


def test_run_imports_a_missing_dataset(tmp_path: Path) -> None:
    source = miniature.write_god(tmp_path / "god")
    base = BaseParams(
        dataset="god", data_dir="data", source=SourceParams(dir=str(source), image_size=16)
    )
    ensure_data(base)
    assert (tmp_path / "data" / "sub-01" / "betas" / "sub-01_betas.npy").is_file()
    ensure_data(base)  # present and of the right kind: left alone
    with pytest.raises(DataError, match="records 'god'"):
        ensure_data(BaseParams(dataset="nsd", data_dir="data"))
    assert os.listdir(tmp_path / "data")
