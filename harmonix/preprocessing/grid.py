"""Intensity normalization and grid changes used before and after harmonization.

IGUANe works on brain-median-normalized images (median of brain voxels = 500) cropped
to 160×192×160 voxels. The helpers here do that, and undo the grid change exactly so
results go back onto the input grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "IGUANE_SHAPE",
    "IGUANE_FALLBACK_SHAPE",
    "GridChange",
    "crop_or_pad",
    "median_normalize",
    "pad_to_multiple",
    "restore_grid",
]

#: Input size of the IGUANe networks (MNI 1 mm, cropped).
IGUANE_SHAPE = (160, 192, 160)
#: Larger size used when the brain does not fit in :data:`IGUANE_SHAPE`.
IGUANE_FALLBACK_SHAPE = (176, 208, 176)


def median_normalize(
    data: np.ndarray, brain: np.ndarray | None = None, target: float = 500.0
) -> np.ndarray:
    """Scale an image so that the median of its brain voxels equals ``target``.

    Parameters
    ----------
    data : ndarray of shape (i, j, k)
        The image.
    brain : ndarray of bool, same shape, default=None
        Brain voxels; default ``data != 0``.
    target : float, default=500
        Median after scaling (500 is IGUANe's scale).

    Returns
    -------
    ndarray of float32
        A new scaled image; background stays 0.
    """
    data = np.asarray(data, dtype=np.float32)
    brain = data != 0 if brain is None else brain
    if not brain.any():
        raise ValueError("The image has no brain voxels; cannot normalize it.")
    median = float(np.median(data[brain]))
    if median <= 0:
        raise ValueError(
            f"The brain median is {median:g}; median normalization needs positive "
            "intensities (skull-stripped T1 with background 0)."
        )
    out = data * np.float32(target / median)
    out[~brain] = 0.0
    return out


@dataclass(frozen=True)
class GridChange:
    """How an image was cropped/padded: ``out[x] = in[x + offsets]`` (zeros elsewhere).

    Attributes
    ----------
    input_shape : tuple of int
        Shape before the change.
    output_shape : tuple of int
        Shape after the change.
    offsets : tuple of int
        Per-axis offset of the output window in input coordinates (negative = padding).
    """

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    offsets: tuple[int, ...]

    def _slices(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        src, dst = [], []
        for n_in, n_out, off in zip(self.input_shape, self.output_shape, self.offsets):
            lo, hi = max(0, off), min(n_in, off + n_out)
            src.append(slice(lo, hi))
            dst.append(slice(lo - off, hi - off))
        return tuple(src), tuple(dst)

    def apply(self, data: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Move ``data`` (input grid) onto the output grid."""
        return self._move(data, fill, forward=True)

    def invert(self, data: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Move ``data`` (output grid) back onto the input grid."""
        return self._move(data, fill, forward=False)

    def _move(self, data: np.ndarray, fill: float, forward: bool) -> np.ndarray:
        src, dst = self._slices()
        shape_from, shape_to = self.input_shape, self.output_shape
        if not forward:
            src, dst, shape_from, shape_to = dst, src, shape_to, shape_from
        if data.shape[-3:] != shape_from:
            raise ValueError(f"Expected shape {shape_from}, got {data.shape[-3:]}.")
        out = np.full(data.shape[:-3] + shape_to, fill, dtype=data.dtype)
        out[(..., *dst)] = data[(..., *src)]
        return out


def _bbox(brain: np.ndarray) -> list[tuple[int, int]]:
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(brain.any(axis=other))
        box.append((int(idx[0]), int(idx[-1])))
    return box


def _plan(
    shape: tuple[int, ...], target: tuple[int, ...], brain: np.ndarray, center: str
) -> GridChange | None:
    offsets = []
    for n_in, n_out, (lo, hi) in zip(shape, target, _bbox(brain)):
        if hi - lo + 1 > n_out:
            return None
        if center == "brain":
            offsets.append((lo + hi + 1 - n_out) // 2)
        else:
            offsets.append(int(np.clip((n_in - n_out) // 2, hi + 1 - n_out, lo)))
    return GridChange(tuple(shape), tuple(target), tuple(offsets))


def crop_or_pad(
    data: np.ndarray,
    target_shape: tuple[int, int, int] = IGUANE_SHAPE,
    *,
    brain: np.ndarray | None = None,
    fallback_shape: tuple[int, int, int] | None = IGUANE_FALLBACK_SHAPE,
    center: str = "volume",
) -> tuple[np.ndarray, GridChange]:
    """Crop and/or pad an image to ``target_shape`` without cutting brain voxels.

    By default the window is centred on the volume and shifted only as far as needed to
    keep the brain inside; ``center="brain"`` centres it on the brain's bounding box (as
    the original IGUANe preprocessing does). If the brain does not fit,
    ``fallback_shape`` is tried.

    Parameters
    ----------
    data : ndarray of shape (i, j, k)
    target_shape : tuple of 3 int, default=(160, 192, 160)
    brain : ndarray of bool, default=None
        Voxels that must be kept; default ``data != 0``.
    fallback_shape : tuple of 3 int or None, default=(176, 208, 176)
    center : {"volume", "brain"}, default="volume"
        What the window is centred on.

    Returns
    -------
    out : ndarray of shape target_shape (or fallback_shape)
    change : GridChange
        Pass to :func:`restore_grid` to go back to the input grid.
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"Expected a 3-D image, got shape {data.shape}.")
    if center not in ("volume", "brain"):
        raise ValueError(f"center must be 'volume' or 'brain', got {center!r}.")
    brain = data != 0 if brain is None else brain
    if not brain.any():
        raise ValueError("The image has no brain voxels; cannot place it on the grid.")
    for shape in (target_shape, fallback_shape):
        if shape is None:
            continue
        change = _plan(data.shape, tuple(shape), brain, center)
        if change is not None:
            return change.apply(data), change
    raise ValueError(
        f"The brain's bounding box {[hi - lo + 1 for lo, hi in _bbox(brain)]} does not fit in "
        f"{target_shape} or {fallback_shape}: register the image to MNI 1 mm space first."
    )


def pad_to_multiple(data: np.ndarray, multiple: int = 16) -> tuple[np.ndarray, GridChange]:
    """Zero-pad an image symmetrically so each side is a multiple of ``multiple``.

    Parameters
    ----------
    data : ndarray of shape (..., i, j, k)
    multiple : int, default=16
        16 suits networks with four halvings.

    Returns
    -------
    out : ndarray
    change : GridChange
        Pass to :func:`restore_grid` to crop back.
    """
    shape = tuple(data.shape[-3:])
    target = tuple(-(-n // multiple) * multiple for n in shape)
    change = GridChange(shape, target, tuple(-((t - n) // 2) for n, t in zip(shape, target)))
    return change.apply(np.asarray(data)), change


def restore_grid(data: np.ndarray, change: GridChange) -> np.ndarray:
    """Undo :func:`crop_or_pad` or :func:`pad_to_multiple` (cropped-away voxels become 0)."""
    return change.invert(np.asarray(data))
