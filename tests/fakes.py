"""Small fake datasets in the ``data/`` layout, for tests (like nilearn's ``_utils/data_gen``).

The synthetic twin (:mod:`mindpipe.twin`) is the product's data generator; this module only
writes the minimum the readers need, in well under a second, with a known answer: half of the
mask voxels respond to each image with a fixed amplitude (% signal change), the rest are noise.
Tests corrupt its files to check each error message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import yaml
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    MotionAdapter,
    StableDiffusionPipeline,
    StableUnCLIPImg2ImgPipeline,
    UNet2DConditionModel,
)
from diffusers.models.controlnets.controlnet_sparsectrl import SparseControlNetModel
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
    StableUnCLIPImageNormalizer,
)
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class FakeTruth:
    """What :func:`write_fake_dataset` put in.

    Attributes
    ----------
    amplitude : dict
        ``subject -> (n_stimuli, n_mask)`` float64 peak response in % signal change (the
        canonical SPM HRF scaled to peak 1, as :func:`mindpipe.preprocess.glm.trial_regressors`).
    responsive : dict
        ``subject -> (n_mask,)`` bool, the voxels with signal.
    mask : dict
        ``subject -> (x, y, z)`` bool.
    stimuli : DataFrame
        The stimulus table written.
    """

    amplitude: dict[str, np.ndarray]
    responsive: dict[str, np.ndarray]
    mask: dict[str, np.ndarray]
    stimuli: pd.DataFrame


def write_fake_dataset(
    root: str | Path,
    n_subjects: int = 1,
    n_sessions: int = 2,
    runs_per_session: int = 2,
    n_train: int = 12,
    n_val: int = 3,
    n_test: int = 3,
    train_repeats: int = 3,
    eval_repeats: int = 2,
    shape: tuple[int, int, int] = (5, 5, 4),
    tr: float = 2.0,
    trial_spacing: float = 6.0,
    noise_sd: float = 0.3,
    drift: float = 0.0,
    seed: int = 0,
) -> FakeTruth:
    """Write a tiny dataset under ``root`` (which becomes the ``data/`` folder).

    Trials are spread evenly over all runs; every run has the same number of volumes, enough for
    its trials plus 16 s of tail.

    Parameters
    ----------
    drift : float
        Amplitude (% signal change) of a slow linear drift added to every voxel.

    Returns
    -------
    FakeTruth
    """
    from mindpipe.preprocess.glm import trial_regressors  # the same HRF as the analysis

    rng = np.random.default_rng(seed)
    root = Path(root)
    n_stim = n_train + n_val + n_test
    split = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    category = ["circle"] * n_train + ["square"] * n_val + ["star"] * n_test
    stimuli = pd.DataFrame(
        {
            "stim_id": np.arange(n_stim),
            "file": [f"stimuli/images/stim-{i:05d}.png" for i in range(n_stim)],
            "caption": [f"a {c}" for c in category],
            "category": category,
            "colour": "red",
            "texture": "flat",
            "size": 0.5,
            "x": 0.0,
            "y": 0.0,
            "split": split,
            "held_out": [int(c == "star") for c in category],
        }
    )
    (root / "stimuli" / "images").mkdir(parents=True, exist_ok=True)
    stimuli.to_csv(root / "stimuli" / "stimuli.tsv", sep="\t", index=False)
    pd.DataFrame({"category": ["circle", "square", "star"], "held_out": [0, 0, 1]}).to_csv(
        root / "stimuli" / "categories.tsv", sep="\t", index=False
    )
    for f in stimuli["file"]:
        (root / f).write_bytes(b"\x89PNG fake")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "fake", "BIDSVersion": "1.9.0"})
    )

    train_trials = np.repeat(np.arange(n_train), train_repeats)
    trials = np.concatenate([train_trials, np.repeat(np.arange(n_train, n_stim), eval_repeats)])
    n_runs = n_sessions * runs_per_session
    per_run = int(np.ceil(trials.size / n_runs))
    n_vols = int(np.ceil((4.0 + per_run * trial_spacing + 16.0) / tr))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    truth = FakeTruth({}, {}, {}, stimuli)
    for s in range(1, n_subjects + 1):
        sub = f"sub-{s:02d}"
        func = root / sub / "func"
        func.mkdir(parents=True, exist_ok=True)
        mask = np.zeros(shape, dtype=bool)
        mask[1:-1, 1:-1, 1:-1] = True
        n_mask = int(mask.sum())
        responsive = np.zeros(n_mask, dtype=bool)
        responsive[: n_mask // 2] = True
        amplitude = rng.normal(0.0, 1.0, (n_stim, n_mask)) * responsive
        truth.amplitude[sub], truth.responsive[sub], truth.mask[sub] = amplitude, responsive, mask
        nib.save(
            nib.Nifti1Image(mask.astype(np.uint8), affine), func / f"{sub}_desc-visual_mask.nii.gz"
        )
        order = rng.permutation(trials)
        baseline = rng.uniform(800.0, 1200.0, shape)
        for r in range(n_runs):
            ses, run = r // runs_per_session + 1, r % runs_per_session + 1
            stems = f"{sub}_ses-{ses:02d}_task-images_run-{run:02d}"
            stim = order[r * per_run : (r + 1) * per_run]
            onsets = 4.0 + trial_spacing * np.arange(stim.size)
            design = trial_regressors(onsets, np.full(stim.size, 2.0), n_vols, tr)
            psc = design @ amplitude[stim]
            psc += drift * np.linspace(-1.0, 1.0, n_vols)[:, None]
            psc += rng.normal(0.0, noise_sd, psc.shape)
            data = np.repeat(baseline[..., None], n_vols, axis=3)
            data[mask] *= 1.0 + psc.T / 100.0
            img = nib.Nifti1Image(np.round(data).astype(np.int16), affine)
            img.header.set_xyzt_units("mm", "sec")
            img.header["pixdim"][4] = tr
            nib.save(img, func / f"{stems}_bold.nii.gz")
            (func / f"{stems}_bold.json").write_text(
                json.dumps({"RepetitionTime": tr, "TaskName": "images"})
            )
            pd.DataFrame(
                {
                    "onset": onsets,
                    "duration": 2.0,
                    "trial_type": "stimulus",
                    "stim_id": stim,
                    "stim_file": [stimuli["file"][i] for i in stim],
                }
            ).to_csv(func / f"{stems}_events.tsv", sep="\t", index=False)
    return truth


#: params.yaml overrides that keep the model stages to seconds on the tiny twin.
TINY_MODELS = {
    "mlip": {
        "config": "mlip-tiny",
        "corpus_size": 768,
        "epochs": 6,
        "batch_size": 64,
        "ablation_ratios": [],
        "merge_ratio": 0.25,
    },
    "litemind": {"widths": [16], "depths": [1], "mlp_hidden": 64, "train": {"epochs": 8}},
    "mindtuner": {
        "fewshot": {"fraction": 0.25, "curve": [0.5]},
        "hidden": 64,
        "pretrain": {"epochs": 6, "batch_size": 32},
        "finetune": {"epochs": 6, "batch_size": 16},
        "pivot": {"epochs": 50},
    },
    "wills": {
        "fewshot": {"fraction": 0.25, "curve": [0.5]},
        "hidden": 64,
        "expert_dim": 8,
        "shared": {"epochs": 4, "batch_size": 32},
        "experts": {"epochs": 3, "batch_size": 32},
    },
    "reconstruct": {"steps": 20, "batch_size": 16, "sample_steps": 2},
    "federated": {"rounds": 3, "local": {"local_epochs": 2}, "dim": 32},
    "neuroclips": {
        "perception": {"hidden": 64, "channels": 8, "epochs": 5},
        "semantics_hidden": 64,
        "semantics": {"epochs": 5, "batch_size": 16},
        "video": {"config": "micro", "steps": 10, "batch_size": 4, "sample_steps": 2},
        "keyframe_steps": 2,
        "classifier_epochs": 1,
        "gif_clips": 2,
    },
}


def write_params(project: Path, data_dir: Path, **sections) -> Path:
    """``project/params.yaml``: the repository's, tiny profile and models, ``data_dir``."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(profile="tiny", data_dir=str(data_dir), artifacts_dir="artifacts")
    for name, values in {**TINY_MODELS, **sections}.items():
        params[name].update(values)
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------
# A tiny AnimateDiff v3 + SparseCtrl RGB (the real video model's classes, random weights)
# ------------------------------------------------------------------------------------------------
CHANNELS, CROSS = (8, 16), 16


def _tokenizer(folder: Path) -> CLIPTokenizer:
    """A byte-level BPE over single letters. There are no merges, so each letter is a token."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=16)


def _tiny_unet(**extra) -> UNet2DConditionModel:
    """SD's UNet at 16 x 16 latents (32 px through the tiny VAE)."""
    return UNet2DConditionModel(
        sample_size=16,
        block_out_channels=CHANNELS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS,
        attention_head_dim=4,
        norm_num_groups=4,
        **extra,
    )


def _tiny_sd_parts(folder: Path) -> dict:
    """The VAE, text encoder, tokenizer and DDIM scheduler every tiny SD pipeline here shares."""
    vae = AutoencoderKL(
        block_out_channels=CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        # SD's 0.18215 brings its VAE's latents to about unit variance; this random VAE's are
        # smaller than that already
        scaling_factor=1.0,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=54,
            hidden_size=CROSS,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    # load_pretrained_animatediff's DDIM (NeuroClips)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        steps_offset=1,
        clip_sample=False,
    )
    return {
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": _tokenizer(folder / "tokenizer"),
        "scheduler": scheduler,
    }


def tiny_animatediff_components(folder: Path) -> dict:
    """A randomly initialised AnimateDiff + SparseCtrl RGB pipeline's parts, 32 px, from configs."""
    torch.manual_seed(0)
    unet = _tiny_unet()
    adapter = MotionAdapter(
        block_out_channels=CHANNELS,
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=4,
    )
    controlnet = SparseControlNetModel(
        block_out_channels=CHANNELS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        cross_attention_dim=CROSS,
        attention_head_dim=4,
        norm_num_groups=4,
        motion_num_attention_heads=2,
        use_simplified_condition_embedding=True,  # RGB: the keyframe enters as a VAE latent
    )
    # SparseCtrl's zero convolutions would hide whether the keyframe reaches the UNet at all
    zero = [controlnet.controlnet_cond_embedding, controlnet.controlnet_mid_block]
    for conv in [*zero, *controlnet.controlnet_down_blocks]:
        torch.nn.init.normal_(conv.weight, std=0.2)
    return {
        "unet": unet.eval(),
        "motion_adapter": adapter.eval(),
        "controlnet": controlnet.eval(),
        **_tiny_sd_parts(folder),
    }


def tiny_unclip_pipeline(folder: Path, embed_dim: int) -> StableUnCLIPImg2ImgPipeline:
    """A randomly initialised Stable unCLIP (SD 2.1 unCLIP's classes), 32 px, for ``embed_dim``-wide
    CLIP image embeddings, from configs."""
    torch.manual_seed(0)
    # the UNet's class embedding reads the noised image embedding + its noise-level embedding
    unet = _tiny_unet(
        class_embed_type="projection", projection_class_embeddings_input_dim=2 * embed_dim
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=CROSS,
            intermediate_size=32,
            projection_dim=embed_dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=image_encoder.eval(),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embed_dim),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        unet=unet.eval(),
        **_tiny_sd_parts(folder),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_tiny_animatediff(components: dict, folder: Path) -> tuple[Path, Path, Path]:
    """Save the parts as the three local folders NeuroClips reads: SD 1.5, adapter, SparseCtrl."""
    sd = StableDiffusionPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=components["unet"],
        scheduler=components["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folders = folder / "sd15", folder / "motion_adapter", folder / "sparsectrl"
    sd.save_pretrained(folders[0])
    components["motion_adapter"].save_pretrained(folders[1])
    components["controlnet"].save_pretrained(folders[2])
    return folders
