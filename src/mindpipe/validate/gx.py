"""A thin layer over Great Expectations 1.x: run a list of expectations on a DataFrame.

Expectations are given as plain data, ``(ExpectationClassName, kwargs)``, so callers need not
import Great Expectations (its import costs seconds; it happens here, lazily, on first use). Each
suite runs in an ephemeral context with a pandas datasource, an expectation suite and a
validation definition, with progress bars and analytics off. Results come back as
:class:`Check` records, which :func:`format_failures` turns into a readable report.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)

Spec = tuple[str, dict[str, Any]]


@dataclasses.dataclass
class Check:
    """The outcome of one expectation.

    Attributes
    ----------
    table : str
        Which table (``events``, ``stimuli``, ``summary``).
    expectation : str
        snake_case expectation type, e.g. ``expect_column_values_to_be_in_set``.
    column : str
        The column(s) it is about (``A,B`` for pair expectations; ``""`` for table ones).
    kwargs : dict
        Its arguments (without the column), long lists shortened.
    success : bool
    observed : str
        What was found: the observed value, or the unexpected values with counts and where.
    """

    table: str
    expectation: str
    column: str
    kwargs: dict[str, Any]
    success: bool
    observed: str

    def line(self) -> str:
        kwargs = dict(self.kwargs)
        where = kwargs.pop("row_condition", None)
        args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        col = f" column '{self.column}'" if self.column else ""
        cond = f" where {where}" if where else ""
        return f"[{self.table}]{col}: {self.expectation}({args}){cond} failed: {self.observed}"


def _gx() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:  # its INFO chatter drowns ours; a user setting wins
        gx_logger.setLevel(logging.WARNING)
    import great_expectations as gx

    # this module pins its own logger to INFO and logs a line per context
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    return gx


def run_suite(
    table: str,
    df: pd.DataFrame,
    specs: list[Spec],
    index_columns: tuple[str, ...] = (),
) -> list[Check]:
    """Validate ``df`` against the expectations ``specs``; return one :class:`Check` each.

    Parameters
    ----------
    table : str
        Names the table in the report (and the suite).
    df : DataFrame
    specs : list of (str, dict)
        ``("ExpectColumnValuesToBeBetween", {"column": "onset", "min_value": 0})``; a
        ``row_condition`` is a ``(column, operator, value)`` triple such as
        ``("split", "!=", "test")``, built into a GX ``Column`` condition.
    index_columns : tuple of str
        Columns that identify a row (e.g. ``file``); the report shows them for unexpected rows.
    """
    gx = _gx()
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = context.data_sources.add_pandas("mindpipe").add_dataframe_asset(table)
    batch = asset.add_batch_definition_whole_dataframe(f"{table}-all")
    suite = context.suites.add(gx.ExpectationSuite(name=f"mindpipe-{table}"))
    order: dict[str, int] = {}
    for i, (name, kwargs) in enumerate(specs):
        kwargs = dict(kwargs)
        if "row_condition" in kwargs:
            kwargs["row_condition"] = _condition(*kwargs["row_condition"])
        added = suite.add_expectation(getattr(gxe, name)(**kwargs))
        order[str(added.id)] = i
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"mindpipe-{table}", data=batch, suite=suite)
    )
    index = [c for c in index_columns if c in df.columns]
    result_format: dict[str, Any] = {"result_format": "COMPLETE"}
    if index:
        result_format["unexpected_index_column_names"] = index
    result = definition.run(batch_parameters={"dataframe": df}, result_format=result_format)
    ordered = sorted(result.results, key=lambda r: order.get(str(r.expectation_config.id), 0))
    return [_to_check(table, r, index) for r in ordered]


_OPERATORS = {
    "==": lambda c, v: c == v,
    "!=": lambda c, v: c != v,
    "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    ">=": lambda c, v: c >= v,
}


def _condition(column: str, operator: str, value: Any) -> Any:
    from great_expectations.expectations.row_conditions import Column

    if operator not in _OPERATORS:
        raise ValueError(
            f"row_condition operator must be one of {list(_OPERATORS)}; got {operator!r}"
        )
    return _OPERATORS[operator](Column(column), value)


def _short(value: Any, n: int = 8) -> Any:
    if isinstance(value, list | tuple | set) and len(value) > n:
        return f"<{len(value)} values>"
    if isinstance(value, dict) and value.get("type") == "comparison":  # a serialised condition
        return f"{value['column']['name']} {value['operator']} {value['parameter']!r}"
    return _plain(value)


def _plain(value: Any) -> Any:
    """numpy scalars (also inside tuples) as Python values, so reports read ``92.0``."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


def _to_check(table: str, r: Any, index: list[str]) -> Check:
    cfg = r.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    if "column" in kwargs:
        column = str(kwargs.pop("column"))
    elif "column_A" in kwargs:
        column = f"{kwargs.pop('column_A')},{kwargs.pop('column_B')}"
    else:
        column = ""
    kwargs.pop("condition_parser", None)
    kwargs = {k: _short(v) for k, v in kwargs.items() if v is not None}
    return Check(
        table=table,
        expectation=cfg.type,
        column=column,
        kwargs=kwargs,
        success=bool(r.success),
        observed=_observed(r, index, cfg.type),
    )


def _observed(r: Any, index: list[str], kind: str) -> str:
    info = r.exception_info or {}
    messages = [v.get("exception_message") for v in info.values() if isinstance(v, dict)]
    if info.get("raised_exception"):
        messages.append(info.get("exception_message"))
    messages = [m for m in messages if m]
    if messages:
        return f"error: {messages[0]}"
    res = dict(r.result or {})
    if "observed_value" in res:
        return f"observed {_short(res['observed_value'], 20)}"
    if "unexpected_count" in res:
        n_bad, n = res["unexpected_count"], res.get("element_count")
        if not n_bad:
            return f"0 of {n} rows unexpected"
        counts = res.get("partial_unexpected_counts") or []
        values = ", ".join(f"{_plain(c['value'])!r} x{c['count']}" for c in counts[:5])
        text = f"{n_bad} of {n} rows unexpected: {values}"
        rows = res.get("partial_unexpected_index_list") or []
        if rows and index:
            where = sorted({" ".join(str(row.get(c)) for c in index) for row in rows})
            text += f"; in {', '.join(where[:5])}" + (" ..." if len(where) > 5 else "")
        return text
    if kind == "expect_column_to_exist":
        return "column is missing"
    return "failed" if not r.success else "ok"


def format_failures(checks: list[Check], header: str) -> str:
    """``header`` then one line per failed check."""
    failed = [c for c in checks if not c.success]
    lines = [f"{header}: {len(failed)} of {len(checks)} expectation(s) failed"]
    lines += ["  " + c.line() for c in failed]
    return "\n".join(lines)
