"""Federated training with missing modalities (issue 8): PmcmFL vs FedAvg, dropped sites."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mindpipe.exceptions import ParamsError
from mindpipe.federated.client import LocalTraining, SiteClient
from mindpipe.federated.data import load_sites, skew_and_mask
from mindpipe.io import read_stimuli
from mindpipe.models.pmcmfl import PrototypeLibrary
from mindpipe.params import BaseParams
from mindpipe.recipes.federated import FederatedParams, run_federation, train_federated

TINY = FederatedParams(
    rounds=6,
    clients_per_round=3,
    local=LocalTraining(local_epochs=3, batch_size=16),
    dim=32,
    engine="inprocess",
)


@pytest.fixture(scope="module")
def fed_inputs(twin_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Betas and a features store in the stages' formats, built from the tiny twin's stimuli.

    fMRI carries the category weakly (so fMRI-only classification is hard but above chance),
    image/caption features carry it strongly; voxel counts differ per subject.
    """
    root = tmp_path_factory.mktemp("fed")
    stimuli = read_stimuli(twin_tiny)
    categories = sorted(stimuli["category"].unique())
    code = {c: i for i, c in enumerate(categories)}
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(len(categories), 8))
    y = stimuli["category"].map(code).to_numpy()
    betas_dir = root / "betas"
    betas_dir.mkdir()
    stimuli.to_csv(betas_dir / "stimuli.tsv", sep="\t", index=False)
    for s, n_vox in enumerate((40, 50, 60, 70)):
        folder = betas_dir / f"sub-{s + 1:02d}"
        folder.mkdir()
        mixing = rng.normal(size=(8, n_vox))
        np.save(folder / "voxel_index.npy", np.arange(n_vox, dtype=np.int64))
        for split, repeats in (("train", 2), ("val", 1), ("test", 1)):
            stim = np.repeat(stimuli.loc[stimuli["split"] == split, "stim_id"].to_numpy(), repeats)
            signal = latent[y[stim]] @ mixing
            betas = signal + rng.normal(scale=2.5, size=signal.shape)
            np.save(folder / f"betas_{split}.npy", betas.astype(np.float32))
            np.save(folder / f"stim_{split}.npy", stim.astype(np.int64))
    features_dir = root / "features"
    features_dir.mkdir()
    dim = 16
    protos = rng.normal(size=(2, len(categories), dim))
    with h5py.File(features_dir / "features.h5", "w") as f:
        f["stim_id"] = stimuli["stim_id"].to_numpy()
        f["image_pooled"] = (protos[0][y] + rng.normal(scale=0.7, size=(len(y), dim))).astype("f4")
        f["text_pooled"] = (protos[1][y] + rng.normal(scale=0.7, size=(len(y), dim))).astype("f4")
        f.attrs.update(encoder="fake", fingerprint="0", categories=json.dumps(categories))
        f.attrs["prompt"] = "a photo of a {}"
        f.attrs["prompts"] = json.dumps([f"a photo of a {c}" for c in categories])
    return betas_dir, features_dir


def test_stage_runs_both_strategies_at_every_missing_rate(fed_inputs, tmp_path):
    betas_dir, features_dir = fed_inputs
    m = train_federated(
        betas_dir=betas_dir,
        features_dir=features_dir,
        out_dir=tmp_path,
        params=TINY,
        base=BaseParams(profile="tiny"),
    )
    chance = 1 / m["n_classes"]
    for tag in ("fedavg_zero_m00", "pmcmfl_m00", "fedavg_zero_m50", "pmcmfl_m50"):
        assert m[f"{tag}_accuracy"] > chance + 0.3, tag  # image/caption make it easy
        assert m[f"{tag}_last_completed_round"] == TINY.rounds
        assert (tmp_path / "models" / tag / "global.safetensors").is_file()
        assert (tmp_path / "models" / tag / "sub-04.safetensors").is_file()
        assert m[f"{tag}_accuracy_uni"] > chance + 0.15, tag  # fMRI alone: weak but real
    assert m["fedavg_m50_accuracy"] > chance + 0.3  # noise-filled gaps (the paper's baseline)
    # uni-modality inference: the prototype fill of the class fMRI points to, against noise
    # the head never saw in training (measured 0.69 against 0.39)
    assert m["pmcmfl_m00_accuracy_uni"] > m["fedavg_m00_accuracy_uni"] + 0.15
    assert m["pmcmfl_m50_bytes"] > m["fedavg_m50_bytes"]  # prototypes travel too
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert len(steps["pmcmfl_m50_round_accuracy"]) == TINY.rounds
    assert "pmcmfl_m50_round_accuracy_sub-01" in steps
    val_uni = [v for _, v in steps["pmcmfl_m50_round_val_accuracy_uni"]]  # for model selection
    assert len(val_uni) == TINY.rounds and all(0 <= v <= 1 for v in val_uni)
    assert (tmp_path / "plots" / "accuracy_vs_round.png").stat().st_size > 0
    assert "| pmcmfl | 0.5 |" in (tmp_path / "results.md").read_text()


def test_a_dropped_site_does_not_stop_the_federation(fed_inputs, tmp_path):
    sites, classes = load_sites(*fed_inputs)
    params = dataclasses.replace(TINY, rounds=3, fail_site=1, fail_round=2, clients_per_round=4)
    history, _ = run_federation(sites, len(classes), "pmcmfl", params, 0, tmp_path)
    assert [r["failures"] for r in history.rounds] == [0, 1, 0]
    assert history.last_completed_round == 3


def test_when_every_site_fails_the_last_completed_round_is_kept(fed_inputs, tmp_path, monkeypatch):
    sites, classes = load_sites(*fed_inputs)
    two = dataclasses.replace(TINY, rounds=2, clients_per_round=4)
    after_two, _ = run_federation(sites, len(classes), "fedavg", two, 0, tmp_path / "a")
    fit = SiteClient.fit

    def fit_failing_in_round_3(self, parameters, config):
        if int(config["round"]) == 3:
            raise RuntimeError("site lost")
        return fit(self, parameters, config)

    monkeypatch.setattr(SiteClient, "fit", fit_failing_in_round_3)
    three = dataclasses.replace(two, rounds=3)
    history, _ = run_federation(sites, len(classes), "fedavg", three, 0, tmp_path / "b")
    assert history.last_completed_round == 2
    assert history.rounds[-1]["failures"] == len(sites)
    for a, b in zip(history.final, after_two.final, strict=True):
        np.testing.assert_array_equal(a, b)


def test_prototype_library_is_count_weighted_and_skips_unseen_classes():
    a = PrototypeLibrary(np.ones((4, 3, 2), np.float32), np.array([[1, 3, 0]] * 4, np.float32))
    b = PrototypeLibrary(np.zeros((4, 3, 2), np.float32), np.array([[3, 1, 0]] * 4, np.float32))
    merged = PrototypeLibrary.aggregate([a, b])
    np.testing.assert_allclose(merged.protos[0, :, 0], [0.25, 0.75, 0.0])
    assert merged.known()[0].tolist() == [True, True, False]


def test_fmri_prototypes_stay_at_their_site_and_serve_it(fed_inputs, tmp_path):
    """Each site's fMRI encoder is its own, so are its fMRI prototypes: the server's library
    has none, the site keeps them beside its encoder and reads them back with the library."""
    from safetensors.numpy import load_file

    from mindpipe.recipes.federated import client_factory

    sites, classes = load_sites(*fed_inputs)
    params = dataclasses.replace(TINY, rounds=2, clients_per_round=4)
    history, keys = run_federation(sites, len(classes), "pmcmfl", params, 0, tmp_path)
    server = PrototypeLibrary(*history.final[len(keys) :])
    assert not server.known()[0].any()  # no fMRI prototypes travel
    assert server.known()[1:].any(axis=1).all()  # image, caption and fused ones do
    own = load_file(tmp_path / "sub-02.safetensors")
    assert own["own_prototype_counts"].sum() == len(sites[1].train.labels)
    client = client_factory(sites, len(classes), params, 0, tmp_path)(1)
    client.evaluate(history.final, {"strategy": "pmcmfl"})
    np.testing.assert_array_equal(client.library.protos[0], own["own_prototypes"])
    np.testing.assert_array_equal(client.library.protos[1:], server.protos[1:])


def test_missing_slots_get_class_prototypes_but_fmri_gets_noise():
    from mindpipe.federated.client import _fill

    torch.manual_seed(0)
    reps, protos = torch.zeros(2, 3, 4), torch.arange(24.0).view(3, 2, 4) + 1
    protos = torch.cat([protos, protos[:1]])  # + the fused row
    known = torch.ones(4, 2, dtype=torch.bool)
    mask = torch.tensor([[False, False, True], [True, True, False]])
    filled = _fill(reps, mask, "pmcmfl", protos, known, torch.tensor([1, 0]))
    torch.testing.assert_close(filled[0, 1], protos[1, 1])  # missing image: class 1's
    torch.testing.assert_close(filled[1, 2], protos[2, 0])  # missing caption: class 0's
    assert not torch.isclose(filled[0, 0], protos[0, 1]).any()  # missing fMRI: noise
    assert filled[0, 0].std() > 0.3
    assert torch.equal(filled[mask], reps[mask])  # present slots untouched


def test_missing_rate_drops_modalities_and_skew_thins_classes(fed_inputs):
    sites, classes = load_sites(*fed_inputs)
    site = skew_and_mask(sites[0], len(classes), dirichlet_alpha=0.3, missing_rate=0.5, seed=0)
    assert len(site.train) < len(sites[0].train)
    assert site.train.present.any(axis=1).all()
    assert 0.3 < site.train.present.mean() < 0.8
    assert site.test.present.all()


def test_round_histories_are_logged_to_mlflow_as_steps(tmp_path, monkeypatch):
    import mlflow

    from mindpipe.tracking import log_stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")
    run_id = log_stage_run(
        stage="federated",
        params={},
        metrics={"pmcmfl_m50_accuracy": 0.5},
        tags={},
        artifacts=[],
        steps={"pmcmfl_m50_round_accuracy": [[1, 0.2], [2, 0.4], [3, 0.5]]},
    )
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    history = client.get_metric_history(run_id, "pmcmfl_m50_round_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.2), (2, 0.4), (3, 0.5)]


@pytest.mark.slow
def test_flower_simulation_engine_matches_the_inprocess_engine(fed_inputs, tmp_path):
    """Ray's virtual nodes rebuild each client per message; results must not change."""
    sites, classes = load_sites(*fed_inputs)
    params = dataclasses.replace(TINY, rounds=2, clients_per_round=4, fail_site=2, fail_round=2)
    runs = {
        engine: run_federation(
            sites,
            len(classes),
            "pmcmfl",
            dataclasses.replace(params, engine=engine),
            0,
            tmp_path / engine,
        )[0]
        for engine in ("inprocess", "simulation")
    }
    local, flower = runs["inprocess"], runs["simulation"]
    assert [r["failures"] for r in flower.rounds] == [0, 1]  # the dropped site, through Ray
    assert flower.last_completed_round == 2
    for a, b in zip(local.rounds, flower.rounds, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    for a, b in zip(local.final, flower.final, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_caption_and_image_features_are_standardised_with_training_statistics(fed_inputs):
    """Each feature dimension has mean 0 and sd 1 over the (unique) training stimuli; val and
    test go through the same transform, not one refitted on themselves."""
    betas_dir, features_dir = fed_inputs
    sites, _ = load_sites(betas_dir, features_dir)
    with h5py.File(features_dir / "features.h5") as f:
        raw = dict(zip(f["stim_id"][:], f["image_pooled"][:], strict=True))
    train_stim = np.unique(np.load(betas_dir / "sub-01" / "stim_train.npy"))
    seen_rows = {tuple(np.round(r, 5)) for s in sites for r in s.train.image}
    assert len(seen_rows) == len(train_stim)  # every site shows the same training images
    train = np.array(sorted(seen_rows))
    np.testing.assert_allclose(train.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.std(0), 1.0, atol=1e-3)
    stats = np.array([raw[s] for s in train_stim])
    test_stim = np.load(betas_dir / "sub-01" / "stim_test.npy")[0]
    expected = (raw[test_stim] - stats.mean(0)) / (stats.std(0) + 1e-6)
    np.testing.assert_allclose(sites[0].test.image[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_fmri_dropout_outside_unit_interval_is_refused(value):
    with pytest.raises(ParamsError, match=r"federated\.fmri_dropout"):
        FederatedParams(fmri_dropout=value)
