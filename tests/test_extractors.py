"""Feature networks for the image metrics: local weights only, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from mindpipe.evaluate.extractors import FeatureExtractor
from mindpipe.evaluate.image_metrics import resize_images, two_way_identification
from mindpipe.exceptions import MindpipeError


def test_local_weights_are_loaded_and_change_the_features(tmp_path):
    torch.manual_seed(123)
    path = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet().state_dict(), path)
    images = np.random.default_rng(0).random((3, 64, 64, 3))
    fallback = FeatureExtractor("alexnet5", size=64)
    local = FeatureExtractor("alexnet5", weights=path, size=64)
    assert local.pretrained and not fallback.pretrained
    assert not np.allclose(local(images), fallback(images))
    np.testing.assert_array_equal(fallback(images), FeatureExtractor("alexnet5", size=64)(images))


def test_fallback_features_still_identify_reconstructions():
    rng = np.random.default_rng(1)
    truth = resize_images(rng.random((12, 8, 8, 3)), 64).clip(0, 1)
    recon = (truth + rng.normal(0, 0.15, truth.shape)).clip(0, 1)
    fx = FeatureExtractor("alexnet2", size=64)
    assert two_way_identification(fx(recon), fx(truth)) > 0.9
    assert two_way_identification(fx(recon[::-1].copy()), fx(truth)) < 0.7


def test_missing_or_corrupt_weights_name_the_file(tmp_path):
    with pytest.raises(MindpipeError, match=r"nope\.pth"):
        FeatureExtractor("alexnet2", weights=tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(MindpipeError, match=r"bad\.pth"):
        FeatureExtractor("alexnet2", weights=bad)
    with pytest.raises(MindpipeError, match="unknown feature extractor"):
        FeatureExtractor("vgg")
