"""Checkpoint selection: how a forward generator is scored on held-out images.

Every ``val_every`` steps (and at the end) the training scores its current forward
generator on the held-out images of the source sites; the best-scoring generator is the
one returned. A score is *higher is better*; ties go to the later checkpoint.

The default score, :class:`SiteDistance`, is minus the mean distance of the harmonized
held-out images to the reference site's training images, in two parts (both on the
network scale, where the brain median is 0):

- *intensity distribution*: the 1-D Wasserstein-1 distance between the image's
  brain-voxel quantile function and the reference site's mean quantile function;
- *regional profile*: the mean absolute difference between the image's mean intensity in
  each cell of a coarse grid (``grid`` cells per axis, cells with enough brain) and the
  reference site's mean profile, weighted by the cells' brain voxels.

The first part sees contrast; the second sees spatial site effects such as a bias field
that a histogram cannot see (a smooth multiplicative field leaves the histogram almost
unchanged but moves regional means). Images are registered (MNI), so regional means of
different subjects are comparable up to anatomy, which averages out over images.

A user-supplied ``scoring`` callable replaces it (the original IGUANe's ``eval_model``
hook): ``scoring(harmonize, volumes, sites) -> float`` where ``volumes`` are the held-out
``(x, mask)`` pairs (network scale, background -1), ``sites`` their site labels, and
``harmonize(x, mask)`` returns the forward generator's output for one of them (network
scale, background -1).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

__all__ = ["QUANTILE_LEVELS", "Scoring", "SiteDistance"]

#: Quantile levels of the intensity-distribution part (0.5 %, 1.5 %, ..., 99.5 %).
QUANTILE_LEVELS = (np.arange(100) + 0.5) / 100.0

#: ``scoring(harmonize, volumes, sites) -> float`` (higher is better).
Scoring = Callable[
    [
        Callable[[np.ndarray, np.ndarray], np.ndarray],
        Sequence[tuple[np.ndarray, np.ndarray]],
        Sequence[Hashable],
    ],
    float,
]


def _quantiles(values: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return np.zeros(len(QUANTILE_LEVELS))
    return np.quantile(values.astype(np.float64), QUANTILE_LEVELS)


class SiteDistance:
    """Distance of images to the reference site: intensity distribution + regional profile.

    Parameters
    ----------
    grid : int, default=6
        Cells per axis of the regional profile.
    min_fraction : float, default=0.25
        Cells with less than this fraction of brain voxels (in the reference images) are
        left out of the profile.

    Notes
    -----
    :meth:`fit` takes sums over images (:meth:`sums`), so the reference statistics of a
    distributed training are all-reduced sums; :meth:`distance` scores one image.
    """

    def __init__(self, grid: int = 6, min_fraction: float = 0.25) -> None:
        self.grid = int(grid)
        self.min_fraction = float(min_fraction)
        self.quantiles: np.ndarray | None = None
        self.profile: np.ndarray | None = None
        self.cells: np.ndarray | None = None

    def _labels(self, shape: tuple[int, ...]) -> np.ndarray:
        """Cell index of every voxel (``grid`` cells per axis)."""
        edges = [np.minimum(np.arange(n) * self.grid // n, self.grid - 1) for n in shape]
        a, b, c = np.meshgrid(*edges, indexing="ij")
        return (a * self.grid + b) * self.grid + c

    def _cell_sums(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = self._labels(x.shape)[mask]
        n = self.grid**3
        total = np.bincount(labels, weights=x[mask].astype(np.float64), minlength=n)
        count = np.bincount(labels, minlength=n).astype(np.float64)
        return total, count

    def sums(self, volumes: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Summed statistics of reference images: quantiles, cell sums, counts, cell sizes."""
        n = self.grid**3
        out = np.zeros(len(QUANTILE_LEVELS) + 3 * n + 1)
        for x, mask in volumes:
            x, mask = np.asarray(x), np.asarray(mask, dtype=bool)
            total, count = self._cell_sums(x, mask)
            size = np.bincount(self._labels(x.shape).ravel(), minlength=n)
            k = len(QUANTILE_LEVELS)
            out[:k] += _quantiles(x[mask])
            out[k : k + n] += total
            out[k + n : k + 2 * n] += count
            out[k + 2 * n : k + 3 * n] += size
            out[-1] += 1
        return out

    def fit_sums(self, sums: np.ndarray) -> SiteDistance:
        """Set the reference statistics from :meth:`sums` (possibly added over processes)."""
        n, k = self.grid**3, len(QUANTILE_LEVELS)
        n_images = max(sums[-1], 1.0)
        self.quantiles = sums[:k] / n_images
        total, count, size = sums[k : k + n], sums[k + n : k + 2 * n], sums[k + 2 * n : -1]
        self.cells = (count >= self.min_fraction * np.maximum(size, 1)) & (count > 0)
        self.profile = np.where(self.cells, total / np.maximum(count, 1), 0.0)
        return self

    def distance(self, x: np.ndarray, mask: np.ndarray) -> float:
        """Distance of one image (network scale) to the reference statistics."""
        if self.quantiles is None or self.profile is None or self.cells is None:
            raise RuntimeError("SiteDistance is not fitted.")
        x, mask = np.asarray(x), np.asarray(mask, dtype=bool)
        w1 = float(np.mean(np.abs(_quantiles(x[mask]) - self.quantiles)))
        total, count = self._cell_sums(x, mask)
        use = self.cells & (count > 0)
        if not use.any():
            return w1
        diff = np.abs(total[use] / count[use] - self.profile[use])
        return w1 + float(np.average(diff, weights=count[use]))

    def __call__(
        self,
        harmonize: Callable[[np.ndarray, np.ndarray], np.ndarray],
        volumes: Sequence[tuple[np.ndarray, np.ndarray]],
        sites: Sequence[Any],
    ) -> float:
        """The score of a generator: minus the mean distance of its outputs (a ``Scoring``)."""
        dists = [self.distance(harmonize(x, m), m) for x, m in volumes]
        return -float(np.mean(dists)) if dists else float("nan")
