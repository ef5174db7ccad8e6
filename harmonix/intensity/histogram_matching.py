"""Histogram matching with Nyúl–Udupa landmarks (the HM baseline).

Each image is summarised by *landmarks*, percentiles of its brain voxels. Fitting learns a
*standard scale* (one target intensity per landmark) from the reference site's images;
transforming maps each image's brain voxels piecewise-linearly through
``(image landmarks -> standard landmarks)``. The two steps are separate public functions of
:mod:`harmonix.intensity.landmarks`, :func:`~harmonix.intensity.landmarks.compute_landmarks` and
:func:`~harmonix.intensity.landmarks.apply_landmarks`, so the mapping can be inspected or reused
outside the estimator.

References
----------
L. G. Nyúl, J. K. Udupa and X. Zhang, "New variants of a method of MRI scale
standardization", IEEE Transactions on Medical Imaging 19(2), 2000.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harmonix._docs import fill_doc
from harmonix.base import BaseHarmonizer
from harmonix.inputs._reading import Inputs
from harmonix.intensity._voxelstats import scatter_brain
from harmonix.intensity.landmarks import (
    _DEFAULT_PERCENTILES,
    _check_percentiles,
    _landmarks_of,
    _map_values,
    standard_scale,
)

__all__ = ["HistogramMatchingHarmonizer"]


@fill_doc
class HistogramMatchingHarmonizer(BaseHarmonizer):
    """Nyúl–Udupa histogram matching onto the reference site's intensity scale.

    Every image is summarised by landmarks, percentiles of its brain voxels (see
    :func:`~harmonix.intensity.landmarks.compute_landmarks`). Fit learns one standard intensity per
    landmark from the reference site's images; transform maps each image's brain voxels
    piecewise-linearly through ``(its landmarks -> standard landmarks)``, so it serves any
    image, from a training site or not. The background stays 0.

    Parameters
    ----------
    %(reference_site)s
    percentiles : sequence of float, default=(1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
        Landmark percentiles: sorted, unique, in [0, 100], at least 2.
    %(mask)s

    Attributes
    ----------
    standard_landmarks_ : ndarray of float64 of shape (n_percentiles,)
        Intensity each landmark is mapped to, on the reference site's scale.
    percentiles_ : ndarray of float64 of shape (n_percentiles,)
        The landmark percentiles used, copied from ``percentiles`` at fit (transform uses
        these, so ``set_params`` after fit changes nothing until the next fit).
    %(reference_attributes)s

    Notes
    -----
    Standard scale: as in Nyúl–Udupa, each reference image's landmarks are first mapped
    linearly so that its first landmark goes to ``s_min`` and its last to ``s_max``, and the
    standard landmarks are the mean of these mapped landmarks. Instead of an arbitrary range
    such as [1, 100], ``s_min`` and ``s_max`` are the reference site's mean first and last
    landmarks (e.g. its mean 1st and 99th percentiles), so harmonized images land on the
    reference site's intensity scale and a reference image is nearly unchanged.

    Transform: between landmarks the map is linear; below the first and above the last
    landmark it is extrapolated linearly with the end segments' slopes (see
    :func:`~harmonix.intensity.landmarks.apply_landmarks`). Tied landmarks are separated as
    described in :func:`~harmonix.intensity.landmarks.compute_landmarks`, so no slope divides
    by zero.

    Grid: landmarks are percentiles of the brain's intensities, which do not depend on
    the voxel size, shape or orientation, so %(any_grid)s

    %(ignores_covariates)s

    Examples
    --------
    >>> import numpy as np
    >>> from harmonix.intensity.histogram_matching import HistogramMatchingHarmonizer
    >>> rng = np.random.default_rng(0)
    >>> imgs = rng.uniform(1, 100, size=(4, 8, 8, 8)).astype(np.float32)
    >>> imgs[2:] = 2 * imgs[:2] + 50  # the same two images, seen at site "b"
    >>> imgs[:, :3] = 0  # background
    >>> hm = HistogramMatchingHarmonizer(reference_site="a")
    >>> out = hm.fit(imgs, ["a", "a", "b", "b"]).transform(imgs)
    >>> bool(np.allclose(out[2], out[0], rtol=1e-3))  # same image, now on site a's scale
    True
    """

    _checked_params = {"percentiles_": ("percentiles", _check_percentiles)}

    def __init__(
        self,
        reference_site: Any = None,
        percentiles: Any = _DEFAULT_PERCENTILES,
        mask: Any = None,
    ):
        self.reference_site = reference_site
        self.percentiles = percentiles
        self.mask = mask

    def _fit(self, data: Inputs) -> None:
        q = _check_percentiles(self.percentiles)
        reference = self._reference_values(data.imgs, data.sites)
        landmarks = np.stack([_landmarks_of(v, q) for v in reference])
        self.standard_landmarks_ = standard_scale(landmarks)
        self.percentiles_ = q

    def _transform_one(
        self, data: np.ndarray, brain: np.ndarray, site: Any, age: float | None
    ) -> np.ndarray:
        values = data[brain]
        landmarks = _landmarks_of(values, self.percentiles_)
        mapped = _map_values(values, landmarks, self.standard_landmarks_)
        return scatter_brain(mapped, brain)
