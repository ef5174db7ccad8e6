"""Harmonizers that keep nothing of their inputs, to check that the metrics see garbage.

A benchmark can be fooled: a method that returns one image for every input makes every
subject look alike at every site, and one that returns noise leaves no site signal. Run
these two beside the real methods (and the oracle) to see where garbage lands on each
metric of your data: :class:`MeanImageHarmonizer` ("collapse") returns the mean training
image for every input, :class:`NoiseHarmonizer` returns uniform noise in each image's
brain. ``benchmarks/bench_sanity.py`` and the tests' sanity section check that the
metrics rank them last (see :mod:`harmonix.benchmark.metrics`, "Garbage scores worst").

Examples
--------
>>> from harmonix.benchmark import run_benchmark
>>> from harmonix.benchmark.sanity import MeanImageHarmonizer, NoiseHarmonizer
>>> df = run_benchmark({"collapse": MeanImageHarmonizer(), "noise": NoiseHarmonizer()},
...                    dataset, oracle=True, random_state=0)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harmonix._docs import fill_doc
from harmonix.base import BaseHarmonizer
from harmonix.inputs._digest import ImageDigest
from harmonix.inputs._reading import Inputs

__all__ = ["MeanImageHarmonizer", "NoiseHarmonizer"]


@fill_doc
class MeanImageHarmonizer(BaseHarmonizer):
    """Garbage for the benchmark: the mean training image, whatever the input.

    ``transform`` returns, for every image, the voxel-wise mean of the training images
    inside that image's brain (background 0). Every subject then looks the same at every
    site: the traveling-subject SSIM is 1 and no site can be predicted, as for a perfect
    method, while nothing of the subject is left.

    Parameters
    ----------
    %(mask)s

    Attributes
    ----------
    mean_image_ : ndarray of shape (i, j, k), float32
        The mean training image.
    %(sites_)s
    %(n_images_)s
    """

    _fixed_shape = True

    def __init__(self, mask: Any = None):
        self.mask = mask

    def _fit(self, data: Inputs) -> None:
        total = np.zeros(data.imgs.shape(0), np.float64)
        for image, _ in self._iter_brains(data.imgs):
            total += image
        self.mean_image_ = (total / len(data)).astype(np.float32)

    def _transform_one(
        self, data: np.ndarray, brain: np.ndarray, site: Any, age: float | None
    ) -> np.ndarray:
        return self.mean_image_.copy()


@fill_doc
class NoiseHarmonizer(BaseHarmonizer):
    """Garbage for the benchmark: uniform noise in each image's brain.

    ``transform`` returns, for every image, independent uniform noise between the 1st and
    99th percentiles of the training images' brain voxels, inside the image's brain
    (background 0). The noise is drawn from a generator seeded by ``random_state`` and
    a digest of the image (:class:`harmonix.inputs._digest.ImageDigest`), so ``transform`` is
    deterministic and two different images get independent noise.

    Parameters
    ----------
    random_state : int or None, default=None
        Seed of the noise (with each image's digest); None means 0.
    %(mask)s

    Attributes
    ----------
    value_range_ : tuple of float
        The noise's range: the 1st and 99th percentiles of the training brain voxels.
    %(sites_)s
    %(n_images_)s
    """

    def __init__(self, random_state: int | None = None, mask: Any = None):
        self.random_state = random_state
        self.mask = mask

    def _fit(self, data: Inputs) -> None:
        seed = self.random_state
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
            raise ValueError(f"random_state must be an int or None, got {seed!r}.")
        step = max(1, len(data) // 20)  # percentiles from at most ~20 images
        brains = enumerate(self._iter_brains(data.imgs))
        values = [d[b] for k, (d, b) in brains if k % step == 0]
        low, high = np.percentile(np.concatenate(values), [1.0, 99.0])
        self.value_range_ = (float(low), float(high))

    def _transform_one(
        self, data: np.ndarray, brain: np.ndarray, site: Any, age: float | None
    ) -> np.ndarray:
        key = int(ImageDigest().update(data).hexdigest(), 16)
        rng = np.random.default_rng([int(self.random_state or 0), key])
        low, high = self.value_range_
        return rng.uniform(low, high, size=data.shape).astype(np.float32)
