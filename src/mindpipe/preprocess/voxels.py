"""Voxel-space steps as scikit-learn style estimators: per-session z-scoring, NCSNR selection.

Both follow the estimator contract (STYLE.md, mindpipe convention 9): ``__init__`` only stores
parameters, ``fit`` returns ``self``, learned state lives in trailing-underscore attributes and
``transform`` before ``fit`` raises :class:`sklearn.exceptions.NotFittedError`.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from mindpipe.exceptions import DataError

logger = logging.getLogger(__name__)

_NOT_FITTED = "This %(name)s is not fitted yet: call 'fit' before 'transform'."


def ncsnr(betas: np.ndarray, stim_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Noise-ceiling SNR of each voxel, as the Natural Scenes Dataset defines it.

    On betas z-scored per voxel (within session), with images shown at least twice:
    ``noise_var = mean over images of the variance across repeats`` (ddof=1),
    ``signal_sd = sqrt(max(0, 1 - noise_var))`` and ``ncsnr = signal_sd / sqrt(noise_var)``.

    Parameters
    ----------
    betas : ndarray, (n_trials, n_voxels)
        Z-scored single-trial betas.
    stim_ids : ndarray, (n_trials,)
        Image of each trial.

    Returns
    -------
    ncsnr : ndarray, (n_voxels,) float64
        ``inf`` where the noise variance is 0.
    n_images : int
        Number of images with at least two repeats that entered the estimate.

    Raises
    ------
    DataError
        No image is repeated.
    """
    noise_var, n_images = noise_variance(betas, stim_ids)
    return ncsnr_from_noise(noise_var), n_images


def noise_variance(betas: np.ndarray, stim_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Mean over repeated images of each voxel's variance across repeats (ddof=1).

    Parameters
    ----------
    betas : ndarray, (n_trials, n_voxels)
    stim_ids : ndarray, (n_trials,)

    Returns
    -------
    noise_var : ndarray, (n_voxels,) float64
    n_images : int
        Images with at least two repeats (the mean's weight when batches are combined).

    Raises
    ------
    DataError
        No image is repeated.
    """
    betas = np.asarray(betas, dtype=np.float64)
    stim_ids = np.asarray(stim_ids)
    if betas.ndim != 2 or stim_ids.shape != (betas.shape[0],):
        raise ValueError(
            f"expected betas (n_trials, n_voxels) and stim_ids (n_trials,); "
            f"got {betas.shape} and {stim_ids.shape}"
        )
    _, inverse, counts = np.unique(stim_ids, return_inverse=True, return_counts=True)
    repeated = counts >= 2
    if not repeated.any():
        raise DataError(
            f"NCSNR needs repeated images, but none of the {counts.size} images among "
            f"{stim_ids.size} trials is shown twice"
        )
    # one-hot (n_images, n_trials) @ betas: per-image sums without a Python loop
    onehot = sparse.csr_matrix(
        (np.ones(stim_ids.size), (inverse.ravel(), np.arange(stim_ids.size))),
        shape=(counts.size, stim_ids.size),
    )[repeated]
    k = counts[repeated, None].astype(np.float64)
    mean = (onehot @ betas) / k
    sq = onehot @ betas**2
    var = (sq - k * mean**2) / (k - 1.0)
    return np.maximum(var, 0.0).mean(axis=0), int(repeated.sum())


def ncsnr_from_noise(noise_var: np.ndarray) -> np.ndarray:
    """``sqrt(max(0, 1 - noise_var)) / sqrt(noise_var)`` (inf where noise_var is 0)."""
    signal_sd = np.sqrt(np.maximum(0.0, 1.0 - noise_var))
    with np.errstate(divide="ignore"):
        return signal_sd / np.sqrt(noise_var)


def select_reliable(snr: np.ndarray, min_ncsnr: float | None, n_voxels: int | None) -> np.ndarray:
    """The voxels kept: NCSNR at least ``min_ncsnr``, then at most ``n_voxels`` of the best.

    Parameters
    ----------
    snr : ndarray, (n_voxels_in,)
        NCSNR of every voxel (ties broken by voxel order).

    Returns
    -------
    ndarray of bool, (n_voxels_in,)
    """
    keep = np.ones(snr.size, dtype=bool)
    if min_ncsnr is not None:
        keep &= snr >= min_ncsnr
    if n_voxels is not None and keep.sum() > n_voxels:
        order = np.argsort(-np.where(keep, snr, -np.inf), kind="stable")
        keep = np.zeros_like(keep)
        keep[order[:n_voxels]] = True
    return keep


def _rows_and_sessions(X: np.ndarray, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``X`` as float64 (n_trials, n_voxels) and ``sessions`` (n_trials,), shapes checked."""
    X = np.asarray(X, dtype=np.float64)
    sessions = np.asarray(sessions)
    if X.ndim != 2 or sessions.shape != (X.shape[0],):
        raise ValueError(
            f"expected X (n_trials, n_voxels) and sessions (n_trials,); "
            f"got {X.shape} and {sessions.shape}"
        )
    return X, sessions


class SessionZScorer(TransformerMixin, BaseEstimator):
    """Z-score each voxel within each session (mean 0, sd 1 over the session's trials).

    Parameters
    ----------
    eps : float
        A voxel whose sd within a session is at most ``eps`` is an error (never silently kept).

    Attributes
    ----------
    sessions_ : ndarray, (n_sessions,)
        Session labels seen in ``fit``.
    mean_, scale_ : ndarray, (n_sessions, n_voxels) float64
        Per-session voxel mean and sd (ddof=0).
    n_features_in_ : int
    """

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def fit(self, X: np.ndarray, y: None = None, *, sessions: np.ndarray) -> SessionZScorer:
        """Learn each session's voxel mean and sd from ``X`` (n_trials, n_voxels)."""
        X, sessions = _rows_and_sessions(X, sessions)
        self.__dict__.pop("_sums", None)  # a fresh fit forgets partial_fit's blocks
        labels = np.unique(sessions)
        mean = np.empty((labels.size, X.shape[1]))
        scale = np.empty_like(mean)
        for i, label in enumerate(labels):
            rows = X[sessions == label]
            mean[i] = rows.mean(axis=0)
            scale[i] = rows.std(axis=0)
            flat = scale[i] <= self.eps
            if flat.any():
                raise DataError(
                    f"session {label!s}: {int(flat.sum())} voxel(s) have zero variance over its "
                    f"{rows.shape[0]} trial(s); cannot z-score"
                )
        self.sessions_, self.mean_, self.scale_ = labels, mean, scale
        self.n_features_in_ = X.shape[1]
        return self

    def partial_fit(self, X: np.ndarray, y: None = None, *, sessions: np.ndarray) -> SessionZScorer:
        """Add a block of rows to the per-session statistics (``fit`` over a stream).

        After the last block ``mean_``/``scale_`` describe every row seen (from float64 sums
        and sums of squares: ``fit``'s values up to rounding). A session in which a voxel has
        zero variance is reported by :meth:`transform`.
        """
        X, sessions = _rows_and_sessions(X, sessions)
        stats = self.__dict__.setdefault("_sums", {})
        for label in np.unique(sessions):
            rows = X[sessions == label]
            n, total, squares = stats.get(label, (0, 0.0, 0.0))
            stats[label] = (n + rows.shape[0], total + rows.sum(0), squares + (rows**2).sum(0))
        labels = np.array(sorted(stats))
        n = np.array([stats[k][0] for k in labels], dtype=np.float64)[:, None]
        mean = np.stack([stats[k][1] for k in labels]) / n
        var = np.stack([stats[k][2] for k in labels]) / n - mean**2
        self.sessions_, self.mean_, self.scale_ = labels, mean, np.sqrt(np.maximum(var, 0.0))
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: np.ndarray, *, sessions: np.ndarray) -> np.ndarray:
        """Z-scored ``X`` as float32 with each row scaled by its session's statistics."""
        check_is_fitted(self, "mean_", msg=_NOT_FITTED)
        flat = self.scale_ <= self.eps
        if flat.any():  # only after partial_fit: fit raises first
            i = int(np.flatnonzero(flat.any(axis=1))[0])
            raise DataError(
                f"session {self.sessions_[i]!s}: {int(flat[i].sum())} voxel(s) have zero "
                "variance over its trials; cannot z-score"
            )
        X = np.asarray(X, dtype=np.float64)
        sessions = np.asarray(sessions)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected X with {self.n_features_in_} voxels; got shape {X.shape}")
        idx = np.searchsorted(self.sessions_, sessions)
        idx = np.minimum(idx, self.sessions_.size - 1)
        unknown = self.sessions_[idx] != sessions
        if unknown.any():
            raise ValueError(
                f"sessions not seen in fit: {sorted(set(sessions[unknown].tolist()))}; "
                f"known: {self.sessions_.tolist()}"
            )
        return ((X - self.mean_[idx]) / self.scale_[idx]).astype(np.float32)

    def fit_transform(self, X: np.ndarray, y: None = None, *, sessions: np.ndarray) -> np.ndarray:
        return self.fit(X, sessions=sessions).transform(X, sessions=sessions)


class VoxelSelector(TransformerMixin, BaseEstimator):
    """Keep the most reliable voxels by NCSNR of repeated training images.

    Fit only on the *training* split (z-scored betas and their stim ids): reliability estimated on
    val/test trials would leak the evaluation data into the voxel choice.

    Parameters
    ----------
    min_ncsnr : float or None
        Keep voxels with ``ncsnr >= min_ncsnr``.
    n_voxels : int or None
        Keep (at most) the ``n_voxels`` voxels of highest NCSNR (ties broken by voxel order).
        With both set, the threshold applies first and then at most ``n_voxels`` of the
        survivors are kept. With neither set every voxel is kept.

    Attributes
    ----------
    ncsnr_ : ndarray, (n_voxels_in,) float64
        NCSNR of every input voxel.
    support_ : ndarray of bool, (n_voxels_in,)
        The kept voxels.
    indices_ : ndarray of int64, (n_kept,)
        Their column indices, ascending.
    n_images_ : int
        Repeated images used for the estimate.
    n_features_in_ : int
    """

    def __init__(self, min_ncsnr: float | None = None, n_voxels: int | None = None) -> None:
        self.min_ncsnr = min_ncsnr
        self.n_voxels = n_voxels

    def fit(self, X: np.ndarray, y: np.ndarray) -> VoxelSelector:
        """Estimate NCSNR from ``X`` (n_trials, n_voxels) z-scored betas and ``y`` stim ids."""
        if self.n_voxels is not None and self.n_voxels < 1:
            raise ValueError(f"'n_voxels' must be >= 1 or None; got {self.n_voxels}")
        snr, n_images = ncsnr(X, y)
        keep = select_reliable(snr, self.min_ncsnr, self.n_voxels)
        self.ncsnr_ = snr
        self.support_ = keep
        self.indices_ = np.flatnonzero(keep).astype(np.int64)
        self.n_images_ = n_images
        self.n_features_in_ = snr.size
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The kept columns of ``X`` (n_rows, n_voxels_in) -> (n_rows, n_kept)."""
        check_is_fitted(self, "support_", msg=_NOT_FITTED)
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected X with {self.n_features_in_} voxels; got shape {X.shape}")
        return X[:, self.indices_]
