"""Single-trial GLM of one run: DCT high-pass, canonical HRF, least-squares-separate (LSS).

For every trial *i*, LSS fits the design ``[trial i, all other trials, nuisance]`` and keeps the
first coefficient (Mumford et al. 2012). The nuisance part (constant + DCT cosines up to the
high-pass cutoff, as SPM's ``spm_filter``) is projected out of both the data and the trial
regressors first; by the Frisch-Waugh-Lovell theorem this gives exactly the coefficients of the
full design. The remaining two-regressor fits are solved in closed form for all trials and all
voxels at once, so a run costs a few small matrix products.
"""

from __future__ import annotations

import logging

import numpy as np
from nilearn.glm.first_level import glover_hrf, spm_hrf

from mindpipe.exceptions import DataError

logger = logging.getLogger(__name__)

HRF_MODELS = ("spm", "glover")


def dct_basis(n_vols: int, tr: float, cutoff: float) -> np.ndarray:
    """Orthonormal nuisance basis: a constant plus the DCT-II cosines slower than ``cutoff``.

    The number of cosines is ``floor(2 * n_vols * tr / cutoff)`` (SPM's ``spm_filter``; the
    same count as nilearn's ``cosine`` drift model), capped at ``n_vols - 1``.

    Parameters
    ----------
    n_vols : int
        Number of volumes (time points).
    tr : float
        Repetition time in seconds.
    cutoff : float
        High-pass cutoff period in seconds (128 s in SPM).

    Returns
    -------
    ndarray, (n_vols, 1 + n_cosines) float64
        Orthonormal columns; the first is the constant.
    """
    if n_vols < 2 or tr <= 0 or cutoff <= 0:
        raise ValueError(f"need n_vols >= 2, tr > 0, cutoff > 0; got {n_vols}, {tr}, {cutoff}")
    order = min(n_vols - 1, int(np.floor(2.0 * n_vols * tr / cutoff)))
    t = np.arange(n_vols)
    k = np.arange(order + 1)
    basis = np.cos(np.pi * np.outer(t + 0.5, k) / n_vols)
    basis /= np.linalg.norm(basis, axis=0)
    return basis


def project_out(basis: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Residual of ``x`` (time on axis 0) after least squares on orthonormal ``basis`` columns."""
    return x - basis @ (basis.T @ x)


def trial_regressors(
    onsets: np.ndarray,
    durations: np.ndarray,
    n_vols: int,
    tr: float,
    hrf_model: str = "spm",
    oversampling: int = 50,
) -> np.ndarray:
    """One HRF-convolved regressor per trial, sampled at the volumes' acquisition times.

    Frame times are ``arange(n_vols) * tr`` (onsets are seconds from the first volume). As in
    nilearn's ``compute_regressor``, each trial is a unit boxcar on a grid ``oversampling`` times
    finer than the TR, convolved with nilearn's ``spm_hrf`` (or ``glover_hrf``) kernel. Since all
    trials of one duration share one response shape, the response is computed once per duration
    and shifted to each onset, so a run costs one convolution rather than one per trial. Each
    column is divided by the peak of its response, so that a coefficient is the *peak* response
    (% signal change here), as in GLMsingle and the twin.

    Returns
    -------
    ndarray, (n_vols, n_trials) float64
        Proportional to ``compute_regressor`` to about 1e-3 of the peak (nilearn resamples its
        fine grid by linear interpolation; here frame times lie on the grid).
    """
    if hrf_model not in HRF_MODELS:
        raise ValueError(f"'hrf_model' must be one of {list(HRF_MODELS)}; got {hrf_model!r}")
    onsets = np.asarray(onsets, dtype=np.float64)
    durations = np.asarray(durations, dtype=np.float64)
    dt = tr / oversampling
    frames = np.arange(n_vols) * oversampling  # frame k is fine-grid sample k * oversampling
    start = np.ceil(onsets / dt - 1e-9).astype(np.int64)  # first fine sample at/after onset
    design = np.zeros((n_vols, onsets.size))
    for duration in np.unique(durations):
        response = _boxcar_response(float(duration), tr, hrf_model, oversampling)
        cols = np.flatnonzero(durations == duration)
        lag = frames[:, None] - start[None, cols]
        inside = (lag >= 0) & (lag < response.size)
        design[:, cols] = np.where(inside, response[np.clip(lag, 0, response.size - 1)], 0.0)
    return design


def _boxcar_response(duration: float, tr: float, hrf_model: str, oversampling: int) -> np.ndarray:
    """Fine-grid response to a unit boxcar of ``duration`` s, scaled to peak 1."""
    kernel = (spm_hrf if hrf_model == "spm" else glover_hrf)(tr, oversampling)
    boxcar = np.ones(max(1, round(duration * oversampling / tr)))
    response = np.convolve(boxcar, kernel)
    return response / response.max()


def lss(design: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Least-squares-separate coefficients, all trials and voxels at once.

    Parameters
    ----------
    design : ndarray, (n_vols, n_trials)
        Trial regressors, nuisance already projected out.
    data : ndarray, (n_vols, n_voxels)
        Time series, nuisance already projected out.

    Returns
    -------
    ndarray, (n_trials, n_voxels) float64
        Coefficient of trial *i* in the fit ``[x_i, sum_{j != i} x_j]``.
    """
    design = np.asarray(design, float)
    n_trials = design.shape[1]
    a = design.T @ data  # (n_trials, n_voxels): x_i . y
    g11 = np.einsum("ti,ti->i", design, design)  # x_i . x_i
    if n_trials == 1:
        return a / g11[:, None]
    total = design.sum(axis=1)  # s = sum of all trial regressors
    b = total @ data  # (n_voxels,): s . y
    xs = design.T @ total  # x_i . s
    g12 = xs - g11  # x_i . (s - x_i)
    g22 = total @ total - 2.0 * xs + g11  # |s - x_i|^2
    det = g11 * g22 - g12**2
    if np.any(det <= 1e-10 * g11 * np.maximum(g22, 1e-12)):
        bad = np.flatnonzero(det <= 1e-10 * g11 * np.maximum(g22, 1e-12)).tolist()
        raise DataError(f"LSS design is singular for trial(s) {bad[:10]} (overlapping trials?)")
    return (g22[:, None] * a - g12[:, None] * (b[None, :] - a)) / det[:, None]


def percent_signal_change(data: np.ndarray, where: str = "run") -> np.ndarray:
    """``100 * (data / mean_t - 1)`` per voxel, in float64.

    Raises
    ------
    DataError
        A voxel with a non-positive temporal mean (% signal change undefined).
    """
    mean = data.mean(axis=0, dtype=np.float64)
    bad = ~(mean > 0)
    if bad.any():
        raise DataError(
            f"{where}: {int(bad.sum())} mask voxel(s) have a non-positive mean over the run "
            f"(e.g. {mean[bad][:3].tolist()}); % signal change needs positive BOLD intensities"
        )
    return data / mean * 100.0 - 100.0


def run_betas(
    data: np.ndarray,
    onsets: np.ndarray,
    durations: np.ndarray,
    tr: float,
    high_pass_cutoff: float = 128.0,
    hrf_model: str = "spm",
    where: str = "run",
) -> np.ndarray:
    """Single-trial betas of one run in % signal change of the run mean.

    Parameters
    ----------
    data : ndarray, (n_vols, n_voxels)
        Raw BOLD of the voxels to model.
    onsets, durations : ndarray, (n_trials,)
        Seconds from the first volume.
    tr : float
        Seconds.
    high_pass_cutoff : float
        DCT high-pass cutoff period in seconds.
    hrf_model : str
        ``spm`` (canonical) or ``glover``.
    where : str
        Names the run in error messages.

    Returns
    -------
    ndarray, (n_trials, n_voxels) float32
    """
    n_vols = data.shape[0]
    psc = percent_signal_change(data, where)
    basis = dct_basis(n_vols, tr, high_pass_cutoff)
    design = trial_regressors(onsets, durations, n_vols, tr, hrf_model)
    try:
        betas = lss(project_out(basis, design), project_out(basis, psc))
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from exc
    return betas.astype(np.float32)
