"""Experimental design and BOLD time series: trial schedule, HRF, drift, noise, one run at a time.

Signal of a brain voxel v at volume t (``baseline_v`` varies with tissue and coil sensitivity)::

    baseline_v * session_gain * (1 + 0.01 * (sum_trials a_trial,v * x_trial(t)   [mask voxels]
                                             + drift_v(t) + noise_v(t)))

``x_trial`` is the trial's 2 s boxcar convolved with the canonical SPM double-gamma HRF
(stretched by a per-subject time scale) and scaled to peak 1, so an amplitude is the peak %
signal change of an isolated trial. ``noise_v`` is AR(1) with marginal sd ``noise_sd_v`` (%).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pandas as pd
from scipy.signal import lfilter
from scipy.stats import gamma

from mindpipe.twin.anatomy import SubjectAnatomy
from mindpipe.twin.config import TwinConfig, rng_for
from mindpipe.twin.responses import Encoding

# Canonical SPM HRF parameters, as in nilearn.glm.first_level.spm_hrf.
HRF_DELAY, HRF_UNDERSHOOT, HRF_RATIO = 6.0, 16.0, 0.167


def hrf(t: np.ndarray, time_scale: float = 1.0) -> np.ndarray:
    """Double-gamma HRF at times ``t`` (s), stretched in time by ``time_scale`` (unnormalised)."""
    s = np.asarray(t, dtype=np.float64) / time_scale
    return gamma.pdf(s, HRF_DELAY) - HRF_RATIO * gamma.pdf(s, HRF_UNDERSHOOT)


def _hrf_integral(t: np.ndarray, time_scale: float) -> np.ndarray:
    """Integral of :func:`hrf` from 0 to ``t`` (0 for t <= 0), via the gamma CDFs."""
    s = np.maximum(np.asarray(t, dtype=np.float64), 0.0) / time_scale
    return time_scale * (gamma.cdf(s, HRF_DELAY) - HRF_RATIO * gamma.cdf(s, HRF_UNDERSHOOT))


def trial_regressors(
    onsets: np.ndarray, duration: float, frame_times: np.ndarray, time_scale: float = 1.0
) -> np.ndarray:
    """Exact boxcar-convolved HRF of each trial at each frame, peak-normalised.

    Parameters
    ----------
    onsets : (n_trials,) s ; frame_times : (n_vols,) s

    Returns
    -------
    numpy.ndarray
        (n_vols, n_trials); an isolated trial's column peaks at 1.
    """
    lag = frame_times[:, None] - onsets[None, :]
    x = _hrf_integral(lag, time_scale) - _hrf_integral(lag - duration, time_scale)
    fine = np.arange(0.0, 40.0 * time_scale, 0.01)
    peak = np.max(_hrf_integral(fine, time_scale) - _hrf_integral(fine - duration, time_scale))
    return x / peak


# ------------------------------------------------------------------------------------------------
# Schedule
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunPlan:
    """One run: where it sits and which images it shows.

    Attributes
    ----------
    session, run : int, 1-based (run counts within the session)
    stim_ids : (n_trials,) int64
    onsets : (n_trials,) float, s from the first volume
    n_vols : int
    """

    session: int
    run: int
    stim_ids: np.ndarray
    onsets: np.ndarray
    n_vols: int

    def events(self, cfg: TwinConfig, files: pd.Series) -> pd.DataFrame:
        """The run's ``events.tsv`` table; ``files`` maps stim_id to the stimulus file."""
        return pd.DataFrame(
            {
                "onset": self.onsets,
                "duration": np.full(len(self.onsets), cfg.stim_duration_s),
                "trial_type": "stimulus",
                "stim_id": self.stim_ids,
                "stim_file": files.loc[self.stim_ids].to_numpy(),
            }
        )


def make_schedule(table: pd.DataFrame, cfg: TwinConfig, seed: int, subject: int) -> list[RunPlan]:
    """Order every presentation into runs and sessions, the repeats of an image in different runs.

    Presentations come in blocks: block r shows (in random order) every image with more than r
    repeats, so repeats are spread over the whole experiment; a final pass swaps trials so no
    run shows an image twice. With a ``scene`` column (the video paradigm) the unit shuffled,
    swapped and assigned to a run is the scene: its clips always play in order, back to back.
    """
    rng = rng_for(seed, "subject", subject, "schedule")
    reps = table["split"].map({"train": cfg.reps_train, "val": cfg.reps_val, "test": cfg.reps_test})
    unit_of = table["scene"] if "scene" in table else table["stim_id"]
    units = [group.to_numpy() for _, group in table["stim_id"].groupby(unit_of.to_numpy())]
    unit_size = np.array([len(u) for u in units])
    unit_reps = reps.groupby(unit_of.to_numpy()).first().to_numpy()
    unit_ids = np.arange(len(units))
    order = np.concatenate([rng.permutation(unit_ids[unit_reps > r]) for r in range(reps.max())])
    sizes = unit_size[order]
    total = int(sizes.sum())
    n_runs = int(np.ceil(total / cfg.trials_per_run))
    run_of = (np.cumsum(sizes) - sizes) * n_runs // total  # balanced: run sizes differ little
    order = _separate_repeats(order, run_of, rng)
    run_of = np.repeat(run_of, unit_size[order])
    order = np.concatenate([units[u] for u in order])
    plans = []
    for k in range(n_runs):
        ids = order[run_of == k].astype(np.int64)
        onsets = cfg.lead_in_s + cfg.trial_interval_s * np.arange(len(ids))
        length = cfg.lead_in_s + cfg.trial_interval_s * len(ids) + cfg.tail_s
        plans.append(
            RunPlan(
                session=k // cfg.runs_per_session + 1,
                run=k % cfg.runs_per_session + 1,
                stim_ids=ids,
                onsets=onsets,
                n_vols=int(np.ceil(length / cfg.tr_s)),
            )
        )
    return plans


def _separate_repeats(
    order: np.ndarray, run_of: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Swap trials between runs until no run holds the same image twice (when possible)."""
    order = order.copy()
    members = [collections.Counter(order[run_of == r].tolist()) for r in range(run_of.max() + 1)]
    for p in range(len(order)):
        a, s = run_of[p], order[p]
        if members[a][s] <= 1:
            continue
        for q in rng.permutation(len(order)):
            b, t = run_of[q], order[q]
            if b != a and members[b][s] == 0 and members[a][t] == 0:
                order[p], order[q] = t, s
                members[a][s] -= 1
                members[a][t] += 1
                members[b][t] -= 1
                members[b][s] += 1
                break
    return order


# ------------------------------------------------------------------------------------------------
# Time series
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SubjectNoise:
    """Per-subject settings drawn once: HRF time scale, noise level per brain voxel, session gains.

    Attributes
    ----------
    hrf_time_scale : float
    noise_sd : (n_brain,) float, per-volume noise sd in % signal change
    session_gain : (n_sessions,) float
    """

    hrf_time_scale: float
    noise_sd: np.ndarray
    session_gain: np.ndarray


def draw_subject_noise(
    anatomy: SubjectAnatomy, n_sessions: int, cfg: TwinConfig, seed: int, subject: int
) -> SubjectNoise:
    """Draw one subject's HRF time scale, voxel noise levels and session gains."""
    rng = rng_for(seed, "subject", subject, "noise")
    time_scale = float(np.exp(cfg.hrf_jitter * rng.standard_normal()))
    noise_sd = cfg.noise_sd * np.exp(
        cfg.noise_sd_spread * rng.standard_normal(len(anatomy.baseline))
    )
    session_gain = np.exp(cfg.session_gain_sd * rng.standard_normal(n_sessions))
    return SubjectNoise(time_scale, noise_sd, session_gain)


def synthesize_run(
    plan: RunPlan,
    anatomy: SubjectAnatomy,
    encoding: Encoding,
    noise: SubjectNoise,
    cfg: TwinConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """One run's 4-D BOLD image, (X, Y, Z, n_vols) int16; zero outside the brain.

    Memory is O(n_vols * n_brain): only this run is ever in memory.
    """
    frame_times = np.arange(plan.n_vols) * cfg.tr_s
    design = trial_regressors(plan.onsets, cfg.stim_duration_s, frame_times, noise.hrf_time_scale)
    amplitude = encoding.amplitude[plan.stim_ids].astype(np.float64)  # (n_trials, n_mask)
    n_trials, n_mask = amplitude.shape
    gain = 1 + cfg.trial_gain_sd * rng.standard_normal((n_trials, 1))
    amplitude = amplitude * gain + cfg.neural_noise_sd * rng.standard_normal((n_trials, n_mask))

    n_brain = len(anatomy.brain_index)
    percent = _drift(frame_times, n_brain, cfg, rng)
    percent += _ar1_noise(plan.n_vols, noise.noise_sd, cfg.noise_ar, rng)
    percent[:, anatomy.mask_in_brain] += design @ amplitude
    signal = anatomy.baseline * noise.session_gain[plan.session - 1] * (1 + 0.01 * percent)

    volume = np.zeros((int(np.prod(anatomy.bold_shape)), plan.n_vols), dtype=np.int16)
    volume[anatomy.brain_index] = np.clip(np.round(signal.T), 1, np.iinfo(np.int16).max)
    return volume.reshape(*anatomy.bold_shape, plan.n_vols)


def _drift(
    frame_times: np.ndarray, n_voxels: int, cfg: TwinConfig, rng: np.random.Generator
) -> np.ndarray:
    """Slow drift in %: random low-frequency cosines (periods > drift_min_period_s) + a trend.

    Returns (n_vols, n_voxels) float.
    """
    periods = rng.uniform(cfg.drift_min_period_s, 3 * cfg.drift_min_period_s, cfg.n_drift)
    phases = rng.uniform(0.0, 2 * np.pi, cfg.n_drift)
    basis = np.cos(2 * np.pi * frame_times[:, None] / periods + phases)
    span = max(frame_times[-1], 1e-9)
    trend = (frame_times / span - 0.5)[:, None]
    coefs = rng.normal(0.0, cfg.drift_sd, (cfg.n_drift, n_voxels))
    return basis @ coefs + trend * rng.normal(0.0, cfg.trend_sd, (1, n_voxels))


def _ar1_noise(n_vols: int, sd: np.ndarray, rho: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) noise with marginal sd ``sd`` per voxel, (n_vols, n_voxels)."""
    drive = rng.standard_normal((n_vols, len(sd)))
    # out[0] = drive[0] starts in the stationary distribution; later innovations are scaled so
    # out[t] = rho * out[t - 1] + sqrt(1 - rho^2) * drive[t] keeps unit variance.
    drive[1:] *= np.sqrt(1 - rho**2)
    return lfilter([1.0], [1.0, -rho], drive, axis=0) * sd
