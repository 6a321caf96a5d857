"""The twin's video paradigm (CC2017-like clips), written as a dataset under data/video."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

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
    assert abs(np.corrcoef(texture[0].ravel(), texture[1].ravel())[0, 1]) < 0.2  # its own
    side = cfg.video_size
    rows, cols = np.indices((side, side))
    for row, screen in zip(clips.itertuples(), screens, strict=True):
        towards = cols * np.cos(row.light_dir) - rows * np.sin(row.light_dir)  # rows go down
        lit = screen[..., 0][towards > np.median(towards)].mean()
        dim = screen[..., 0][towards < np.median(towards)].mean()
        # A ramp spanning light / sqrt 2 (edge on) to light (corner on) across the screen.
        assert 0.3 * row.light - 0.02 < lit - dim < 0.5 * row.light + 0.02, row.stim_id
        assert screen.mean() >= BACKGROUND - 0.01  # never darker than the mid-gray


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
