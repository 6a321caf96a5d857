"""Decoders, one module per method."""
