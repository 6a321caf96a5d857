"""mindpipe: a reproducible pipeline for decoding vision from fMRI."""

__version__ = "0.1.0"
