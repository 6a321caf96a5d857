"""Registration of a subject's T1w image to a template, as a scikit-learn style estimator.

dipy does the work: centre-of-mass start, then translation -> rigid -> affine by mutual
information over a three-level Gaussian pyramid, then (optionally) a symmetric diffeomorphic
(SyN) warp with a local cross-correlation metric. Mutual information is computed on every
voxel (no random sampling), so the same images give the same mapping.

Direction: the learned mapping pulls template points into the subject's scanner space
(template mm -> subject mm). That is what resampling onto a template grid needs: each template
voxel asks where it lies in the subject and reads the subject's data there.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from mindpipe.align.resample import Grid, sample_image
from mindpipe.exceptions import DataError

logger = logging.getLogger(__name__)

_SIGMAS = (3.0, 1.0, 0.0)  # pyramid smoothing (voxels), coarse -> fine
_FACTORS = (4, 2, 1)  # pyramid subsampling, coarse -> fine

_NOT_FITTED = "This %(name)s is not fitted yet: call 'fit' before 'transform'."


class TemplateAligner(BaseEstimator):
    """Affine (+ optional SyN) registration of a subject's anatomy to a template.

    Parameters
    ----------
    nonlinear : bool
        Follow the affine with a SyN warp.
    affine_iters : tuple of int
        Optimizer iterations per pyramid level (coarse to fine) for each affine step.
    registration_mm : float or None
        Register copies of both images resampled to this voxel size when theirs is finer
        (smoothed first); dipy's dense metric costs in proportion to the template's voxels.
        None: the images as they are.
    syn_iters : tuple of int
        SyN iterations per level (coarse to fine).
    n_bins : int
        Histogram bins of the mutual information metric.
    cc_radius : int
        Window radius (voxels) of SyN's cross-correlation metric.

    Attributes
    ----------
    affine_ : (4, 4) ndarray
        Template mm -> subject mm, the affine part.
    warp_ : dipy DiffeomorphicMap or None
        The SyN warp (it includes ``affine_``), or None when ``nonlinear`` is False.
    template_shape_, template_affine_ : the template grid, for :meth:`transform`.
    """

    def __init__(
        self,
        nonlinear: bool = True,
        affine_iters: tuple[int, ...] = (200, 100, 50),
        registration_mm: float | None = None,
        syn_iters: tuple[int, ...] = (20, 10, 5),
        n_bins: int = 32,
        cc_radius: int = 2,
    ) -> None:
        self.nonlinear = nonlinear
        self.affine_iters = affine_iters
        self.registration_mm = registration_mm
        self.syn_iters = syn_iters
        self.n_bins = n_bins
        self.cc_radius = cc_radius

    def fit(self, moving: nib.Nifti1Image, template: nib.Nifti1Image) -> TemplateAligner:
        """Learn the mapping from ``template`` space to ``moving`` (the subject's T1w) space."""
        from dipy.align.imaffine import (
            AffineRegistration,
            MutualInformationMetric,
            transform_centers_of_mass,
        )
        from dipy.align.transforms import (
            AffineTransform3D,
            RigidTransform3D,
            TranslationTransform3D,
        )

        template, moving = self._coarsen(template), self._coarsen(moving)
        static, static_affine = _volume(template, "template"), template.affine
        moving_data, moving_affine = _volume(moving, "moving image"), moving.affine
        registration = AffineRegistration(
            metric=MutualInformationMetric(nbins=self.n_bins, sampling_proportion=None),
            level_iters=list(self.affine_iters),
            sigmas=list(_SIGMAS[-len(self.affine_iters) :]),
            factors=list(_FACTORS[-len(self.affine_iters) :]),
            verbosity=0,
        )
        affine = transform_centers_of_mass(static, static_affine, moving_data, moving_affine).affine
        for transform in (TranslationTransform3D(), RigidTransform3D(), AffineTransform3D()):
            affine = registration.optimize(
                static,
                moving_data,
                transform,
                None,
                static_grid2world=static_affine,
                moving_grid2world=moving_affine,
                starting_affine=affine,
            ).affine
        self.affine_ = np.asarray(affine, dtype=np.float64)
        self.warp_ = self._syn(static, static_affine, moving_data, moving_affine)
        self.template_shape_ = tuple(int(n) for n in static.shape)
        self.template_affine_ = np.asarray(static_affine, dtype=np.float64)
        return self

    def _coarsen(self, img: nib.Nifti1Image) -> nib.Nifti1Image:
        """``img`` at ``registration_mm`` voxels if its own are finer (Gaussian-smoothed to
        the new voxel size first, so the copy does not alias)."""
        voxels = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
        if self.registration_mm is None or voxels.min() >= self.registration_mm:
            return img
        from nibabel.processing import resample_to_output, smooth_image

        fwhm = np.sqrt(np.maximum(self.registration_mm**2 - voxels**2, 0.0))
        return resample_to_output(smooth_image(img, fwhm), self.registration_mm, order=1)

    def _syn(self, static, static_affine, moving, moving_affine):
        if not self.nonlinear:
            return None
        from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
        from dipy.align.metrics import CCMetric

        syn = SymmetricDiffeomorphicRegistration(
            CCMetric(3, radius=self.cc_radius), level_iters=list(self.syn_iters)
        )
        dipy_logger = logging.getLogger("dipy")
        level = dipy_logger.level
        dipy_logger.setLevel(logging.WARNING)  # dipy logs every pyramid level at INFO
        try:
            return syn.optimize(
                static,
                moving,
                static_grid2world=static_affine,
                moving_grid2world=moving_affine,
                prealign=self.affine_,
            )
        finally:
            dipy_logger.setLevel(level)

    def template_to_subject(self, points_mm: np.ndarray, nonlinear: bool = True) -> np.ndarray:
        """Map template mm to subject mm, ``(n, 3) -> (n, 3)``; ``nonlinear=False`` uses only
        the affine part."""
        check_is_fitted(self, "affine_", msg=_NOT_FITTED)
        points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
        if nonlinear and self.warp_ is not None:
            return np.asarray(self.warp_.transform_points(points), dtype=np.float64)
        return points @ self.affine_[:3, :3].T + self.affine_[:3, 3]

    def transform(self, moving: nib.Nifti1Image) -> np.ndarray:
        """``moving`` resampled onto the template grid (trilinear), shape ``template_shape_``."""
        check_is_fitted(self, "affine_", msg=_NOT_FITTED)
        grid = Grid(self.template_shape_, self.template_affine_)
        values = sample_image(moving, self.template_to_subject(grid.centres()))
        return values.reshape(self.template_shape_)


def _volume(img: nib.Nifti1Image, what: str) -> np.ndarray:
    return anatomical_volume(np.asarray(img.dataobj, dtype=np.float64), what)


def anatomical_volume(data: np.ndarray, what: str) -> np.ndarray:
    """``data`` as a 3-D volume (a trailing axis of length 1 dropped); a DataError naming
    ``what`` if it is not 3-D or holds NaN or infinite values."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{what}: expected a 3-D anatomical image, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise DataError(f"{what}: holds NaN or infinite values")
    return data
