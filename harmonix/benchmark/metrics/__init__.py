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

This package holds the registry of the metrics (:data:`METRICS`, :data:`METRIC_KINDS`,
:data:`METRIC_TARGETS`) and hands on every metric function from its module, one per
family:

- ``similarity``: image similarity (traveling subjects, specificity, SSIM to the truth);
- ``site``: site predictability and site histograms;
- ``biology``: brain age and GM volume against age;
- ``disease``: disease effects, on the segmentation of ``tissue``;
- ``cost``: time and memory;
- ``scale``: the common intensity scale.

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

from harmonix.benchmark.metrics.biology import (
    brain_age_correlation_score,
    brain_age_error,
    brain_age_null_error,
    gm_age_correlation,
    gm_volumes,
    within_site_correlation,
)
from harmonix.benchmark.metrics.cost import measure_cost
from harmonix.benchmark.metrics.disease import (
    disease_auc_score,
    disease_effect,
    disease_effect_error,
)
from harmonix.benchmark.metrics.scale import (
    QUANTILES,
    robust_range,
    robust_scale,
)
from harmonix.benchmark.metrics.similarity import (
    distance_correlation_score,
    masked_ssim,
    subject_specificity_score,
    traveling_subject_ssim_score,
    truth_ssim_score,
)
from harmonix.benchmark.metrics.site import (
    site_chance_level,
    site_histogram_error,
    site_predictability,
    site_predictability_error,
)
from harmonix.benchmark.metrics.tissue import Tissues, segment_tissues

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
