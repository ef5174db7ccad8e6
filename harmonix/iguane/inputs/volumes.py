"""Volumes on IGUANe's network scale: median scaling, the network grid, on-demand loading.

Network scale
    Images are median-normalized (brain median 500) and mapped to ``x / 500 - 1``: the
    brain median becomes 0 and the background -1. A boolean brain mask travels with every
    volume. Before any network the background is set to 0 (:func:`network_input`) and every
    generator output is multiplied by its input's mask.

Network grid
    :func:`prepare_volume` pads an image to a multiple of 16 per axis, or crops/pads it to
    a fixed ``input_shape`` without cutting brain voxels, and records the grid change so
    outputs go back to the input grid. :class:`VolumeLoader` prepares the volumes of a
    collection on demand, with a small cache for files.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harmonix.iguane.model.networks import SIZE_MULTIPLE, size_triple
from harmonix.preprocessing import (
    IGUANE_FALLBACK_SHAPE,
    IGUANE_SHAPE,
    GridChange,
    crop_or_pad,
    pad_to_multiple,
)

__all__ = [
    "NETWORK_SCALE",
    "PreparedVolume",
    "VolumeLoader",
    "brain_median",
    "check_input_shape",
    "from_network_scale",
    "network_input",
    "prepare_volume",
    "to_network_scale",
]

#: Brain median after IGUANe's median normalization; network scale is ``x / 500 - 1``.
NETWORK_SCALE = 500.0


# --------------------------------------------------------------------------------------
# Intensity scale
# --------------------------------------------------------------------------------------
def brain_median(data: np.ndarray, brain: np.ndarray | None = None) -> float:
    """Median intensity of the brain voxels of one image.

    Parameters
    ----------
    data : ndarray of shape (i, j, k)
    brain : ndarray of bool, default=None
        Brain voxels; default ``data != 0``.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If there is no brain voxel or the median is not positive.
    """
    brain = data != 0 if brain is None else brain
    if not brain.any():
        raise ValueError("The image has no brain voxels; cannot normalize it.")
    median = float(np.median(data[brain]))
    if not median > 0:
        raise ValueError(
            f"The brain median is {median:g}; IGUANe needs positive intensities "
            "(skull-stripped T1-weighted images with background 0)."
        )
    return median


def to_network_scale(
    data: np.ndarray, brain: np.ndarray, median: float
) -> tuple[np.ndarray, np.ndarray]:
    """Median-normalize an image and map it to the network scale.

    Parameters
    ----------
    data : ndarray of shape (i, j, k)
        Raw intensities (not modified).
    brain : ndarray of bool, same shape
        Brain voxels.
    median : float
        The image's brain median (see :func:`brain_median`).

    Returns
    -------
    x : ndarray of float32
        ``data / median - 1`` in the brain (so ``500 * data / median`` on the median-500
        scale, minus one after division by 500), at least -1; exactly -1 outside.
    mask : ndarray of bool
        A copy of ``brain``.
    """
    x = np.asarray(data, dtype=np.float32) * np.float32(1.0 / median) - np.float32(1.0)
    np.maximum(x, -1.0, out=x)
    mask = np.array(brain, dtype=bool)
    x[~mask] = -1.0
    return x, mask


def from_network_scale(
    y: np.ndarray, mask: np.ndarray, scale: float = NETWORK_SCALE
) -> np.ndarray:
    """Map network outputs back to intensities: ``(y + 1) * scale``, 0 outside ``mask``.

    Parameters
    ----------
    y : ndarray
        Network-scale values.
    mask : ndarray of bool
        Brain voxels.
    scale : float, default=500
        Intensity of the brain median after the mapping.

    Returns
    -------
    ndarray of float32
        Non-negative intensities, background 0.
    """
    out = (np.asarray(y, dtype=np.float32) + np.float32(1.0)) * np.float32(scale)
    np.maximum(out, 0.0, out=out)
    out[~np.asarray(mask, dtype=bool)] = 0.0
    return out


def network_input(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set the background to 0 (the brain median on the network scale) before a network."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


@dataclass(frozen=True)
class PreparedVolume:
    """A volume ready for the networks (see :func:`prepare_volume`).

    Attributes
    ----------
    x : ndarray of float32
        Network-scale intensities on the network grid, background -1.
    mask : ndarray of bool
        Brain voxels on the network grid.
    change : GridChange
        The grid change from the input grid (undo with :meth:`GridChange.invert`).
    """

    x: np.ndarray
    mask: np.ndarray
    change: GridChange


def prepare_volume(
    data: np.ndarray,
    median: float | None = None,
    *,
    input_shape: tuple[int, int, int] | None = None,
) -> PreparedVolume:
    """Median-normalize one image, map it to the network scale and put it on a network grid.

    Parameters
    ----------
    data : ndarray of shape (i, j, k)
        Raw intensities, background 0 (not modified).
    median : float, default=None
        Brain median; computed from ``data`` when None.
    input_shape : tuple of 3 int, default=None
        None: pad every side symmetrically to a multiple of 16. Otherwise crop/pad to this
        shape without cutting brain voxels (:func:`harmonix.preprocessing.crop_or_pad`;
        the published network uses (160, 192, 160) and, when the brain does not fit,
        (176, 208, 176)).

    Returns
    -------
    PreparedVolume
    """
    data = np.asarray(data)
    brain = data != 0
    median = brain_median(data, brain) if median is None else float(median)
    if input_shape is None:
        grid, change = pad_to_multiple(data, SIZE_MULTIPLE)
    else:
        shape = tuple(int(s) for s in input_shape)
        fallback = IGUANE_FALLBACK_SHAPE if shape == IGUANE_SHAPE else None
        grid, change = crop_or_pad(data, shape, brain=brain, fallback_shape=fallback)
    x, mask = to_network_scale(grid, grid != 0, median)
    return PreparedVolume(x, mask, change)


class VolumeLoader:
    """Network-ready volumes of an image collection, loaded on demand.

    Parameters
    ----------
    get_image : callable
        ``get_image(i)`` returns the raw 3-D array of image ``i`` (e.g. an
        :class:`harmonix.io.ImageCollection`, which reads files one at a time).
    medians : sequence of float
        Brain median of every image.
    input_shape : tuple of 3 int, default=None
        See :func:`prepare_volume`.
    cache_size : int, default=0
        Number of prepared volumes kept in memory (least recently used are dropped); useful
        when images are files.

    Notes
    -----
    ``loader[i]`` returns ``(x, mask)``: float32 network-scale intensities (background -1)
    and the bool brain mask, on the network grid. Returned arrays may be cached: do not
    modify them.
    """

    def __init__(
        self,
        get_image: Callable[[int], np.ndarray] | Sequence[np.ndarray],
        medians: Sequence[float],
        *,
        input_shape: tuple[int, int, int] | None = None,
        cache_size: int = 0,
    ) -> None:
        self._get = get_image.__getitem__ if hasattr(get_image, "__getitem__") else get_image
        self.medians = [float(m) for m in medians]
        self.input_shape = input_shape
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.medians)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = int(index)
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        prepared = prepare_volume(
            self._get(index), self.medians[index], input_shape=self.input_shape
        )
        item = (prepared.x, prepared.mask)
        if self.cache_size > 0:
            self._cache[index] = item
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return item


def check_input_shape(shape: Any) -> tuple[int, int, int] | None:
    """``input_shape`` checked: None, or 3 multiples of 16 (see :func:`prepare_volume`)."""
    if shape is None:
        return None
    out = size_triple(shape)
    if out is None:
        raise ValueError(
            f"input_shape must be None or 3 multiples of {SIZE_MULTIPLE}, e.g. (160, 192, 160); "
            f"got {shape!r}."
        )
    return out
