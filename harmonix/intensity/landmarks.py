"""Nyúl–Udupa intensity landmarks: percentiles of the brain voxels and their piecewise-linear map.

Each image is summarised by *landmarks*, percentiles of its brain voxels;
:func:`standard_scale` averages landmarks into one target intensity per landmark and
:func:`apply_landmarks` maps an image's brain voxels piecewise-linearly through
``(image landmarks -> standard landmarks)``. Histogram matching
(:class:`harmonix.HistogramMatchingHarmonizer`) is built on them, and IGUANe's per-site
input normalization uses them too, which is why they live below both estimators.

References
----------
L. G. Nyúl, J. K. Udupa and X. Zhang, "New variants of a method of MRI scale
standardization", IEEE Transactions on Medical Imaging 19(2), 2000.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harmonix._docs import fill_doc
from harmonix.intensity._voxelstats import brain_values, scatter_brain
from harmonix.intensity._voxelstats import percentiles as _percentiles

__all__ = ["apply_landmarks", "compute_landmarks", "standard_scale"]

_DEFAULT_PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
#: relative gap that separates tied landmarks (see :func:`compute_landmarks`).
_TIE_GAP = 1e-5


def _check_percentiles(percentiles: Any) -> np.ndarray:
    try:
        q = np.asarray(percentiles, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"percentiles must be numbers in [0, 100] ({exc}).") from exc
    if q.ndim != 1 or q.size < 2:
        raise ValueError(
            f"percentiles must be a 1-D sequence of at least 2 values, got {percentiles!r}; "
            "e.g. (1, 10, 20, ..., 90, 99)."
        )
    if not np.all(np.isfinite(q)) or q.min() < 0 or q.max() > 100:
        raise ValueError(f"percentiles must lie in [0, 100], got {q.tolist()}.")
    if np.any(np.diff(q) <= 0):
        raise ValueError(
            f"percentiles must be sorted and unique (strictly increasing), got {q.tolist()}."
        )
    return q


def _strictly_increasing(landmarks: np.ndarray) -> np.ndarray:
    """Separate tied landmarks: ``l[i] = max(l[i], l[i-1] + gap)`` from left to right."""
    gap = _TIE_GAP * max(1.0, float(np.max(np.abs(landmarks))))
    steps = gap * np.arange(landmarks.size)
    return np.maximum.accumulate(landmarks - steps) + steps


def _landmarks_of(values: np.ndarray, q: np.ndarray) -> np.ndarray:
    return _strictly_increasing(_percentiles(values, q))


@fill_doc
def compute_landmarks(
    data: np.ndarray,
    brain: np.ndarray | None = None,
    percentiles: Any = _DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Landmarks of one image: percentiles of its brain voxels, made strictly increasing.

    Percentiles use linear interpolation between order statistics (the values of
    ``np.percentile``). Tied landmarks (e.g. many voxels sharing one value) would make the
    piecewise-linear map divide by zero, so every landmark that is not above its
    predecessor is raised to ``predecessor + gap`` (from left to right), with
    ``gap = 1e-5 * max(1, max|landmark|)``. Landmarks that already increase are unchanged.

    Parameters
    ----------
    data : ndarray of shape (i, j, k)
        The image.
    %(brain)s
    percentiles : sequence of float, default=(1, 10, 20, ..., 90, 99)
        Sorted, unique percentiles in [0, 100] (at least 2).

    Returns
    -------
    ndarray of float64 of shape (n_percentiles,)
        Strictly increasing landmarks.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.arange(1, 102, dtype=np.float32).reshape(1, 1, 101)
    >>> compute_landmarks(img, percentiles=(0, 50, 100))
    array([  1.,  51., 101.])
    """
    q = _check_percentiles(percentiles)
    values, _ = brain_values(data, brain)
    return _landmarks_of(values, q)


def standard_scale(landmarks: np.ndarray) -> np.ndarray:
    """The standard scale of a set of images' landmarks (Nyúl–Udupa training).

    Each image's landmarks are mapped linearly so that its first and last landmarks land
    on the means of all first and all last landmarks; the standard scale is the mean of
    the mapped landmarks.

    Parameters
    ----------
    landmarks : ndarray of shape (n_images, n_landmarks)
        Landmarks of the images (:func:`compute_landmarks`), e.g. the reference site's.

    Returns
    -------
    ndarray of shape (n_landmarks,)
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    s_min, s_max = landmarks[:, 0].mean(), landmarks[:, -1].mean()
    first, last = landmarks[:, :1], landmarks[:, -1:]
    mapped = s_min + (landmarks - first) * ((s_max - s_min) / (last - first))
    return mapped.mean(axis=0)


def _map_values(values: np.ndarray, landmarks: np.ndarray, standard: np.ndarray) -> np.ndarray:
    """Piecewise-linear map of float values (linear extrapolation with the end slopes)."""
    dtype = np.float64 if values.dtype == np.float64 else np.float32
    x = landmarks.astype(dtype)
    slope = (np.diff(standard) / np.diff(landmarks)).astype(dtype)
    # segment index = number of inner landmarks <= value (0 .. n_landmarks - 2)
    segment = np.zeros(values.shape, dtype=np.uint8 if landmarks.size <= 256 else np.intp)
    for inner in x[1:-1]:
        np.add(segment, values >= inner, out=segment, casting="unsafe")
    segment = segment.astype(np.intp)
    # y_k + slope_k * (v - x_k): no cancellation on the steep segments of tied landmarks
    out = np.subtract(values, np.take(x, segment), dtype=dtype)
    out *= np.take(slope, segment)
    out += np.take(standard.astype(dtype), segment)
    return out


def apply_landmarks(
    data: np.ndarray,
    landmarks: np.ndarray,
    standard_landmarks: np.ndarray,
    brain: np.ndarray | None = None,
) -> np.ndarray:
    """Map an image's brain voxels piecewise-linearly from its landmarks onto a standard scale.

    Between two landmarks the map is linear; below the first and above the last landmark
    it continues with the slope of the first and last segment (linear extrapolation, so the
    darkest and brightest 1 % keep their contrast instead of being clipped).

    Parameters
    ----------
    data : ndarray of shape (i, j, k)
        The image (not modified).
    landmarks : ndarray of shape (n_landmarks,)
        The image's landmarks (strictly increasing; see :func:`compute_landmarks`).
    standard_landmarks : ndarray of shape (n_landmarks,)
        Target intensities of the landmarks (non-decreasing).
    brain : ndarray of bool of shape (i, j, k), default=None
        Voxels to map; ``data != 0`` when None.

    Returns
    -------
    ndarray of float32 of shape (i, j, k)
        Mapped image; voxels outside ``brain`` are 0.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    standard = np.asarray(standard_landmarks, dtype=np.float64)
    if landmarks.ndim != 1 or landmarks.shape != standard.shape or landmarks.size < 2:
        raise ValueError(
            "landmarks and standard_landmarks must be 1-D arrays of the same length (>= 2); "
            f"got shapes {landmarks.shape} and {standard.shape}."
        )
    if np.any(np.diff(landmarks) <= 0):
        raise ValueError(
            "landmarks must be strictly increasing; compute them with compute_landmarks."
        )
    values, brain = brain_values(data, brain)
    return scatter_brain(_map_values(values, landmarks, standard), brain)
