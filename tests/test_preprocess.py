"""mindpipe.preprocess: DCT high-pass, LSS, z-scoring, NCSNR, VoxelSelector, the stage's outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import compute_regressor

from contracts import check_estimator_contract
from fakes import FakeTruth, write_fake_dataset
from mindpipe.exceptions import DataError, ParamsError
from mindpipe.params import BaseParams, parse_section
from mindpipe.preprocess import (
    PreprocessParams,
    SessionZScorer,
    VoxelSelector,
    average_repeats,
    dct_basis,
    lss,
    ncsnr,
    percent_signal_change,
    preprocess,
    run_betas,
    trial_regressors,
)
from mindpipe.preprocess.glm import project_out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


# --------------------------------------------------------------------------- GLM


def _synthetic_run(
    rng: np.random.Generator,
    n_vols: int = 200,
    n_vox: int = 50,
    noise: float = 0.1,
    isi: tuple[float, float] = (8.0, 12.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Trials every ``isi`` s with known PSC amplitudes, a slow drift, baseline ~1000.

    LSS models all other trials with one regressor, so with short ISIs and amplitudes that vary
    from trial to trial it is biased even without noise (r ~ 0.85 at 4-6 s); 8-12 s keeps the
    overlap small enough to test recovery.
    """
    tr = 2.0
    onsets = np.cumsum(rng.uniform(*isi, 60)) + 4.0
    onsets = onsets[onsets < n_vols * tr - 20.0]
    durations = np.full(onsets.size, 2.0)
    amp = rng.normal(0.0, 1.0, (onsets.size, n_vox))
    design = trial_regressors(onsets, durations, n_vols, tr)
    t = np.arange(n_vols) * tr
    drift = 2.0 * np.cos(2 * np.pi * t / 600.0)[:, None] * rng.uniform(0.5, 1.5, n_vox)
    psc = design @ amp + drift + rng.normal(0.0, noise, (n_vols, n_vox))
    data = rng.uniform(800.0, 1200.0, n_vox) * (1.0 + psc / 100.0)
    return data.astype(np.float32), onsets, durations, amp, design


@pytest.mark.parametrize("hrf_model", ["spm", "glover"])
def test_trial_regressors_match_nilearn_compute_regressor(hrf_model: str) -> None:
    onsets, durations = np.array([0.0, 10.0, 31.3, 95.0]), np.array([2.0, 2.0, 3.0, 0.5])
    design = trial_regressors(onsets, durations, 50, 2.0, hrf_model)
    assert design.shape == (50, 4)
    for i in range(4):
        ref, _ = compute_regressor(
            np.array([[onsets[i]], [durations[i]], [1.0]]), hrf_model, np.arange(50) * 2.0
        )
        ref = ref[:, 0]
        # same shape; the scale differs only by the peak normalisation
        scale = design[:, i] @ ref / (ref @ ref)
        np.testing.assert_allclose(design[:, i], scale * ref, atol=3e-3)
    # sampled at a fine TR, an isolated trial's response peaks at 1
    fine = trial_regressors(np.array([10.0]), np.array([2.0]), 400, 0.1)
    assert fine.max() == pytest.approx(1.0, abs=1e-3)


def test_lss_recovers_known_betas(rng: np.random.Generator) -> None:
    data, onsets, durations, amp, _ = _synthetic_run(rng, noise=0.1)
    betas = run_betas(data, onsets, durations, tr=2.0)
    assert betas.shape == amp.shape
    assert betas.dtype == np.float32
    r = np.corrcoef(betas.ravel(), amp.ravel())[0, 1]
    assert r > 0.9
    # units: % signal change, so the scale is right too
    big = np.abs(amp) > 0.5
    assert np.median(betas[big] / amp[big]) == pytest.approx(1.0, abs=0.1)


def test_lss_matches_explicit_per_trial_least_squares(rng: np.random.Generator) -> None:
    """The closed form equals fitting [trial i, other trials, DCT nuisance] trial by trial."""
    data, *_, design = _synthetic_run(rng, n_vols=120, n_vox=7, noise=0.5, isi=(4.0, 6.0))
    psc = percent_signal_change(data)
    basis = dct_basis(120, 2.0, 128.0)
    fast = lss(project_out(basis, design), project_out(basis, psc))
    for i in range(design.shape[1]):
        others = np.delete(design, i, axis=1).sum(axis=1)
        x = np.column_stack([design[:, i], others, basis])
        coef, *_ = np.linalg.lstsq(x, psc, rcond=None)
        np.testing.assert_allclose(fast[i], coef[0], rtol=1e-6, atol=1e-8)


def test_lss_single_trial() -> None:
    design = trial_regressors(np.array([10.0]), np.array([2.0]), 40, 2.0)
    data = design * np.array([[2.0, -1.0]])
    np.testing.assert_allclose(lss(design, data), [[2.0, -1.0]])


def test_dct_basis_and_high_pass_remove_drift() -> None:
    basis = dct_basis(130, 2.0, 128.0)
    assert basis.shape == (130, 5)  # constant + floor(2 * 130 * 2 / 128) = 4 cosines (SPM)
    np.testing.assert_allclose(basis.T @ basis, np.eye(5), atol=1e-10)
    t = np.arange(130) * 2.0
    drifts = {
        "linear trend": 0.03 * t,
        "400 s wave": 3.0 * np.cos(2 * np.pi * t / 400.0 + 0.3),
        "900 s wave": 2.0 * np.sin(2 * np.pi * t / 900.0),
    }
    for name, drift in drifts.items():
        filtered = project_out(basis, (5.0 + drift)[:, None])[:, 0]
        assert np.std(filtered) < 0.1 * np.std(drift), name
    fast = np.sin(2 * np.pi * t / 12.0)  # a 12 s signal survives the 128 s high-pass
    assert np.corrcoef(project_out(basis, fast[:, None])[:, 0], fast)[0, 1] > 0.99
    with pytest.raises(ValueError, match="cutoff > 0"):
        dct_basis(130, 2.0, 0.0)


def test_percent_signal_change_needs_positive_mean() -> None:
    data = np.array([[100.0, 0.0], [110.0, 0.0]])
    with pytest.raises(DataError, match=r"run-07: 1 mask voxel.*non-positive mean"):
        percent_signal_change(data, where="run-07")
    np.testing.assert_allclose(percent_signal_change(data[:, :1]), [[-100 / 21], [100 / 21]])


def test_singular_lss_design_is_an_error() -> None:
    design = trial_regressors(np.array([10.0, 10.5]), np.array([2.0, 2.0]), 40, 2.0)
    design[:, 1] = design[:, 0]
    with pytest.raises(DataError, match=r"singular for trial\(s\) \[0, 1\]"):
        lss(design, np.ones((40, 2)))


# --------------------------------------------------------------------------- voxel space


def test_session_zscorer(rng: np.random.Generator) -> None:
    x = np.concatenate([rng.normal(5, 2, (30, 4)), rng.normal(-3, 0.5, (20, 4))])
    sessions = np.array(["ses-01"] * 30 + ["ses-02"] * 20)
    z = SessionZScorer().fit_transform(x, sessions=sessions)
    assert z.dtype == np.float32
    for label in ("ses-01", "ses-02"):
        np.testing.assert_allclose(z[sessions == label].mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(z[sessions == label].std(0), 1, atol=1e-5)
    with pytest.raises(ValueError, match=r"sessions not seen in fit: \['ses-03'\]"):
        SessionZScorer().fit(x, sessions=sessions).transform(x[:1], sessions=np.array(["ses-03"]))
    x[:30, 2] = 1.0
    with pytest.raises(DataError, match=r"session ses-01: 1 voxel.* zero variance"):
        SessionZScorer().fit(x, sessions=sessions)


def _repeats(
    rng: np.random.Generator, snr: np.ndarray, n_images: int = 3000, n_reps: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Z-scored betas with signal var snr^2 / (1 + snr^2) and noise var 1 / (1 + snr^2)."""
    signal = rng.normal(size=(n_images, snr.size)) * snr
    y = np.repeat(np.arange(n_images), n_reps)
    x = signal[y] + rng.normal(size=(y.size, snr.size))
    x = (x - x.mean(0)) / x.std(0)
    return x, y


def test_ncsnr_known_construction(rng: np.random.Generator) -> None:
    true = np.array([0.0, 0.5, 1.0, 2.0])
    x, y = _repeats(rng, true)
    est, n_images = ncsnr(x, y)
    assert n_images == 3000
    # at zero signal the estimate is biased up (sqrt of max(0, sampling error))
    assert np.all(np.abs(est - true) <= [0.2, 0.06, 0.06, 0.06])
    # images seen once are ignored, not an error
    est2, n2 = ncsnr(
        np.concatenate([x, rng.normal(size=(5, 4))]), np.concatenate([y, -1 - np.arange(5)])
    )
    assert n2 == 3000
    np.testing.assert_allclose(est2, est, atol=0.02)
    # exact small case: image 0 repeats (1, -1), image 1 repeats (0, 0) -> noise var 1, ncsnr 0
    np.testing.assert_allclose(
        ncsnr(np.array([[1.0], [-1.0], [0.0], [0.0]]), np.array([0, 0, 1, 1]))[0], [0.0]
    )
    with pytest.raises(DataError, match="NCSNR needs repeated images"):
        ncsnr(x[:10], np.arange(10))


def test_estimator_contract_voxel_selector(rng: np.random.Generator) -> None:
    x, y = _repeats(rng, np.linspace(0, 2, 12), n_images=50)
    check_estimator_contract(VoxelSelector(min_ncsnr=0.3, n_voxels=5), x, {"y": y}, {})


def test_estimator_contract_session_zscorer(rng: np.random.Generator) -> None:
    x = rng.normal(size=(40, 6))
    sessions = np.repeat(["ses-01", "ses-02"], 20)
    kw = {"sessions": sessions}
    check_estimator_contract(SessionZScorer(), x, kw, kw)


@pytest.mark.parametrize(
    ("min_ncsnr", "n_voxels", "expected"),
    [
        (None, None, [0, 1, 2, 3, 4, 5]),  # neither: keep all
        (0.9, None, [3, 4, 5]),  # threshold only
        (None, 2, [4, 5]),  # top-n only
        (0.9, 5, [3, 4, 5]),  # both: threshold first, then at most n
        (0.9, 1, [5]),
        (10.0, None, []),
    ],
)
def test_voxel_selector_rules(
    rng: np.random.Generator, min_ncsnr: float | None, n_voxels: int | None, expected: list[int]
) -> None:
    x, y = _repeats(rng, np.array([0.0, 0.3, 0.6, 1.2, 1.8, 3.0]), n_images=2000)
    sel = VoxelSelector(min_ncsnr=min_ncsnr, n_voxels=n_voxels).fit(x, y)
    assert sel.indices_.tolist() == expected
    assert sel.transform(x).shape == (x.shape[0], len(expected))
    assert sel.ncsnr_.shape == (6,)
    with pytest.raises(ValueError, match="expected X with 6 voxels"):
        sel.transform(x[:, :3])


def test_average_repeats() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 10.0]])
    avg, ids = average_repeats(x, np.array([7, 7, 2]))
    assert ids.tolist() == [2, 7]
    np.testing.assert_allclose(avg, [[10.0, 10.0], [2.0, 3.0]])
    empty, none = average_repeats(np.zeros((0, 2)), np.zeros(0, np.int64))
    assert empty.shape == (0, 2) and none.size == 0


# --------------------------------------------------------------------------- the stage


def test_params_are_checked() -> None:
    assert parse_section(PreprocessParams, {"n_voxels": 100}, "preprocess").n_voxels == 100
    with pytest.raises(ParamsError, match=r"'hrf_model' must be one of .*got 'spn'"):
        parse_section(PreprocessParams, {"hrf_model": "spn"}, "preprocess")
    with pytest.raises(ParamsError, match=r"\(preprocess\.n_voxels\)"):
        PreprocessParams(n_voxels=0)
    with pytest.raises(ParamsError, match="high_pass_cutoff"):
        PreprocessParams(high_pass_cutoff=-1.0)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, FakeTruth, dict]:
    root = tmp_path_factory.mktemp("pre")
    truth = write_fake_dataset(root / "data", n_subjects=2, n_train=30, noise_sd=0.2, seed=1)
    out = root / "out"
    out.mkdir()
    params = PreprocessParams(min_ncsnr=0.6)
    metrics = preprocess(data_dir=root / "data", out_dir=out, params=params, base=BaseParams())
    return root / "data", out, truth, metrics


def test_preprocess_layout_and_shapes(fake_run: tuple[Path, Path, FakeTruth, dict]) -> None:
    data, out, truth, metrics = fake_run
    per_subject = {
        "betas_train.npy", "stim_train.npy", "betas_val.npy", "stim_val.npy",
        "betas_test.npy", "stim_test.npy", "voxel_index.npy", "ncsnr.npy", "meta.json",
    }  # fmt: skip
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    expected = {"stimuli.tsv", "summary.tsv", "plots/reliability.png"}
    expected |= {f"{s}/{f}" for s in ("sub-01", "sub-02") for f in per_subject}
    assert files == expected
    assert (out / "stimuli.tsv").read_bytes() == (data / "stimuli" / "stimuli.tsv").read_bytes()
    assert (out / "plots" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    stimuli = truth.stimuli.set_index("stim_id")
    for sub in ("sub-01", "sub-02"):
        d = out / sub
        vox = np.load(d / "voxel_index.npy")
        snr = np.load(d / "ncsnr.npy")
        assert vox.dtype == np.int64 and snr.dtype == np.float32
        assert np.all(np.diff(vox) > 0) and snr.shape == vox.shape
        assert np.all(snr >= 0.6)
        assert set(vox) <= set(np.flatnonzero(truth.mask[sub].ravel()))
        for split, rows in (("train", 90), ("val", 3), ("test", 3)):
            betas = np.load(d / f"betas_{split}.npy", mmap_mode="r")
            stim = np.load(d / f"stim_{split}.npy")
            assert betas.dtype == np.float32 and stim.dtype == np.int64
            assert betas.shape == (rows, vox.size)
            assert set(stimuli.loc[stim, "split"]) == {split}
        assert np.bincount(np.load(d / "stim_train.npy")).max() == 3  # repeats kept
        meta = json.loads((d / "meta.json").read_text())
        assert meta["bold_shape"] == [5, 5, 4, meta["bold_shape"][3]]
        assert meta["tr"] == 2.0 and meta["n_runs"] == 4 and meta["n_sessions"] == 2
        assert meta["n_voxels"] == vox.size and meta["selection"]["min_ncsnr"] == 0.6
        assert metrics[f"{sub}.n_voxels"] == vox.size
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert list(summary.columns) == [
        "subject", "split", "n_rows", "n_voxels", "n_nonfinite", "mean", "std",
        "min", "max", "tr", "expected_rows",
    ]  # fmt: skip
    assert len(summary) == 6
    assert (summary["n_rows"] == summary["expected_rows"]).all()
    assert metrics["n_subjects"] == 2


def test_preprocess_recovers_responsive_voxels(
    fake_run: tuple[Path, Path, FakeTruth, dict],
) -> None:
    _, out, truth, _ = fake_run
    for sub in ("sub-01", "sub-02"):
        vox = np.load(out / sub / "voxel_index.npy")
        mask_flat = np.flatnonzero(truth.mask[sub].ravel())
        col = np.searchsorted(mask_flat, vox)
        assert truth.responsive[sub][col].mean() >= 0.9  # selection found the signal voxels
        betas, stim = average_repeats(
            np.load(out / sub / "betas_train.npy"), np.load(out / sub / "stim_train.npy")
        )
        amp = truth.amplitude[sub][stim][:, col]
        ok = truth.responsive[sub][col]
        r = [np.corrcoef(betas[:, j], amp[:, j])[0, 1] for j in np.flatnonzero(ok)]
        assert np.median(r) > 0.9


def test_preprocess_bad_input_names_the_file(tmp_path: Path) -> None:
    write_fake_dataset(tmp_path / "data")
    events = tmp_path / "data" / "sub-01" / "func" / "sub-01_ses-02_task-images_run-01_events.tsv"
    table = pd.read_csv(events, sep="\t")
    table.loc[0, "stim_id"] = 999
    table.to_csv(events, sep="\t", index=False)
    with pytest.raises(DataError, match=re.escape(f"'{events}': 1 stim_id(s) not in stimuli.tsv")):
        preprocess(
            data_dir=tmp_path / "data", out_dir=tmp_path / "out", params=PreprocessParams(),
            base=BaseParams(),
        )  # fmt: skip


def test_preprocess_no_reliable_voxel(tmp_path: Path) -> None:
    write_fake_dataset(tmp_path / "data")
    with pytest.raises(DataError, match=r"sub-01: no voxel reaches NCSNR >= 50.*min_ncsnr"):
        preprocess(
            data_dir=tmp_path / "data", out_dir=tmp_path / "out",
            params=PreprocessParams(min_ncsnr=50.0), base=BaseParams(),
        )  # fmt: skip


def test_preprocess_top_n_and_empty_val(tmp_path: Path) -> None:
    write_fake_dataset(tmp_path / "data", n_val=0)
    out = tmp_path / "out"
    preprocess(
        data_dir=tmp_path / "data", out_dir=out,
        params=PreprocessParams(min_ncsnr=None, n_voxels=4), base=BaseParams(),
    )  # fmt: skip
    assert np.load(out / "sub-01" / "voxel_index.npy").shape == (4,)
    assert np.load(out / "sub-01" / "betas_val.npy").shape == (0, 4)
    summary = pd.read_csv(out / "summary.tsv", sep="\t").set_index("split")
    assert summary.loc["val", "n_rows"] == 0 == summary.loc["val", "expected_rows"]


def test_preprocess_on_tiny_twin(twin_tiny: Path, tmp_path: Path) -> None:
    """The real generator's layout goes through, and betas track the twin's true responses."""
    from mindpipe.twin import load_truth

    out = tmp_path / "out"
    metrics = preprocess(
        data_dir=twin_tiny, out_dir=out, params=PreprocessParams(), base=BaseParams()
    )
    stimuli = pd.read_csv(twin_tiny / "stimuli" / "stimuli.tsv", sep="\t").set_index("stim_id")
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    subjects = sorted(p.name for p in twin_tiny.glob("sub-*"))
    assert metrics["n_subjects"] == len(subjects) == summary["subject"].nunique()
    for sub in subjects:
        truth = load_truth(twin_tiny, sub)
        vox = np.load(out / sub / "voxel_index.npy")
        assert np.isin(vox, truth.voxel_index).all()
        col = np.searchsorted(truth.voxel_index, vox)
        betas, stim = np.load(out / sub / "betas_test.npy"), np.load(out / sub / "stim_test.npy")
        assert set(stimuli.loc[stim, "split"]) == {"test"}
        amp = truth.amplitude[stim][:, col]
        r = [np.corrcoef(betas[:, j], amp[:, j])[0, 1] for j in range(vox.size)]
        assert np.nanmedian(r) > 0.25, sub
