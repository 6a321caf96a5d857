"""The synthetic twin: layout, determinism, anatomy, encoding model and BOLD (tiny profile)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import spm_hrf

from mindpipe.exceptions import DataError, ParamsError
from mindpipe.io.bids import STIMULI_CONTRACT_COLUMNS
from mindpipe.twin import generate, get_profile, load_truth, subject_to_template
from mindpipe.twin.bold import hrf, trial_regressors
from mindpipe.twin.responses import retinotopic_map
from mindpipe.twin.stimuli import caption, pretraining_corpus

SUBJECTS = [f"sub-{i:02d}" for i in range(1, 5)]
TRUTH = Path("derivatives") / "twin-truth"


def digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def bold_runs(root: Path, subject: str) -> list[Path]:
    return sorted((root / subject / "func").glob("*_bold.nii.gz"))


def voxel_mm(index: np.ndarray, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    ijk = np.column_stack(np.unravel_index(index, shape[:3]))
    return nib.affines.apply_affine(affine, ijk)


@pytest.fixture(scope="module")
def stimuli(twin_tiny: Path) -> pd.DataFrame:
    return pd.read_csv(twin_tiny / "stimuli" / "stimuli.tsv", sep="\t")


# --- configuration --------------------------------------------------------------------------------
def test_profiles_and_overrides() -> None:
    tiny, default = get_profile("tiny"), get_profile("default")
    assert tiny.n_subjects >= 4 and default.n_subjects >= 4
    assert (default.n_train, default.n_val, default.n_test) == (1000, 100, 300)
    assert get_profile("tiny", noise_sd=2, size_range=[0.3, 0.5]).noise_sd == 2.0
    assert get_profile("tiny", size_range=[0.3, 0.5]).size_range == (0.3, 0.5)


def test_bad_profile_or_override_raises() -> None:
    with pytest.raises(ParamsError, match=r"unknown twin profile 'huge'.*\['default', 'tiny'\]"):
        get_profile("huge")
    with pytest.raises(
        ParamsError, match=r"unknown twin setting\(s\) \['noise'\]; allowed: .*noise_sd"
    ):
        get_profile("tiny", noise=1.0)
    with pytest.raises(ParamsError, match=r"twin.noise_sd: expected float, got 'loud'"):
        get_profile("tiny", noise_sd="loud")
    with pytest.raises(ParamsError, match=r"twin.n_held_out: must be in \[0, n_categories\)"):
        get_profile("tiny", n_held_out=6)
    with pytest.raises(ParamsError, match="unknown twin setting"):
        generate("/nonexistent/never-written", profile="tiny", seed=0, bogus=1)


# --- files ----------------------------------------------------------------------------------------
def test_layout_matches_data_format(twin_tiny: Path, stimuli: pd.DataFrame) -> None:
    files = set(digests(twin_tiny))
    top = {
        "dataset_description.json", "participants.tsv", "stimuli/stimuli.tsv",
        "stimuli/categories.tsv", "template/tpl-twin_T1w.nii.gz",
        "template/tpl-twin_desc-visual_mask.nii.gz",
        f"{TRUTH}/twin.json", f"{TRUTH}/stimuli_latents.npy", f"{TRUTH}/dataset_description.json",
    }  # fmt: skip
    assert top <= files
    assert {f for f in files if f.startswith("stimuli/images/")} == set(stimuli["file"])
    for sub in SUBJECTS:
        assert {
            f"{sub}/anat/{sub}_T1w.nii.gz",
            f"{sub}/func/{sub}_desc-visual_mask.nii.gz",
            f"{TRUTH}/{sub}_transform.json",
            f"{TRUTH}/{sub}_encoding.npz",
        } <= files
        runs = bold_runs(twin_tiny, sub)
        assert len(runs) >= 2
        for run in runs:
            stem = run.name.removesuffix("_bold.nii.gz")
            assert stem.startswith(f"{sub}_ses-") and "_task-images_run-" in stem
            assert {f"{sub}/func/{stem}_bold.json", f"{sub}/func/{stem}_events.tsv"} <= files
    desc = json.loads((twin_tiny / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and desc["GeneratedBy"][0]["Name"] == "mindpipe twin"
    assert (desc["profile"], desc["seed"]) == ("tiny", 0)
    participants = pd.read_csv(twin_tiny / "participants.tsv", sep="\t")
    assert participants["participant_id"].tolist() == SUBJECTS
    twin = json.loads((twin_tiny / TRUTH / "twin.json").read_text())
    assert twin["config"] == json.loads(json.dumps(get_profile("tiny").__dict__))


def test_same_seed_same_bytes_other_seed_differs(twin_tiny: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", profile="tiny", seed=0)
    assert digests(again) == digests(twin_tiny)
    other = digests(generate(tmp_path / "other", profile="tiny", seed=1))
    reference = digests(twin_tiny)
    changed = {k for k in reference if other.get(k) != reference[k]}
    assert "stimuli/stimuli.tsv" in changed
    assert all(f"{s}/func/{s}_ses-01_task-images_run-01_bold.nii.gz" in changed for s in SUBJECTS)
    assert not list(tmp_path.glob(".again.tmp-*"))  # the atomic writer cleaned up


# --- stimuli --------------------------------------------------------------------------------------
def test_stimulus_table_and_splits(twin_tiny: Path, stimuli: pd.DataFrame) -> None:
    cfg = get_profile("tiny")
    assert tuple(stimuli.columns) == STIMULI_CONTRACT_COLUMNS
    assert stimuli["stim_id"].tolist() == list(range(cfg.n_stimuli))
    assert stimuli["split"].value_counts().to_dict() == {
        "train": cfg.n_train,
        "val": cfg.n_val,
        "test": cfg.n_test,
    }
    categories = pd.read_csv(twin_tiny / "stimuli" / "categories.tsv", sep="\t")
    held = set(categories.loc[categories["held_out"] == 1, "category"])
    assert len(held) == cfg.n_held_out and len(categories) == cfg.n_categories
    assert {"n_corners", "curvature", "has_hole"} <= set(categories.columns)
    seen_splits = stimuli[stimuli["split"] != "test"]
    assert not set(seen_splits["category"]) & held
    test = stimuli[stimuli["split"] == "test"]
    assert set(test["category"]) == set(categories["category"])  # test covers every category
    assert (stimuli["held_out"] == stimuli["category"].isin(held).astype(int)).all()
    assert stimuli["size"].between(*cfg.size_range).all()
    assert (stimuli[["x", "y"]].abs().max(axis=1) + stimuli["size"] <= 1.0).all()
    row = stimuli.iloc[0]
    assert row["caption"].startswith("a ") and f" {row['colour']} " in row["caption"]
    assert row["caption"].split()[-1] in {"left", "right", "top", "bottom", "centre"}
    from PIL import Image

    image = Image.open(twin_tiny / row["file"])
    assert image.mode == "RGB" and image.size == (cfg.image_size, cfg.image_size)
    latents = np.load(twin_tiny / TRUTH / "stimuli_latents.npy")
    assert latents.dtype == np.float32 and latents.shape == (cfg.n_stimuli, cfg.n_latent)


# --- anatomy --------------------------------------------------------------------------------------
def test_masks_are_in_the_brain(twin_tiny: Path) -> None:
    tpl_mask = nib.load(twin_tiny / "template" / "tpl-twin_desc-visual_mask.nii.gz")
    tpl_t1 = nib.load(twin_tiny / "template" / "tpl-twin_T1w.nii.gz")
    assert tpl_mask.get_data_dtype() == np.uint8 and np.allclose(tpl_mask.affine, tpl_t1.affine)
    assert np.asarray(tpl_mask.dataobj).sum() > 0
    assert np.all(np.asarray(tpl_t1.dataobj)[np.asarray(tpl_mask.dataobj) == 1] > 0)
    for sub in SUBJECTS:
        mask_img = nib.load(twin_tiny / sub / "func" / f"{sub}_desc-visual_mask.nii.gz")
        mask = np.asarray(mask_img.dataobj)
        assert mask_img.get_data_dtype() == np.uint8 and set(np.unique(mask)) == {0, 1}
        bold = np.asarray(nib.load(bold_runs(twin_tiny, sub)[0]).dataobj)
        assert bold.shape[:3] == mask.shape
        assert np.all(bold[mask == 1] > 0)  # every mask voxel is brain (non-zero BOLD)
        truth = load_truth(twin_tiny, sub)
        assert np.array_equal(truth.voxel_index, np.flatnonzero(mask.ravel()))
        # Mapped to the template, the subject's mask voxels fall in the template's visual mask.
        points = voxel_mm(truth.voxel_index, mask.shape, mask_img.affine)
        ijk = nib.affines.apply_affine(
            np.linalg.inv(tpl_mask.affine), subject_to_template(points, truth.transform)
        )
        ijk = np.clip(np.rint(ijk).astype(int), 0, np.array(tpl_mask.shape) - 1)
        assert np.asarray(tpl_mask.dataobj)[tuple(ijk.T)].mean() > 0.8


def test_subject_anatomies_differ_and_map_onto_the_template(twin_tiny: Path) -> None:
    tpl = nib.load(twin_tiny / "template" / "tpl-twin_T1w.nii.gz")
    tpl_data = np.asarray(tpl.dataobj)
    tpl_brain = np.flatnonzero(tpl_data.ravel() > 0)
    tpl_centroid = voxel_mm(tpl_brain, tpl_data.shape, tpl.affine).mean(axis=0)
    affines = []
    for sub in SUBJECTS:
        t1 = nib.load(twin_tiny / sub / "anat" / f"{sub}_T1w.nii.gz")
        data = np.asarray(t1.dataobj)
        brain = np.flatnonzero(data.ravel() > 0)
        points = voxel_mm(brain, data.shape, t1.affine)
        transform = json.loads((twin_tiny / TRUTH / f"{sub}_transform.json").read_text())
        affines.append(np.asarray(transform["affine"]))
        mapped = subject_to_template(points, load_truth(twin_tiny, sub).transform)
        assert np.allclose(mapped, subject_to_template(points, transform))
        assert np.linalg.norm(mapped.mean(axis=0) - tpl_centroid) < 2.0
        # Mapped subject brain voxels land in the template brain (nearest template voxel).
        ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(tpl.affine), mapped)).astype(int)
        ijk = np.clip(ijk, 0, np.array(tpl_data.shape) - 1)
        assert (tpl_data[tuple(ijk.T)] > 0).mean() > 0.95
        # Without the mapping, the brains would not line up as well.
        assert not np.allclose(transform["affine"], np.eye(4), atol=1e-3)
    assert len({a.tobytes() for a in affines}) == len(SUBJECTS)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        subject_to_template(np.zeros(3), affines[0])


# --- encoding model -------------------------------------------------------------------------------
def test_amplitudes_finite_and_in_range(twin_tiny: Path) -> None:
    cfg = get_profile("tiny")
    for sub in SUBJECTS:
        truth = load_truth(twin_tiny, sub)
        n_mask = len(truth.voxel_index)
        assert truth.amplitude.shape == (cfg.n_stimuli, n_mask)
        assert truth.amplitude.dtype == np.float32 and truth.noise_sd.dtype == np.float32
        assert truth.voxel_index.dtype == np.int64 and truth.kind.dtype == np.uint8
        assert np.isfinite(truth.amplitude).all() and (truth.amplitude >= 0).all()
        assert 0.5 < np.median(truth.amplitude) < 3.0 and truth.amplitude.max() < 10.0
        assert set(np.unique(truth.kind)) == {0, 1}  # both retinotopic and semantic voxels
        assert np.all(truth.noise_sd > 0)
    assert load_truth(twin_tiny, 1).subject == "sub-01"
    with pytest.raises(DataError, match=r"twin ground truth not found: .*sub-09_encoding\.npz"):
        load_truth(twin_tiny, "sub-09")


def test_retinotopy_left_stimuli_drive_left_prfs(twin_tiny: Path, stimuli: pd.DataFrame) -> None:
    cfg = get_profile("tiny")
    left, right = (stimuli["x"] < -0.2).to_numpy(), (stimuli["x"] > 0.2).to_numpy()
    for sub in SUBJECTS:
        truth = load_truth(twin_tiny, sub)
        mask = nib.load(twin_tiny / sub / "func" / f"{sub}_desc-visual_mask.nii.gz")
        retino = truth.kind == 0
        points = voxel_mm(truth.voxel_index[retino], mask.shape, mask.affine)
        centre, _ = retinotopic_map(subject_to_template(points, truth.transform), cfg)
        amp = truth.amplitude[:, retino]
        prefers_left = amp[left].mean(axis=0) - amp[right].mean(axis=0)
        prf_left, prf_right = centre[:, 0] < -0.3, centre[:, 0] > 0.3
        assert prf_left.sum() >= 3 and prf_right.sum() >= 3
        assert prefers_left[prf_left].mean() > 0 > prefers_left[prf_right].mean()


# --- BOLD and events ------------------------------------------------------------------------------
def test_bold_headers_and_events_agree(twin_tiny: Path, stimuli: pd.DataFrame) -> None:
    cfg = get_profile("tiny")
    for sub in SUBJECTS:
        shown = []
        for path in bold_runs(twin_tiny, sub):
            img = nib.load(path)
            assert img.ndim == 4 and img.get_data_dtype() == np.int16
            assert img.header.get_xyzt_units() == ("mm", "sec")
            assert img.header["pixdim"][4] == pytest.approx(cfg.tr_s)
            sidecar = json.loads(Path(str(path).replace(".nii.gz", ".json")).read_text())
            assert sidecar == {"RepetitionTime": cfg.tr_s, "TaskName": "images"}
            events = pd.read_csv(str(path).replace("_bold.nii.gz", "_events.tsv"), sep="\t")
            assert list(events.columns) == [
                "onset",
                "duration",
                "trial_type",
                "stim_id",
                "stim_file",
            ]
            assert (events["trial_type"] == "stimulus").all()
            assert events["stim_id"].is_unique  # repeats of an image fall in different runs
            n_vols = img.shape[3]
            assert (events["onset"] + events["duration"]).max() <= n_vols * cfg.tr_s
            assert events["onset"].min() >= cfg.lead_in_s - 1e-9
            files = stimuli.set_index("stim_id").loc[events["stim_id"], "file"]
            assert (files.to_numpy() == events["stim_file"].to_numpy()).all()
            shown.append(events["stim_id"].to_numpy())
        counts = pd.Series(np.concatenate(shown)).value_counts().sort_index()
        reps = stimuli["split"].map(
            {"train": cfg.reps_train, "val": cfg.reps_val, "test": cfg.reps_test}
        )
        assert counts.to_numpy().tolist() == reps.to_numpy().tolist()


def test_bold_signal_levels(twin_tiny: Path) -> None:
    cfg = get_profile("tiny")
    bold = np.asarray(nib.load(bold_runs(twin_tiny, "sub-01")[0]).dataobj).astype(float)
    brain = bold[..., 0] > 0
    assert np.all(bold[~brain] == 0)  # skull-stripped: zero outside the brain
    mean = bold[brain].mean(axis=1)
    assert 300 < np.median(mean) < 1500
    # Temporal sd of a voxel is a few % of its mean: noise + drift + responses.
    cv = 100 * bold[brain].std(axis=1) / mean
    assert cfg.noise_sd * 0.5 < np.median(cv) < cfg.noise_sd * 4


def test_hrf_is_nilearns_spm_hrf() -> None:
    # nilearn samples linspace(0, 32, 320) with the gammas shifted by one step dt = 2 / 20.
    theirs = spm_hrf(2.0, oversampling=20)
    ours = hrf(np.linspace(0, 32, len(theirs)) - 0.1)
    assert np.allclose(ours / ours.sum(), theirs, atol=1e-6)
    frames = np.arange(30) * 2.0
    x = trial_regressors(np.array([8.0]), 2.0, frames)[:, 0]
    assert x.max() == pytest.approx(1.0, abs=0.05) and frames[x.argmax()] in (14.0, 16.0)
    slow = trial_regressors(np.array([8.0]), 2.0, frames, time_scale=1.2)[:, 0]
    assert frames[slow.argmax()] >= frames[x.argmax()]


def test_noise_sd_is_the_marginal_sd_of_the_ar1_noise() -> None:
    from mindpipe.twin.bold import _ar1_noise

    noise = _ar1_noise(20000, np.array([1.5, 3.0]), 0.3, np.random.default_rng(0))
    assert np.allclose(noise.std(axis=0), [1.5, 3.0], rtol=0.05)
    assert np.corrcoef(noise[1:, 0], noise[:-1, 0])[0, 1] == pytest.approx(0.3, abs=0.05)


def test_caption_grammar_and_terser_web_style_captions():
    assert (
        caption("triangle", "red", "stripes", 0.5, -0.5, 0.0)
        == "a large red striped triangle on the left"
    )
    terse = caption("triangle", "red", "stripes", 0.5, -0.5, 0.0, keep=(False, True, False, False))
    assert terse == "a red triangle"


def test_corpus_caption_detail_drops_words_but_keeps_shapes_and_images():
    cfg = get_profile("tiny")
    full, images = pretraining_corpus(cfg, seed=0, n=200)
    terse, terse_images = pretraining_corpus(cfg, seed=0, n=200, caption_detail=0.5)
    np.testing.assert_array_equal(images, terse_images)
    pd.testing.assert_frame_equal(full.drop(columns="caption"), terse.drop(columns="caption"))
    assert all(c in t.split() for c, t in zip(terse["category"], terse["caption"], strict=True))
    # "a" + category always; each of the four other parts (position: 3-4 words) half the time
    extra = np.array([len(t.split()) for t in terse["caption"]]) - 2
    full_extra = np.array([len(t.split()) for t in full["caption"]]) - 2
    assert 0.35 < extra.sum() / full_extra.sum() < 0.65
    again, _ = pretraining_corpus(cfg, seed=0, n=200, caption_detail=0.5)
    assert list(again["caption"]) == list(terse["caption"])
    with pytest.raises(ValueError, match="caption_detail"):
        pretraining_corpus(cfg, seed=0, n=10, caption_detail=0.0)
