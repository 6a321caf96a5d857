"""Anatomical alignment: the registration estimator, the resampling operator and the stage."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from contracts import check_estimator_contract
from fakes import write_params
from mindpipe.align import AlignParams, TemplateAligner, align
from mindpipe.align.registration import anatomical_volume
from mindpipe.align.resample import Grid, voxels_operator
from mindpipe.align.stage import alignment_errors
from mindpipe.cli import main
from mindpipe.exceptions import DataError, ParamsError
from mindpipe.io.betas import list_subjects, load_betas
from mindpipe.params import BaseParams, parse_section
from mindpipe.twin import load_truth

QUICK = {"affine_iters": (50, 20)}  # enough on the tiny twin's 3-mm T1w images


def _images(twin: Path, subject: str = "sub-01") -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    moving = nib.load(twin / subject / "anat" / f"{subject}_T1w.nii.gz")
    template = nib.load(twin / "template" / "tpl-twin_T1w.nii.gz")
    return moving, template


# ------------------------------------------------------------------------------- resampling
def test_operator_is_the_identity_on_the_subjects_own_grid() -> None:
    grid = Grid((4, 5, 3), np.diag([2.0, 2.0, 2.0, 1.0]))
    kept = np.arange(60)
    weights, coverage = voxels_operator(grid.centres(), grid, kept)
    np.testing.assert_allclose(weights.toarray(), np.eye(60), atol=1e-12)
    np.testing.assert_allclose(coverage, 1.0)


def test_operator_interpolates_linear_fields_and_renormalises_over_kept_voxels() -> None:
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = (-6.0, 2.0, 1.0)
    grid = Grid((6, 6, 6), affine)
    field = grid.centres() @ np.array([0.5, -1.0, 2.0]) + 3.0  # linear in mm
    points = np.array([[-1.3, 7.7, 5.2], [2.0, 5.0, 4.0], [4.4, 9.9, 12.1]])
    weights, coverage = voxels_operator(points, grid, np.arange(216))
    np.testing.assert_allclose(weights @ field, points @ np.array([0.5, -1.0, 2.0]) + 3.0)
    np.testing.assert_allclose(coverage, 1.0)
    # drop one neighbour of the first point: its weight leaves the coverage, rows still sum to 1
    kept = np.setdiff1d(np.arange(216), [np.ravel_multi_index((1, 1, 1), grid.shape)])
    weights, coverage = voxels_operator(points, grid, kept)
    assert 0 < coverage[0] < 1 and coverage[1] == pytest.approx(1.0)
    np.testing.assert_allclose(np.asarray(weights.sum(axis=1)).ravel(), 1.0)
    outside, cover = voxels_operator(np.array([[100.0, 0.0, 0.0]]), grid, kept)
    assert cover[0] == 0 and outside.nnz == 0


# ------------------------------------------------------------------------------- registration
def test_estimator_contract_template_aligner(twin_tiny: Path) -> None:
    moving, template = _images(twin_tiny)
    aligner = TemplateAligner(nonlinear=True, syn_iters=(5,), **QUICK)
    check_estimator_contract(aligner, moving, {"template": template}, {})
    assert aligner.transform(moving).shape == template.shape


@pytest.mark.parametrize("subject", ["sub-01", "sub-03"])
def test_affine_registration_recovers_the_twins_true_mapping(twin_tiny: Path, subject) -> None:
    moving, template = _images(twin_tiny, subject)
    mask = nib.load(twin_tiny / "template" / "tpl-twin_desc-visual_mask.nii.gz")
    points = Grid(mask.shape, mask.affine).centres(np.flatnonzero(mask.get_fdata() > 0))
    aligner = TemplateAligner(nonlinear=False, **QUICK).fit(moving, template)
    errors = alignment_errors(aligner, points, load_truth(twin_tiny, subject).transform)
    assert errors["final"] == errors["affine"]  # no warp was asked for
    assert errors["final"] < 1.0 < errors["none"]  # mm; the T1w voxels are 3 mm
    assert errors["final"] < errors["none"] / 4


def test_registration_to_a_coarser_copy_still_aligns(twin_tiny: Path) -> None:
    moving, template = _images(twin_tiny)
    aligner = TemplateAligner(nonlinear=False, registration_mm=4.5, **QUICK)
    mask = nib.load(twin_tiny / "template" / "tpl-twin_desc-visual_mask.nii.gz")
    points = Grid(mask.shape, mask.affine).centres(np.flatnonzero(mask.get_fdata() > 0))
    errors = alignment_errors(
        aligner.fit(moving, template), points, load_truth(twin_tiny, "sub-01").transform
    )
    assert errors["final"] < 1.5 < errors["none"]


# ------------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def aligned(twin_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny twin through validate_raw, preprocess and align; returns the project folder."""
    project = tmp_path_factory.mktemp("align")
    write_params(project, twin_tiny, align={"affine_iters": [50, 20]})
    cwd = os.getcwd()
    os.chdir(project)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project}/mlruns.db"
    try:
        for stage in ("validate_raw", "preprocess", "align"):
            assert main(["stage", stage]) == 0, stage
    finally:
        os.chdir(cwd)
        del os.environ["MLFLOW_TRACKING_URI"]
    return project


def test_stage_puts_every_subject_on_the_same_template_voxels(aligned: Path) -> None:
    out, pre = aligned / "artifacts" / "align", aligned / "artifacts" / "preprocess"
    metrics = json.loads((out / "metrics.json").read_text())
    assert list_subjects(out) == list_subjects(pre)
    columns = set()
    for subject in list_subjects(out):
        sb, own = load_betas(out, subject), load_betas(pre, subject)  # the preprocess layout
        columns.add(tuple(sb.voxel_index.tolist()))
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(sb.stim[split], own.stim[split])
            assert np.isfinite(sb.betas[split]).all()
        coverage = np.load(out / subject / "coverage.npy")
        covered = coverage >= 0.5
        assert covered.mean() == pytest.approx(metrics[f"{subject}.coverage"])
        assert not sb.betas["train"][:, ~covered].any()  # uncovered voxels are zero-filled
        assert sb.betas["train"][:, covered].std(axis=0).min() > 0
    assert len(columns) == 1 and metrics["n_template_voxels"] == len(columns.pop())


def test_stage_reports_alignment_error_below_a_voxel(aligned: Path) -> None:
    out = aligned / "artifacts" / "align"
    metrics = json.loads((out / "metrics.json").read_text())
    for subject in ("sub-01", "sub-02", "sub-03", "sub-04"):
        assert metrics[f"{subject}.error_final_mm"] < 0.25 * 6.0  # tiny BOLD voxels: 6 mm
        assert metrics[f"{subject}.error_final_mm"] < metrics[f"{subject}.error_none_mm"] / 3
    assert metrics["error_final_voxels"] < 0.25
    report = (out / "alignment.md").read_text()
    assert "| sub-04 |" in report and "tpl-twin" in report
    for plot in ("qc.png", "alignment_error.png"):
        assert (out / "plots" / plot).stat().st_size > 10_000
    mapping = np.load(out / "sub-01" / "template_to_subject_mm.npy")
    assert mapping.shape == (metrics["n_template_voxels"], 3)


# ------------------------------------------------------------------------------- bad input
def _twin_without(twin: Path, subject: str, folder: Path) -> Path:
    """A copy of the twin (symlinks) whose ``subject`` has only an empty ``anat/`` folder."""
    for item in twin.iterdir():
        if item.name != subject:
            (folder / item.name).parent.mkdir(parents=True, exist_ok=True)
            (folder / item.name).symlink_to(item)
    (folder / subject / "anat").mkdir(parents=True)
    return folder


def _align(data: Path, aligned: Path, out: Path) -> dict[str, float]:
    out.mkdir()
    return align(
        data_dir=data,
        betas_dir=aligned / "artifacts" / "preprocess",
        out_dir=out,
        params=AlignParams(**QUICK),
        base=BaseParams(),
    )


def test_a_subject_without_anatomy_is_named(aligned: Path, twin_tiny: Path, tmp_path) -> None:
    data = _twin_without(twin_tiny, "sub-02", tmp_path / "data")
    with pytest.raises(DataError, match=r"sub-02: no T1w image, which the align stage registers"):
        _align(data, aligned, tmp_path / "out")


def test_a_truncated_t1w_names_the_file(aligned: Path, twin_tiny: Path, tmp_path: Path) -> None:
    data = _twin_without(twin_tiny, "sub-01", tmp_path / "data")
    blob = (twin_tiny / "sub-01" / "anat" / "sub-01_T1w.nii.gz").read_bytes()
    truncated = gzip.compress(gzip.decompress(blob)[:5000])
    (data / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(truncated)
    with pytest.raises(DataError, match=r"sub-01_T1w\.nii\.gz"):
        _align(data, aligned, tmp_path / "out")


def test_betas_without_anatomy_are_recorded_as_unaligned(aligned: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    metrics = align(
        data_dir=tmp_path,
        betas_dir=aligned / "artifacts" / "preprocess",
        out_dir=out,
        params=AlignParams(),
        base=BaseParams(dataset="nsd"),
    )
    assert metrics == {"available": 0.0}
    assert "no T1w image" in (out / "alignment.json").read_text()


def test_params_are_checked() -> None:
    with pytest.raises(ParamsError, match=r"align\.template: must be one of"):
        parse_section(AlignParams, {"template": "colin27"}, "align")
    with pytest.raises(ParamsError, match=r"align\.affine_iters: must be 1 to 3 positive"):
        parse_section(AlignParams, {"affine_iters": [10, 0]}, "align")
    with pytest.raises(ParamsError, match=r"align\.min_coverage"):
        dataclasses.replace(AlignParams(), min_coverage=0.0)


def test_anatomy_must_be_a_finite_volume() -> None:
    assert anatomical_volume(np.zeros((4, 4, 4, 1)), "x").shape == (4, 4, 4)
    with pytest.raises(DataError, match=r"'a\.nii': expected a 3-D anatomical image"):
        anatomical_volume(np.zeros((4, 4)), "'a.nii'")
    with pytest.raises(DataError, match=r"'a\.nii': holds NaN"):
        anatomical_volume(np.full((2, 2, 2), np.nan), "'a.nii'")
