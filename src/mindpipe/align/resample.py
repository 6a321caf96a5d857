"""Resample a subject's selected voxels onto a template grid.

A subject keeps only some voxels of its BOLD grid (the reliable ones), so interpolation weights
that fall on voxels it does not have are dropped, and each template voxel's remaining weights
are renormalised. The weight that survives is the voxel's *coverage*: 1 where every trilinear
neighbour is a kept voxel, 0 where none is. Template voxels below ``min_coverage`` get no value
from that subject (a zero column, i.e. the z-scored mean).
"""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
from scipy import sparse
from scipy.ndimage import map_coordinates


@dataclasses.dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid: ``shape`` and its voxel -> mm ``affine``."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def centres(self, flat_index: np.ndarray | None = None) -> np.ndarray:
        """mm coordinates (n, 3) of the voxel centres at ``flat_index`` (C order; all if None)."""
        index = np.arange(int(np.prod(self.shape))) if flat_index is None else flat_index
        ijk = np.column_stack(np.unravel_index(index, self.shape))
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    @property
    def voxel_mm(self) -> float:
        return float(np.cbrt(abs(np.linalg.det(self.affine[:3, :3]))))


def covering_grid(template: np.ndarray, template_affine: np.ndarray, voxel_mm: float) -> Grid:
    """An axis-aligned grid of ``voxel_mm`` voxels covering the template's non-zero voxels."""
    ijk = np.argwhere(template > 0)
    corners = ijk @ template_affine[:3, :3].T + template_affine[:3, 3]
    lo = np.floor(corners.min(axis=0) / voxel_mm) * voxel_mm - voxel_mm
    hi = corners.max(axis=0) + voxel_mm
    shape = tuple(int(n) for n in np.ceil((hi - lo) / voxel_mm).astype(int) + 1)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = lo
    return Grid(shape, affine)  # type: ignore[arg-type]


def voxels_operator(
    subject_mm: np.ndarray, bold: Grid, voxel_index: np.ndarray
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Trilinear interpolation from a subject's kept voxels at given subject-mm points.

    Parameters
    ----------
    subject_mm : (n_points, 3)
        Where each template voxel lies in the subject's scanner space.
    bold : Grid
        The subject's BOLD grid.
    voxel_index : (n_voxels,) int
        Flat C-order indices of the kept voxels in ``bold`` (the betas' columns).

    Returns
    -------
    weights : (n_points, n_voxels) sparse matrix
        Rows renormalised over the kept neighbours (rows with no kept neighbour are empty).
    coverage : (n_points,) float
        The trilinear weight that fell on kept voxels, in [0, 1].
    """
    column = np.full(int(np.prod(bold.shape)), -1, dtype=np.int64)
    column[np.asarray(voxel_index, dtype=np.int64)] = np.arange(len(voxel_index))
    inverse = np.linalg.inv(bold.affine)
    ijk = subject_mm @ inverse[:3, :3].T + inverse[:3, 3]
    base = np.floor(ijk).astype(np.int64)
    frac = ijk - base
    rows, cols, vals = [], [], []
    for corner in np.ndindex(2, 2, 2):
        offset = np.asarray(corner)
        neighbour = base + offset
        weight = np.prod(np.where(offset == 1, frac, 1.0 - frac), axis=1)
        inside = np.all((neighbour >= 0) & (neighbour < np.asarray(bold.shape)), axis=1)
        flat = np.ravel_multi_index(tuple(neighbour[inside].T), bold.shape)
        kept = column[flat] >= 0
        point = np.flatnonzero(inside)[kept]
        rows.append(point)
        cols.append(column[flat][kept])
        vals.append(weight[point])
    n_points = len(subject_mm)
    matrix = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_points, len(voxel_index)),
    )
    coverage = np.asarray(matrix.sum(axis=1)).ravel()
    scale = np.divide(1.0, coverage, out=np.zeros_like(coverage), where=coverage > 0)
    return sparse.diags(scale) @ matrix, coverage


def sample_image(img: nib.Nifti1Image, points_mm: np.ndarray) -> np.ndarray:
    """Trilinear values of a 3-D image at ``(n, 3)`` mm points of its own space (0 outside)."""
    inverse = np.linalg.inv(img.affine)
    ijk = np.asarray(points_mm) @ inverse[:3, :3].T + inverse[:3, 3]
    return map_coordinates(np.asarray(img.dataobj, dtype=np.float32), ijk.T, order=1, cval=0.0)
