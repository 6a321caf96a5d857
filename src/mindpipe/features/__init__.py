"""Stimulus features the decoders map fMRI into."""

from mindpipe.features.attributes import attribute_features

__all__ = ["attribute_features"]
