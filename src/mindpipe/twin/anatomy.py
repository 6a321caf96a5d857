"""The analytic template brain, each subject's true mapping to it, and images sampled from both.

Template space is RAS millimetres (+x right, +y anterior, +z superior) centred on the brain.
The brain is a folded, deliberately asymmetric ellipsoid (a "miniature" cerebrum) with a
gray-matter shell, white matter, two off-centre ventricles and a posterior-inferior cerebellum.
Every image is made by evaluating these analytic definitions at voxel centres (and sub-voxel
points, for partial volume), never by resampling another image.

A subject's anatomy is the template seen through a known mapping from subject scanner mm to
template mm: ``q = A @ p + t`` followed by a sum of Gaussian RBF displacements evaluated at q.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from mindpipe.twin.config import TwinConfig, rng_for

# Tissue labels.
BACKGROUND, CSF, GM, WM, CEREBELLUM = 0, 1, 2, 3, 4
#: T1w intensity per label (WM brightest, as in a T1-weighted scan).
T1_INTENSITY = np.array([0.0, 250.0, 600.0, 900.0, 700.0])
#: BOLD baseline per label, relative to gray matter (background: partial volume with the skull).
BOLD_LEVEL = np.array([0.4, 1.25, 1.0, 0.82, 0.95])

# Fixed geometry of the template (mm); the brain radii and cortical thickness are config fields.
_VENTRICLES = (((-8.0, 4.0, 6.0), (4.0, 14.0, 6.0)), ((9.0, 2.0, 5.0), (5.0, 12.0, 5.0)))
_CEREBELLUM = ((2.0, -27.0, -22.0), (22.0, 13.0, 10.0))
_FOLD_AMPLITUDE = 0.035  # relative radius change of the cortical folds


# ------------------------------------------------------------------------------------------------
# The analytic template
# ------------------------------------------------------------------------------------------------
def _normalised(points: np.ndarray, cfg: TwinConfig) -> np.ndarray:
    """Points divided by the (direction-dependent) brain radii, shape (n, 3).

    The right hemisphere is wider than the left and the left occipital lobe reaches further back
    (petalia), so that no mirror symmetry makes registration ambiguous.
    """
    x, y, z = points.T
    ax, ay, az = cfg.brain_radii_mm
    rx = ax * np.where(x >= 0, 1.04, 0.96)
    ry = ay * np.where(y < 0, 1 + 0.04 * np.tanh(-x / 8), 1 + 0.03 * np.tanh(x / 8))
    return np.column_stack([x / rx, y / ry, z / az])


def _folded_radius(points: np.ndarray, cfg: TwinConfig) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius with low-frequency folding (<= 1 inside the cerebrum), and directions.

    Returns
    -------
    rho : (n,) float
    direction : (n, 3) unit vectors of the normalised coordinates
    """
    norm = _normalised(points, cfg)
    rho = np.linalg.norm(norm, axis=1)
    direction = norm / np.maximum(rho, 1e-9)[:, None]
    dx, dy, dz = direction.T
    folds = np.sin(5.0 * dx + 1.3) * np.sin(4.0 * dy - 0.7) * np.sin(4.5 * dz + 0.4)
    folds += 0.5 * np.sin(7.0 * dx - 2.0 * dz + 0.3) * np.cos(6.0 * dy)
    return rho * (1 + _FOLD_AMPLITUDE * folds), direction


def _in_ellipsoid(points: np.ndarray, centre: tuple, radii: tuple) -> np.ndarray:
    return np.sum(((points - np.asarray(centre)) / np.asarray(radii)) ** 2, axis=1) <= 1


def tissue_labels(points: np.ndarray, cfg: TwinConfig) -> np.ndarray:
    """Tissue label at template points.

    Parameters
    ----------
    points : (n, 3) float, template mm

    Returns
    -------
    numpy.ndarray
        (n,) uint8: 0 background, 1 CSF, 2 gray matter, 3 white matter, 4 cerebellum.
    """
    rho, _ = _folded_radius(points, cfg)
    cerebrum = rho <= 1
    # Depth below the surface along the ray from the centre, in mm.
    depth = (1 - rho) * np.linalg.norm(points, axis=1) / np.maximum(rho, 1e-9)
    labels = np.full(len(points), BACKGROUND, dtype=np.uint8)
    labels[_in_ellipsoid(points, *_CEREBELLUM)] = CEREBELLUM
    labels[cerebrum] = WM
    labels[cerebrum & (depth <= cfg.gm_thickness_mm)] = GM
    for centre, radii in _VENTRICLES:
        labels[cerebrum & _in_ellipsoid(points, centre, radii)] = CSF
    return labels


def visual_hierarchy(points: np.ndarray, cfg: TwinConfig) -> tuple[np.ndarray, np.ndarray]:
    """Position of template points in the visual hierarchy, and their direction from the pole.

    Visual cortex is the cap of directions within ``visual_angle_rad`` of the occipital pole
    (the -y direction), stretched ventrally (a ventral stream). ``h`` = angle from the pole
    divided by the cap's angular radius in that direction: 0 at the pole, 1 at the cap's edge.

    Returns
    -------
    h : (n,) float
    around : (n, 2) float
        (x, z) components of the normalised direction: where around the pole a point lies.
    """
    norm = _normalised(points, cfg)
    dx, dy, dz = (norm / np.maximum(np.linalg.norm(norm, axis=1), 1e-9)[:, None]).T
    angle = np.arccos(np.clip(-dy, -1.0, 1.0))
    ventral = np.maximum(0.0, -dz / np.maximum(np.hypot(dx, dz), 1e-9))
    return angle / (cfg.visual_angle_rad * (1 + 0.35 * ventral)), np.column_stack([dx, dz])


def visual_labels(points: np.ndarray, labels: np.ndarray, cfg: TwinConfig) -> np.ndarray:
    """Visual-mask label of template points whose tissue ``labels`` are known.

    Returns
    -------
    numpy.ndarray
        (n,) uint8: 0 outside the visual mask, 1 retinotopic, 2 semantic.
    """
    h, _ = visual_hierarchy(points, cfg)
    visual = (labels == GM) & (h < 1)
    return np.where(visual, np.where(h < retinotopic_limit(cfg), 1, 2), 0).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def brain_bounds(cfg: TwinConfig) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper corner (mm) of the template brain's bounding box (2 mm grid search)."""
    points = _grid_points(np.full(3, -64.0), (65, 65, 65), 2.0)
    inside = points[tissue_labels(points, cfg) != BACKGROUND]
    return inside.min(axis=0) - 2.0, inside.max(axis=0) + 2.0


@functools.lru_cache(maxsize=8)
def retinotopic_limit(cfg: TwinConfig) -> float:
    """The ``h`` below which visual voxels are retinotopic.

    Chosen as a quantile over template visual gray matter (2 mm grid) so that a
    ``semantic_fraction`` share of the visual mask is semantic.
    """
    points, labels = _coarse_template(cfg)
    h, _ = visual_hierarchy(points, cfg)
    h = h[(labels == GM) & (h < 1)]
    return float(np.quantile(h, 1 - cfg.semantic_fraction)) if cfg.semantic_fraction < 1 else 0.0


@functools.lru_cache(maxsize=8)
def _coarse_template(cfg: TwinConfig) -> tuple[np.ndarray, np.ndarray]:
    """Voxel centres (n, 3) of a 2 mm grid over the brain's box and their tissue labels (n,)."""
    lo, hi = brain_bounds(cfg)
    points = _grid_points(lo, tuple(np.ceil((hi - lo) / 2.0).astype(int) + 1), 2.0)
    return points, tissue_labels(points, cfg)


# ------------------------------------------------------------------------------------------------
# Grids
# ------------------------------------------------------------------------------------------------
def _grid_points(origin: np.ndarray, shape: tuple[int, ...], voxel_mm: float) -> np.ndarray:
    """Voxel-centre coordinates of an axis-aligned grid, (prod(shape), 3), C order."""
    axes = [origin[d] + voxel_mm * np.arange(shape[d]) for d in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def grid_affine(origin: np.ndarray, voxel_mm: float) -> np.ndarray:
    """4x4 voxel -> mm affine of an axis-aligned grid whose voxel (0, 0, 0) centre is ``origin``."""
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = origin
    return affine


def grid_covering(lo: np.ndarray, hi: np.ndarray, voxel_mm: float) -> tuple[tuple, np.ndarray]:
    """Shape and affine of a grid covering the box [lo, hi] plus a one-voxel margin."""
    origin = np.floor(lo / voxel_mm) * voxel_mm - voxel_mm
    shape = tuple(int(n) for n in np.ceil((hi - origin) / voxel_mm).astype(int) + 2)
    return shape, grid_affine(origin, voxel_mm)


def voxel_centres(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """mm coordinates of every voxel centre of a grid, (prod(shape), 3), C order."""
    return _grid_points(affine[:3, 3], shape[:3], float(affine[0, 0]))


def _subvoxel_offsets(voxel_mm: float, k: int) -> np.ndarray:
    """(k**3, 3) offsets of a k x k x k lattice of sub-voxel points, centred on the voxel."""
    step = (np.arange(k) + 0.5) / k - 0.5
    return np.stack(np.meshgrid(step, step, step, indexing="ij"), -1).reshape(-1, 3) * voxel_mm


# ------------------------------------------------------------------------------------------------
# Subject -> template mapping
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SubjectTransform:
    """The true mapping from a subject's scanner mm to template mm.

    ``template = q + sum_k displacement_k * exp(-|q - centre_k|^2 / (2 sigma^2))`` with
    ``q = affine @ [subject, 1]``.

    Attributes
    ----------
    affine : (4, 4) float
    centres_mm : (K, 3) float, RBF centres in template mm
    displacements_mm : (K, 3) float
    sigma_mm : float
    """

    affine: np.ndarray
    centres_mm: np.ndarray
    displacements_mm: np.ndarray
    sigma_mm: float

    def apply(self, points_mm: np.ndarray) -> np.ndarray:
        """Map (n, 3) subject mm to (n, 3) template mm."""
        points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
        q = points @ self.affine[:3, :3].T + self.affine[:3, 3]
        return q + self.deformation(q)

    def deformation(self, q: np.ndarray) -> np.ndarray:
        """RBF displacement (n, 3) at affinely mapped points q (template mm)."""
        if len(self.centres_mm) == 0:
            return np.zeros_like(q)
        sq = ((q[:, None, :] - self.centres_mm[None]) ** 2).sum(-1)
        return np.exp(-sq / (2 * self.sigma_mm**2)) @ self.displacements_mm

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``sub-XX_transform.json`` holds)."""
        return {
            "direction": "subject_mm_to_template_mm",
            "formula": "q = affine @ [p, 1]; template = q + sum_k displacements_mm[k] * "
            "exp(-|q - centres_mm[k]|^2 / (2 * sigma_mm^2))",
            "affine": np.round(self.affine, 10).tolist(),
            "centres_mm": np.round(self.centres_mm, 10).tolist(),
            "displacements_mm": np.round(self.displacements_mm, 10).tolist(),
            "sigma_mm": float(self.sigma_mm),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubjectTransform:
        """Inverse of :meth:`to_dict`."""
        return cls(
            affine=np.asarray(data["affine"], dtype=np.float64),
            centres_mm=np.asarray(data["centres_mm"], dtype=np.float64).reshape(-1, 3),
            displacements_mm=np.asarray(data["displacements_mm"], dtype=np.float64).reshape(-1, 3),
            sigma_mm=float(data["sigma_mm"]),
        )


def draw_transform(cfg: TwinConfig, seed: int, subject: int) -> SubjectTransform:
    """Draw one subject's mapping: random rotation, scaling, translation and a small warp.

    Values are rounded to 10 decimals so the JSON file holds exactly the mapping that was used.
    """
    rng = rng_for(seed, "subject", subject, "transform")
    angles = np.deg2rad(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg, 3))
    scales = rng.uniform(*cfg.scale_range, 3)
    affine = np.eye(4)
    affine[:3, :3] = _rotation(angles) @ np.diag(scales)
    affine[:3, 3] = rng.uniform(-cfg.max_translation_mm, cfg.max_translation_mm, 3)
    centres = rng.uniform(-0.8, 0.8, (cfg.n_deform_rbf, 3)) * np.asarray(cfg.brain_radii_mm)
    displacements = rng.normal(size=(cfg.n_deform_rbf, 3))
    warp = SubjectTransform(np.eye(4), centres, displacements, cfg.deform_sigma_mm)
    # Scale the warp so its largest displacement over the brain is a set fraction of the cap.
    probe = np.vstack([_brain_points(cfg), centres])
    peak = np.linalg.norm(warp.deformation(probe), axis=1).max()
    target = cfg.max_deform_mm * rng.uniform(0.6, 1.0)
    displacements = displacements * (target / peak if peak > 0 else 0.0)
    return SubjectTransform(
        np.round(affine, 10),
        np.round(centres, 10),
        np.round(displacements, 10),
        cfg.deform_sigma_mm,
    )


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx for angles (rx, ry, rz) in radians."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


# ------------------------------------------------------------------------------------------------
# Images of the template and of a subject
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TemplateImages:
    """Template T1w and visual mask on one grid (template mm).

    Attributes
    ----------
    t1 : (X, Y, Z) int16
    visual_mask : (X, Y, Z) uint8, 0/1
    affine : (4, 4) float
    """

    t1: np.ndarray
    visual_mask: np.ndarray
    affine: np.ndarray


def make_template(cfg: TwinConfig) -> TemplateImages:
    """Sample the template on a grid of ``t1_voxel_mm`` voxels (partial volume, 2^3 sub-points)."""
    shape, affine = grid_covering(*brain_bounds(cfg), cfg.t1_voxel_mm)
    centres = voxel_centres(shape, affine)
    t1 = _mean_label_value(centres, lambda p: p, cfg, T1_INTENSITY, cfg.t1_voxel_mm, 2)
    mask = visual_labels(centres, tissue_labels(centres, cfg), cfg) > 0
    return TemplateImages(
        np.round(t1).astype(np.int16).reshape(shape), mask.astype(np.uint8).reshape(shape), affine
    )


@dataclasses.dataclass(frozen=True)
class SubjectAnatomy:
    """Everything about one subject's anatomy that the writer and the encoding model need.

    Attributes
    ----------
    transform : SubjectTransform
    t1 : (X, Y, Z) int16, on ``t1_affine`` (subject scanner mm)
    t1_affine : (4, 4)
    bold_shape : (X, Y, Z) of the functional grid
    bold_affine : (4, 4), subject scanner mm
    brain_index : (n_brain,) int64, flat C-order indices of brain voxels on the BOLD grid
    baseline : (n_brain,) float, BOLD signal level of each brain voxel
    mask_index : (n_mask,) int64, flat C-order indices of visual-mask voxels (sorted)
    mask_in_brain : (n_mask,) int64, positions of the mask voxels within ``brain_index``
    kind : (n_mask,) uint8, 0 retinotopic, 1 semantic
    template_mm : (n_mask, 3) float, true template coordinates of the mask voxels
    """

    transform: SubjectTransform
    t1: np.ndarray
    t1_affine: np.ndarray
    bold_shape: tuple[int, int, int]
    bold_affine: np.ndarray
    brain_index: np.ndarray
    baseline: np.ndarray
    mask_index: np.ndarray
    mask_in_brain: np.ndarray
    kind: np.ndarray
    template_mm: np.ndarray


def make_subject(cfg: TwinConfig, seed: int, subject: int) -> SubjectAnatomy:
    """Build one subject's anatomy: T1w, BOLD grid, brain voxels and visual mask."""
    transform = draw_transform(cfg, seed, subject)
    coil = _coil_field(cfg, seed, subject)
    lo, hi = _subject_bounds(transform, cfg)

    t1_shape, t1_affine = grid_covering(lo, hi, cfg.t1_voxel_mm)
    t1_centres = voxel_centres(t1_shape, t1_affine)
    t1 = _mean_label_value(t1_centres, transform.apply, cfg, T1_INTENSITY, cfg.t1_voxel_mm, 2)
    noise_rng = rng_for(seed, "subject", subject, "t1_noise")
    noise = noise_rng.normal(0.0, cfg.t1_noise * T1_INTENSITY[WM], t1.shape)
    # Skull-stripped look: noise only where there is tissue.
    t1 = np.where(t1 > 0, np.maximum(t1 * coil(t1_centres) + noise, 1.0), 0.0)

    bold_shape, bold_affine = grid_covering(lo, hi, cfg.bold_voxel_mm)
    centres = voxel_centres(bold_shape, bold_affine)
    template_mm = transform.apply(centres)
    labels = tissue_labels(template_mm, cfg)
    brain_index = np.flatnonzero(labels != BACKGROUND)
    level = _mean_label_value(
        centres[brain_index], transform.apply, cfg, BOLD_LEVEL, cfg.bold_voxel_mm, 3
    )
    baseline = cfg.baseline * level * coil(centres[brain_index])

    visual = visual_labels(template_mm, labels, cfg)
    mask_index = np.flatnonzero(visual > 0)
    return SubjectAnatomy(
        transform=transform,
        t1=np.round(t1).astype(np.int16).reshape(t1_shape),
        t1_affine=t1_affine,
        bold_shape=bold_shape,
        bold_affine=bold_affine,
        brain_index=brain_index.astype(np.int64),
        baseline=baseline,
        mask_index=mask_index.astype(np.int64),
        mask_in_brain=np.searchsorted(brain_index, mask_index).astype(np.int64),
        kind=(visual[mask_index] == 2).astype(np.uint8),
        template_mm=template_mm[mask_index],
    )


def _subject_bounds(transform: SubjectTransform, cfg: TwinConfig) -> tuple[np.ndarray, np.ndarray]:
    """Box in subject mm that holds the whole brain, padded by the largest possible warp.

    Template brain voxels (2 mm grid) are taken through the inverse affine; the warp is at most
    ``max_deform_mm``, which the padding covers.
    """
    inverse = np.linalg.inv(transform.affine)
    subject = _brain_points(cfg) @ inverse[:3, :3].T + inverse[:3, 3]
    pad = cfg.max_deform_mm / min(cfg.scale_range) + 1.0
    return subject.min(axis=0) - pad, subject.max(axis=0) + pad


def _brain_points(cfg: TwinConfig) -> np.ndarray:
    """Template brain voxel centres on a 2 mm grid, (n, 3) mm."""
    points, labels = _coarse_template(cfg)
    return points[labels != BACKGROUND]


def _mean_label_value(
    centres: np.ndarray,
    to_template: Any,
    cfg: TwinConfig,
    table: np.ndarray,
    voxel_mm: float,
    k: int,
    chunk: int = 1 << 18,
) -> np.ndarray:
    """Partial-volume average of ``table[label]`` over k^3 sub-voxel points of each voxel.

    Parameters
    ----------
    centres : (n, 3) voxel centres in the grid's own mm space
    to_template : callable mapping (m, 3) grid mm to template mm

    Returns
    -------
    numpy.ndarray
        (n,) float. Processed in chunks so memory stays bounded on fine grids.
    """
    offsets = _subvoxel_offsets(voxel_mm, k)
    out = np.empty(len(centres))
    step = max(1, chunk // len(offsets))
    for start in range(0, len(centres), step):
        block = centres[start : start + step]
        points = (block[:, None, :] + offsets[None]).reshape(-1, 3)
        values = table[tissue_labels(to_template(points), cfg)].reshape(len(block), -1)
        out[start : start + step] = values.mean(axis=1)
    return out


def _coil_field(cfg: TwinConfig, seed: int, subject: int) -> Any:
    """A smooth multiplicative intensity field (receive-coil sensitivity), 1 +- ``bias_field``."""
    rng = rng_for(seed, "subject", subject, "coil")
    freqs = rng.normal(0.0, 2 * np.pi / 120.0, (4, 3))  # wavelengths ~ 100+ mm
    phases = rng.uniform(0, 2 * np.pi, 4)
    weights = rng.normal(size=4) / 2.0

    def field(points: np.ndarray) -> np.ndarray:
        wave = np.cos(points @ freqs.T + phases) @ weights
        return 1.0 + cfg.bias_field * np.tanh(wave)

    return field
