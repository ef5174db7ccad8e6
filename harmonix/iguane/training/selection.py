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

import math
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from harmonix.iguane.training.distributed import DistributedContext

__all__ = [
    "QUANTILE_LEVELS",
    "CheckpointSelection",
    "Scoring",
    "SiteDistance",
    "record_score",
    "validation_split",
]

#: Quantile levels of the intensity-distribution part (0.5 %, 1.5 %, ..., 99.5 %).
QUANTILE_LEVELS = (np.arange(100) + 0.5) / 100.0

#: ``harmonize(x, mask) -> y``: a generator on one volume, network scale in and out.
Harmonize = Callable[[np.ndarray, np.ndarray], np.ndarray]
Volumes = Sequence[tuple[np.ndarray, np.ndarray]]

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


def validation_split(
    sites: np.ndarray, reference_site: Hashable, fraction: float, rng: np.random.Generator
) -> list[int]:
    """Held-out images: ``round(fraction * n)`` of each source site, keeping one to train.

    Parameters
    ----------
    sites : ndarray
        Site of every image.
    reference_site : hashable
        Its images are never held out.
    fraction : float
        ``val_fraction``; 0 holds out nothing.
    rng : numpy.random.Generator

    Returns
    -------
    list of int
        Sorted image indices. With tiny data (no site gives an image at this fraction) one
        image of the largest source site that has at least two.
    """
    if fraction <= 0:
        return []
    held: list[int] = []
    sizes = {}
    for site in sorted(set(sites.tolist()) - {reference_site}, key=lambda s: (str(type(s)), s)):
        idx = np.flatnonzero(sites == site)
        sizes[site] = idx
        n_val = min(int(round(fraction * len(idx))), len(idx) - 1)
        if n_val > 0:
            held.extend(rng.permutation(idx)[:n_val].tolist())
    if not held:  # tiny data: hold out one image of the largest site that can spare one
        site = max(sizes, key=lambda s: len(sizes[s]))
        if len(sizes[site]) >= 2:
            held.append(int(rng.choice(sizes[site])))
    return sorted(int(i) for i in held)


def record_score(history: dict[str, Any], step: int, score: float) -> bool:
    """Append a validation score to ``history``; whether it is the best so far.

    ``history`` holds ``val_step``, ``val_score`` (lists), ``best_step`` and
    ``best_score``; ties go to the later step and NaN scores are never the best.
    """
    history["val_step"].append(step)
    history["val_score"].append(score)
    best = history["best_score"]
    if (best is None and not math.isnan(score)) or (best is not None and score >= best):
        history["best_score"], history["best_step"] = score, step
        return True
    return False


class CheckpointSelection:
    """The score of a generator on the held-out images of a training.

    Parameters
    ----------
    volumes : sequence of (x, mask)
        All images of the training, network scale (background -1).
    sites : ndarray
        Site of every image.
    indices : sequence of int
        The held-out images.
    scoring : Scoring, default=None
        A user score; None: :class:`SiteDistance` (call :meth:`fit_reference` first).
    context : DistributedContext, default=None
        In a distributed training the default score's images are shared out over the
        processes and the sums added; a user ``scoring`` runs whole on every process.
    """

    def __init__(
        self,
        volumes: Volumes,
        sites: np.ndarray,
        indices: Sequence[int],
        scoring: Scoring | None = None,
        context: DistributedContext | None = None,
    ) -> None:
        self.volumes = volumes
        self.sites = sites
        self.indices = list(indices)
        self.scoring = scoring
        self.context = context
        self.site_distance = SiteDistance()

    def _total(self, values: np.ndarray) -> np.ndarray:
        """Sum of ``values`` over processes (``values`` itself in a single process)."""
        return values if self.context is None else self.context.sum(values)

    def _mine(self, indices: Sequence[int]) -> list[int]:
        """The images this process scores (all of them in a single process)."""
        return list(indices) if self.context is None else self.context.shard(list(indices))

    def fit_reference(self, indices: Sequence[int]) -> None:
        """Reference statistics of the default score from the images ``indices``."""
        sums = self.site_distance.sums([self.volumes[i] for i in self._mine(indices)])
        self.site_distance.fit_sums(self._total(sums))

    def score(self, harmonize: Harmonize | None) -> float:
        """Score (higher is better) of ``harmonize`` on the held-out images.

        ``None`` scores the unharmonized images (the baseline).
        """
        fn = harmonize if harmonize is not None else (lambda x, mask: np.asarray(x))
        indices = self.indices
        if self.scoring is not None:
            volumes = [self.volumes[i] for i in indices]
            value = self.scoring(fn, volumes, [self.sites[i] for i in indices])
            try:
                return float(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"The scoring callable must return a number (higher is better); it "
                    f"returned {type(value).__name__} {value!r:.80}."
                ) from None
        dists = [
            self.site_distance.distance(fn(*self.volumes[i]), self.volumes[i][1])
            for i in self._mine(indices)
        ]
        total = self._total(np.array([float(np.sum(dists))]))[0]
        return -float(total) / len(indices)
