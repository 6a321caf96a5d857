"""The NSD betas adapter: split carving, repeat averaging, and clear errors on bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from fakes_real import make_nsd_betas
from mindpipe.exceptions import DataError, ParamsError
from mindpipe.io.adapters import get_adapter
from mindpipe.io.betas import load_betas


def test_nsd_convert_writes_internal_layout(tmp_path):
    trial_stim, test_ids = make_nsd_betas(tmp_path / "betas.h5")
    metrics = get_adapter("nsd")(
        betas_h5=tmp_path / "betas.h5",
        trial_stim=trial_stim,
        test_ids=test_ids,
        out_dir=tmp_path / "out",
        subject="sub-01",
        n_val=4,
        seed=0,
        chunk=5,
    )
    subj = load_betas(tmp_path / "out", "sub-01")
    assert metrics["n_test"] == 6 and metrics["n_val"] == 4 and metrics["n_train"] == 20
    assert subj.betas["train"].shape == (60, 40)
    assert set(subj.stim["test"]) == set(test_ids)
    assert not set(subj.stim["val"]) & set(subj.stim["train"])
    # rows keep their trial's stimulus: train rows match the file in original order
    with h5py.File(tmp_path / "betas.h5") as handle:
        rows = np.flatnonzero(np.isin(trial_stim, subj.stim["train"]))
        np.testing.assert_allclose(subj.betas["train"], handle["betas"][rows], rtol=1e-3)
    # averaging 3 repeats with noise sd 0.5 gives a clearly positive ncsnr
    assert metrics["mean_ncsnr"] > 1.0


def test_nsd_val_split_is_deterministic(tmp_path):
    trial_stim, test_ids = make_nsd_betas(tmp_path / "b.h5")
    kwargs = dict(betas_h5=tmp_path / "b.h5", trial_stim=trial_stim, test_ids=test_ids)
    for name in ("a", "b"):
        get_adapter("nsd")(**kwargs, out_dir=tmp_path / name, subject="sub-01", n_val=4, seed=3)
    np.testing.assert_array_equal(
        np.load(tmp_path / "a/sub-01/stim_val.npy"), np.load(tmp_path / "b/sub-01/stim_val.npy")
    )


def test_nsd_errors_name_the_problem(tmp_path):
    convert = get_adapter("nsd")
    common = dict(out_dir=tmp_path / "o", subject="sub-01", n_val=2, seed=0)
    with pytest.raises(DataError, match="not found"):
        convert(betas_h5=tmp_path / "nope.h5", trial_stim=[], test_ids=[], **common)
    with h5py.File(tmp_path / "k.h5", "w") as handle:
        handle["other"] = np.zeros((3, 2))
    with pytest.raises(DataError, match=r"expected key 'betas'.*found \['other'\]"):
        convert(betas_h5=tmp_path / "k.h5", trial_stim=[0, 1, 2], test_ids=[0], **common)
    trial_stim, test_ids = make_nsd_betas(tmp_path / "b.h5")
    with pytest.raises(DataError, match="expected 90 trial stimulus ids"):
        convert(betas_h5=tmp_path / "b.h5", trial_stim=trial_stim[:5], test_ids=test_ids, **common)
    (tmp_path / "t.h5").write_bytes((tmp_path / "b.h5").read_bytes()[:100])
    with pytest.raises(DataError, match="truncated"):
        convert(betas_h5=tmp_path / "t.h5", trial_stim=trial_stim, test_ids=test_ids, **common)
    with pytest.raises(ParamsError, match="supported: nsd"):
        get_adapter("god")
