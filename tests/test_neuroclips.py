"""NeuroClips' pieces: Perception Reconstructor, blurry-video plumbing, frame classifier, GIFs."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mindpipe.exceptions import DataError, ParamsError
from mindpipe.models.frame_classifier import FrameClassifierConfig, fit_frame_classifier
from mindpipe.models.perception import PerceptionConfig, PerceptionReconstructor
from mindpipe.recipes.neuroclips import (
    NeuroClipsParams,
    PerceptionTrain,
    PretrainedVideo,
    VideoTrain,
    blurry_target,
    choose_threshold,
    expand_blurry,
    fit_perception,
    fuse_videos,
    fused_scenes,
    fusion_decisions,
    fusion_places,
    load_clips,
    lower_contrast,
    neighbour_similarity,
    perceive,
    pixcorr,
    previous_clip,
    to_uint8,
    to_unit,
    write_gif,
)

CPU = torch.device("cpu")


def test_perception_reconstructor_shape_and_range():
    model = PerceptionReconstructor(
        PerceptionConfig(n_voxels=20, out_size=8, hidden=16, channels=8)
    )
    video = model(torch.randn(3, 20))
    assert video.shape == (3, 6, 3, 8, 8)
    assert video.abs().max() <= 1.0


def test_perception_rejects_a_size_it_cannot_reach():
    with pytest.raises(ValueError, match="out_size 12"):
        PerceptionReconstructor(PerceptionConfig(n_voxels=4, out_size=12))


def test_perception_learns_a_voxel_to_video_mapping():
    """Smooth videos that depend on the voxels: PixCorr > 0.5, MSE well under the mean video's."""
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(10, 6 * 3 * 2 * 2, generator=gen)

    def make(n: int) -> tuple[np.ndarray, torch.Tensor]:
        x = torch.randn(n, 10, generator=gen)
        coarse = torch.tanh(0.5 * x @ basis).view(n * 6, 3, 2, 2)
        video = torch.nn.functional.interpolate(coarse, size=8, mode="bilinear")
        return x.numpy(), video.view(n, 6, 3, 8, 8)

    train, val = make(128), make(32)
    cfg = PerceptionTrain(hidden=64, channels=8, epochs=15, batch_size=16, lr=3e-3)
    model, val_pixcorr = fit_perception(train, val, NeuroClipsParams(perception=cfg), CPU, seed=0)
    pred = perceive(model, val[0], CPU)
    assert pixcorr(pred, val[1]) == pytest.approx(val_pixcorr, rel=1e-5)
    assert val_pixcorr > 0.5
    mean_mse = (train[1].mean(0, keepdim=True) - val[1]).square().mean()
    assert (pred - val[1]).square().mean() < 0.6 * mean_mse


def test_blurry_target_is_three_fps_at_the_blurry_size():
    video = to_unit(np.random.default_rng(0).integers(0, 256, (2, 16, 32, 32, 3), np.uint8))
    target = blurry_target(video, fps=8, size=8)
    assert target.shape == (2, 6, 3, 8, 8)
    # area downsampling: each blurry pixel is the mean of a 4x4 block of the frame it samples
    assert torch.allclose(target[0, 1, :, 0, 0], video[0, 3, :, :4, :4].mean((-1, -2)), atol=1e-5)


def test_expand_blurry_keeps_the_endpoints_and_interpolates_linearly():
    blurry = torch.stack([torch.full((3, 4, 4), float(v)) for v in (0.0, 0.6)])[None]
    video = expand_blurry(blurry, n_frames=5, size=8)
    assert video.shape == (1, 5, 3, 8, 8)
    assert torch.allclose(video[0, :, 0, 0, 0], torch.tensor([0.0, 0.15, 0.3, 0.45, 0.6]))


def test_lower_contrast_keeps_the_mean_colour_and_shrinks_the_rest():
    video = torch.randn(64, 4, 3, 5, 5)
    low = lower_contrast(video, 0.3, torch.Generator().manual_seed(0))
    mean = video.mean(dim=(1, 3, 4), keepdim=True)
    torch.testing.assert_close(low.mean(dim=(1, 3, 4), keepdim=True), mean)
    ratio = (low - mean).flatten(1).norm(dim=1) / (video - mean).flatten(1).norm(dim=1)
    assert ratio.min() >= 0.3 and ratio.max() <= 1.0 and ratio.max() - ratio.min() > 0.4


def test_uint8_round_trip():
    clips = np.random.default_rng(1).integers(0, 256, (2, 4, 8, 8, 3), np.uint8)
    np.testing.assert_array_equal(to_uint8(to_unit(clips)), clips)


def test_frame_classifier_learns_colours():
    """Frames whose label is their colour: accuracy far above the 1/4 chance."""
    gen = torch.Generator().manual_seed(0)
    colours = torch.tensor([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]], dtype=torch.float)
    labels = torch.randint(0, 4, (256,), generator=gen)
    frames = colours[labels][:, :, None, None] + 0.5 * torch.randn(256, 3, 8, 8, generator=gen)
    config = FrameClassifierConfig(heads=(4, 2), channels=(8, 16))
    two = torch.stack([labels, labels % 2], 1)
    model = fit_frame_classifier(frames[:192], two[:192], config, epochs=15, seed=0)
    probs = model.joint_probs(frames[192:])
    assert probs.shape == (64, 8)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    accuracy = (probs.argmax(1) // 2 == labels[192:].numpy()).mean()
    assert accuracy > 0.8


def test_gif_has_every_frame_and_lasts_frames_over_fps(tmp_path):
    frames = np.random.default_rng(2).integers(0, 256, (16, 8, 8, 3), np.uint8)
    write_gif(tmp_path / "clip.gif", frames, fps=8)
    durations = []
    with Image.open(tmp_path / "clip.gif") as gif:
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert len(durations) == 16
    assert sum(durations) == 2000  # 16 frames at 8 FPS; GIF delays are centiseconds
    assert set(durations) <= {120, 130}


def test_previous_clip_links_consecutive_stim_ids_only():
    assert previous_clip(np.array([5, 6, 8, 9, 10])).tolist() == [-1, 0, -1, 2, 3]
    assert previous_clip(np.array([9, 8])).tolist() == [1, -1]  # by id, not by position


def test_fusion_places_follow_links_and_cap_the_video_length():
    prev = np.array([-1, 0, 1, 2, 3])
    every = np.ones(5, bool)
    assert fusion_places(prev, every, max_clips=3).tolist() == [0, 1, 2, 0, 1]
    broken = every.copy()
    broken[2] = False
    assert fusion_places(prev, broken, max_clips=3).tolist() == [0, 1, 0, 1, 2]
    assert fusion_places(prev, every, max_clips=1).tolist() == [0] * 5  # fusion off
    assert fusion_places(np.array([-1, -1]), every[:2], 3).tolist() == [0, 0]  # nothing to follow


def test_threshold_separates_continuing_scenes_and_prefers_fusing_less():
    sim = np.array([0.1, 0.2, 0.8, 0.9])
    same = np.array([False, False, True, True])
    cut = choose_threshold(sim, same)
    assert cut == pytest.approx(0.5)  # midway between the pairs it separates
    assert np.array_equal(sim >= cut, same)
    assert choose_threshold(sim, np.zeros(4, bool)) == np.inf  # never fuse when nothing continues


def test_neighbour_similarity_is_the_cosine_with_the_previous_clip():
    emb = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    sim = neighbour_similarity(emb, np.array([-1, 0, 1]))
    assert np.isnan(sim[0])
    np.testing.assert_allclose(sim[1:], [1.0, 0.0])


def test_fused_clips_start_from_the_previous_fused_clip_and_last_frames_over_fps(tmp_path):
    """Each continuing clip is regenerated from the last frame of the clip before it *as
    fused*, so a 3-clip scene is one 48-frame video lasting 6 s at 8 FPS."""
    videos = torch.zeros(4, 16, 3, 4, 4)
    videos[:, -1] = torch.arange(4.0)[:, None, None, None]  # last frame tells the clip apart
    prev, place = np.array([-1, 0, 1, -1]), np.array([0, 1, 2, 0])
    seen = []

    def regenerate(rows, keyframes):
        seen.append((rows.tolist(), keyframes[:, 0, 0, 0].tolist()))
        out = keyframes[:, None].repeat(1, 16, 1, 1, 1) + 10  # a new clip from the keyframe
        return out

    fused = fuse_videos(videos, prev, place, regenerate)
    assert seen == [([1], [0.0]), ([2], [10.0])]  # clip 2 starts from clip 1 as fused
    assert torch.equal(fused[[0, 3]], videos[[0, 3]])  # clips opening a scene stay as they were
    scenes = fused_scenes(prev, place)
    assert scenes == [[0, 1, 2], [3]]
    frames = np.concatenate(to_uint8(fused.clamp(0, 1))[scenes[0]])
    write_gif(tmp_path / "scene.gif", frames, fps=8)
    with Image.open(tmp_path / "scene.gif") as gif:
        total = 0
        for i in range(gif.n_frames):
            gif.seek(i)
            total += gif.info["duration"]
    assert frames.shape[0] == 48 and total == 6000


def test_fusion_decisions_choose_the_cut_on_val_and_score_test_against_scenes():
    table = pd.DataFrame({"scene": [0, 0, 1, 2, 2, 3, 3, 4]}, index=range(8))
    direction = {0: [1.0, 0.0], 1: [0.0, 1.0], 2: [1.0, 1.0], 3: [-1.0, 0.0], 4: [0.0, -1.0]}
    emb = np.array([direction[s] for s in table["scene"]]) + 0.05 * np.arange(8)[:, None]
    val, test = np.arange(0, 5), np.arange(5, 8)
    prev, place, scores = fusion_decisions(
        emb[test], test, (emb[val], val), table, NeuroClipsParams()
    )
    assert prev.tolist() == [-1, 0, 1] and place.tolist() == [0, 1, 0]
    assert scores["val_accuracy"] == 1.0 and scores["test_accuracy"] == 1.0
    _, place, scores = fusion_decisions(
        emb[test], test, (emb[val], val), table.drop(columns="scene"), NeuroClipsParams()
    )
    assert place.tolist() == [0, 0, 0] and scores["enabled"] == 0.0  # no labels, no cut: off


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"subjects": ()}, "neuroclips.subjects"),
        ({"blurry_size": 2}, "neuroclips.blurry_size"),
        ({"video": VideoTrain(blurry_strength=0.0)}, "neuroclips.video.blurry_strength"),
        ({"keyframe_strength": 1.5}, "neuroclips.keyframe_strength"),
        ({"video": VideoTrain(blurry_contrast_min=2.0)}, "neuroclips.video.blurry_contrast_min"),
        ({"perception": PerceptionTrain(loss="huber")}, "neuroclips.perception.loss"),
        ({"pretrained": PretrainedVideo(stable_diffusion="sd")}, "neuroclips.pretrained"),
        ({"fusion_max_clips": 0}, "neuroclips.fusion_max_clips"),
    ],
)
def test_bad_params_name_the_parameter(kwargs, name):
    with pytest.raises(ParamsError, match=name):
        NeuroClipsParams(**kwargs)


def test_clips_of_another_length_are_named(tmp_path):
    for name, n in (("a.png", 4), ("b.png", 3)):
        images = [Image.fromarray(np.full((4, 4, 3), 60 * i, np.uint8)) for i in range(n)]
        images[0].save(tmp_path / name, save_all=True, append_images=images[1:], duration=125)
    with pytest.raises(DataError, match=r"\['b.png'\]"):
        load_clips(tmp_path, ["a.png", "b.png"])
