"""Every setting of the twin generator, the two named profiles, and seeded random streams.

A profile is a full :class:`TwinConfig`; ``get_profile(name, **overrides)`` returns a copy with
some fields replaced. All randomness flows through :func:`rng_for`, which derives an independent
stream per purpose (``"stimuli"``, ``("subject", 2, "anatomy")``, ...) from the one seed, so
changing one knob never reshuffles the draws of an unrelated part of the dataset.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

from mindpipe.exceptions import ParamsError

#: How many shape categories ``stimuli.CATEGORIES`` defines (checked there).
MAX_CATEGORIES = 16


@dataclasses.dataclass(frozen=True)
class TwinConfig:
    """Generator settings. Units are in the field names or comments: mm, s, % signal change.

    Attributes are grouped: stimuli, semantic latents, anatomy, subjects, encoding model, BOLD
    acquisition and noise. ``profile`` records which profile the values started from.
    """

    profile: str = "tiny"
    n_subjects: int = 4

    # --- stimuli -------------------------------------------------------------------------------
    image_size: int = 32  # pixels per side
    supersample: int = 4  # rendering oversampling (anti-aliasing)
    n_categories: int = 6
    n_held_out: int = 2  # categories seen only in the test split (zero-shot)
    n_train: int = 48
    n_val: int = 8
    n_test: int = 24
    reps_train: int = 2
    reps_val: int = 2
    reps_test: int = 2
    size_range: tuple[float, float] = (0.25, 0.6)  # shape diameter as a fraction of image width
    background_noise: float = 0.03  # sd of the fixed gray-background noise (image units 0..1)

    # --- semantic latents: z = [w_cat*category, w_col*colour, w_tex*texture, w_size*size] ------
    category_dim: int = 8
    category_random: float = 0.35  # weight of the random (non-descriptor) part of a category
    latent_weights: tuple[float, float, float, float] = (1.0, 0.6, 0.5, 0.4)

    # --- template anatomy (analytic, in template mm) -------------------------------------------
    bold_voxel_mm: float = 6.0
    t1_voxel_mm: float = 3.0
    brain_radii_mm: tuple[float, float, float] = (32.0, 40.0, 30.0)  # x (R), y (A), z (S)
    gm_thickness_mm: float = 7.0
    visual_angle_rad: float = 1.1  # angular radius of the visual cap around the occipital pole
    semantic_fraction: float = 0.5  # share of visual-mask voxels that are semantic

    # --- subjects: subject mm -> template mm = affine + Gaussian RBF deformation ---------------
    max_rotation_deg: float = 8.0
    max_translation_mm: float = 6.0
    scale_range: tuple[float, float] = (0.93, 1.07)
    n_deform_rbf: int = 4
    deform_sigma_mm: float = 15.0
    max_deform_mm: float = 2.0
    t1_noise: float = 0.02  # T1w noise sd, fraction of white-matter intensity
    bias_field: float = 0.05  # amplitude of the smooth receive-coil intensity field

    # --- encoding model ------------------------------------------------------------------------
    retino_gain: tuple[float, float] = (1.5, 4.0)  # % signal change at full pRF drive
    prf_exponent: float = 0.5  # compressive spatial summation
    prf_size_intercept: float = 0.08  # pRF sd at the fovea (visual-field units, width = 2)
    prf_size_slope: float = 0.3  # pRF sd growth per unit eccentricity
    max_eccentricity: float = 1.2
    prf_jitter: float = 0.05  # per-subject sd of pRF centres (visual-field units)
    edge_weight: float = 2.0  # weight of the edge/high-frequency channel vs luminance contrast
    colour_weight: float = 0.5  # weight of the chromatic-contrast channel
    semantic_gain: tuple[float, float] = (1.5, 4.0)  # % signal change for a preferred stimulus
    semantic_baseline: float = 0.25  # response to any stimulus, as a fraction of the gain
    semantic_sharpness: float = 6.0  # k in softplus(k * (u.z - theta))
    semantic_quantile: tuple[float, float] = (0.55, 0.85)  # threshold theta as a quantile of u.z
    idiosyncrasy: float = 0.4  # weight of the per-subject random part of semantic tuning
    semantic_wavelength_mm: float = 30.0  # spatial scale of the shared semantic map
    trial_gain_sd: float = 0.1  # trial-to-trial multiplicative neural variability
    neural_noise_sd: float = 0.0  # trial-to-trial additive neural noise, % signal change

    # --- BOLD acquisition and noise ------------------------------------------------------------
    tr_s: float = 2.0
    stim_duration_s: float = 2.0
    trial_interval_s: float = 4.0
    lead_in_s: float = 8.0
    tail_s: float = 16.0
    trials_per_run: int = 40
    runs_per_session: int = 2
    hrf_jitter: float = 0.08  # sd of the per-subject log time-scale of the HRF (0: canonical)
    baseline: float = 1000.0  # gray-matter signal level
    noise_sd: float = 1.5  # per-volume noise sd, % of baseline (median over voxels)
    noise_sd_spread: float = 0.2  # log-normal spread of noise sd across voxels
    noise_ar: float = 0.3  # AR(1) coefficient of the noise
    drift_sd: float = 1.0  # sd of each slow cosine drift, % of baseline
    trend_sd: float = 0.5  # sd of the linear trend over one run, % of baseline
    n_drift: int = 3  # slow cosines per voxel and run
    drift_min_period_s: float = 150.0
    session_gain_sd: float = 0.02  # per-session global intensity change (fraction)

    # --- video paradigm (CC2017-like, written to <root>/video; video_train = 0: none) ----------
    video_train: int = 48  # clips per split
    video_val: int = 8
    video_test: int = 16
    video_reps_train: int = 2
    video_reps_val: int = 2
    video_reps_test: int = 2
    video_size: int = 16  # pixels per side
    video_fps: int = 8
    video_clip_s: float = 2.0  # clip length; clips play back to back
    video_clips_per_run: int = 48
    video_travel: tuple[float, float] = (0.3, 0.8)  # distance moved in a clip (field units)
    video_light: tuple[float, float] = (0.0, 0.3)  # background ramp: gray 0.5 -> 0.5 + this
    video_scene_clips: tuple[int, int] = (1, 3)  # clips per scene (one shot played on), lo..hi
    motion_gain: float = 0.5  # direction selectivity of retinotopic voxels (MT-like)

    def __post_init__(self) -> None:
        problems = _check(self)
        if problems:
            raise ParamsError("invalid twin config:\n  " + "\n  ".join(problems))

    @property
    def n_stimuli(self) -> int:
        """Total number of images (train + val + test)."""
        return self.n_train + self.n_val + self.n_test

    @property
    def n_latent(self) -> int:
        """Length of a stimulus latent vector: category + colour (3) + texture (3) + size (1)."""
        return self.category_dim + 7


def _check(cfg: TwinConfig) -> list[str]:
    """Range checks; each problem names the field, the allowed range and the value."""
    checks = [
        ("n_subjects", cfg.n_subjects >= 1, ">= 1"),
        ("image_size", cfg.image_size >= 16, ">= 16"),
        ("supersample", cfg.supersample >= 1, ">= 1"),
        ("n_categories", 2 <= cfg.n_categories <= MAX_CATEGORIES, f"in [2, {MAX_CATEGORIES}]"),
        ("n_held_out", 0 <= cfg.n_held_out < cfg.n_categories, "in [0, n_categories)"),
        ("n_train", cfg.n_train >= 1, ">= 1"),
        ("n_val", cfg.n_val >= 0, ">= 0"),
        ("n_test", cfg.n_test >= 1, ">= 1"),
        ("reps_train", cfg.reps_train >= 1, ">= 1"),
        ("reps_val", cfg.reps_val >= 1, ">= 1"),
        ("reps_test", cfg.reps_test >= 1, ">= 1"),
        (
            "size_range",
            0.05 <= cfg.size_range[0] <= cfg.size_range[1] <= 0.9,
            "0.05 <= lo <= hi <= 0.9",
        ),
        ("semantic_fraction", 0.0 <= cfg.semantic_fraction <= 1.0, "in [0, 1]"),
        ("idiosyncrasy", 0.0 <= cfg.idiosyncrasy <= 1.0, "in [0, 1]"),
        ("noise_ar", 0.0 <= cfg.noise_ar < 1.0, "in [0, 1)"),
        ("noise_sd", cfg.noise_sd >= 0.0, ">= 0"),
        ("tr_s", cfg.tr_s > 0.0, "> 0"),
        ("trials_per_run", cfg.trials_per_run >= 1, ">= 1"),
        ("runs_per_session", cfg.runs_per_session >= 1, ">= 1"),
        (
            "stim_duration_s",
            0 < cfg.stim_duration_s <= cfg.trial_interval_s,
            "in (0, trial_interval_s]",
        ),
        ("bold_voxel_mm", cfg.bold_voxel_mm > 0.0, "> 0"),
        ("t1_voxel_mm", 0.0 < cfg.t1_voxel_mm <= cfg.bold_voxel_mm, "in (0, bold_voxel_mm]"),
        (
            "semantic_quantile",
            0.0 < cfg.semantic_quantile[0] <= cfg.semantic_quantile[1] < 1.0,
            "0 < lo <= hi < 1",
        ),
        ("scale_range", 0.5 < cfg.scale_range[0] <= cfg.scale_range[1] < 2.0, "0.5 < lo <= hi < 2"),
        ("video_train", cfg.video_train >= 0, ">= 0"),
        ("video_val", cfg.video_val >= 0, ">= 0"),
        ("video_test", cfg.video_test >= 1 or cfg.video_train == 0, ">= 1 when video_train > 0"),
        ("video_reps_train", cfg.video_reps_train >= 1, ">= 1"),
        ("video_reps_val", cfg.video_reps_val >= 1, ">= 1"),
        ("video_reps_test", cfg.video_reps_test >= 1, ">= 1"),
        ("video_size", cfg.video_size >= 16, ">= 16"),
        ("video_fps", cfg.video_fps >= 1, ">= 1"),
        ("video_clip_s", cfg.video_clip_s > 0.0, "> 0"),
        ("video_clips_per_run", cfg.video_clips_per_run >= 1, ">= 1"),
        ("video_travel", 0.0 <= cfg.video_travel[0] <= cfg.video_travel[1], "0 <= lo <= hi"),
        ("video_light", 0 <= cfg.video_light[0] <= cfg.video_light[1] <= 0.5, "0<=lo<=hi<=0.5"),
        (
            "video_scene_clips",
            1 <= cfg.video_scene_clips[0] <= cfg.video_scene_clips[1],
            "1<=lo<=hi",
        ),
        ("motion_gain", 0.0 <= cfg.motion_gain <= 1.0, "in [0, 1]"),
    ]
    return [
        f"twin.{name}: must be {allowed}; got {getattr(cfg, name)!r}"
        for name, ok, allowed in checks
        if not ok
    ]


PROFILES: dict[str, TwinConfig] = {
    # Tests: a few seconds for the whole dataset.
    "tiny": TwinConfig(profile="tiny"),
    # The README run: ~1400 images, 4 subjects x 50 runs on a ~26x31x24 grid of 3 mm voxels.
    "default": TwinConfig(
        profile="default",
        image_size=64,
        n_categories=12,
        n_held_out=3,
        n_train=1000,
        n_val=100,
        n_test=300,
        reps_train=2,
        reps_val=2,
        reps_test=3,
        bold_voxel_mm=3.0,
        t1_voxel_mm=1.5,
        trials_per_run=62,
        runs_per_session=10,
        video_train=480,
        video_val=48,
        video_test=120,
        video_reps_test=3,
        video_size=32,
        video_clips_per_run=120,
    ),
}


def get_profile(name: str, **overrides: Any) -> TwinConfig:
    """Return the named profile, with some fields replaced.

    Parameters
    ----------
    name : str
        ``"tiny"`` or ``"default"``.
    **overrides
        Any :class:`TwinConfig` field except ``profile``; ints are accepted for float fields and
        lists for tuple fields.

    Raises
    ------
    ParamsError
        Unknown profile, unknown field, a value of the wrong type, or a value out of range.
    """
    if name not in PROFILES:
        raise ParamsError(f"unknown twin profile {name!r}; allowed: {sorted(PROFILES)}")
    base = PROFILES[name]
    allowed = sorted(f.name for f in dataclasses.fields(TwinConfig) if f.name != "profile")
    unknown = sorted(k for k in overrides if k not in allowed)
    if unknown:
        raise ParamsError(f"unknown twin setting(s) {unknown}; allowed: {allowed}")
    values = {key: _coerce(key, value, getattr(base, key)) for key, value in overrides.items()}
    return dataclasses.replace(base, **values)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the field's default (int -> float, list -> tuple)."""
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int | np.integer)
        value = int(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, list | tuple) and len(value) == len(default)
        if ok:  # element by element, as the default's elements (int stays int)
            value = tuple(_coerce(key, v, d) for v, d in zip(value, default, strict=True))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ParamsError(
            f"twin.{key}: expected {type(default).__name__}"
            f"{f' of length {len(default)}' if isinstance(default, tuple) else ''}, got {value!r}"
        )
    return value


def config_dict(cfg: TwinConfig) -> dict[str, Any]:
    """The config as a JSON-able dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def rng_for(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent random stream for one purpose, derived from ``seed`` and ``keys``.

    String keys are hashed with CRC-32 (stable across Python runs, unlike ``hash``).
    """
    words = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))
