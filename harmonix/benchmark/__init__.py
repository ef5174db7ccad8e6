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

from harmonix.benchmark import metrics, runner
from harmonix.benchmark.bootstrap import bootstrap_ci, combine_intervals
from harmonix.benchmark.data import check_subjects
from harmonix.benchmark.metrics import *  # noqa: F403 (metrics.__all__, handed on below)
from harmonix.benchmark.runner import *  # noqa: F403 (runner.__all__, handed on below)
from harmonix.benchmark.sanity import MeanImageHarmonizer, NoiseHarmonizer

__all__ = [
    *metrics.__all__,  # the metric functions and their registry
    *runner.__all__,  # run_benchmark, with the data set and report functions it hands on
    "MeanImageHarmonizer",
    "NoiseHarmonizer",
    "bootstrap_ci",
    "check_subjects",
    "combine_intervals",
]
