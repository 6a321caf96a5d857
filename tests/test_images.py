"""Stimulus image reading."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mindpipe.exceptions import DataError
from mindpipe.io import read_stimuli
from mindpipe.io.images import iter_image_batches, load_image, load_images, load_video


def test_images_load_in_table_order_and_in_batches(twin_tiny):
    stimuli = read_stimuli(twin_tiny).iloc[:5]
    images = load_images(twin_tiny, stimuli)
    assert images.shape[0] == 5 and images.shape[-1] == 3 and images.dtype == np.uint8
    batches = list(iter_image_batches(twin_tiny, stimuli, batch_size=2))
    assert [len(ids) for ids, _ in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([ids for ids, _ in batches]), stimuli["stim_id"])
    np.testing.assert_array_equal(batches[1][1][0], images[2])


def test_missing_and_corrupt_images_are_named(twin_tiny, tmp_path):
    with pytest.raises(DataError, match=r"nope\.png"):
        load_image(twin_tiny, "stimuli/images/nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"bad\.png"):
        load_image(tmp_path, "bad.png")


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_video_keeps_repeated_frames(tmp_path, suffix):
    """Pillow merges repeated frames when writing; loading restores them from the durations."""
    colours = [0, 0, 80, 80, 80, 160, 240, 240]
    frames = np.stack([np.full((4, 4, 3), c, np.uint8) for c in colours])
    images = [Image.fromarray(f) for f in frames]
    path = tmp_path / f"clip{suffix}"
    images[0].save(path, save_all=True, append_images=images[1:], duration=250)
    np.testing.assert_array_equal(load_video(tmp_path, path.name), frames)
