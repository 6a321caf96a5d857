"""The tiny twin through every stage, via the CLI, with MLflow tracking."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fakes import tiny_animatediff_components, write_params, write_tiny_animatediff
from mindpipe.cli import main
from mindpipe.stages import STAGES
from mindpipe.tracking import dataset_hash

ROOT = Path(__file__).resolve().parents[1]


def read_metrics(project: Path, stage: str) -> dict:
    return json.loads((project / "artifacts" / stage / "metrics.json").read_text())


def test_every_stage_writes_outputs_and_metrics(tiny_run):
    for stage in STAGES:
        folder = tiny_run / "artifacts" / stage.name
        assert (folder / "metrics.json").is_file(), stage.name
        for plot in stage.plots:
            assert (folder / plot).stat().st_size > 0
    assert not list((tiny_run / "artifacts").glob(".*tmp*")), "temporary folders left behind"


def test_ridge_beats_chance_and_oracle_beats_ridge(tiny_run):
    m = read_metrics(tiny_run, "evaluate")
    assert m["ridge.brain_to_image"] > 2 * m["ridge.chance"]
    assert m["oracle.brain_to_image"] > m["ridge.brain_to_image"]
    assert 0 < m["ridge.oracle_ratio.brain_to_image"] < 1
    assert "| ridge |" in (tiny_run / "artifacts/evaluate/report.md").read_text()


def test_runs_are_tracked_with_lineage(tiny_run, twin_tiny):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tiny_run}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("mindpipe").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(s.name for s in STAGES)
    evaluate = next(r for r in runs if r.info.run_name == "evaluate")
    tags = evaluate.data.tags
    assert tags["mindpipe.data_hash"] == dataset_hash(twin_tiny)
    assert tags["mindpipe.seed"] == "0"
    assert len(tags["mindpipe.params_hash"]) == 16
    assert tags["mindpipe.git_commit"]
    assert (
        evaluate.data.metrics["ridge.brain_to_image"]
        == read_metrics(tiny_run, "evaluate")["ridge.brain_to_image"]
    )


def test_mlip_learns_image_text_pairs(tiny_run):
    m = read_metrics(tiny_run, "mlip")
    chance = 1 / 24  # the tiny twin's test pairs
    for variant in ("clip", "mlip_r0.25"):
        assert m[f"{variant}.retrieval_i2t_top1"] > 3 * chance, variant
    assert (tiny_run / "artifacts/mlip/model/model.safetensors").is_file()


def test_neuroclips_writes_clips_at_the_requested_frames_and_fps(tiny_run):
    folder = tiny_run / "artifacts/neuroclips"
    recon = np.load(folder / "videos/sub-01/reconstructions.npz")
    n_test = len(recon["stim_id"])
    for variant in ("neuroclips", "fused", "no_keyframe", "no_blurry", "blurry_only", "retrieval"):
        assert recon[variant].shape == (n_test, 16, 16, 16, 3), variant  # 2 s at 8 FPS, 16 px
        assert recon[variant].dtype == np.uint8
    with Image.open(folder / "plots/sample.gif") as gif:
        total = 0
        for i in range(gif.n_frames):  # Pillow merges repeated frames, so count time, not frames
            gif.seek(i)
            total += gif.info["duration"]
    assert total == 2000
    m = read_metrics(tiny_run, "neuroclips")
    for key in ("neuroclips.ssim", "neuroclips.st_ssim", "retrieval.ssim", "neuroclips.clip_pcc"):
        assert np.isfinite(m[key]), key
    assert m["fusion.enabled"] == 1.0  # the twin's scene labels choose the cut on val
    assert 0.0 <= m["fusion.fused_share"] <= 1.0 and 0.0 <= m["fusion.test_accuracy"] <= 1.0
    assert "| neuroclips |" in (folder / "results.md").read_text()


def test_neuroclips_renders_with_local_animatediff_weights(tiny_run, tmp_path, monkeypatch):
    """Configured local folders replace the tiny video model (here a random tiny AnimateDiff)."""
    folders = write_tiny_animatediff(tiny_animatediff_components(tmp_path / "parts"), tmp_path)
    shutil.copytree(tiny_run / "artifacts", tmp_path / "artifacts")
    names = ("stable_diffusion", "motion_adapter", "sparsectrl")
    params = yaml.safe_load((tiny_run / "params.yaml").read_text())
    params["neuroclips"]["pretrained"].update(
        {k: str(f) for k, f in zip(names, folders, strict=True)}
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")
    assert main(["stage", "neuroclips"]) == 0
    folder = tmp_path / "artifacts/neuroclips"
    recon = np.load(folder / "videos/sub-01/reconstructions.npz")
    assert recon["neuroclips"].shape[1:] == (16, 16, 16, 3)
    assert not (folder / "models/video").exists(), "no tiny video model trained"
    assert not np.array_equal(recon["neuroclips"], recon["no_keyframe"])


def test_same_params_same_outputs(tiny_run, tmp_path, monkeypatch):
    """Rerunning a stage with the same params and seed reproduces its metrics exactly."""
    shutil.copytree(tiny_run / "artifacts", tmp_path / "artifacts")
    shutil.copy(tiny_run / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")
    for stage in ("baseline", "oracle", "evaluate"):
        assert main(["stage", stage]) == 0
    assert read_metrics(tmp_path, "evaluate") == read_metrics(tiny_run, "evaluate")


def test_unknown_param_fails_before_writing(tmp_path, monkeypatch, capsys, twin_tiny):
    write_params(tmp_path, twin_tiny, baseline={"alpha": 3})
    monkeypatch.chdir(tmp_path)
    assert main(["stage", "baseline"]) == 1
    assert "baseline.alpha: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "artifacts" / "baseline").exists()


def test_missing_upstream_names_the_stage(tmp_path, monkeypatch, capsys, twin_tiny):
    write_params(tmp_path, twin_tiny)
    monkeypatch.chdir(tmp_path)
    assert main(["stage", "evaluate"]) == 1
    assert "run `mindpipe stage features`" in capsys.readouterr().err


@pytest.mark.slow
def test_dvc_repro_runs_the_dag_then_has_nothing_to_do(twin_tiny, tmp_path):
    """`dvc repro` in a fresh repo runs every stage; a second call is a fast no-op."""
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(twin_tiny, tmp_path / "data")
    write_params(tmp_path, Path("data"))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns.db",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    dvc = [sys.executable, "-m", "dvc"]

    def run(*args):
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)

    assert run("git", "init", "-q").returncode == 0
    assert run(*dvc, "init", "-q").returncode == 0
    assert run(*dvc, "add", "-q", "data").returncode == 0
    first = run(*dvc, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    start = time.perf_counter()
    second = run(*dvc, "repro")
    elapsed = time.perf_counter() - start
    assert second.returncode == 0
    assert "Data and pipelines are up to date" in second.stdout
    assert elapsed < 10
    shown = run(*dvc, "metrics", "show", "--json")
    assert "ridge.brain_to_image" in shown.stdout


@pytest.mark.slow
def test_data_dvc_matches_the_default_twin(tmp_path):
    """A fresh clone regenerates data/ byte for byte what data.dvc records (no remote needed)."""
    from mindpipe.twin import generate

    params = yaml.safe_load((ROOT / "params.yaml").read_text())["base"]
    data = generate(tmp_path / "data", profile=params["profile"], seed=params["seed"])
    recorded = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]["md5"]
    assert dataset_hash(data) == recorded, (
        "twin changed: run `dvc commit data.dvc` after regenerating"
    )
