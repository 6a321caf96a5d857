"""The ridge path agrees with scikit-learn and recovers a linear map."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from mindpipe.exceptions import ParamsError
from mindpipe.models.baselines import RidgeParams, ridge_path


def test_ridge_path_matches_sklearn():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 25)), rng.normal(size=(60, 4))
    for (w, b), alpha in zip(ridge_path(x, y, (0.1, 10.0)), (0.1, 10.0), strict=True):
        ref = Ridge(alpha=alpha).fit(x, y)
        np.testing.assert_allclose(w, ref.coef_.T, atol=1e-8)
        np.testing.assert_allclose(b, ref.intercept_, atol=1e-8)


def test_ridge_recovers_linear_map_at_low_penalty():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 10))
    true_w = rng.normal(size=(10, 3))
    ((w, _b),) = ridge_path(x, x @ true_w + 0.5, (1e-6,))
    np.testing.assert_allclose(w, true_w, atol=1e-5)


def test_alphas_must_be_positive():
    with pytest.raises(ParamsError, match=r"baseline\.alphas"):
        RidgeParams(alphas=(0.0, 1.0))
