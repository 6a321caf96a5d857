"""Anatomical alignment of subjects to a common template (twin template or MNI152)."""

from mindpipe.align.registration import TemplateAligner
from mindpipe.align.stage import AlignParams, align

__all__ = ["AlignParams", "TemplateAligner", "align"]
