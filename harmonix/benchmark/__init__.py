"""Score harmonizers with common metrics, in one call.

>>> from harmonix.benchmark import run_benchmark, summarize, to_markdown
>>> df = run_benchmark({"none": IdentityHarmonizer(), "HM": HistogramMatchingHarmonizer()},
...                    make_multisite(resolution=4), oracle=True,
...                    random_state=0)  # doctest: +SKIP
>>> print(to_markdown(df))  # doctest: +SKIP

:func:`run_benchmark` returns a tidy DataFrame (``method, protocol, metric, value, ci_low,
ci_high, reason, held_out, dataset``); the metric functions of
:mod:`harmonix.benchmark.metrics` work on plain arrays;
:mod:`harmonix.benchmark.report` renders tables and figures.
"""

from harmonix.benchmark.bootstrap import bootstrap_ci, combine_intervals
from harmonix.benchmark.data import BenchmarkDataset, check_subjects, dataset_from_manifest
from harmonix.benchmark.metrics import (
    METRIC_ALIASES,
    METRIC_KINDS,
    METRIC_TARGETS,
    METRICS,
    Tissues,
    brain_age_correlation_score,
    brain_age_error,
    brain_age_null_error,
    disease_auc_score,
    disease_effect,
    disease_effect_error,
    distance_correlation_score,
    gm_age_correlation,
    gm_volumes,
    masked_ssim,
    measure_cost,
    metric_kind,
    resolve_metric_names,
    robust_range,
    robust_scale,
    segment_tissues,
    site_chance_level,
    site_histogram_error,
    site_predictability,
    site_predictability_error,
    subject_specificity_score,
    traveling_subject_ssim_score,
    truth_ssim_score,
    within_site_correlation,
)
from harmonix.benchmark.report import plot_metrics, plot_slices, summarize, to_markdown
from harmonix.benchmark.runner import ORACLE, oracle_outputs, run_benchmark
from harmonix.benchmark.sanity import MeanImageHarmonizer, NoiseHarmonizer

__all__ = [
    "METRIC_ALIASES",
    "METRIC_KINDS",
    "METRIC_TARGETS",
    "METRICS",
    "ORACLE",
    "BenchmarkDataset",
    "MeanImageHarmonizer",
    "NoiseHarmonizer",
    "bootstrap_ci",
    "brain_age_correlation_score",
    "brain_age_error",
    "brain_age_null_error",
    "check_subjects",
    "combine_intervals",
    "disease_auc_score",
    "disease_effect",
    "disease_effect_error",
    "dataset_from_manifest",
    "distance_correlation_score",
    "gm_age_correlation",
    "gm_volumes",
    "masked_ssim",
    "measure_cost",
    "metric_kind",
    "oracle_outputs",
    "plot_metrics",
    "plot_slices",
    "resolve_metric_names",
    "robust_range",
    "robust_scale",
    "run_benchmark",
    "segment_tissues",
    "site_chance_level",
    "site_histogram_error",
    "site_predictability",
    "site_predictability_error",
    "subject_specificity_score",
    "summarize",
    "Tissues",
    "to_markdown",
    "traveling_subject_ssim_score",
    "truth_ssim_score",
    "within_site_correlation",
]
