"""Common metrics that score harmonized images, whatever method produced them.

Every metric takes plain arrays: images ``(n_images, i, j, k)``, one brain ``mask``
``(i, j, k)`` shared by all images (e.g. the voxels inside every subject's brain), and
per-image labels (sites, subjects, ages). Names say the direction: ``*_score`` is higher
is better, ``*_error`` lower is better; :data:`METRICS` lists every metric the benchmark
reports with its direction.

The common intensity scale
--------------------------
Methods output images in different units (a reference site's scale, z-scores, a network's
normalized range...), and raw images differ in scale between sites. Every image metric
therefore first applies **one rule to every method**, :func:`robust_scale`: a method's
images are mapped to ``[0, 1]`` by a single affine map, the pooled 0.5th percentile of all
their voxels inside the mask going to 0 and the pooled 99.5th percentile to 1
(:func:`robust_range`), then clipped to ``[0, 1]`` (voxels outside the mask are 0). The
map is common to all the images scored, so differences *between* images (a site's global
scale, contrast, bias) stay visible, while the arbitrary units of a method do not matter;
ground-truth images are scaled the same way, separately. By default the range is pooled
over the images given to the metric; :func:`harmonix.benchmark.run_benchmark` fits it on a
method's outputs for the training sites and passes it (``value_range``) to every metric,
unseen sites included, except the scale-free within-site distance correlation. SSIM then
uses ``data_range=1``.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats
from skimage.measure import block_reduce
from skimage.metrics import structural_similarity
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error
from sklearn.model_selection import (
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "METRICS",
    "brain_age_error",
    "distance_correlation_score",
    "gm_age_correlation",
    "gm_volumes",
    "masked_ssim",
    "measure_cost",
    "robust_range",
    "robust_scale",
    "site_predictability",
    "traveling_subject_ssim_score",
    "truth_ssim_score",
]

#: Percentiles of the brain voxels mapped to 0 and 1 by :func:`robust_scale`.
QUANTILES = (0.5, 99.5)

#: Every metric reported by :func:`harmonix.benchmark.run_benchmark`:
#: name -> (direction, one-line description). Direction is ``"higher"`` or ``"lower"``.
METRICS: dict[str, tuple[str, str]] = {
    "traveling_ssim_score": (
        "higher",
        "3-D SSIM in the mask between one subject's harmonized images at different sites",
    ),
    "truth_ssim_score": (
        "higher",
        "3-D SSIM in the mask between each harmonized image and its clean reference rendering",
    ),
    "distance_correlation_score": (
        "higher",
        "Spearman correlation of within-site inter-subject distances before vs after",
    ),
    "site_predictability": (
        "lower",
        "balanced accuracy of a subject-grouped CV site classifier (chance = 1/n_sites)",
    ),
    "brain_age_error": (
        "lower",
        "subject-grouped CV mean absolute error (years) of a Ridge brain-age model",
    ),
    "gm_age_correlation": (
        "lower",
        "Pearson r of GM volume (3-class k-means) with age; more negative = atrophy kept",
    ),
    "fit_seconds": ("lower", "wall-clock seconds of fit"),
    "fit_peak_mb": ("lower", "peak memory increase during fit (MB, see measure_cost)"),
    "transform_seconds": ("lower", "wall-clock seconds of transform per image"),
    "transform_peak_mb": ("lower", "peak memory increase during transform (MB)"),
}


# ----------------------------------------------------------------------------------------
# Input checks and the common intensity scale
# ----------------------------------------------------------------------------------------
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


def robust_range(
    imgs: Any, mask: Any, *, quantiles: tuple[float, float] = QUANTILES
) -> tuple[float, float]:
    """Pooled robust intensity range of a set of images (see :func:`robust_scale`).

    Parameters
    ----------
    imgs : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        Images on one grid.
    mask : ndarray of shape (i, j, k)
        Brain mask (non-zero = brain).
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
    imgs : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        Images on one grid.
    mask : ndarray of shape (i, j, k)
        Brain mask (non-zero = brain).
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


# ----------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------
def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(
        slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, s))
        for i, s in zip(idx, mask.shape)
    )


def masked_ssim(
    a: np.ndarray,
    b: np.ndarray,
    mask: np.ndarray,
    *,
    data_range: float = 1.0,
    win_size: int = 7,
) -> float:
    """Mean of the 3-D SSIM map of two images inside a mask.

    The map is :func:`skimage.metrics.structural_similarity` with ``full=True`` (uniform
    ``win_size``-voxel window, sample covariance), computed on the mask's bounding box
    plus a margin of half a window so every averaged voxel sees its whole window.

    Parameters
    ----------
    a, b : ndarray of shape (i, j, k)
        Images already on a common scale (e.g. from :func:`robust_scale`).
    mask : ndarray of shape (i, j, k)
        Voxels whose SSIM values are averaged.
    data_range : float, default=1.0
        Dynamic range passed to SSIM (1 for images from :func:`robust_scale`).
    win_size : int, default=7
        Odd side of the SSIM window; every image axis must be at least this long.

    Returns
    -------
    float
        Mean SSIM inside the mask (1 for identical images).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(
            f"masked_ssim needs two 3-D images of one shape; got {a.shape}, {b.shape}."
        )
    m = _as_mask(mask, a.shape)
    box = _bbox(m, win_size // 2 + 1)
    if min(a[box].shape) < win_size:  # tiny images: use the whole grid
        box = tuple(slice(None) for _ in a.shape)
    _, smap = structural_similarity(
        a[box], b[box], data_range=data_range, win_size=win_size, full=True
    )
    return float(smap[m[box]].mean())


def traveling_subject_ssim_score(
    imgs: Any,
    subjects: Any,
    sites: Any,
    mask: Any,
    *,
    include: Any = None,
    value_range: tuple[float, float] | None = None,
    win_size: int = 7,
    return_pairs: bool = False,
) -> float | tuple[float, list[tuple[int, int, float]]]:
    """Traveling-subject SSIM: do one subject's images look alike at every site?

    All images are put on one scale (:func:`robust_scale`); then for every subject and
    every pair of its images from *different* sites, the SSIM inside the mask
    (:func:`masked_ssim`, ``data_range=1``) is computed. The score is the mean over all
    such (subject, site pair) pairs.

    Parameters
    ----------
    imgs : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        Harmonized images.
    subjects : array-like of shape (n_images,)
        Subject of each image.
    sites : array-like of shape (n_images,)
        Site of each image.
    mask : ndarray of shape (i, j, k)
        Brain mask common to the images.
    include : array-like of bool, shape (n_images,), default=None
        Score only the pairs that contain at least one included image (e.g. the images of
        unseen sites, compared with the same subjects' images at any other site). All
        pairs by default.
    value_range : tuple of float, default=None
        Intensity range mapped to ``[0, 1]`` (:func:`robust_scale`); default: the pooled
        robust range of ``imgs``.
    win_size : int, default=7
        SSIM window.
    return_pairs : bool, default=False
        Also return ``(index_a, index_b, ssim)`` for each pair.

    Returns
    -------
    float or (float, list of tuple)
        Mean SSIM (NaN when no subject has images at two sites).
    """
    arr = robust_scale(imgs, mask, value_range=value_range)
    n = arr.shape[0]
    subjects = _as_labels(subjects, n, "subjects")
    sites = _as_labels(sites, n, "sites")
    inc = np.ones(n, bool) if include is None else _as_labels(include, n, "include").astype(bool)
    m = _as_mask(mask, arr.shape[1:])
    pairs = []
    for subject in dict.fromkeys(subjects.tolist()):
        idx = np.flatnonzero(subjects == subject)
        for i, j in combinations(idx.tolist(), 2):
            if sites[i] == sites[j] or not (inc[i] or inc[j]):
                continue
            pairs.append((i, j, masked_ssim(arr[i], arr[j], m, win_size=win_size)))
    score = float(np.mean([p[2] for p in pairs])) if pairs else float("nan")
    return (score, pairs) if return_pairs else score


def truth_ssim_score(
    imgs: Any,
    truth: Any,
    mask: Any,
    *,
    value_range: tuple[float, float] | None = None,
    truth_range: tuple[float, float] | None = None,
    win_size: int = 7,
) -> float:
    """SSIM of each harmonized image against its ground truth, averaged over images.

    ``imgs`` and ``truth`` are each put on one scale by :func:`robust_scale` (separately:
    the truth's units need not be the method's), then compared image by image with
    :func:`masked_ssim`.

    Parameters
    ----------
    imgs : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        Harmonized images.
    truth : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        The ideal output of each image (e.g. the subject rendered clean at the reference
        site, ``make_multisite(...).truth``).
    mask : ndarray of shape (i, j, k)
        Brain mask.
    value_range : tuple of float, default=None
        Intensity range mapped to ``[0, 1]`` (:func:`robust_scale`); default: the pooled
        robust range of ``imgs``.
    truth_range : tuple of float, default=None
        The same for ``truth``.
    win_size : int, default=7
        SSIM window.

    Returns
    -------
    float
        Mean SSIM over images.
    """
    a = robust_scale(imgs, mask, value_range=value_range)
    t = robust_scale(truth, mask, value_range=truth_range)
    if a.shape != t.shape:
        raise ValueError(f"imgs {a.shape} and truth {t.shape} must have the same shape.")
    m = _as_mask(mask, a.shape[1:])
    return float(np.mean([masked_ssim(x, y, m, win_size=win_size) for x, y in zip(a, t)]))


# ----------------------------------------------------------------------------------------
# Inter-subject distances
# ----------------------------------------------------------------------------------------
def _pairwise_mad(arr: np.ndarray, m: np.ndarray) -> np.ndarray:
    vox = arr[:, m]
    return np.array(
        [np.abs(vox[i] - vox[j]).mean() for i, j in combinations(range(len(vox)), 2)]
    )


def distance_correlation_score(
    before: Any,
    after: Any,
    sites: Any,
    mask: Any,
    *,
    method: str = "spearman",
    before_range: tuple[float, float] | None = None,
    value_range: tuple[float, float] | None = None,
) -> float:
    """Are inter-subject differences within a site kept by harmonization?

    ``before`` and ``after`` are each put on one scale (:func:`robust_scale`). Within each
    site, the distance between two subjects is the mean absolute voxel difference inside
    the mask; the score is the correlation between the distances before and after
    harmonization, averaged over the sites that have at least 3 images (3 pairs). An
    increasing affine intensity map of all images scores exactly 1. The score is
    insensitive to a site's global intensity scale (other metrics judge that), so by
    default each set is scaled by its own pooled range.

    Parameters
    ----------
    before : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        Images before harmonization.
    after : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        The same images after harmonization, in the same order.
    sites : array-like of shape (n_images,)
        Site of each image.
    mask : ndarray of shape (i, j, k)
        Brain mask.
    method : {"spearman", "pearson"}, default="spearman"
        Rank correlation (robust to a monotone change of the distance scale) or linear.
    before_range, value_range : tuple of float, default=None
        Intensity ranges mapped to ``[0, 1]`` for ``before`` and ``after``
        (:func:`robust_scale`); default: the pooled robust range of each.

    Returns
    -------
    float
        Mean correlation over sites (NaN when no site has 3 images with distinct
        distances).
    """
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}.")
    b = robust_scale(before, mask, value_range=before_range)
    a = robust_scale(after, mask, value_range=value_range)
    if a.shape != b.shape:
        raise ValueError(f"before {b.shape} and after {a.shape} must have the same shape.")
    sites = _as_labels(sites, len(a), "sites")
    m = _as_mask(mask, a.shape[1:])
    corr = stats.spearmanr if method == "spearman" else stats.pearsonr
    values = []
    for site in dict.fromkeys(sites.tolist()):
        idx = np.flatnonzero(sites == site)
        if len(idx) < 3:
            continue
        db, da = _pairwise_mad(b[idx], m), _pairwise_mad(a[idx], m)
        if np.ptp(db) == 0 or np.ptp(da) == 0:  # constant distances: undefined
            continue
        values.append(float(corr(db, da)[0]))
    return float(np.mean(values)) if values else float("nan")


# ----------------------------------------------------------------------------------------
# Site predictability
# ----------------------------------------------------------------------------------------
def _histograms(scaled: np.ndarray, m: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    feats = np.empty((len(scaled), n_bins))
    for i, img in enumerate(scaled):
        counts, _ = np.histogram(img[m], bins=edges)
        feats[i] = counts / counts.sum()
    return feats


def _grouped_splits(
    y_strat: np.ndarray | None,
    groups: np.ndarray | None,
    n_splits: int,
    random_state: Any,
) -> list[tuple[np.ndarray, np.ndarray]]:
    n = len(y_strat) if y_strat is not None else len(groups)
    x = np.zeros((n, 1))
    seed = None if random_state is None else np.random.default_rng(random_state).integers(2**31)
    if groups is not None:
        n_splits = min(n_splits, len(np.unique(groups)))
        if n_splits < 2:
            raise ValueError("Cross-validation needs at least 2 subjects (groups).")
        if y_strat is not None:
            cv = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
            return list(cv.split(x, y_strat, groups))
        return list(GroupKFold(n_splits, shuffle=True, random_state=seed).split(x, groups=groups))
    if y_strat is not None:
        n_splits = min(n_splits, int(np.unique(y_strat, return_counts=True)[1].min()))
        if n_splits < 2:
            raise ValueError("Cross-validation needs at least 2 images per site.")
        return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(x, y_strat))
    n_splits = min(n_splits, n)
    return list(KFold(n_splits, shuffle=True, random_state=seed).split(x))


def site_predictability(
    imgs: Any,
    sites: Any,
    mask: Any,
    groups: Any = None,
    *,
    n_bins: int = 64,
    n_splits: int = 5,
    value_range: tuple[float, float] | None = None,
    random_state: Any = None,
) -> float:
    """How well can a classifier tell the site from the intensity histogram? Lower is better.

    Features: the 64-bin normalized histogram of each image's voxels inside the mask, on
    the common scale of :func:`robust_scale` (so a site's global scale is visible).
    Classifier: standardization + logistic regression. Cross-validation: stratified by
    site and grouped by subject (a subject's images at other sites never help predict its
    own), predictions pooled over folds. Chance is ``1 / n_sites``.

    Parameters
    ----------
    imgs : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        Harmonized images.
    sites : array-like of shape (n_images,)
        Site labels (the target).
    mask : ndarray of shape (i, j, k)
        Brain mask.
    groups : array-like of shape (n_images,), default=None
        Subject of each image; folds never split a subject.
    n_bins : int, default=64
        Histogram bins on ``[0, 1]``.
    n_splits : int, default=5
        Folds (reduced to the number of subjects when fewer).
    value_range : tuple of float, default=None
        Intensity range mapped to ``[0, 1]`` (:func:`robust_scale`); default: the pooled
        robust range of ``imgs``.
    random_state : int, numpy Generator or None, default=None
        Seeds the fold shuffling.

    Returns
    -------
    float
        Balanced accuracy of the pooled out-of-fold predictions.
    """
    arr = robust_scale(imgs, mask, value_range=value_range)
    y = _as_labels(sites, len(arr), "sites").astype(str)
    if len(np.unique(y)) < 2:
        raise ValueError("site_predictability needs images from at least 2 sites.")
    g = None if groups is None else _as_labels(groups, len(arr), "groups")
    X = _histograms(arr, _as_mask(mask, arr.shape[1:]), n_bins)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    pred = np.empty_like(y)
    for train, test in _grouped_splits(y, g, n_splits, random_state):
        if len(np.unique(y[train])) < 2:
            pred[test] = y[train][0]
            continue
        pred[test] = clone(model).fit(X[train], y[train]).predict(X[test])
    return float(balanced_accuracy_score(y, pred))


# ----------------------------------------------------------------------------------------
# Biology: brain age and grey-matter volume
# ----------------------------------------------------------------------------------------
def _downsample_factor(n_voxels: int, target: int = 4000) -> int:
    return max(1, int(round((n_voxels / target) ** (1.0 / 3.0))))


def _brain_age_features(scaled: np.ndarray, m: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return scaled[:, m].astype(np.float64)
    block = (factor,) * 3
    keep = block_reduce(m.astype(np.float32), block, np.mean) > 0.5
    feats = [block_reduce(img, block, np.mean)[keep] for img in scaled]
    return np.asarray(feats, dtype=np.float64)


def _ridge_path(
    X: np.ndarray, y: np.ndarray, X_test: np.ndarray, alphas: np.ndarray
) -> np.ndarray:
    """Ridge predictions (intercept unpenalized) for several penalties, via one SVD.

    Returns an array of shape (n_test, n_alphas).
    """
    x_mean, y_mean = X.mean(axis=0), y.mean()
    u, s, vt = np.linalg.svd(X - x_mean, full_matrices=False)
    uty = u.T @ (y - y_mean)
    shrink = s[:, None] / (s[:, None] ** 2 + alphas[None, :])  # (k, n_alphas)
    proj = (X_test - x_mean) @ vt.T  # (n_test, k)
    return y_mean + proj @ (shrink * uty[:, None])


def _select_alpha(X: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas: np.ndarray) -> float:
    """Penalty with the lowest subject-grouped CV mean absolute error (3 folds)."""
    n_groups = len(np.unique(groups))
    if n_groups < 2 or len(alphas) == 1:
        return float(np.median(alphas))
    errors = np.zeros(len(alphas))
    for tr, te in GroupKFold(min(3, n_groups)).split(X, y, groups):
        errors += np.abs(_ridge_path(X[tr], y[tr], X[te], alphas) - y[te, None]).sum(axis=0)
    return float(alphas[int(np.argmin(errors))])


def brain_age_error(
    imgs: Any,
    ages: Any,
    mask: Any,
    groups: Any = None,
    *,
    train: Any = None,
    n_splits: int = 5,
    downsample: int | None = None,
    alphas: Sequence[float] = tuple(np.logspace(-2, 5, 8)),
    value_range: tuple[float, float] | None = None,
    random_state: Any = None,
) -> float:
    """Cross-validated brain-age mean absolute error (years). Lower is better.

    Images are put on one scale (:func:`robust_scale`), block-averaged by ``downsample``
    (voxels mostly inside the mask kept) and fed to a Ridge regression (closed form by
    SVD) whose penalty is chosen by an inner 3-fold subject-grouped CV (mean absolute
    error). Predictions are clipped to the training ages' range, so an image far from
    anything seen in training (e.g. an unharmonized site on another intensity scale) costs
    at most the age range instead of an unbounded extrapolation. Outer folds are grouped by
    subject: a test subject is never in the training set, even scanned at another site.

    With ``train``, the model learns only from the ``train`` images of the training
    subjects and is tested on the other images of the held-out subjects (e.g. learn on
    harmonized seen sites, test on harmonized unseen sites).

    Parameters
    ----------
    imgs : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        Harmonized images.
    ages : array-like of shape (n_images,)
        Target ages.
    mask : ndarray of shape (i, j, k)
        Brain mask.
    groups : array-like of shape (n_images,), default=None
        Subject of each image.
    train : array-like of bool, shape (n_images,), default=None
        Images the model may learn from; the others are the test images. All images play
        both roles by default.
    n_splits : int, default=5
        Outer folds (reduced to the number of subjects when fewer).
    downsample : int, default=None
        Block size; by default the smallest integer bringing the mask to about 4,000
        features (2 at 4 mm, 4 at 2 mm for the MNI brain).
    alphas : sequence of float, default=10**-2 ... 10**5
        Ridge penalties searched by the inner CV.
    value_range : tuple of float, default=None
        Intensity range mapped to ``[0, 1]`` (:func:`robust_scale`); default: the pooled
        robust range of ``imgs``.
    random_state : int, numpy Generator or None, default=None
        Seeds the fold shuffling.

    Returns
    -------
    float
        Mean absolute error over all test predictions.
    """
    arr = robust_scale(imgs, mask, value_range=value_range)
    n = len(arr)
    y = np.asarray(ages, dtype=np.float64)
    if y.shape != (n,) or not np.isfinite(y).all():
        raise ValueError(f"ages must be {n} finite numbers, one per image.")
    g = np.arange(n) if groups is None else _as_labels(groups, n, "groups")
    is_train = np.ones(n, bool) if train is None else _as_labels(train, n, "train").astype(bool)
    is_test = ~is_train if train is not None else np.ones(n, bool)
    if not is_train.any() or not is_test.any():
        raise ValueError("brain_age_error needs at least one training and one test image.")
    m = _as_mask(mask, arr.shape[1:])
    factor = downsample or _downsample_factor(int(m.sum()))
    X = _brain_age_features(arr, m, factor)
    alphas = np.asarray(alphas, dtype=np.float64)
    truth, pred = [], []
    for tr, te in _grouped_splits(None, g, n_splits, random_state):
        tr, te = tr[is_train[tr]], te[is_test[te]]
        if len(tr) == 0 or len(te) == 0:
            continue
        alpha = _select_alpha(X[tr], y[tr], g[tr], alphas)
        truth.append(y[te])
        fold_pred = _ridge_path(X[tr], y[tr], X[te], np.array([alpha]))[:, 0]
        pred.append(np.clip(fold_pred, y[tr].min(), y[tr].max()))
    if not truth:
        raise ValueError("No fold had both training and test images; check groups/train.")
    return float(mean_absolute_error(np.concatenate(truth), np.concatenate(pred)))


def _kmeans_1d(values: np.ndarray, n_classes: int = 3, max_iter: int = 100) -> np.ndarray:
    """Lloyd's k-means on 1-D data; returns the sorted class thresholds."""
    x = np.sort(values)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    centers = np.quantile(x, (np.arange(n_classes) + 0.5) / n_classes)
    cuts = np.zeros(n_classes - 1, dtype=np.int64)
    for it in range(max_iter):
        thresholds = (centers[:-1] + centers[1:]) / 2
        new_cuts = np.searchsorted(x, thresholds, side="right")
        if it > 0 and np.array_equal(new_cuts, cuts):
            break
        cuts = new_cuts
        bounds = np.concatenate([[0], cuts, [len(x)]])
        counts = np.diff(bounds)
        sums = csum[bounds[1:]] - csum[bounds[:-1]]
        centers = np.where(counts > 0, sums / np.maximum(counts, 1), centers)
    return (centers[:-1] + centers[1:]) / 2


def gm_volumes(imgs: Any, mask: Any, *, voxel_volume: float = 1.0) -> np.ndarray:
    """Grey-matter volume of each image from a 3-class intensity segmentation.

    The voxels inside the mask of each image are clustered into 3 classes by 1-D k-means
    (Lloyd's algorithm on the intensities, initialized at the 1/6, 1/2 and 5/6
    quantiles); grey matter is the middle class (T1: CSF < GM < WM). The segmentation is
    per image, so the result does not depend on the image's intensity units.

    Intensity alone separates tissues only when the contrast allows it: with a weak GM/WM
    contrast (GM/WM intensity ratio above about 0.8) or heavy partial volume (4 mm
    voxels) the middle class mixes tissues and the volume can even move opposite to the
    true GM volume. Compare with the same measure on ground-truth images.

    Parameters
    ----------
    imgs : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        Images.
    mask : ndarray of shape (i, j, k)
        Brain mask.
    voxel_volume : float, default=1.0
        Volume of one voxel (e.g. mm^3); 1 gives voxel counts.

    Returns
    -------
    ndarray of shape (n_images,)
        GM volume of each image (NaN for an image with fewer than 3 distinct values).
    """
    arr = _as_images(imgs)
    m = _as_mask(mask, arr.shape[1:])
    out = np.empty(len(arr))
    for i, img in enumerate(arr):
        vals = img[m].astype(np.float64)
        if np.unique(np.quantile(vals, [1 / 6, 1 / 2, 5 / 6])).size < 3:
            out[i] = np.nan
            continue
        low, high = _kmeans_1d(vals)
        out[i] = np.count_nonzero((vals > low) & (vals <= high)) * voxel_volume
    return out


def gm_age_correlation(imgs: Any, ages: Any, mask: Any) -> float:
    """Pearson correlation of GM volume (:func:`gm_volumes`) with age.

    Grey matter shrinks with age, so the expected value is negative; a harmonization that
    keeps the biology keeps it as negative as in the unharmonized (or ground-truth)
    images.

    Parameters
    ----------
    imgs : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        Images.
    ages : array-like of shape (n_images,)
        Ages.
    mask : ndarray of shape (i, j, k)
        Brain mask.

    Returns
    -------
    float
        Pearson r (NaN when volumes or ages are constant).
    """
    vols = gm_volumes(imgs, mask)
    y = np.asarray(ages, dtype=np.float64)
    if y.shape != vols.shape:
        raise ValueError(f"ages must have one entry per image ({len(vols)}).")
    ok = np.isfinite(vols)
    if ok.sum() < 3 or np.ptp(vols[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(stats.pearsonr(vols[ok], y[ok])[0])


# ----------------------------------------------------------------------------------------
# Cost
# ----------------------------------------------------------------------------------------
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


class _PeakRSS:
    """Sample the resident set size in a thread; ``peak`` = max - value at start."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> _PeakRSS:
        self._start = _rss_bytes() or 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None:
                self.peak = max(self.peak, rss - self._start)
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        rss = _rss_bytes()
        if rss is not None:
            self.peak = max(self.peak, rss - self._start)


def measure_cost(func: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """Call ``func(*args, **kwargs)``, timing it and recording its peak memory.

    Memory is the peak **resident set size above its value at the call's start**, sampled
    every 5 ms from ``/proc/self/statm`` (Linux; it includes PyTorch and other native
    allocations). Memory the process already held and reuses does not count, so the value
    is a lower bound of the memory the call needs. Where ``/proc`` is absent (macOS,
    Windows), :mod:`tracemalloc`'s peak of Python and NumPy allocations is used instead.

    Parameters
    ----------
    func : callable
        What to run.
    *args, **kwargs
        Its arguments.

    Returns
    -------
    result : object
        What ``func`` returned.
    seconds : float
        Wall-clock duration.
    peak_mb : float
        Peak memory increase in MB (10**6 bytes).
    """
    if _rss_bytes() is not None:
        with _PeakRSS() as probe:
            t0 = time.perf_counter()
            result = func(*args, **kwargs)
            seconds = time.perf_counter() - t0
        return result, seconds, probe.peak / 1e6
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        t0 = time.perf_counter()
        result = func(*args, **kwargs)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not tracing:
            tracemalloc.stop()
    return result, seconds, max(peak, 0) / 1e6
