"""The video paradigm (CC2017-like): short clips of one moving shape, shown back to back.

Each clip shows one shape from the image paradigm's generator (category, colour, texture, size)
travelling in a straight line for ``video_clip_s`` seconds at ``video_fps`` (2 s at 8 FPS =
16 frames, as NeuroClips generates), over a static background: a gray that brightens towards one
side (``light`` at the bright edge, ``light_dir`` in radians) under a noise texture. Like
CC2017's shots, a background is part of what has to be decoded; one texture shared by every
clip would let any method score on it for free.

A *scene* (``video_scene_clips`` clips, 2-6 s by default) is one shape on one background moving
along one path; its clips are consecutive stim_ids and play back to back, so clip k + 1 starts
on clip k's last frame. This is what NeuroClips' multi-fMRI fusion continues across clips.

Clips follow each other without gaps, one per TR, like CC2017's continuous movies, so the BOLD
response to a clip overlaps its neighbours' (the HRF lag NeuroClips' preprocessing has to undo).
The schedule shuffles scenes, never the clips inside one.

Responses reuse the image paradigm's encoding model on each clip: retinotopic voxels see the
clip's contrast energy averaged over its frames (BOLD integrates over the 2 s), semantic voxels
see the shape's latent. Time-averaged energy is symmetric in time, so retinotopic voxels also
get an MT-like direction tuning (gain ``1 + motion_gain * cos(direction - preferred)``): without
it the direction of motion would not be in the brain data at all.

The paradigm is written as its own BIDS-like dataset under ``<root>/video`` with
``task-video`` runs, so every image-paradigm reader (validation, preprocessing, the feature
cache) reads it unchanged. A clip file is an animated PNG whose first frame is the keyframe.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from mindpipe.twin import stimuli
from mindpipe.twin.anatomy import SubjectAnatomy
from mindpipe.twin.config import TwinConfig, rng_for
from mindpipe.twin.responses import Encoding

TASK = "video"
#: The clip table's columns beyond the image paradigm's: motion (start to end), background and
#: the scene (consecutive clips of one shot).
CLIP_COLUMNS = ("dx", "dy", "light", "light_dir", "scene")
DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")


def paradigm_config(cfg: TwinConfig) -> TwinConfig:
    """The image-paradigm config with the video settings in place of the image ones.

    Clips are shown back to back (trial interval = clip length), so the same schedule,
    encoding and BOLD code generate the video runs.
    """
    return dataclasses.replace(
        cfg,
        image_size=cfg.video_size,
        n_train=cfg.video_train,
        n_val=cfg.video_val,
        n_test=cfg.video_test,
        reps_train=cfg.video_reps_train,
        reps_val=cfg.video_reps_val,
        reps_test=cfg.video_reps_test,
        stim_duration_s=cfg.video_clip_s,
        trial_interval_s=cfg.video_clip_s,
        trials_per_run=cfg.video_clips_per_run,
    )


def n_frames(cfg: TwinConfig) -> int:
    return round(cfg.video_fps * cfg.video_clip_s)


def direction_word(angle: float) -> str:
    """One of eight compass words for a direction in radians (0 = right, pi/2 = up)."""
    return DIRECTIONS[round(angle / (np.pi / 4)) % 8]


def scene_lengths(n: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """Clips per scene, each in ``lo..hi``, summing to ``n`` (the last scene may be shorter)."""
    lengths = rng.integers(lo, hi + 1, size=n // max(lo, 1) + 1)
    ends = np.cumsum(lengths)
    lengths = lengths[: np.searchsorted(ends, n) + 1]
    lengths[-1] -= lengths.sum() - n
    return lengths


def start_on_screen(d: np.ndarray, limit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Start coordinates from which a move by ``d`` stays within ``[-limit, limit]``."""
    low = -limit - np.minimum(d, 0)
    return rng.uniform(low, np.maximum(low, limit - np.maximum(d, 0)))  # max: float round-off


def sample_clips(cfg: TwinConfig, seed: int) -> pd.DataFrame:
    """Draw every clip: the stimulus-table columns (``x``, ``y`` = start), ``dx``, ``dy``, the
    background (``light``, ``light_dir``) and the ``scene`` it belongs to.

    A scene is one shape on one background travelling one straight path, cut into
    ``video_scene_clips`` consecutive clips (stim_ids in playing order): clip k starts where
    clip k - 1 ended, as consecutive 2-s segments of one CC2017 shot do. Scenes never straddle
    splits; held-out categories appear only in the test split, as for images. Drawn from their
    own random streams, so adding the video paradigm never changes the image paradigm.
    """
    rng = rng_for(seed, "video", "clips")
    vcfg = paradigm_config(cfg)
    names = list(stimuli.CATEGORIES)[: cfg.n_categories]
    held = stimuli.choose_held_out(cfg, seed)
    seen = [c for c in names if c not in held]
    splits = [
        ("train", vcfg.n_train, seen),
        ("val", vcfg.n_val, seen),
        ("test", vcfg.n_test, names),
    ]
    lengths = [scene_lengths(n, *cfg.video_scene_clips, rng) for _, n, _ in splits]
    per_scene = np.concatenate(lengths)
    m = len(per_scene)
    category = np.concatenate(
        [
            stimuli.balanced(pool, len(k), rng)
            for (_, _, pool), k in zip(splits, lengths, strict=True)
        ]
    )
    size = np.round(rng.uniform(*cfg.size_range, m), 4)
    limit = 1.0 - size - 0.02  # the whole shape stays on screen for the whole scene
    angle = rng.uniform(0.0, 2 * np.pi, m)
    travel = rng.uniform(*cfg.video_travel, m) * per_scene
    dx, dy = travel * np.cos(angle), travel * np.sin(angle)
    fit = np.minimum(1.0, 2 * limit / np.maximum(np.maximum(np.abs(dx), np.abs(dy)), 1e-9))
    dx, dy = dx * fit, dy * fit
    x, y = (start_on_screen(d, limit, rng) for d in (dx, dy))
    colour = np.array(list(stimuli.COLOURS))[rng.integers(len(stimuli.COLOURS), size=m)]
    texture = np.array(list(stimuli.TEXTURES))[rng.integers(len(stimuli.TEXTURES), size=m)]
    light_rng = rng_for(seed, "video", "light")
    light = np.round(light_rng.uniform(*cfg.video_light, m), 4)
    light_dir = np.round(light_rng.uniform(0.0, 2 * np.pi, m), 4)

    scene = np.repeat(np.arange(m), per_scene)
    step = np.concatenate([np.arange(k) for k in per_scene])  # clip's place in its scene
    share = 1.0 / per_scene[scene]
    n = len(scene)
    table = pd.DataFrame(
        {
            "stim_id": np.arange(n, dtype=np.int64),
            "file": [f"stimuli/videos/clip-{i:05d}.png" for i in range(n)],
            "category": category[scene],
            "colour": colour[scene],
            "texture": texture[scene],
            "size": size[scene],
            "x": np.round(x[scene] + step * share * dx[scene], 4),
            "y": np.round(y[scene] + step * share * dy[scene], 4),
            "dx": np.round(share * dx[scene], 4),
            "dy": np.round(share * dy[scene], 4),
        }
    )
    table["caption"] = [
        f"{stimuli.caption(r.category, r.colour, r.texture, r.size, r.x, r.y)} "
        f"moving {direction_word(np.arctan2(r.dy, r.dx))}"
        for r in table.itertuples()
    ]
    split_of_scene = np.repeat([s for s, _, _ in splits], [len(k) for k in lengths])
    table["split"] = split_of_scene[scene]
    table["held_out"] = np.isin(table["category"], held).astype(np.int64)
    table["light"], table["light_dir"] = light[scene], light_dir[scene]
    table["scene"] = scene.astype(np.int64)
    return table[[*stimuli.STIMULI_CONTRACT_COLUMNS, *CLIP_COLUMNS]]


def clip_screens(table: pd.DataFrame, cfg: TwinConfig, seed: int) -> np.ndarray:
    """Each clip's static background, ``(n_clips, S, S, 3)`` in [0, 1] (S = ``video_size``).

    Gray 0.5 rising linearly to ``0.5 + light`` at the edge facing ``light_dir``: only brighter
    than the mid-gray, so the retinotopic voxels' contrast energy tells which side is lit.
    """
    side = cfg.video_size
    coords = (np.arange(side) + 0.5) / side * 2 - 1
    grid_x, grid_y = np.meshgrid(coords, -coords)  # row 0 = top of the screen
    light = table["light"].to_numpy()[:, None, None]
    angle = table["light_dir"].to_numpy()[:, None, None]
    towards = grid_x * np.cos(angle) + grid_y * np.sin(angle)  # in [-sqrt 2, sqrt 2]
    ramp = stimuli.BACKGROUND + light * (towards + np.sqrt(2)) / (2 * np.sqrt(2))
    scene = pd.factorize(table["scene"])[0]
    shape = (scene.max() + 1, *ramp.shape[1:])
    noise = rng_for(seed, "video", "screens").normal(0.0, cfg.background_noise, shape)[scene]
    return np.clip(ramp + noise, 0.0, 1.0)[..., None].repeat(3, axis=3)


def render_clips(table: pd.DataFrame, cfg: TwinConfig, seed: int) -> np.ndarray:
    """Every clip's frames, ``(n_clips, n_frames, S, S, 3)`` uint8 (S = ``video_size``)."""
    vcfg = paradigm_config(cfg)
    screens = clip_screens(table, cfg, seed)
    steps = np.linspace(0.0, 1.0, n_frames(cfg))
    return np.stack(
        [
            np.stack(
                [
                    stimuli.render(
                        r.category,
                        r.colour,
                        r.texture,
                        r.size,
                        r.x + s * r.dx,
                        r.y + s * r.dy,
                        vcfg,
                        screen,
                    )
                    for s in steps
                ]
            )
            for r, screen in zip(table.itertuples(), screens, strict=True)
        ]
    )


def clip_energy(clips: np.ndarray, cfg: TwinConfig) -> np.ndarray:
    """Contrast energy averaged over each clip's frames, ``(n_clips, S * S)``."""
    n, f = clips.shape[:2]
    frames = clips.reshape(n * f, *clips.shape[2:])
    return stimuli.contrast_energy(frames, paradigm_config(cfg)).reshape(n, f, -1).mean(axis=1)


def direction_tuning(table: pd.DataFrame, cfg: TwinConfig, seed: int):
    """The encoding modifier that makes retinotopic voxels direction-selective (MT-like).

    Returns ``modulate(encoding, anatomy, subject) -> encoding``; each subject's voxels draw
    their preferred directions from their own stream.
    """
    angle = np.arctan2(table["dy"].to_numpy(), table["dx"].to_numpy())

    def modulate(enc: Encoding, anat: SubjectAnatomy, subject: int) -> Encoding:
        rng = rng_for(seed, "subject", subject, "video", "direction")
        preferred = rng.uniform(0.0, 2 * np.pi, len(anat.kind))
        gain = 1.0 + cfg.motion_gain * np.cos(angle[:, None] - preferred[None, :])
        retino = anat.kind == 0
        amplitude = enc.amplitude.astype(np.float64)
        amplitude[:, retino] *= gain[:, retino]
        return dataclasses.replace(enc, amplitude=amplitude.astype(np.float32))

    return modulate
