"""The twin's video paradigm (CC2017-like clips), written as a dataset under data/video."""

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mindpipe.exceptions import ParamsError
from mindpipe.io import bids, read_stimuli, video_dataset
from mindpipe.io.images import load_video
from mindpipe.twin import generate, get_profile, video
from mindpipe.twin.stimuli import BACKGROUND


@pytest.fixture(scope="module")
def clips(twin_tiny: Path) -> pd.DataFrame:
    return read_stimuli(twin_tiny / "video")


def test_video_dataset_layout_and_frame_rate(twin_tiny: Path, clips: pd.DataFrame) -> None:
    cfg = get_profile("tiny")
    assert video_dataset(twin_tiny) == twin_tiny / "video"
    assert set(video.CLIP_COLUMNS) <= set(clips.columns)
    assert clips["split"].value_counts().to_dict() == {
        "train": cfg.video_train,
        "val": cfg.video_val,
        "test": cfg.video_test,
    }
    frames = load_video(twin_tiny / "video", clips["file"].iloc[0])
    assert frames.shape == (16, cfg.video_size, cfg.video_size, 3)  # 2 s at 8 FPS
    with Image.open(twin_tiny / "video" / clips["file"].iloc[0]) as img:
        assert img.info["duration"] == 125  # ms per frame = 8 FPS
    held = set(clips.loc[clips["held_out"] == 1, "category"])
    assert held and set(clips.loc[clips["split"] != "test", "category"]).isdisjoint(held)


def test_clips_play_back_to_back_one_per_tr(twin_tiny: Path) -> None:
    runs = bids.discover_runs(twin_tiny / "video", "sub-01")
    assert {r.task for r in runs} == {"video"}
    events = bids.read_events(runs[0])
    assert np.allclose(np.diff(events["onset"]), 2.0)
    assert np.allclose(events["duration"], 2.0)
    assert bids.read_sidecar_tr(runs[0].sidecar) == 2.0


def test_the_shape_travels_by_dx_dy(twin_tiny: Path, clips: pd.DataFrame) -> None:
    screens = video.clip_screens(clips, get_profile("tiny"), seed=0)
    for row, screen in zip(clips.head(8).itertuples(), screens, strict=False):
        frames = load_video(twin_tiny / "video", row.file).astype(float) / 255
        shape = np.abs(frames - screen).max(axis=-1) > 0.15
        ys, xs = np.indices(shape.shape[1:])
        start = np.array([xs[shape[0]].mean(), ys[shape[0]].mean()])
        end = np.array([xs[shape[-1]].mean(), ys[shape[-1]].mean()])
        moved = (end - start) / frames.shape[2] * 2  # pixels -> visual field units
        expected = np.array([row.dx, -row.dy])  # image rows count downwards
        assert np.linalg.norm(moved - expected) < 0.15, (row.stim_id, moved, expected)


def test_each_clip_has_its_own_background_brighter_towards_light_dir(
    twin_tiny: Path, clips: pd.DataFrame
) -> None:
    cfg = get_profile("tiny")
    screens = video.clip_screens(clips, cfg, seed=0)
    frames = load_video(twin_tiny / "video", clips["file"].iloc[0])
    behind_shape = np.abs(frames[0] / 255 - screens[0]).max(axis=-1) > 1 / 255
    assert 0 < behind_shape.mean() < 0.5  # the file shows this screen wherever the shape is not
    texture = np.diff(screens[..., 0], axis=2)  # differencing removes the smooth ramp
    other = np.flatnonzero(clips["scene"].to_numpy() != clips["scene"].iloc[0])[0]  # next scene
    assert abs(np.corrcoef(texture[0].ravel(), texture[other].ravel())[0, 1]) < 0.2  # its own
    side = cfg.video_size
    rows, cols = np.indices((side, side))
    for row, screen in zip(clips.itertuples(), screens, strict=True):
        towards = cols * np.cos(row.light_dir) - rows * np.sin(row.light_dir)  # rows go down
        lit = screen[..., 0][towards > np.median(towards)].mean()
        dim = screen[..., 0][towards < np.median(towards)].mean()
        # A ramp spanning light / sqrt 2 (edge on) to light (corner on) across the screen.
        assert 0.3 * row.light - 0.02 < lit - dim < 0.5 * row.light + 0.02, row.stim_id
        assert screen.mean() >= BACKGROUND - 0.01  # never darker than the mid-gray


def test_a_scene_plays_on_across_consecutive_clips(clips: pd.DataFrame) -> None:
    lo, hi = get_profile("tiny").video_scene_clips
    screens = video.clip_screens(clips, get_profile("tiny"), seed=0)
    lengths = clips.groupby("scene").size()
    assert lengths.between(1, hi).all() and (lengths[:-1] >= lo).all()
    assert (lengths > 1).any()
    assert clips.groupby("scene")["split"].nunique().eq(1).all()  # never straddles splits
    for _, scene in clips.groupby("scene"):
        rows = scene.index.to_numpy()
        assert np.array_equal(np.diff(scene["stim_id"]), np.ones(len(scene) - 1))
        for column in ("category", "colour", "texture", "size", "light", "light_dir"):
            assert scene[column].nunique() == 1, column
        ends = scene[["x", "y"]].to_numpy() + scene[["dx", "dy"]].to_numpy()
        assert np.allclose(ends[:-1], scene[["x", "y"]].to_numpy()[1:], atol=3e-4)
        assert np.allclose(
            screens[clips.index.get_indexer(rows)], screens[clips.index.get_loc(rows[0])]
        )


def test_the_schedule_keeps_each_scene_in_order(twin_tiny: Path, clips: pd.DataFrame) -> None:
    scene = clips.set_index("stim_id")["scene"]
    for run in bids.discover_runs(twin_tiny / "video", "sub-01"):
        shown = bids.read_events(run)["stim_id"].to_numpy()
        for k, s in itertools.pairwise(shown):
            assert scene[s] != scene[k] or s == k + 1, (run, k, s)
            # a scene starts at its first clip and is left only after its last one
            if scene[s] != scene[k]:
                assert s == 0 or scene[s - 1] != scene[s], (run, s)
                assert k + 1 not in scene.index or scene[k + 1] != scene[k], (run, k)


def test_scene_lengths_fill_the_split_exactly() -> None:
    rng = np.random.default_rng(0)
    for n, lo, hi in ((16, 1, 3), (7, 2, 2), (1, 1, 3), (50, 3, 5)):
        lengths = video.scene_lengths(n, lo, hi, rng)
        assert lengths.sum() == n and (lengths >= 1).all() and (lengths <= hi).all()
        assert (lengths[:-1] >= lo).all()
    with pytest.raises(ParamsError, match="video_scene_clips"):
        get_profile("tiny", video_scene_clips=(0, 2))
    with pytest.raises(ParamsError, match="video_scene_clips: expected int"):
        get_profile("tiny", video_scene_clips=(1, 2.5))


def test_captions_name_the_direction() -> None:
    assert video.direction_word(0.0) == "right"
    assert video.direction_word(np.pi / 2) == "up"
    assert video.direction_word(-3 * np.pi / 4) == "down-left"


def test_adding_video_leaves_the_image_paradigm_unchanged(twin_tiny: Path, tmp_path: Path) -> None:
    without = generate(tmp_path / "data", profile="tiny", seed=0, video_train=0)
    assert video_dataset(without) is None
    files = [
        p.relative_to(without) for p in without.rglob("*") if p.is_file() and p.name != "twin.json"
    ]
    assert files
    changed = [f for f in files if (without / f).read_bytes() != (twin_tiny / f).read_bytes()]
    assert changed == []
