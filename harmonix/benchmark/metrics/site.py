"""Site predictability: how much site information remains after harmonization.

Two classifiers of the site, each cross-validated with subjects grouped (a subject's images
at other sites never help predict its own) and scored by balanced accuracy, whose chance
level is ``1 / n_sites`` (:func:`site_chance_level`); lower is better, but the floor is
chance only for images that carry no site signal at all (the benchmark's oracle row):

* :func:`site_predictability_error` reads the features intensity harmonization targets:
  per-image median-normalized intensity quantiles of each tissue class and regional means;
* :func:`site_histogram_error` reads the 64-bin intensity histogram on the method's common
  scale; it also sees noise and blur, which no intensity method removes, so it saturates
  near 1 on sites that differ in resolution.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from harmonix._docs import fill_doc
from harmonix.benchmark._folds import grouped_splits, subject_groups
from harmonix.benchmark.metrics.scale import _as_labels, _as_mask, robust_scale, table_features
from harmonix.benchmark.metrics.tissue import Tissues, segment_tissues

__all__ = [
    "site_chance_level",
    "site_histogram_error",
    "site_predictability",
    "site_predictability_error",
]


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over the classes present in ``y`` of the fraction predicted right (fast).

    The value of :func:`sklearn.metrics.balanced_accuracy_score`, without its input
    checks (the benchmark's bootstrap calls it thousands of times).
    """
    y, pred = np.asarray(y), np.asarray(pred)
    classes = np.unique(y)
    return float(np.mean([np.mean(pred[y == c] == c) for c in classes]))


def site_chance_level(sites: Any) -> float:
    """Balanced accuracy of a classifier that ignores the images: ``1 / n_sites``."""
    return 1.0 / len(np.unique(np.asarray(sites)))


def _histograms(scaled: np.ndarray, m: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    feats = np.empty((len(scaled), n_bins))
    for i, img in enumerate(scaled):
        counts, _ = np.histogram(img[m], bins=edges)
        feats[i] = counts / counts.sum()
    return feats


def _tissue_features(tissues: Tissues, quantiles: Any, regions: int) -> np.ndarray:
    """Class quantiles of normalized intensity and regional mean normalized intensity."""
    m = tissues.mask
    bbox = [np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    coords = np.nonzero(m)
    region = np.zeros(int(m.sum()), np.int64)
    for ax, idx in enumerate(bbox):
        edges = np.linspace(idx.min(), idx.max() + 1, max(regions, 1) + 1)[1:-1]
        region = region * regions + np.searchsorted(edges, coords[ax], side="right")
    feats = []
    for labels, vals in zip(tissues.labels, tissues.normalized):
        row = []
        for c in range(3):
            cls = vals[labels == c]
            row.extend(np.quantile(cls, quantiles) if len(cls) else [0.0] * len(quantiles))
        if regions:
            sums = np.bincount(region, weights=vals, minlength=regions**3)
            counts = np.bincount(region, minlength=regions**3)
            row.extend(sums / np.maximum(counts, 1))
        feats.append(row)
    return np.asarray(feats, dtype=np.float64)


def site_predictions(
    X: np.ndarray, sites: Any, groups: Any, *, n_splits: int = 5, random_state: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold site predictions of a standardized logistic regression on ``X``.

    Returns ``(y, predicted)`` as string arrays, one entry per row of ``X``.
    """
    y = _as_labels(sites, len(X), "sites").astype(str)
    if len(np.unique(y)) < 2:
        raise ValueError("Site predictability needs images from at least 2 sites.")
    g = None if groups is None else _as_labels(groups, len(X), "groups")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    pred = np.empty_like(y)
    for train, test in grouped_splits(y, g, n_splits, random_state):
        if len(np.unique(y[train])) < 2:
            pred[test] = y[train][0]
            continue
        pred[test] = clone(model).fit(X[train], y[train]).predict(X[test])
    return y, pred


def site_features(
    imgs: Any,
    mask: Any,
    *,
    kind: str = "tissue",
    quantiles: Any = (0.5,),
    regions: int = 0,
    n_bins: int = 64,
    value_range: tuple[float, float] | None = None,
    tissues: Tissues | None = None,
) -> np.ndarray:
    """Per-image features of :func:`site_predictability_error` or :func:`site_histogram_error`.

    ``kind="tissue"``: the ``quantiles`` of each tissue class's intensities
    (:func:`~harmonix.benchmark.metrics.tissue.segment_tissues`), standardized per image by the
    median and interquartile range, and, when ``regions > 0``, the mean standardized
    intensity of ``regions ** 3`` blocks of the mask's bounding box. ``kind="histogram"``: the
    ``n_bins``-bin normalized histogram on the common scale (:func:`robust_scale`).
    """
    if kind == "histogram":
        arr = robust_scale(imgs, mask, value_range=value_range)
        return _histograms(arr, _as_mask(mask, arr.shape[1:]), n_bins)
    if kind != "tissue":
        raise ValueError(f"kind must be 'tissue' or 'histogram', got {kind!r}.")
    if tissues is None:
        tissues = segment_tissues(robust_scale(imgs, mask, value_range=value_range), mask)
    return _tissue_features(tissues, np.asarray(quantiles, dtype=float), regions)


@fill_doc
def site_predictability_error(
    imgs: Any,
    sites: Any,
    mask: Any,
    groups: Any = None,
    *,
    quantiles: Any = (0.5,),
    regions: int = 0,
    n_splits: int = 5,
    value_range: tuple[float, float] | None = None,
    random_state: Any = None,
    tissues: Tissues | None = None,
) -> float:
    """Site information in the intensities harmonization targets. Lower is better.

    Features (:func:`site_features`, ``kind="tissue"``): each image is standardized by
    its median and interquartile range in the mask (so neither its units nor a global
    scale or offset matter); the ``quantiles`` of its CSF, GM and WM voxels (a per-image
    three-class segmentation; by default the three class medians, i.e. the tissue
    contrast) and optionally the mean of ``regions ** 3`` blocks of the mask (the site's
    bias field) describe it. With more features the classifier saturates: on the 2 mm
    synthetic sites, no harmonization, HM and WhiteStripe all score 1.0 with the 10-90th
    percentiles and octant means, while the class medians give none 1.0, HM 0.85.
    Classifier:
    standardization + logistic regression; cross-validation stratified by site and grouped
    by subject, predictions pooled over folds. Chance is ``1 / n_sites``; an image set
    without any site signal (every subject's images identical) scores about chance.

    A table of features ``(n_samples, n_features)`` (e.g. harmonized ROI volumes) is used
    as the classifier's features directly (``mask`` is then ignored).

    Parameters
    ----------
    %(bm_site_inputs)s
    quantiles : sequence of float, default=(0.5,)
        Quantiles (0-1) of each tissue class's normalized intensities.
    regions : int, default=0
        Blocks per axis for regional mean intensities (0: none; 2: octants).
    %(bm_n_splits)s
    value_range : tuple of float, default=None
        Intensity range mapped to ``[0, 1]`` (:func:`robust_scale`) before segmenting.
    %(bm_fold_seed)s
    %(bm_tissues)s

    Returns
    -------
    float
        Balanced accuracy of the pooled out-of-fold predictions.
    """
    X = table_features(imgs) if tissues is None else None
    if X is None:
        X = site_features(
            imgs,
            mask,
            quantiles=quantiles,
            regions=regions,
            value_range=value_range,
            tissues=tissues,
        )
    groups = subject_groups(groups, len(X), "site_predictability_error")
    y, pred = site_predictions(X, sites, groups, n_splits=n_splits, random_state=random_state)
    return balanced_accuracy(y, pred)


@fill_doc
def site_histogram_error(
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
    """How well a classifier tells the site from the intensity histogram. Lower is better.

    Features: the ``n_bins``-bin normalized histogram of each image's voxels inside the
    mask, on the common scale of :func:`robust_scale` (so a site's global scale is
    visible). Classifier and cross-validation as in :func:`site_predictability_error`.
    The histogram also shows noise and blur, which intensity methods do not remove.

    Parameters
    ----------
    %(bm_site_inputs)s
    n_bins : int, default=64
        Histogram bins on ``[0, 1]``.
    %(bm_n_splits)s
    %(bm_value_range)s
    %(bm_fold_seed)s

    Returns
    -------
    float
        Balanced accuracy of the pooled out-of-fold predictions.
    """
    X = site_features(imgs, mask, kind="histogram", n_bins=n_bins, value_range=value_range)
    groups = subject_groups(groups, len(X), "site_histogram_error")
    y, pred = site_predictions(X, sites, groups, n_splits=n_splits, random_state=random_state)
    return balanced_accuracy(y, pred)


def site_predictability(*args: Any, **kwargs: Any) -> float:
    """Deprecated alias of :func:`site_histogram_error` (renamed after harmonix 0.1.0).

    .. deprecated:: 0.1.1
       Metric names follow one rule (``*_score`` higher, ``*_error`` lower is better); use
       :func:`site_histogram_error`, or :func:`site_predictability_error` for the features
       intensity harmonization targets.
    """
    warnings.warn(
        "site_predictability is deprecated; use site_histogram_error (same values) or "
        "site_predictability_error (tissue-intensity features).",
        DeprecationWarning,
        stacklevel=2,
    )
    return site_histogram_error(*args, **kwargs)
