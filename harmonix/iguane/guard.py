"""The out-of-distribution guard of :class:`~harmonix.iguane.IGUANeHarmonizer`.

A generator trained on a few sites may change an image of an unlike site in unlike ways,
and a user cannot check every output. The guard looks at every image ``transform`` sees in
two ways, each calibrated at the end of ``fit`` on training images the model did not
learn from (the held-out validation images) or learned from (up to 32 more source-site
images):

- **correction size** (:meth:`IGUANeHarmonizer.distribution_distance`): the mean absolute
  change the forward generator makes inside the brain, divided by its median change of
  the calibration images. It catches images the generator rewrites far more than usual.
- **contrast profile** (:meth:`IGUANeHarmonizer.profile_correlation`,
  :class:`ContrastProfile`): the correlation of the image's local contrast pattern with
  the reference site's. The normalized network input is averaged in the cells of a
  ``24 x 24 x 24`` grid, the log of the cell means is high-passed (minus its Gaussian
  smoothing over 2 cells, which removes smooth bias fields and global contrast), and the
  result is correlated with the mean pattern of the reference site's training images.
  A T1-weighted image registered like the training images scores high whatever its
  site; an inverted (T2-like) contrast scores negative, and ghosting, stripes or heavy
  noise lower it. The generator may change such an image no more than a T1, so the size
  alone cannot see it (both measured in ``benchmarks/results/iguane_learning.md``, "The
  guard's second half").

An image is flagged when its correction size exceeds ``ood_threshold_`` or its profile
correlation falls below ``profile_threshold_``; both thresholds widen the range seen in
calibration by :data:`GUARD_MARGIN`. :meth:`IGUANeHarmonizer.guard_report` sums both up
per labelled group of images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "GUARD_MARGIN",
    "GUARD_SAMPLE",
    "OOD_ACTIONS",
    "ContrastProfile",
    "OutOfDistributionWarning",
    "check_ood",
    "correction_threshold",
    "evenly",
    "profile_threshold",
]


class OutOfDistributionWarning(UserWarning):
    """An image lies outside what an IGUANe model saw in training."""


#: Training images whose corrections calibrate the guard (besides the held-out ones).
GUARD_SAMPLE = 32
#: Each threshold widens the calibration range by this factor: ``ood_threshold_`` is this
#: many times the largest calibration correction (relative to the median one), and
#: ``profile_threshold_`` is ``1 - GUARD_MARGIN * (1 - smallest calibration correlation)``.
GUARD_MARGIN = 1.5
#: What ``transform`` does with a flagged image.
OOD_ACTIONS = ("warn", "fallback", "ignore")


def check_ood(action: Any, threshold: Any) -> None:
    """Validate the ``ood_action`` and ``ood_threshold`` parameters."""
    if action not in OOD_ACTIONS:
        raise ValueError(f"ood_action must be one of {OOD_ACTIONS}, got {action!r}.")
    if threshold is not None and not (
        isinstance(threshold, int | float) and not isinstance(threshold, bool) and threshold > 0
    ):
        raise ValueError(f"ood_threshold must be None or a positive number, got {threshold!r}.")


def evenly(indices: Sequence[int], k: int = GUARD_SAMPLE) -> list[int]:
    """At most ``k`` of ``indices``, evenly spaced (all of them when there are fewer)."""
    indices = [int(i) for i in indices]
    if len(indices) <= k:
        return indices
    return [indices[int(j)] for j in np.linspace(0, len(indices) - 1, k)]


def correction_threshold(sizes: Sequence[float], user: float | None) -> tuple[float, float]:
    """``(typical_correction_, ood_threshold_)`` from the calibration correction sizes."""
    sizes = np.asarray(sizes, dtype=np.float64)
    typical = float(np.median(sizes)) if sizes.size else 0.0
    if user is not None:
        return typical, float(user)
    if sizes.size and typical > 0:
        return typical, float(GUARD_MARGIN * sizes.max() / typical)
    return typical, float("inf")


def profile_threshold(correlations: Sequence[float]) -> tuple[np.ndarray, float]:
    """``(training_profile_correlations_, profile_threshold_)`` (finite values only)."""
    corr = np.asarray(correlations, dtype=np.float64)
    corr = corr[np.isfinite(corr)]
    if not corr.size:
        return corr, -float("inf")
    return corr, float(1.0 - GUARD_MARGIN * (1.0 - corr.min()))


class ContrastProfile:
    """The local contrast pattern of registered images, and its correlation with a reference.

    Parameters
    ----------
    grid : int, default=24
        Cells per axis.
    sigma : float, default=2.0
        Gaussian (in cells) whose smoothing of the log cell means is subtracted.

    Attributes
    ----------
    reference : ndarray of shape (grid, grid, grid) or None
        Mean pattern of the reference images (NaN where they have no brain).
    """

    def __init__(self, grid: int = 24, sigma: float = 2.0) -> None:
        self.grid = int(grid)
        self.sigma = float(sigma)
        self.reference: np.ndarray | None = None

    def pattern(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """High-passed log cell means of one network-scale volume (NaN outside the brain)."""
        x, mask = np.asarray(x), np.asarray(mask, dtype=bool)
        g = self.grid
        edges = [np.minimum(np.arange(n) * g // n, g - 1) for n in x.shape]
        a, b, c = np.meshgrid(*edges, indexing="ij")
        labels = ((a * g + b) * g + c)[mask]
        # network scale: x = v / median - 1, so x + 1 > 0 is the intensity over the median
        values = np.maximum(x[mask].astype(np.float64) + 1.0, 1e-3)
        total = np.bincount(labels, weights=values, minlength=g**3).reshape(g, g, g)
        count = np.bincount(labels, minlength=g**3).reshape(g, g, g).astype(np.float64)
        inside = count > 0
        logs = np.where(inside, np.log(np.where(inside, total / np.maximum(count, 1), 1.0)), 0.0)
        weight = inside.astype(np.float64)
        smooth = ndimage.gaussian_filter(logs * weight, self.sigma, mode="constant")
        norm = ndimage.gaussian_filter(weight, self.sigma, mode="constant")
        return np.where(inside, logs - smooth / np.maximum(norm, 1e-6), np.nan)

    def fit(self, volumes: Iterable[tuple[np.ndarray, np.ndarray]]) -> ContrastProfile:
        """Set :attr:`reference` to the mean pattern of ``(x, mask)`` volumes."""
        total = np.zeros((self.grid,) * 3)
        count = np.zeros((self.grid,) * 3)
        for x, mask in volumes:
            p = self.pattern(x, mask)
            ok = np.isfinite(p)
            total[ok] += p[ok]
            count[ok] += 1
        self.reference = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return self

    def correlation(self, x: np.ndarray, mask: np.ndarray) -> float:
        """Pearson correlation of one volume's pattern with :attr:`reference`.

        NaN with fewer than 3 cells in common or a flat pattern.
        """
        if self.reference is None:
            raise RuntimeError("ContrastProfile is not fitted.")
        p = self.pattern(x, mask)
        ok = np.isfinite(p) & np.isfinite(self.reference)
        if ok.sum() < 3:
            return float("nan")
        a = p[ok] - p[ok].mean()
        b = self.reference[ok] - self.reference[ok].mean()
        den = float(np.sqrt((a @ a) * (b @ b)))
        return float(a @ b / den) if den > 0 else float("nan")
