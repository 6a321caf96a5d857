"""Stimulus features the decoders map fMRI into."""

from mindpipe.features.attributes import attribute_features
from mindpipe.features.store import FeatureStore

__all__ = ["FeatureStore", "attribute_features"]
