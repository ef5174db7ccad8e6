"""Score harmonizers with common metrics, in one call.

>>> from harmonix.benchmark import run_benchmark, summarize, to_markdown
>>> df = run_benchmark({"none": IdentityHarmonizer(), "HM": HistogramMatchingHarmonizer()},
...                    make_multisite(resolution=4), random_state=0)  # doctest: +SKIP
>>> print(to_markdown(df))  # doctest: +SKIP

:func:`run_benchmark` returns a tidy DataFrame (``method, protocol, metric, value,
reason``); the metric functions of :mod:`harmonix.benchmark.metrics` work on plain arrays.
"""

from harmonix.benchmark.metrics import (
    METRICS,
    brain_age_error,
    distance_correlation_score,
    gm_age_correlation,
    gm_volumes,
    masked_ssim,
    measure_cost,
    robust_range,
    robust_scale,
    site_predictability,
    traveling_subject_ssim_score,
    truth_ssim_score,
)
from harmonix.benchmark.runner import (
    BenchmarkDataset,
    dataset_from_manifest,
    plot_metrics,
    plot_slices,
    run_benchmark,
    summarize,
    to_markdown,
)

__all__ = [
    "METRICS",
    "BenchmarkDataset",
    "brain_age_error",
    "dataset_from_manifest",
    "distance_correlation_score",
    "gm_age_correlation",
    "gm_volumes",
    "masked_ssim",
    "measure_cost",
    "plot_metrics",
    "plot_slices",
    "robust_range",
    "robust_scale",
    "run_benchmark",
    "site_predictability",
    "summarize",
    "to_markdown",
    "traveling_subject_ssim_score",
    "truth_ssim_score",
]
