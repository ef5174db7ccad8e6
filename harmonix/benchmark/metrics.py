"""Common metrics that score harmonized images, whatever method produced them.

Every metric takes plain arrays: images ``(n_images, i, j, k)``, one brain ``mask``
``(i, j, k)`` shared by all images (e.g. the voxels inside every subject's brain), and
per-image labels (sites, subjects, ages). Each metric's key in :data:`METRICS` is the name
of its function, and the name says the direction: ``*_score`` is higher is better,
``*_error`` lower is better. :data:`METRICS` also lists *reference* values shown beside
them (chance level, the null brain-age model, the correlation of the true GM volumes with
age) and ``gm_age_correlation``, whose target is ``true_gm_age_correlation``.

This module holds the image-similarity metrics and re-exports the others: site
predictability (:mod:`harmonix.benchmark.site`), brain age and GM volume
(:mod:`harmonix.benchmark.biology`, on the segmentation of
:mod:`harmonix.benchmark.tissue`), cost (:mod:`harmonix.benchmark.cost`) and the common
scale (:mod:`harmonix.benchmark.scale`).

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

import warnings
from collections.abc import Iterable
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats
from skimage.metrics import structural_similarity

from harmonix._docs import fill_doc
from harmonix.benchmark.biology import (
    brain_age_error,
    brain_age_null_error,
    gm_age_correlation,
    gm_volumes,
    pearson,
    within_site_correlation,
)
from harmonix.benchmark.cost import measure_cost
from harmonix.benchmark.scale import (
    QUANTILES,
    _as_labels,
    _as_mask,
    robust_range,
    robust_scale,
)
from harmonix.benchmark.site import (
    site_chance_level,
    site_histogram_error,
    site_predictability,
    site_predictability_error,
)
from harmonix.benchmark.tissue import Tissues, segment_tissues

__all__ = [
    "METRICS",
    "METRIC_ALIASES",
    "QUANTILES",
    "Tissues",
    "brain_age_error",
    "brain_age_null_error",
    "distance_correlation_score",
    "gm_age_correlation",
    "gm_volumes",
    "masked_ssim",
    "measure_cost",
    "resolve_metric_names",
    "robust_range",
    "robust_scale",
    "segment_tissues",
    "site_chance_level",
    "site_histogram_error",
    "site_predictability",
    "site_predictability_error",
    "traveling_subject_ssim_score",
    "truth_ssim_score",
    "within_site_correlation",
]

#: Every value reported by :func:`harmonix.benchmark.run_benchmark`:
#: name -> (direction, one-line description). Direction: ``"higher"`` or ``"lower"`` is
#: better, ``"target"`` (closer to the reference named in the description is better) or
#: ``"reference"`` (not a score of the method: a value to read the others against).
METRICS: dict[str, tuple[str, str]] = {
    "traveling_subject_ssim_score": (
        "higher",
        "3-D SSIM in the mask between one subject's harmonized images at different sites",
    ),
    "truth_ssim_score": (
        "higher",
        "3-D SSIM in the mask between each harmonized image and its clean rendering at the "
        "reference site (no bias field or noise: even the oracle scores below 1)",
    ),
    "distance_correlation_score": (
        "higher",
        "Spearman correlation of within-site inter-subject distances before vs after",
    ),
    "site_predictability_error": (
        "lower",
        "balanced accuracy of a subject-grouped CV site classifier on tissue-class median "
        "intensities (per-image median/IQR standardized); floor: the oracle's, ~chance",
    ),
    "site_histogram_error": (
        "lower",
        "balanced accuracy of a subject-grouped CV site classifier on 64-bin histograms "
        "(also sees noise and blur)",
    ),
    "site_chance_level": ("reference", "chance level of the site classifiers (1/n_sites)"),
    "brain_age_error": (
        "lower",
        "subject-grouped CV mean absolute error (years) of a ridge brain-age model on "
        "regional tissue fractions",
    ),
    "brain_age_null_error": (
        "reference",
        "mean absolute error (years) of predicting the training folds' mean age",
    ),
    "gm_age_correlation": (
        "target",
        "within-site Pearson r of the segmented GM volume with age; best when equal to "
        "true_gm_age_correlation",
    ),
    "true_gm_age_correlation": (
        "reference",
        "the same correlation for the true GM volumes of the data set",
    ),
    "fit_seconds": ("lower", "wall-clock seconds of fit"),
    "fit_peak_mb": ("lower", "peak memory increase during fit (MB, see measure_cost)"),
    "transform_seconds": ("lower", "wall-clock seconds of transform per image"),
    "transform_peak_mb": ("lower", "peak memory increase during transform (MB)"),
}

#: Former metric names, still accepted (with a DeprecationWarning) where names are passed.
METRIC_ALIASES: dict[str, str] = {
    "traveling_ssim_score": "traveling_subject_ssim_score",
    "site_predictability": "site_histogram_error",
}


def resolve_metric_names(names: Iterable[str] | str) -> list[str]:
    """Current names of ``names``, mapping the former ones (:data:`METRIC_ALIASES`).

    Parameters
    ----------
    names : str or iterable of str
        Metric names, current or former.

    Returns
    -------
    list of str
        Current names, in the given order (unknown names are returned unchanged).
    """
    if isinstance(names, str):
        names = [names]
    out = []
    for name in names:
        if name in METRIC_ALIASES:
            warnings.warn(
                f"The metric {name!r} was renamed {METRIC_ALIASES[name]!r}; the old name "
                "will be removed in a future release.",
                DeprecationWarning,
                stacklevel=3,
            )
            name = METRIC_ALIASES[name]
        out.append(name)
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


@fill_doc
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
    %(bm_harmonized)s
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


@fill_doc
def truth_ssim_score(
    imgs: Any,
    truth: Any,
    mask: Any,
    *,
    value_range: tuple[float, float] | None = None,
    truth_range: tuple[float, float] | None = None,
    win_size: int = 7,
    return_values: bool = False,
) -> float | tuple[float, np.ndarray]:
    """SSIM of each harmonized image against its ground truth, averaged over images.

    ``imgs`` and ``truth`` are each put on one scale by :func:`robust_scale` (separately:
    the truth's units need not be the method's), then compared image by image with
    :func:`masked_ssim`.

    Parameters
    ----------
    %(bm_harmonized)s
    truth : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        The ideal output of each image (e.g. the subject rendered clean at the reference
        site, ``make_multisite(...).truth``).
    %(bm_mask2)s
    value_range : tuple of float, default=None
        Intensity range mapped to ``[0, 1]`` (:func:`robust_scale`); default: the pooled
        robust range of ``imgs``.
    truth_range : tuple of float, default=None
        The same for ``truth``.
    win_size : int, default=7
        SSIM window.
    return_values : bool, default=False
        Also return the SSIM of each image.

    Returns
    -------
    float or (float, ndarray)
        Mean SSIM over images.

    Notes
    -----
    The truth has the reference site's contrast, curve, blur and scale, but no bias field
    or noise, so it is not what any scan looks like: a perfect mapping to the reference
    site (each subject's own reference-site scan, the benchmark's oracle) scores below 1,
    and a method that also smooths noise can score above it. Use it to rank how close
    methods get to the reference *contrast*; the traveling-subject SSIM judges the site
    effect itself.
    """
    a = robust_scale(imgs, mask, value_range=value_range)
    t = robust_scale(truth, mask, value_range=truth_range)
    if a.shape != t.shape:
        raise ValueError(f"imgs {a.shape} and truth {t.shape} must have the same shape.")
    m = _as_mask(mask, a.shape[1:])
    values = np.array([masked_ssim(x, y, m, win_size=win_size) for x, y in zip(a, t)])
    score = float(values.mean())
    return (score, values) if return_values else score


# ----------------------------------------------------------------------------------------
# Inter-subject distances
# ----------------------------------------------------------------------------------------
def _distance_matrix(arr: np.ndarray, m: np.ndarray) -> np.ndarray:
    vox = arr[:, m]
    d = np.zeros((len(vox), len(vox)))
    for i, j in combinations(range(len(vox)), 2):
        d[i, j] = d[j, i] = np.abs(vox[i] - vox[j]).mean()
    return d


def site_distances(
    before: Any,
    after: Any,
    sites: Any,
    mask: Any,
    *,
    before_range: tuple[float, float] | None = None,
    value_range: tuple[float, float] | None = None,
) -> dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Inter-subject distances within each site, before and after harmonization.

    Returns ``{site: (index, d_before, d_after)}`` for the sites with at least 3 images:
    the images' indices and their mean-absolute-difference matrices on the common scale
    (see :func:`distance_correlation_score`).
    """
    b = robust_scale(before, mask, value_range=before_range)
    a = robust_scale(after, mask, value_range=value_range)
    if a.shape != b.shape:
        raise ValueError(f"before {b.shape} and after {a.shape} must have the same shape.")
    sites = _as_labels(sites, len(a), "sites")
    m = _as_mask(mask, a.shape[1:])
    out = {}
    for site in dict.fromkeys(sites.tolist()):
        idx = np.flatnonzero(sites == site)
        if len(idx) >= 3:
            out[site] = (idx, _distance_matrix(b[idx], m), _distance_matrix(a[idx], m))
    return out


def distance_correlation_from(
    distances: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    method: str = "spearman",
    keep: np.ndarray | None = None,
) -> float:
    """:func:`distance_correlation_score` from :func:`site_distances`.

    ``keep`` (image indices, repeats allowed, e.g. a bootstrap sample) restricts the pairs
    to those between two different draws of kept images; pairs of an image with itself
    are left out.
    """
    values = []
    for idx, db, da in distances.values():
        pos = np.arange(len(idx))
        if keep is not None:
            where = {v: k for k, v in enumerate(idx.tolist())}
            pos = np.array([where[i] for i in np.asarray(keep).tolist() if i in where], int)
        ii, jj = np.triu_indices(len(pos), 1)
        ii, jj = pos[ii], pos[jj]
        ii, jj = ii[ii != jj], jj[ii != jj]
        if len(ii) < 3 or np.ptp(db[ii, jj]) == 0 or np.ptp(da[ii, jj]) == 0:
            continue  # constant distances: undefined
        x, y = db[ii, jj], da[ii, jj]
        if method == "spearman":
            x, y = stats.rankdata(x), stats.rankdata(y)
        values.append(pearson(x, y))
    return float(np.mean(values)) if values else float("nan")


@fill_doc
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
    %(bm_mask2)s
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
    distances = site_distances(
        before, after, sites, mask, before_range=before_range, value_range=value_range
    )
    return distance_correlation_from(distances, method=method)
