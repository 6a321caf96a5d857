"""Real-dataset adapters: convert a published release into mindpipe's internal layouts.

Only NSD-style pre-estimated single-trial betas are supported so far (see docs/real-data.md
once written); ``get_adapter`` is the one factory so the CLI and stages never import a module
by name.
"""

from __future__ import annotations

from collections.abc import Callable

from mindpipe.exceptions import ParamsError
from mindpipe.io.adapters.nsd import convert_nsd

_ADAPTERS: dict[str, Callable[..., dict[str, float]]] = {"nsd": convert_nsd}


def get_adapter(kind: str) -> Callable[..., dict[str, float]]:
    """The converter for dataset ``kind``; unknown kinds list the supported ones."""
    try:
        return _ADAPTERS[kind]
    except KeyError:
        raise ParamsError(
            f"unknown dataset kind '{kind}'; supported: {', '.join(sorted(_ADAPTERS))}"
        ) from None
