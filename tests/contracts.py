"""Checks shared by the tests of several modules."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError


def check_estimator_contract(
    est: Any, x: Any, fit_kw: dict[str, Any], transform_kw: dict[str, Any]
) -> None:
    """The voxel-space estimator contract (STYLE.md, mindpipe convention 9)."""
    params = est.get_params()
    name = type(est).__name__
    with pytest.raises(NotFittedError, match=f"This {name} is not fitted yet: call 'fit' before"):
        est.transform(x, **transform_kw)
    assert est.fit(x, **fit_kw) is est
    assert est.get_params() == params
    first = est.transform(x, **transform_kw)
    assert est.fit(x, **fit_kw).transform(x, **transform_kw).tobytes() == first.tobytes()
    fresh = clone(est)
    assert fresh.get_params() == params
    with pytest.raises(NotFittedError):
        fresh.transform(x, **transform_kw)
    assert fresh.fit(x, **fit_kw).transform(x, **transform_kw).tobytes() == first.tobytes()
    again = pickle.loads(pickle.dumps(est))
    assert again.transform(x, **transform_kw).tobytes() == first.tobytes()
