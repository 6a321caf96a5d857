"""Data gates (Great Expectations): the raw dataset and the preprocessed betas."""

from mindpipe.validate.betas import check_betas_summary
from mindpipe.validate.gx import Check, format_failures, run_suite
from mindpipe.validate.raw import ValidateRawParams, validate_raw

__all__ = [
    "Check",
    "ValidateRawParams",
    "check_betas_summary",
    "format_failures",
    "run_suite",
    "validate_raw",
]
