"""The oracle: an ideal observer that knows the twin's true encoding model.

For every selected voxel it knows the noiseless response to every stimulus. It calibrates
each voxel's gain, offset and noise variance on the training trials (the betas are z-scored,
so the raw amplitudes need an affine map), then identifies a test sample by the Gaussian
log-likelihood of its betas under each candidate image. No decoder that sees the same betas can
be expected to beat this, so every method is also reported as a ratio to it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from mindpipe.evaluate.predictions import save_predictions
from mindpipe.exceptions import DataError
from mindpipe.io.betas import SubjectBetas, list_subjects, load_betas
from mindpipe.params import BaseParams
from mindpipe.twin import load_truth
from mindpipe.twin.writer import TRUTH_DIR
from mindpipe.utils import write_json

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OracleParams:
    """``oracle:`` section. ``min_noise_var`` floors each voxel's noise variance."""

    min_noise_var: float = 1e-3


def fit_oracle(
    *, data_dir: Path, betas_dir: Path, out_dir: Path, params: OracleParams, base: BaseParams
) -> dict[str, float]:
    """The ``oracle`` stage. Real datasets have no ground truth: then it records that and stops."""
    truth_dir = Path(data_dir) / TRUTH_DIR
    if not truth_dir.is_dir():
        logger.warning("no ground truth at '%s' (not a twin): oracle skipped", truth_dir)
        write_json(out_dir / "oracle.json", {"available": False})
        (out_dir / "predictions").mkdir()  # a decoder with no predictions: evaluate skips it
        return {"available": 0.0}
    metrics = {"available": 1.0}
    for subject in list_subjects(betas_dir):
        sb = load_betas(betas_dir, subject)
        amplitude = true_amplitudes(data_dir, sb)
        similarity = oracle_similarity(sb, amplitude, params.min_noise_var)
        save_predictions(out_dir, subject, np.asarray(sb.stim["test"]), similarity)
        metrics[f"{subject}.n_voxels"] = float(sb.n_voxels)
    write_json(out_dir / "oracle.json", {"available": True})
    return metrics


def true_amplitudes(data_dir: Path, sb: SubjectBetas) -> np.ndarray:
    """(n_stimuli, n_voxels) noiseless responses of the subject's selected voxels."""
    truth = load_truth(data_dir, sb.subject)
    column = {int(v): i for i, v in enumerate(truth.voxel_index)}
    missing = [int(v) for v in sb.voxel_index if int(v) not in column]
    if missing:
        raise DataError(
            f"{len(missing)} selected voxels of {sb.subject} are not in its ground truth "
            f"(first: flat index {missing[0]}); were the betas made from this dataset?"
        )
    return truth.amplitude[:, [column[int(v)] for v in sb.voxel_index]]


def oracle_similarity(sb: SubjectBetas, amplitude: np.ndarray, min_noise_var: float) -> np.ndarray:
    """Log-posterior that test sample i shows candidate image j (uniform prior over candidates).

    Normalising each row turns likelihoods into posteriors, which are comparable across samples:
    that is what image->brain retrieval compares (which sample most likely shows this image?).

    Parameters
    ----------
    amplitude : (n_stimuli, n_voxels), rows indexed by stim_id.

    Returns
    -------
    (n_test, n_test) array, rows = test samples, columns = candidate images.
    """
    x = amplitude[sb.stim["train"]]
    y = np.asarray(sb.betas["train"], dtype=np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    gain = (xc * yc).sum(0) / np.maximum((xc**2).sum(0), 1e-12)
    offset = y.mean(0) - gain * x.mean(0)
    noise_var = np.maximum((yc - gain * xc).var(0), min_noise_var)
    precision = 1.0 / noise_var

    observed = np.asarray(sb.betas["test"], dtype=np.float64)
    expected = gain * amplitude[sb.stim["test"]] + offset
    cross = (observed * precision) @ expected.T
    log_likelihood = -0.5 * (
        ((observed**2) * precision).sum(1)[:, None]
        - 2 * cross
        + ((expected**2) * precision).sum(1)[None, :]
    )
    return log_likelihood - logsumexp(log_likelihood, axis=1, keepdims=True)
