"""Common metrics that score harmonized images, whatever method produced them.

Every metric takes plain arrays: images ``(n_images, i, j, k)``, one brain ``mask``
``(i, j, k)`` shared by all images (e.g. the voxels inside every subject's brain), and
per-image labels (sites, subjects, ages). Each metric's key in :data:`METRICS` is the name
of its function, and the name says the direction: ``*_score`` is higher is better,
``*_error`` lower is better. :data:`METRICS` also lists *reference* values shown beside
them (chance level, the null brain-age model, the correlation of the true GM volumes with
age, the true disease effect) and the *target* metrics (:data:`METRIC_TARGETS`):
``gm_age_correlation``, whose target is ``true_gm_age_correlation``, and
``disease_effect_error``, whose target is 0.

This module holds the image-similarity metrics and re-exports the others: site
predictability (:mod:`harmonix.benchmark.site`), brain age and GM volume
(:mod:`harmonix.benchmark.biology`), disease effects (:mod:`harmonix.benchmark.disease`,
on the segmentation of
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

Garbage scores worst
--------------------
Two outputs carry nothing of the inputs: one image for every input (e.g. the training
mean, :class:`~harmonix.benchmark.sanity.MeanImageHarmonizer`) and noise
(:class:`~harmonix.benchmark.sanity.NoiseHarmonizer`). Every metric gives them a number,
never n/a, and the metrics that can see them put them at their floor:
:func:`subject_specificity_score` 0, :func:`distance_correlation_score` 0 (equal distances
count as no difference kept), :func:`gm_age_correlation` 0 (equal volumes carry no age
information), :func:`brain_age_correlation_score` about 0 (predictions without age
information), :func:`brain_age_error` the null model's error (a biased method can do
worse: the error judges accuracy, not information). Some metrics cannot
see them, by design: a site classifier finds no site in either (chance, like the oracle),
and the traveling-subject SSIM scores one image for all as 1; noise scores about 0 on the
SSIMs, whose windows hold mask voxels only (:func:`masked_ssim`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from itertools import combinations
from typing import Any

import numpy as np
from scipy import ndimage, stats

from harmonix._docs import fill_doc
from harmonix.benchmark.biology import (
    brain_age_correlation_score,
    brain_age_error,
    brain_age_null_error,
    gm_age_correlation,
    gm_volumes,
    pearson,
    within_site_correlation,
)
from harmonix.benchmark.cost import measure_cost
from harmonix.benchmark.disease import disease_auc_score, disease_effect, disease_effect_error
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
    "METRIC_KINDS",
    "METRIC_TARGETS",
    "QUANTILES",
    "Tissues",
    "brain_age_correlation_score",
    "brain_age_error",
    "brain_age_null_error",
    "disease_auc_score",
    "disease_effect",
    "disease_effect_error",
    "distance_correlation_score",
    "gm_age_correlation",
    "gm_volumes",
    "masked_ssim",
    "measure_cost",
    "metric_kind",
    "resolve_metric_names",
    "robust_range",
    "robust_scale",
    "segment_tissues",
    "site_chance_level",
    "site_histogram_error",
    "site_predictability",
    "site_predictability_error",
    "subject_specificity_score",
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
        "3-D SSIM (in-mask windows) between one subject's harmonized images at different "
        "sites; blind to a method returning one image for all (scores 1)",
    ),
    "subject_specificity_score": (
        "higher",
        "how much more a subject's images at two sites correlate than two subjects' "
        "images there, scaled so that the oracle scores 1 and a mean image or noise 0",
    ),
    "truth_ssim_score": (
        "higher",
        "3-D SSIM in the mask between each harmonized image and its clean rendering at the "
        "reference site (no bias field or noise: even the oracle scores below 1)",
    ),
    "distance_correlation_score": (
        "higher",
        "Spearman correlation of within-site inter-subject distances before vs after "
        "(0 when the distances after are all equal)",
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
    "brain_age_correlation_score": (
        "higher",
        "Pearson r of the brain-age model's predictions with age, both relative to the "
        "training folds' mean age (0: no age information; blind to a bias)",
    ),
    "brain_age_null_error": (
        "reference",
        "mean absolute error (years) of predicting the training folds' mean age",
    ),
    "gm_age_correlation": (
        "target",
        "within-site Pearson r of the segmented GM volume with age (0 for a site whose "
        "volumes are all equal); best when equal to true_gm_age_correlation",
    ),
    "true_gm_age_correlation": (
        "reference",
        "the same correlation for the true GM volumes of the data set",
    ),
    "disease_effect_error": (
        "target",
        "measured minus true standardized effect (d, adjusted for the other covariates) of "
        "diagnosis on the disease region's GM volume, all sites pooled; 0 is the truth, "
        "negative: part of the effect lost",
    ),
    "true_disease_effect": (
        "reference",
        "the standardized effect of diagnosis on the true regional GM volumes",
    ),
    "disease_auc_score": (
        "higher",
        "subject-grouped CV AUC of a logistic regression of diagnosis on regional tissue "
        "fractions; site confounding inflates it where site effects remain: compare with "
        "the oracle's",
    ),
    "fit_seconds": ("lower", "wall-clock seconds of fit"),
    "fit_peak_mb": ("lower", "peak memory increase during fit (MB, see measure_cost)"),
    "transform_seconds": ("lower", "wall-clock seconds of transform per image"),
    "transform_peak_mb": ("lower", "peak memory increase during transform (MB)"),
}

#: What each metric of :data:`METRICS` judges, for reports and checks that group them:
#: ``"traveling"`` (a subject's images across sites), ``"truth"`` (closeness to the ground
#: truth of synthetic data), ``"distance"`` (differences between subjects kept), ``"site"``
#: (site information left), ``"biology"`` (age effects kept), ``"cost"`` and
#: ``"reference"``. A metric missing here is of kind ``"other"``
#: (:func:`metric_kind`).
METRIC_KINDS: dict[str, str] = {
    "traveling_subject_ssim_score": "traveling",
    "subject_specificity_score": "traveling",
    "truth_ssim_score": "truth",
    "distance_correlation_score": "distance",
    "site_predictability_error": "site",
    "site_histogram_error": "site",
    "site_chance_level": "reference",
    "brain_age_error": "biology",
    "brain_age_correlation_score": "biology",
    "brain_age_null_error": "reference",
    "gm_age_correlation": "biology",
    "true_gm_age_correlation": "reference",
    "disease_effect_error": "biology",
    "disease_auc_score": "biology",
    "true_disease_effect": "reference",
    "fit_seconds": "cost",
    "fit_peak_mb": "cost",
    "transform_seconds": "cost",
    "transform_peak_mb": "cost",
}


def metric_kind(name: str) -> str:
    """The kind of a metric (:data:`METRIC_KINDS`; ``"other"`` when not listed)."""
    return METRIC_KINDS.get(name, "other")


#: The value each ``"target"`` metric should reach: another metric's name (its value in
#: the same run) or a number.
METRIC_TARGETS: dict[str, str | float] = {
    "gm_age_correlation": "true_gm_age_correlation",
    "disease_effect_error": 0.0,
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
def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def masked_ssim(
    a: np.ndarray,
    b: np.ndarray,
    mask: np.ndarray,
    *,
    data_range: float = 1.0,
    win_size: int = 7,
) -> float:
    """Mean of the 3-D SSIM map of two images inside a mask, from in-mask windows only.

    SSIM (Wang et al. 2004) compares local means, variances and the covariance of two
    images in a ``win_size``-voxel cubic window around each voxel, with the constants
    ``C1 = (0.01 * data_range) ** 2`` and ``C2 = (0.03 * data_range) ** 2`` and the sample
    covariance, as :func:`skimage.metrics.structural_similarity` with a uniform window.
    Here each window's statistics use **only the voxels of the window that lie in the
    mask** (a masked average), and the map is averaged over the mask voxels whose
    window holds at least 2 of them. Voxels outside the mask never enter a window, so two
    images do not look alike because they share a zero background: two independent
    uniform-noise volumes score about 0 (0.008 at 4 mm and 0.002 at 2 mm on the brain
    mask of the synthetic data; with background in the windows, as in harmonix 0.1.0,
    0.23 and 0.12). Where the whole window lies in the mask this is skimage's SSIM
    exactly.

    Parameters
    ----------
    a, b : ndarray of shape (i, j, k)
        Images already on a common scale (e.g. from :func:`robust_scale`).
    mask : ndarray of shape (i, j, k)
        Voxels compared: they make up the windows and their SSIM values are averaged.
    data_range : float, default=1.0
        Dynamic range of the images (1 for images from :func:`robust_scale`).
    win_size : int, default=7
        Odd side of the SSIM window (voxels).

    Returns
    -------
    float
        Mean SSIM inside the mask: 1 for identical images, about 0 for unrelated ones
        (the constants leave a small positive floor for low-variance noise: 0.04 for two
        independent Gaussian noises of standard deviation 0.1 on a range of 1).
    """
    smap = _ssim_map(a, b, mask, data_range=data_range, win_size=win_size)
    values = smap[np.isfinite(smap)]
    if not len(values):
        raise ValueError("The mask has no voxel with another mask voxel in its SSIM window.")
    return float(values.mean())


def _ssim_map(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray, *, data_range: float, win_size: int
) -> np.ndarray:
    """SSIM of every mask voxel from its window's mask voxels (see :func:`masked_ssim`);
    NaN outside the mask and where the window holds fewer than 2 mask voxels."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(
            f"masked_ssim needs two 3-D images of one shape; got {a.shape}, {b.shape}."
        )
    if (
        isinstance(win_size, bool)
        or not isinstance(win_size, int | np.integer)
        or win_size < 1
        or win_size % 2 == 0
    ):
        raise ValueError(f"win_size must be an odd positive integer, got {win_size!r}.")
    m = _as_mask(mask, a.shape)
    box = _bbox(m)  # windows read mask voxels only: the mask's bounding box suffices
    inside = m[box]
    x, y = np.where(inside, a[box], 0.0), np.where(inside, b[box], 0.0)

    def window_sum(v: np.ndarray) -> np.ndarray:
        # uniform_filter averages; zero padding outside the box adds nothing to the sums
        return ndimage.uniform_filter(v, win_size, mode="constant") * win_size**3

    count = window_sum(inside.astype(np.float64))
    use = inside & (count >= 1.5)  # at least 2 mask voxels in the window
    n = count[use]
    mx, my = window_sum(x)[use] / n, window_sum(y)[use] / n
    cov_norm = n / (n - 1.0)
    vx = (window_sum(x * x)[use] / n - mx * mx) * cov_norm
    vy = (window_sum(y * y)[use] / n - my * my) * cov_norm
    vxy = (window_sum(x * y)[use] / n - mx * my) * cov_norm
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = np.full(a.shape, np.nan)
    sub = np.full(inside.shape, np.nan)
    sub[use] = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    out[box] = sub
    return out


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

    It judges agreement only: a method that returns the same image for every input
    scores 1, as the oracle does. :func:`subject_specificity_score` asks whether the
    agreement is the subject's own.

    Parameters
    ----------
    %(bm_pairs)s
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
    subjects, sites, inc = _pair_labels(subjects, sites, include, len(arr))
    m = _as_mask(mask, arr.shape[1:])
    pairs = [
        (i, j, masked_ssim(arr[i], arr[j], m, win_size=win_size))
        for i, j in cross_site_pairs(subjects, sites, inc)
    ]
    score = float(np.mean([p[2] for p in pairs])) if pairs else float("nan")
    return (score, pairs) if return_pairs else score


def _pair_labels(
    subjects: Any, sites: Any, include: Any, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    subjects = _as_labels(subjects, n, "subjects")
    sites = _as_labels(sites, n, "sites")
    inc = np.ones(n, bool) if include is None else _as_labels(include, n, "include").astype(bool)
    return subjects, sites, inc


def cross_site_pairs(
    subjects: np.ndarray, sites: np.ndarray, include: np.ndarray
) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of one subject's images at two different sites,
    keeping the pairs with at least one ``include``-d image (subjects in order of first
    appearance)."""
    pairs = []
    for subject in dict.fromkeys(subjects.tolist()):
        idx = np.flatnonzero(subjects == subject)
        for i, j in combinations(idx.tolist(), 2):
            if sites[i] != sites[j] and (include[i] or include[j]):
                pairs.append((i, j))
    return pairs


def _correlations(arr: np.ndarray, m: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Pearson correlation matrix of the images' voxels inside the mask (float64; 0 for an
    image without variance)."""
    vox = arr[:, m]
    mean = vox.mean(axis=1, dtype=np.float64)[:, None]
    gram = np.zeros((len(vox), len(vox)))
    for start in range(0, vox.shape[1], chunk):
        c = vox[:, start : start + chunk].astype(np.float64) - mean
        gram += c @ c.T
    sd = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    scale = np.where(sd > 0, sd, np.inf)
    return gram / scale[:, None] / scale[None, :]


def specificity_from(same: np.ndarray, other: np.ndarray) -> float:
    """:func:`subject_specificity_score` from per-pair correlations: ``(mean(same) -
    mean(other)) / (1 - mean(other))``, 0 when every image is alike (``other`` = 1)."""
    if len(same) == 0:
        return float("nan")
    ms, mo = float(np.mean(same)), float(np.mean(other))
    return (ms - mo) / (1.0 - mo) if 1.0 - mo > 1e-9 else 0.0


@fill_doc
def subject_specificity_score(
    imgs: Any,
    subjects: Any,
    sites: Any,
    mask: Any,
    *,
    include: Any = None,
    value_range: tuple[float, float] | None = None,
    return_pairs: bool = False,
) -> float | tuple[float, np.ndarray]:
    """Is a subject's image at one site more like its own image at another site than like
    other subjects' images there?

    The traveling-subject SSIM rewards images that look alike across sites, so a method
    that returns one image for every input (a mean image) scores 1 on it. This score asks
    for subject-specific agreement. All images are put on one scale
    (:func:`robust_scale`); for every pair of a subject's images at two different sites
    ``A`` and ``B`` (the pairs of :func:`traveling_subject_ssim_score`), ``same`` is the
    Pearson correlation of the two images' voxels inside the mask and ``other`` the mean
    correlation of the subject's image at ``A`` with the other subjects' images at ``B``
    and of its image at ``B`` with the other subjects' images at ``A``. The score is

    ``(mean(same) - mean(other)) / (1 - mean(other))``

    over all pairs: the share of the room above what any two subjects share that the
    subject's own images take. 1: each subject's images are identical across sites (the
    oracle); 0: a subject's images are no more alike than any two subjects' (every output
    the same image, or noise); negative: less alike. The correlation ignores a global
    scale or offset of each image, which the SSIM judges.

    Parameters
    ----------
    %(bm_pairs)s
    include : array-like of bool, shape (n_images,), default=None
        Score only the pairs that contain at least one included image (as in
        :func:`traveling_subject_ssim_score`).
    value_range : tuple of float, default=None
        Intensity range mapped to ``[0, 1]`` (:func:`robust_scale`); default: the pooled
        robust range of ``imgs``.
    return_pairs : bool, default=False
        Also return an array of ``(index_a, index_b, same, other)`` rows, one per pair.

    Returns
    -------
    float or (float, ndarray of shape (n_pairs, 4))
        The score (NaN when no subject has images at two sites, or no site has another
        subject to compare with).
    """
    arr = robust_scale(imgs, mask, value_range=value_range)
    subjects, sites, inc = _pair_labels(subjects, sites, include, len(arr))
    corr = _correlations(arr, _as_mask(mask, arr.shape[1:]))
    rows = []
    for i, j in cross_site_pairs(subjects, sites, inc):
        at_j = (sites == sites[j]) & (subjects != subjects[i])
        at_i = (sites == sites[i]) & (subjects != subjects[i])
        if at_i.any() and at_j.any():
            other = (corr[i, at_j].mean() + corr[at_i, j].mean()) / 2.0
            rows.append((i, j, corr[i, j], other))
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    score = specificity_from(table[:, 2], table[:, 3])
    return (score, table) if return_pairs else score


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
        if len(ii) < 3 or np.ptp(db[ii, jj]) == 0:
            continue  # fewer than 3 pairs, or every distance equal before: undefined
        x, y = db[ii, jj], da[ii, jj]
        if np.ptp(y) == 0:  # every subject as far from every other: no difference kept
            values.append(0.0)
            continue
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

    A site whose distances after harmonization are all equal (e.g. every output the same
    image) keeps no difference between its subjects and scores 0, as do outputs
    unrelated to the inputs (noise) on average; a site whose distances are all equal
    *before* is left out (nothing to keep). The rank correlation does not see a uniform
    shrinking of the distances (outputs ``mean + 0.01 * (input - mean)`` score 1).

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
        distances before harmonization).
    """
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}.")
    distances = site_distances(
        before, after, sites, mask, before_range=before_range, value_range=value_range
    )
    return distance_correlation_from(distances, method=method)
