"""Errors a user can act on. Each message says what was wrong, where, and what is allowed."""


class MindpipeError(Exception):
    """Base class: the CLI prints these without a traceback and exits non-zero."""


class ParamsError(MindpipeError):
    """A params.yaml section or key is unknown, missing or out of range."""


class DataError(MindpipeError):
    """An input file is missing, truncated, or disagrees with its companions."""


class ValidationError(DataError):
    """A data gate (Great Expectations suite) failed; the message holds the readable report."""


class MissingWeightsError(MindpipeError):
    """Pretrained weights were asked for but the local path does not hold them."""


class TrackingError(MindpipeError):
    """The MLflow tracking store could not be reached or written: results would be lost."""
