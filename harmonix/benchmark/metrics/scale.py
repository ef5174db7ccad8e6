"""Input checks and the common intensity scale shared by every image metric.

See :mod:`harmonix.benchmark.metrics` for why every method's outputs are put on one scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harmonix._docs import docdict, fill_doc

__all__ = ["QUANTILES", "robust_range", "robust_scale"]

# Parameters documented once for the benchmark's functions (harmonix._docs.fill_doc).
docdict["bm_harmonized"] = """\
imgs : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
    Harmonized images."""

docdict["bm_images"] = """\
imgs : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
    Images on one grid."""

docdict["bm_mask"] = """\
mask : ndarray of shape (i, j, k)
    Brain mask (non-zero = brain)."""

docdict["bm_mask2"] = """\
mask : ndarray of shape (i, j, k)
    Brain mask."""

docdict["bm_groups"] = """\
groups : array-like of shape (n_images,), default=None
    Subject of each image; folds never split a subject. Without it every image is taken
    for a different subject, with a :class:`~harmonix.exceptions.BenchmarkWarning`
    (a subject's images in both training and test folds flatter the score)."""

docdict["bm_age_inputs"] = "\n".join(
    [
        docdict["bm_harmonized"],
        "ages : array-like of shape (n_images,)\n    Target ages.",
        docdict["bm_mask2"],
        docdict["bm_groups"],
    ]
)

docdict["bm_pairs"] = "\n".join(
    [
        docdict["bm_harmonized"],
        "subjects : array-like of shape (n_images,)\n    Subject of each image.",
        "sites : array-like of shape (n_images,)\n    Site of each image.",
        "mask : ndarray of shape (i, j, k)\n    Brain mask common to the images.",
    ]
)

docdict["bm_site_target"] = """\
sites : array-like of shape (n_images,)
    Site labels (the target)."""

docdict["bm_site_inputs"] = "\n".join(
    docdict[k] for k in ("bm_harmonized", "bm_site_target", "bm_mask2", "bm_groups")
)
docdict["bm_n_splits"] = """\
n_splits : int, default=5
    Folds (reduced to the number of subjects when fewer)."""

docdict["bm_fold_seed"] = """\
random_state : int, numpy Generator or None, default=None
    Seeds the fold shuffling."""

docdict["bm_value_range"] = """\
value_range : tuple of float, default=None
    Intensity range mapped to ``[0, 1]`` (:func:`robust_scale`); default: the pooled
    robust range of ``imgs``."""

docdict["bm_tissues"] = """\
tissues : Tissues, default=None
    A segmentation of ``imgs`` already computed (then ``imgs`` is not read)."""

#: Percentiles of the brain voxels mapped to 0 and 1 by :func:`robust_scale`.
QUANTILES = (0.5, 99.5)


def _as_images(imgs: Any, name: str = "imgs") -> np.ndarray:
    if isinstance(imgs, np.ndarray):
        arr = imgs
    else:
        try:
            arr = np.stack([np.asarray(a) for a in imgs])
        except ValueError as exc:
            raise ValueError(f"{name}: all images must have the same shape ({exc}).") from exc
    if arr.ndim != 4:
        raise ValueError(
            f"{name} must be a 4-D array (n_images, i, j, k) or a list of 3-D arrays; "
            f"got shape {arr.shape}."
        )
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or infinite voxels; metrics need finite images.")
    return arr


def table_features(imgs: Any) -> np.ndarray | None:
    """The values of a table of features ``(n_samples, n_features)`` (a 2-D array or a
    DataFrame, checked by :class:`harmonix.inputs.tables.FeatureTable`), or None for images:
    the metrics that read features (site predictability, brain age) take tables as their
    features directly."""
    from harmonix.inputs.tables import FeatureTable, is_table

    return FeatureTable(imgs).values if is_table(imgs) else None


def _as_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.shape != tuple(shape):
        raise ValueError(
            f"mask has shape {arr.shape} but the images are {tuple(shape)}; pass a 3-D mask "
            "on the image grid."
        )
    arr = arr != 0
    if not arr.any():
        raise ValueError("mask is empty; pass a brain mask with at least one voxel.")
    return arr


def _as_labels(labels: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must have one entry per image ({n}); got shape {arr.shape}.")
    return arr


@fill_doc
def robust_range(
    imgs: Any, mask: Any, *, quantiles: tuple[float, float] = QUANTILES
) -> tuple[float, float]:
    """Pooled robust intensity range of a set of images (see :func:`robust_scale`).

    Parameters
    ----------
    %(bm_images)s
    %(bm_mask)s
    quantiles : tuple of float, default=(0.5, 99.5)
        Percentiles (0-100) of all voxels inside the mask, pooled over the images.

    Returns
    -------
    (float, float)
        The values that :func:`robust_scale` maps to 0 and 1.
    """
    arr = _as_images(imgs)
    m = _as_mask(mask, arr.shape[1:])
    lo, hi = np.percentile(arr[:, m], quantiles)
    return float(lo), float(hi)


@fill_doc
def robust_scale(
    imgs: Any,
    mask: Any,
    *,
    value_range: tuple[float, float] | None = None,
    quantiles: tuple[float, float] = QUANTILES,
) -> np.ndarray:
    """Map a set of images to ``[0, 1]`` with one pooled, robust affine map.

    The pooled ``quantiles[0]``-th percentile of all voxels inside ``mask`` (over every
    image, :func:`robust_range`) goes to 0 and the pooled ``quantiles[1]``-th to 1; values
    are clipped to ``[0, 1]`` and voxels outside the mask set to 0. Because the map is
    shared, relative differences between the images are kept; because it is affine and
    fitted on the images, the units a method outputs in do not matter (scaling every image
    by ``a > 0`` and adding ``b`` gives the same result).

    Parameters
    ----------
    %(bm_images)s
    %(bm_mask)s
    value_range : tuple of float, default=None
        ``(low, high)`` mapped to 0 and 1, e.g. the :func:`robust_range` of a method's
        outputs on the training sites, to put other outputs of the same method on the
        same scale. Default: the robust range of ``imgs``.
    quantiles : tuple of float, default=(0.5, 99.5)
        Percentiles (0-100) mapped to 0 and 1 when ``value_range`` is None.

    Returns
    -------
    ndarray of shape (n_images, i, j, k), float32
        Scaled images.
    """
    arr = _as_images(imgs)
    m = _as_mask(mask, arr.shape[1:])
    if value_range is None:
        lo, hi = robust_range(arr, m, quantiles=quantiles)
    else:
        lo, hi = (float(v) for v in value_range)
    span = hi - lo
    if not span > 0:
        span = max(abs(hi), 1.0)  # constant images: keep them finite
    out = (arr - np.float32(lo)) / np.float32(span)
    np.clip(out, 0.0, 1.0, out=out)
    out[:, ~m] = 0.0
    return out
