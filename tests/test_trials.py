"""The betas route: converted pre-estimated responses through validate_raw and preprocess.

preprocess streams the betas (row blocks, batches of images) and must give what the in-memory
estimators give on the whole matrix; validate_raw must name the file and what it found.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mindpipe.exceptions import DataError, ValidationError
from mindpipe.io.adapters import import_dataset, miniature
from mindpipe.io.trials import open_trial_betas, trial_files
from mindpipe.params import BaseParams, SourceParams
from mindpipe.preprocess import PreprocessParams, SessionZScorer, VoxelSelector, average_repeats
from mindpipe.preprocess import trials as betas_route
from mindpipe.preprocess.stage import preprocess
from mindpipe.validate import ValidateRawParams, validate_raw

NSD = BaseParams(dataset="nsd")


@pytest.fixture(scope="module")
def nsd_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The NSD miniature converted (read-only: tests that edit it copy it first)."""
    root = tmp_path_factory.mktemp("nsd")
    source = miniature.write_nsd_mindeye(root / "release", n_train=30, n_test=8, n_voxels=50)
    import_dataset("nsd", source, root / "data", SourceParams(image_size=16), seed=0)
    return root / "data"


def _copy(data: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(data, tmp_path / "data"))


def _preprocess(data: Path, out: Path, base: BaseParams = NSD, **params) -> dict[str, float]:
    return preprocess(data_dir=data, out_dir=out, params=PreprocessParams(**params), base=base)


def test_streamed_preprocess_equals_the_in_memory_estimators(nsd_data, tmp_path, monkeypatch):
    monkeypatch.setattr(betas_route, "MAX_VALUES", 50 * 7)  # 7 rows per block: many batches
    metrics = _preprocess(nsd_data, tmp_path / "out", min_ncsnr=0.2, n_voxels=30)
    tb = open_trial_betas(nsd_data, "sub-01")
    stimuli = pd.read_csv(nsd_data / "stimuli" / "stimuli.tsv", sep="\t")
    split = stimuli.set_index("stim_id").loc[tb.stim, "split"].to_numpy()
    z = SessionZScorer().fit_transform(tb.rows(slice(None)), sessions=tb.session)
    selector = VoxelSelector(min_ncsnr=0.2, n_voxels=30).fit(
        z[split == "train"], tb.stim[split == "train"]
    )
    out = tmp_path / "out" / "sub-01"
    np.testing.assert_array_equal(np.load(out / "voxel_index.npy"), selector.indices_)
    np.testing.assert_allclose(
        np.load(out / "ncsnr.npy"), selector.ncsnr_[selector.indices_], rtol=1e-5
    )
    kept = z[:, selector.indices_]
    np.testing.assert_allclose(np.load(out / "betas_train.npy"), kept[split == "train"], atol=1e-5)
    for name in ("val", "test"):
        mean, ids = average_repeats(kept[split == name], tb.stim[split == name])
        np.testing.assert_allclose(np.load(out / f"betas_{name}.npy"), mean, atol=1e-5)
        np.testing.assert_array_equal(np.load(out / f"stim_{name}.npy"), ids)
    assert metrics["sub-01.n_voxels"] == 30
    summary = pd.read_csv(tmp_path / "out" / "summary.tsv", sep="\t")
    train = summary[summary["split"] == "train"].iloc[0]
    assert train["n_rows"] == train["expected_rows"] == (split == "train").sum()
    assert train["std"] == pytest.approx(kept[split == "train"].std(), rel=1e-4)
    assert (tmp_path / "out" / "plots" / "reliability.png").stat().st_size > 0


def test_image_batches_keep_each_image_together() -> None:
    stim = np.array([3, 1, 3, 2, 1, 2, 3, 0, 0, 1])
    rows = np.arange(10)
    batches = list(betas_route.image_batches(rows, stim, max_rows=4))
    assert sorted(np.concatenate(batches).tolist()) == rows.tolist()
    for batch in batches:
        assert (np.diff(batch) > 0).all()  # sorted for sequential reads
        for other in batches:
            if other is not batch:
                assert not set(stim[batch]) & set(stim[other])
    assert max(len(b) for b in batches) <= 4


def test_partial_fit_matches_fit() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, (40, 6))
    sessions = np.repeat(["a", "b"], 20)
    whole = SessionZScorer().fit(x, sessions=sessions)
    streamed = SessionZScorer()
    for start in range(0, 40, 7):
        streamed.partial_fit(x[start : start + 7], sessions=sessions[start : start + 7])
    np.testing.assert_allclose(streamed.mean_, whole.mean_)
    np.testing.assert_allclose(streamed.scale_, whole.scale_)
    flat = SessionZScorer().partial_fit(np.ones((4, 2)), sessions=np.array(["s"] * 4))
    with pytest.raises(DataError, match="session s: 2 voxel"):
        flat.transform(np.ones((4, 2)), sessions=np.array(["s"] * 4))


def test_god_without_training_repeats(tmp_path: Path) -> None:
    source = miniature.write_god(tmp_path / "god")
    import_dataset("god", source, tmp_path / "data", SourceParams(image_size=16), seed=0)
    base = BaseParams(dataset="god")
    with pytest.raises(DataError, match=r"no training image is shown twice.*set both to null"):
        _preprocess(tmp_path / "data", tmp_path / "out", base)
    metrics = _preprocess(tmp_path / "data", tmp_path / "ok", base, min_ncsnr=None)
    assert metrics["sub-01.n_voxels"] == 30  # the whole ROI
    assert np.isnan(np.load(tmp_path / "ok" / "sub-01" / "ncsnr.npy")).all()


def test_validate_raw_passes_on_converted_betas(nsd_data: Path, tmp_path: Path) -> None:
    metrics = validate_raw(
        data_dir=nsd_data, out_dir=tmp_path / "v", params=ValidateRawParams(), base=NSD
    )
    assert metrics["n_trials"] == 38 * 3 and metrics["n_failed"] == 0
    assert (tmp_path / "v" / "report.md").read_text().startswith("# validate_raw: PASSED")


def _gate(data: Path, tmp_path: Path) -> None:
    validate_raw(data_dir=data, out_dir=tmp_path / "v", params=ValidateRawParams(), base=NSD)


def test_validate_raw_names_mismatched_voxels_and_truncation(nsd_data, tmp_path) -> None:
    data = _copy(nsd_data, tmp_path)
    files = trial_files(data, "sub-01")
    np.save(files.voxels, np.arange(49))
    with pytest.raises(DataError, match=r"sub-01_voxels.npy' has shape \(49,\) but .* 50 voxels"):
        _gate(data, tmp_path)
    np.save(files.voxels, np.arange(50))
    blob = files.betas.read_bytes()
    files.betas.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"cannot read betas '.*sub-01_betas.npy' \(truncated"):
        _gate(data, tmp_path)
    assert "Structural problems" in (tmp_path / "v" / "report.md").read_text()


def test_validate_raw_finds_nan_and_unknown_stimuli(nsd_data, tmp_path) -> None:
    data = _copy(nsd_data, tmp_path)
    files = trial_files(data, "sub-01")
    betas = np.load(files.betas)
    betas[5, 3] = np.nan
    np.save(files.betas, betas)
    with pytest.raises(DataError, match=r"1 non-finite value\(s\).*first at row 5"):
        _gate(data, tmp_path)
    betas[5, 3] = 0.0
    np.save(files.betas, betas)
    trials = pd.read_csv(files.trials, sep="\t")
    trials.loc[0, "stim_id"] = 999
    trials.to_csv(files.trials, sep="\t", index=False)
    with pytest.raises(ValidationError, match=r"\[trials\] column 'stim_id'.*999"):
        _gate(data, tmp_path)


def test_the_dataset_kind_must_match(nsd_data: Path, twin_tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"base.dataset is 'twin' but .* records 'nsd'"):
        _preprocess(nsd_data, tmp_path / "a", BaseParams())
    with pytest.raises(DataError, match=r"base.dataset is 'god' .* records 'twin'.*data import"):
        validate_raw(
            data_dir=twin_tiny,
            out_dir=tmp_path / "b",
            params=ValidateRawParams(),
            base=BaseParams(dataset="god"),
        )
