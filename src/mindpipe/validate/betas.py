"""The betas gate: expectations on ``artifacts/preprocess/summary.tsv`` before it is published."""

from __future__ import annotations

import logging

import pandas as pd

from mindpipe.exceptions import ValidationError
from mindpipe.io.bids import SPLITS
from mindpipe.validate.gx import Check, Spec, format_failures, run_suite

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = (
    "subject",
    "split",
    "n_rows",
    "n_voxels",
    "n_nonfinite",
    "mean",
    "std",
    "min",
    "max",
    "tr",
    "expected_rows",
)


def betas_specs(
    std_range: tuple[float, float] = (0.2, 2.0), max_abs_mean: float = 1.0
) -> list[Spec]:
    """The gate's expectations (see :func:`check_betas_summary`)."""
    specs: list[Spec] = [("ExpectColumnToExist", {"column": c}) for c in SUMMARY_COLUMNS]
    specs += [
        ("ExpectTableRowCountToBeBetween", {"min_value": 1}),
        ("ExpectColumnValuesToBeInSet", {"column": "split", "value_set": list(SPLITS)}),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "n_nonfinite", "min_value": 0, "max_value": 0},
        ),
        ("ExpectColumnPairValuesToBeEqual", {"column_A": "n_rows", "column_B": "expected_rows"}),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "n_rows", "min_value": 1, "row_condition": ("split", "==", "train")},
        ),
        ("ExpectColumnValuesToBeBetween", {"column": "n_voxels", "min_value": 1}),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "std", "min_value": std_range[0], "max_value": std_range[1]},
        ),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "mean", "min_value": -max_abs_mean, "max_value": max_abs_mean},
        ),
        ("ExpectColumnValuesToBeBetween", {"column": "tr", "min_value": 0, "strict_min": True}),
        (
            "ExpectColumnUniqueValueCountToBeBetween",
            {"column": "tr", "min_value": 1, "max_value": 1},
        ),
    ]
    return specs


def check_betas_summary(
    summary: pd.DataFrame,
    std_range: tuple[float, float] = (0.2, 2.0),
    max_abs_mean: float = 1.0,
) -> list[Check]:
    """Gate the preprocessed betas on their summary table (one row per subject x split).

    Checks: no non-finite value, ``n_rows == expected_rows`` (rows expected from the events),
    at least one train row and one voxel, ``std`` within ``std_range`` and ``|mean|`` at most
    ``max_abs_mean`` (betas are z-scored per session; val/test rows average repeats, so their sd
    is lower, down to ``1/sqrt(n_repeats)`` for pure noise), ``tr`` positive and equal across
    subjects. Empty splits have NaN statistics, which the value checks skip.

    Returns
    -------
    list of Check
        Every expectation's outcome (all passed).

    Raises
    ------
    ValidationError
        One line per failed expectation, naming the column, the expectation and the subject/split
        rows that failed.
    """
    checks = run_suite(
        "summary", summary, betas_specs(std_range, max_abs_mean), ("subject", "split")
    )
    if not all(c.success for c in checks):
        raise ValidationError(format_failures(checks, "betas gate (preprocess summary.tsv)"))
    logger.info("betas gate: %d expectations passed", len(checks))
    return checks
