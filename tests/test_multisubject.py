"""Multi-subject decoders: MindTuner (LoRA + Skip-LoRA) and Wills Aligner (brain experts), and
their stages on the tiny twin."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from mindpipe.cli import main
from mindpipe.evaluate.retrieval import cosine_similarity
from mindpipe.models.mindtuner import MindTuner, MindTunerConfig, adapt
from mindpipe.models.wills import Wills, WillsConfig
from mindpipe.recipes.contrastive import SubjectView, TrainConfig, fit_subjects, predict

MINDTUNER_MODELS = ("mindtuner", "mindtuner_lora_only", "mindtuner_scratch", "litemind_scratch")
WILLS_MODELS = ("wills", "wills_no_experts", "wills_no_alignment", "wills_neither")
CPU = torch.device("cpu")


def pretrained_mindtuner() -> MindTuner:
    torch.manual_seed(0)
    config = MindTunerConfig(("sub-01", "sub-02"), (30, 40), embed_dim=8, n_tokens=2, hidden=16)
    return MindTuner(config)


def toy_subject(n_voxels: int, n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Voxels that are a fixed linear read-out of the targets, plus noise."""
    rng = np.random.default_rng(seed)
    target = rng.normal(size=(n, 2, 8)).astype(np.float32)
    mixing = rng.normal(size=(16, n_voxels))
    voxels = target.reshape(n, -1) @ mixing + 0.1 * rng.normal(size=(n, n_voxels))
    return voxels.astype(np.float32), target


class SharedWorld:
    """Subjects who see the same kind of stimuli: an 8-d latent per trial, a fixed nonlinear
    map from it to the (2, 8) CLIP-like target that every subject shares, and per subject a
    linear read-out of the latent into its voxels, plus noise."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.hidden, self.head = rng.normal(size=(8, 32)), rng.normal(size=(32, 16)) / 32**0.5

    def subject(self, mixing: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        latent = rng.normal(size=(n, 8))
        target = (np.tanh(latent @ self.hidden) @ self.head).reshape(n, 2, 8)
        voxels = latent @ mixing + 0.5 * rng.normal(size=(n, mixing.shape[1]))
        return voxels.astype(np.float32), target.astype(np.float32)


def top1_on(model, subject: str, test: tuple[np.ndarray, np.ndarray]) -> float:
    """Top-1 retrieval of the test targets from the decoded rows (chance 1 / len(test))."""
    decoded = predict(SubjectView(model, subject), test[0], torch.device("cpu"))
    similarity = cosine_similarity(decoded.reshape(len(decoded), -1), test[1].reshape(64, -1))
    return float(np.mean(similarity.argmax(axis=1) == np.arange(len(similarity))))


def test_adapters_alone_decode_a_new_subject_from_24_trials():
    world, rng = SharedWorld(), np.random.default_rng(1)
    mixing = {s: rng.normal(size=(8, v)) for s, v in (("a", 30), ("b", 40), ("new", 36))}
    train = {s: world.subject(m, 400, i) for i, (s, m) in enumerate(mixing.items())}
    val = {s: world.subject(m, 32, 10 + i) for i, (s, m) in enumerate(mixing.items())}
    test = world.subject(mixing["new"], 64, 20)
    torch.manual_seed(0)
    model = MindTuner(MindTunerConfig(("a", "b"), (30, 40), embed_dim=8, n_tokens=2, hidden=32))
    config = TrainConfig(epochs=20, batch_size=32, loss="mixco_softclip")
    pretrain = {s: train[s] for s in "ab"}
    fit_subjects(model, pretrain, {s: val[s] for s in "ab"}, config, CPU, 0, report_as="p")
    model = adapt(model, "new", 36, rank=4)
    few = {"new": (train["new"][0][:24], train["new"][1][:24])}
    config = TrainConfig(epochs=30, batch_size=16, loss="mixco_softclip")
    fit_subjects(
        model, few, {"new": val["new"]}, config, CPU, 0, report_as="f", regulariser_weight=1.5
    )
    # measured 0.20 (chance 1/64 = 0.016); only the input map and the adapters trained
    assert top1_on(model, "new", test) > 6 / 64


def test_wills_transfers_to_a_new_subject_through_the_template_space_only():
    """Same network and budget on the same trials; only the voxel spaces differ: one template
    space shared by every subject (aligned), or each subject's own voxel order (native)."""
    world, mixing = SharedWorld(), np.random.default_rng(2).normal(size=(8, 36))

    def new_subject_top1(aligned: bool) -> float:
        train, val, test = {}, {}, {}
        for i, s in enumerate(("a", "b", "new")):
            order = np.arange(36) if aligned else np.random.default_rng(50 + i).permutation(36)
            train[s] = world.subject(mixing[:, order], 200 if s != "new" else 24, i)
            val[s] = world.subject(mixing[:, order], 32, 10 + i)
            test[s] = world.subject(mixing[:, order], 64, 20 + i)
        torch.manual_seed(0)
        model = Wills(
            WillsConfig(
                36, 8, n_tokens=2, hidden=32, subjects=tuple(train), n_experts=2, expert_dim=4
            )
        )
        for stage, epochs in ((1, 8), (2, 3)):  # shared network, then experts and router
            model.train_stage(stage)
            config = TrainConfig(epochs=epochs, batch_size=48, loss="mixco_softclip")
            fit_subjects(model, train, val, config, CPU, 0, report_as=f"stage{stage}")
        return top1_on(model, "new", test["new"])

    aligned, native = new_subject_top1(True), new_subject_top1(False)
    assert aligned > native + 0.15 and aligned > 8 / 64  # measured 0.30 against 0.03


def test_adapters_start_as_the_pretrained_model_and_only_they_train():
    pretrained = pretrained_mindtuner().eval()
    model = adapt(pretrained, "sub-03", 24, rank=4).eval()
    voxels = torch.randn(5, 30)
    torch.testing.assert_close(model(voxels, "sub-01"), pretrained(voxels, "sub-01"))

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "fine-tuning would train nothing"
    assert all("lora_" in n or n.startswith(("skips.", "ridges.sub-03.")) for n in trainable)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and "skips" not in n)
    skip = sum(p.numel() for p in model.skips.parameters())
    ridge = sum(p.numel() for p in model.ridges["sub-03"].parameters())
    # rank x (in + out): 2 blocks x 2 layers 16 -> 16, and the head 16 -> 2 x 8
    assert lora == 4 * (2 * 2 * (16 + 16) + (16 + 16)) and skip == 2 * 4 * (24 + 16)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == lora + skip + ridge


def test_finetuning_leaves_the_frozen_backbone_unchanged_and_moves_the_adapters():
    model = adapt(pretrained_mindtuner(), "sub-03", 24, rank=4)
    frozen = model.frozen_state()
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train, val = toy_subject(24), toy_subject(24, n=16, seed=1)
    config = TrainConfig(epochs=3, batch_size=16, loss="mixco_softclip")
    result = fit_subjects(
        model, {"sub-03": train}, {"sub-03": val}, config, torch.device("cpu"), 0,
        report_as="t", regulariser_weight=1.5,
    )  # fmt: skip
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], w) for n, w in frozen.items())
    # the best epoch's weights are kept: some adapter moved unless epoch 0 was never beaten
    assert any(not torch.equal(params[n], w) for n, w in adapters.items())
    assert len(result.history) == 3


def test_skip_lora_reports_its_decorrelation_and_lora_only_has_none():
    model = adapt(pretrained_mindtuner(), "sub-03", 24, rank=4)
    torch.nn.init.normal_(model.skips[0].lora_b)  # a skip that outputs something
    model(torch.randn(6, 24), "sub-03")
    assert 0 < model.regulariser().item() <= 1
    model(torch.randn(6, 30), "sub-01")  # other subjects bypass the skips
    assert model.regulariser() is None
    lora_only = adapt(pretrained_mindtuner(), "sub-03", 24, rank=4, skip=False)
    lora_only(torch.randn(6, 24), "sub-03")
    assert len(lora_only.skips) == 0 and lora_only.regulariser() is None


def test_mismatched_voxels_and_subjects_are_clear_errors():
    model = pretrained_mindtuner()
    with pytest.raises(ValueError, match=r"sub-01.*30 voxels"):
        model(torch.randn(2, 31), "sub-01")
    with pytest.raises(ValueError, match="sub-09"):
        model(torch.randn(2, 30), "sub-09")
    with pytest.raises(ValueError, match="already in the model"):
        adapt(model, "sub-01", 30, rank=4)
    wills = Wills(WillsConfig(12, 4, hidden=8, subjects=("sub-01",), expert_dim=2))
    with pytest.raises(ValueError, match=r"\(batch, 12\) template-space voxels"):
        wills(torch.randn(2, 13), "sub-01")


def test_brain_experts_start_silent_and_the_two_stages_train_disjoint_parts():
    torch.manual_seed(0)
    config = WillsConfig(
        12, 4, hidden=8, n_blocks=2, subjects=("a", "b"), n_experts=3, expert_dim=2
    )
    model = Wills(config).eval()
    plain = Wills(WillsConfig(**{**config.__dict__, "n_experts": 0})).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    voxels = torch.randn(3, 12)
    torch.testing.assert_close(model(voxels, "a"), plain(voxels, "a"))
    torch.testing.assert_close(model.routing("a").sum(-1), torch.ones(config.n_blocks))

    shared = model.train_stage(1)
    plugin = model.train_stage(2)
    assert shared + plugin == sum(p.numel() for p in model.parameters())
    assert plugin == 2 * 3 * (8 * 2 * 2) + 2 * 2 * 3  # experts + router
    torch.nn.init.normal_(model.experts[0].up)
    with torch.no_grad():
        model.router[1, 0] = torch.tensor([5.0, -5.0, 0.0])
    assert not torch.allclose(model(voxels, "a"), model(voxels, "b"))  # routed per subject


@pytest.mark.slow
def test_multisubject_stages_write_their_comparisons(tiny_run):
    for stage, models in [("mindtuner", MINDTUNER_MODELS), ("wills", WILLS_MODELS)]:
        folder = tiny_run / "artifacts" / stage
        metrics = json.loads((folder / "metrics.json").read_text())
        for name in models:
            assert (folder / name / "predictions" / "sub-04.npz").is_file()
            assert 0 <= metrics[f"{name}.test_top1"] <= 1
            assert f"{name}.f0.5.test_top1" in metrics
        assert (folder / "plots" / "fewshot_curve.png").stat().st_size > 0
        assert "| " + models[0] + " |" in (folder / "results.md").read_text()
    report = (tiny_run / "artifacts/evaluate/report.md").read_text()
    assert "| mindtuner (sub-04) |" in report and "| wills_neither (sub-04) |" in report
    m = json.loads((tiny_run / "artifacts/mindtuner/metrics.json").read_text())
    assert m["mindtuner.frozen_max_change"] == 0.0
    assert m["mindtuner.trainable_params"] < m["mindtuner.total_params"] / 2
    assert m["mindtuner_scratch.trainable_params"] == m["mindtuner_scratch.total_params"]
    assert 0 <= m["pivot.caption_top1"] <= 1 and 0 < m["pivot.chance"] < 1


FEWSHOT_DECODERS = (*MINDTUNER_MODELS, *WILLS_MODELS)


@pytest.mark.slow
def test_few_data_decoders_are_reconstructed_from_ablurry_start_on_their_own_trials(tiny_run):
    folder = tiny_run / "artifacts/reconstruct_fewshot"
    m = json.loads((folder / "metrics.json").read_text())
    trials = json.loads((tiny_run / "artifacts/mindtuner/metrics.json").read_text())[
        "mindtuner.trials"
    ]
    blurry = f"blurry_{trials}trials"  # fitted on the decoders' slice, not every trial
    test_ids = np.load(tiny_run / "artifacts/preprocess/sub-04/stim_test.npy")
    for source in (*FEWSHOT_DECODERS, blurry):
        with np.load(folder / "recon" / source / "sub-04.npz") as npz:
            assert np.array_equal(npz["stim_id"], test_ids)
            assert npz["images"].shape == (len(test_ids), 32, 32, 3)
        assert m[f"{source}.trials"] == trials
        assert 0 <= m[f"{source}.ssim"] <= 1
    assert (folder / "plots/grid.png").stat().st_size > 0
    assert (
        "| litemind (sub-04, every trial; reconstruct stage) |"
        in (folder / "results.md").read_text()
    )
    report = (tiny_run / "artifacts/evaluate/report.md").read_text()
    assert "| wills (sub-04) |" in report and f"| {blurry} (sub-04) (shuffled) |" in report
    assert "| litemind |" in report  # the reconstruct stage's rows keep their labels


def test_the_blurry_start_sees_only_the_first_trials(tiny_run, twin_tiny, tmp_path):
    from mindpipe.io import read_stimuli
    from mindpipe.io.betas import load_betas
    from mindpipe.io.images import load_images
    from mindpipe.recipes.reconstruct import ReconstructParams, stimulus_thumbnails
    from mindpipe.recipes.reconstruct_fewshot import blurry_start

    betas = tmp_path / "preprocess"
    shutil.copytree(tiny_run / "artifacts/preprocess", betas)
    stimuli = read_stimuli(twin_tiny)
    thumbnails = stimulus_thumbnails(load_images(twin_tiny, stimuli), stimuli, 8)
    ids = load_betas(betas, "sub-04").stim["test"]
    params = ReconstructParams()
    _, before = blurry_start(betas, "sub-04", 12, ids, thumbnails, params)
    later = np.load(betas / "sub-04/betas_train.npy")
    later[12:] = np.random.default_rng(0).normal(size=later[12:].shape)
    np.save(betas / "sub-04/betas_train.npy", later)
    name, after = blurry_start(betas, "sub-04", 12, ids, thumbnails, params)
    assert name == "blurry_12trials"
    assert torch.equal(before, after)
    _, every_trial = blurry_start(betas, "sub-04", len(later), ids, thumbnails, params)
    assert not torch.equal(before, every_trial)


def test_reconstruct_fewshot_needs_the_generator_s_saved_sampler(tiny_run, tmp_path, capsys):
    shutil.copytree(tiny_run / "artifacts", tmp_path / "artifacts")
    shutil.copy(tiny_run / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "artifacts/reconstruct/model/reconstruct_params.json").unlink()
    shutil.rmtree(tmp_path / "artifacts/reconstruct_fewshot")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["stage", "reconstruct_fewshot"]) != 0
    finally:
        os.chdir(cwd)
    assert "reconstruct_params.json' is missing: rerun the reconstruct stage" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "artifacts/reconstruct_fewshot").exists()


def test_wills_names_a_subject_missing_from_the_alignment(tiny_run, tmp_path, monkeypatch, capsys):
    shutil.copytree(tiny_run / "artifacts", tmp_path / "artifacts", dirs_exist_ok=True)
    shutil.copy(tiny_run / "params.yaml", tmp_path / "params.yaml")
    shutil.rmtree(tmp_path / "artifacts/align/sub-02")
    shutil.rmtree(tmp_path / "artifacts/wills")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")
    assert main(["stage", "wills"]) != 0
    assert "['sub-02'] are missing from the alignment" in capsys.readouterr().err
    assert not (tmp_path / "artifacts/wills").exists()


def test_wills_records_why_it_cannot_run_without_an_alignment(tmp_path):
    """Several subjects imported as betas without anatomy: align recorded it; wills says so."""
    from mindpipe.params import BaseParams
    from mindpipe.recipes.wills import WillsParams, train_wills

    for subject in ("sub-01", "sub-02"):
        (tmp_path / "betas" / subject).mkdir(parents=True)
    (tmp_path / "align").mkdir()
    record = {"available": False, "reason": "no T1w image"}
    (tmp_path / "align" / "alignment.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    out.mkdir()
    metrics = train_wills(
        betas_dir=tmp_path / "betas",
        aligned_dir=tmp_path / "align",
        features_dir=tmp_path / "features",
        out_dir=out,
        params=WillsParams(),
        base=BaseParams(),
    )
    assert metrics == {"available": 0.0}
    assert "did not align these subjects: no T1w image" in (out / "results.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["results.md", "unavailable.json"]
