"""Real-dataset adapters: check a published release, convert it into the internal layout.

``get_adapter(kind)`` is the one table (``nsd``, ``god``, ``cc2017``, ``bids``);
:func:`check_source` runs an adapter's structural inspection plus Great Expectations suites on
the release's index tables (``mindpipe data check``), and :func:`import_dataset` converts a
release that passed into ``base.data_dir`` atomically (``mindpipe data import``): an
interrupted or failing conversion leaves nothing behind. docs/real-data.md has the layouts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from mindpipe.exceptions import DataError, ParamsError, ValidationError
from mindpipe.io.adapters import bids, cc2017, god, nsd
from mindpipe.io.adapters.common import Adapter, Inspection
from mindpipe.params import SourceParams
from mindpipe.utils import atomic_dir
from mindpipe.validate.gx import Check, run_suite

logger = logging.getLogger(__name__)

_ADAPTERS: dict[str, Adapter] = {
    a.name: a for a in (nsd.ADAPTER, god.ADAPTER, cc2017.ADAPTER, bids.ADAPTER)
}


def get_adapter(kind: str) -> Adapter:
    """The adapter for dataset ``kind``; an unknown kind lists the supported ones."""
    try:
        return _ADAPTERS[kind]
    except KeyError:
        raise ParamsError(
            f"no adapter for dataset {kind!r} (base.dataset); supported: "
            f"{', '.join(sorted(_ADAPTERS))}"
        ) from None


@dataclasses.dataclass
class SourceReport:
    """A release's check: structural problems, then expectations on its index tables."""

    inspection: Inspection
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return not self.inspection.problems and all(c.success for c in self.checks)

    def markdown(self) -> str:
        ins = self.inspection
        failed = [c for c in self.checks if not c.success]
        lines = [
            f"# data check ({ins.dataset}): {'PASSED' if self.ok else 'FAILED'}",
            "",
            f"Release `{ins.source}`: "
            + (", ".join(f"{k} = {v}" for k, v in ins.counts.items()) or "nothing readable")
            + ".",
            "",
        ]
        if ins.problems:
            lines += ["## Structural problems", ""] + [f"- {p}" for p in ins.problems] + [""]
        if self.checks:
            passed = len(self.checks) - len(failed)
            lines += [f"## Expectations: {passed} of {len(self.checks)} passed", ""]
            lines += [f"- {c.line()}" for c in failed] or ["All expectations passed."]
        return "\n".join(lines).rstrip() + "\n"


def check_source(kind: str, source: str | Path | None, params: SourceParams) -> SourceReport:
    """Inspect the release at ``source`` (structure) and run its tables' expectations.

    Raises
    ------
    ParamsError
        No source folder given (``base.source.dir``) or an unknown kind.
    """
    adapter = get_adapter(kind)
    if not source:
        raise ParamsError(
            f"base.source.dir is not set: point it at the {kind} release ({adapter.layout})"
        )
    inspection = adapter.inspect(Path(source), params)
    checks: list[Check] = []
    for name, (table, specs, index) in inspection.tables.items():
        checks += run_suite(f"{kind}-{name}", table, specs, index)
    return SourceReport(inspection, checks)


def import_dataset(
    kind: str, source: str | Path | None, out_dir: str | Path, params: SourceParams, seed: int
) -> dict[str, float]:
    """Check the release, then convert it into ``out_dir`` (written atomically).

    Raises
    ------
    DataError
        Structural problems in the release (the whole report is the message), or a file that
        turns out truncated while its data is read.
    ValidationError
        A failed expectation on the release's index tables.
    """
    start = time.perf_counter()
    report = check_source(kind, source, params)
    if report.inspection.problems:
        raise DataError(report.markdown())
    if not report.ok:
        raise ValidationError(report.markdown())
    with atomic_dir(out_dir) as tmp:
        metrics = get_adapter(kind).convert(report.inspection, tmp, params, seed)
    metrics["seconds"] = time.perf_counter() - start
    logger.info("imported %s from '%s' into '%s': %s", kind, source, out_dir, metrics)
    return metrics


__all__ = ["Adapter", "Inspection", "SourceReport", "check_source", "get_adapter", "import_dataset"]
