"""The encoding model: noiseless response (% signal change) of every mask voxel to every stimulus.

Retinotopic voxels have a population receptive field (pRF): a 2-D Gaussian on the visual field
whose centre and size follow a smooth retinotopic map of the voxel's *template* coordinate
(eccentricity grows away from the occipital pole; the position around the pole sets the polar
angle, contralaterally: the right hemisphere sees the left visual field, dorsal sees lower).
Their response is ``gain * (pRF-weighted contrast energy / drive_ref) ** prf_exponent``.

Semantic voxels are tuned to the stimulus latent z (category, colour, texture, size)::

    gain * (baseline + (1 - baseline) * softplus(k * (u.z - theta)) / softplus(k * (q97 - theta)))

The tuning direction u mixes a smooth map over template space (shared by all subjects) with a
per-subject random part; theta and the normaliser are quantiles of u . z over every possible
attribute combination, so a voxel's tuning does not depend on which images were drawn.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mindpipe.twin.anatomy import SubjectAnatomy, retinotopic_limit, visual_hierarchy
from mindpipe.twin.config import TwinConfig, rng_for

#: Contrast energy (pRF-weighted mean) that gives a retinotopic voxel its full gain.
DRIVE_REF = 1.0
#: Number of random Fourier features of the shared semantic map.
_N_FEATURES = 24


@dataclasses.dataclass(frozen=True)
class Encoding:
    """One subject's true encoding model.

    Attributes
    ----------
    amplitude : (n_stimuli, n_mask) float32, noiseless peak response in % signal change
    kind : (n_mask,) uint8, 0 retinotopic, 1 semantic
    prf_centre : (n_mask, 2) float, pRF centre (x, y) in visual-field units; NaN for semantic
    prf_size : (n_mask,) float, pRF sd in visual-field units; NaN for semantic
    tuning : (n_mask, n_latent) float, unit tuning direction u; NaN for retinotopic
    """

    amplitude: np.ndarray
    kind: np.ndarray
    prf_centre: np.ndarray
    prf_size: np.ndarray
    tuning: np.ndarray


def retinotopic_map(template_mm: np.ndarray, cfg: TwinConfig) -> tuple[np.ndarray, np.ndarray]:
    """The template's retinotopic map: pRF centre and size at template points.

    Parameters
    ----------
    template_mm : (n, 3) float

    Returns
    -------
    centre : (n, 2) float, (x, y) in visual-field units (+x right, +y up)
    size : (n,) float, Gaussian sd in visual-field units
    """
    h, around = visual_hierarchy(template_mm, cfg)
    limit = max(retinotopic_limit(cfg), 1e-9)
    # Squared: more cortex for the fovea than for the periphery (cortical magnification).
    eccentricity = cfg.max_eccentricity * np.clip(h / limit, 0.0, 1.0) ** 2
    # Point reflection through the pole: right (+x) cortex -> left field, dorsal -> lower field.
    unit = around / np.maximum(np.linalg.norm(around, axis=1, keepdims=True), 1e-9)
    centre = -eccentricity[:, None] * unit
    return centre, cfg.prf_size_intercept + cfg.prf_size_slope * eccentricity


def prf_weights(centre: np.ndarray, size: np.ndarray, image_size: int) -> np.ndarray:
    """pRF Gaussians sampled on the image pixels, normalised to unit mass over the whole plane.

    Parameters
    ----------
    centre : (n, 2) ; size : (n,)

    Returns
    -------
    numpy.ndarray
        (image_size * image_size, n) float32, rows in C pixel order (row 0 = top of the image).
        A pRF that extends beyond the screen sums to less than 1: the screen border is gray.
    """
    coords = (np.arange(image_size) + 0.5) / image_size * 2 - 1
    grid_x, grid_y = np.meshgrid(coords, -coords)
    pixels = np.column_stack([grid_x.ravel(), grid_y.ravel()])
    sq = ((pixels[:, None, :] - centre[None]) ** 2).sum(-1)
    pixel_area = (2.0 / image_size) ** 2
    weights = np.exp(-sq / (2 * size**2)) * pixel_area / (2 * np.pi * size**2)
    return weights.astype(np.float32)


def semantic_map(template_mm: np.ndarray, cfg: TwinConfig, seed: int) -> np.ndarray:
    """Shared smooth semantic tuning field at template points: (n, n_latent) unit vectors.

    A sum of random Fourier features with wavelengths around ``semantic_wavelength_mm``.
    """
    rng = rng_for(seed, "semantic_map")
    freq = rng.normal(0.0, 2 * np.pi / cfg.semantic_wavelength_mm / np.sqrt(3), (_N_FEATURES, 3))
    phase = rng.uniform(0.0, 2 * np.pi, _N_FEATURES)
    mixing = rng.normal(size=(_N_FEATURES, cfg.n_latent))
    return _unit_rows(np.cos(template_mm @ freq.T + phase) @ mixing)


def encode_subject(
    anatomy: SubjectAnatomy,
    energy: np.ndarray,
    latents: np.ndarray,
    reference: np.ndarray,
    cfg: TwinConfig,
    seed: int,
    subject: int,
) -> Encoding:
    """Noiseless responses of one subject's mask voxels to every stimulus.

    Parameters
    ----------
    anatomy : the subject's anatomy (mask voxels, their kind and template coordinates)
    energy : (n_stimuli, n_pixels) contrast energy of each image
    latents : (n_stimuli, n_latent) stimulus latents z
    reference : (n_reference, n_latent) latents of every attribute combination
    """
    rng = rng_for(seed, "subject", subject, "encoding")
    n_mask = len(anatomy.kind)
    retino = anatomy.kind == 0
    amplitude = np.zeros((len(latents), n_mask), dtype=np.float64)
    prf_centre = np.full((n_mask, 2), np.nan)
    prf_size = np.full(n_mask, np.nan)
    tuning = np.full((n_mask, cfg.n_latent), np.nan)

    # Draw every per-voxel random number for all voxels, so a voxel's draws do not depend on
    # how many voxels of the other kind there are.
    centre_jitter = rng.normal(0.0, cfg.prf_jitter, (n_mask, 2))
    size_jitter = np.exp(rng.normal(0.0, 0.1, n_mask))
    retino_gain = rng.uniform(*cfg.retino_gain, n_mask)
    semantic_gain = rng.uniform(*cfg.semantic_gain, n_mask)
    quantile = rng.uniform(*cfg.semantic_quantile, n_mask)
    own = _unit_rows(rng.normal(size=(n_mask, cfg.n_latent)))

    if retino.any():
        centre, size = retinotopic_map(anatomy.template_mm[retino], cfg)
        prf_centre[retino] = centre + centre_jitter[retino]
        prf_size[retino] = size * size_jitter[retino]
        weights = prf_weights(prf_centre[retino], prf_size[retino], cfg.image_size)
        # float64 products: a float32 BLAS sum changes in the last bits with the thread count
        # and CPU kernel, and so would the twin's bytes (data.dvc) from machine to machine
        drive = energy.astype(np.float64) @ weights.astype(np.float64)
        amplitude[:, retino] = (
            retino_gain[retino] * (np.maximum(drive, 0.0) / DRIVE_REF) ** cfg.prf_exponent
        )
    semantic = ~retino
    if semantic.any():
        shared = semantic_map(anatomy.template_mm[semantic], cfg, seed)
        tuning[semantic] = _unit_rows(
            (1 - cfg.idiosyncrasy) * shared + cfg.idiosyncrasy * own[semantic]
        )
        amplitude[:, semantic] = _semantic_response(
            latents, reference, tuning[semantic], quantile[semantic], semantic_gain[semantic], cfg
        )
    return Encoding(amplitude.astype(np.float32), anatomy.kind, prf_centre, prf_size, tuning)


def _semantic_response(
    latents: np.ndarray,
    reference: np.ndarray,
    tuning: np.ndarray,
    quantile: np.ndarray,
    gain: np.ndarray,
    cfg: TwinConfig,
) -> np.ndarray:
    """(n_stimuli, n_voxels) semantic responses; see the module docstring for the formula."""
    k = cfg.semantic_sharpness
    ref_dot = reference.astype(np.float64) @ tuning.T  # (n_reference, n_voxels)
    theta = np.array([np.quantile(ref_dot[:, v], quantile[v]) for v in range(len(quantile))])
    top = np.quantile(ref_dot, 0.97, axis=0)
    norm = _softplus(k * (top - theta))
    tuned = _softplus(k * (latents.astype(np.float64) @ tuning.T - theta)) / norm
    base = cfg.semantic_baseline
    return gain * (base + (1 - base) * tuned)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
