"""Confidence intervals over subjects: the bootstrap behind every benchmark value.

:func:`bootstrap_ci` resamples *subjects* with replacement (all the images, pairs or
predictions of a drawn subject come along, as often as it is drawn) and recomputes a
statistic; the percentile interval of the recomputed values is the confidence interval.
The cross-validated metrics are bootstrapped on their out-of-fold predictions (the models
are not refitted), so their interval reflects which subjects were scored, not the
variability of the fitted models. :func:`combine_intervals` turns per-run intervals into
an interval of the mean over runs, combining runs on different data sets as independent
and runs on one data set (several seeds of a method) as sharing their subjects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["bootstrap_ci", "combine_intervals"]


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    groups: Any,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    random_state: Any = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval with groups (subjects) resampled.

    Parameters
    ----------
    statistic : callable
        ``statistic(index)`` computes the value from the items ``index`` (an integer array
        into the items, with repeats); it may return NaN for a degenerate sample, which is
        skipped.
    groups : array-like of shape (n_items,)
        Subject of each item; subjects are drawn with replacement, as many as there are.
    n_boot : int, default=1000
        Bootstrap samples.
    level : float, default=0.95
        Coverage of the interval.
    random_state : int, numpy Generator or None, default=None
        Seeds the resampling.

    Returns
    -------
    (float, float)
        Lower and upper bounds; NaN when fewer than half the samples gave a finite value
        or there are fewer than 2 subjects.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(10.0, 2.0, 400)
    >>> lo, hi = bootstrap_ci(lambda i: x[i].mean(), np.arange(400), random_state=0)
    >>> bool(lo < 10.0 < hi)
    True
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}.")
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    inverse = inverse.ravel()
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    if n_groups < 2:
        return float("nan"), float("nan")
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(n_groups + 1))
    members = [order[starts[k] : starts[k + 1]] for k in range(n_groups)]
    rng = np.random.default_rng(random_state)
    values = []
    for _ in range(int(n_boot)):
        pick = rng.integers(0, n_groups, n_groups)
        value = float(statistic(np.concatenate([members[k] for k in pick])))
        if np.isfinite(value):
            values.append(value)
    if len(values) < n_boot / 2:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return float(lo), float(hi)


def combine_intervals(
    means: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    datasets: Sequence[Any] | None = None,
) -> tuple[float, float]:
    """Interval of the mean over runs (seeds) from each run's interval.

    A run's interval (subjects resampled) measures how its value would change with other
    subjects. Runs on *different* data sets (other subjects) err independently, so their
    half-widths combine as independent errors (normal approximation): the mean of ``k``
    runs on ``k`` data sets gets ``mean - sqrt(sum(lower_half**2)) / k`` and
    ``mean + sqrt(sum(upper_half**2)) / k``. Runs on the *same* data set (e.g. several
    seeds of a method) share their subjects: their errors move together, so their
    half-widths are averaged, not combined, and repeating a run on one data set does not
    narrow the interval. In general, with ``k_g`` of the ``K`` runs on data set ``g``
    and ``h_g`` the mean half-width of those runs, the half-width of the mean is
    ``sqrt(sum_g (k_g * h_g)**2) / K``. With one run, its own interval is returned.

    Parameters
    ----------
    means, lows, highs : sequence of float
        Per-run values and interval bounds (runs with a NaN entry are skipped).
    datasets : sequence of hashable, default=None
        The data set of each run (e.g. the ``dataset`` column of
        :func:`~harmonix.benchmark.run_benchmark` results). None: every run on a data set
        of its own.

    Returns
    -------
    (float, float)
        Bounds of the interval of the mean (NaN when no run has a finite interval).

    Examples
    --------
    Two runs with the interval ``value ± 1``: on two data sets the mean is known to
    ``± 0.71``; on one data set (two seeds) still to ``± 1``.

    >>> combine_intervals([1.0, 3.0], [0.0, 2.0], [2.0, 4.0])
    (1.2928932188134525, 2.7071067811865475)
    >>> combine_intervals([1.0, 3.0], [0.0, 2.0], [2.0, 4.0], datasets=["a", "a"])
    (1.0, 3.0)
    """
    m, lo, hi = (np.asarray(v, dtype=float) for v in (means, lows, highs))
    groups = np.arange(len(m)) if datasets is None else np.asarray(list(datasets), dtype=object)
    if groups.shape != m.shape:
        raise ValueError(f"datasets must have one entry per run ({len(m)}).")
    ok = np.isfinite(m) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return float("nan"), float("nan")
    m, lo, hi, groups = m[ok], lo[ok], hi[ok], groups[ok]
    k = len(m)
    center = m.mean()
    below = above = 0.0
    for g in dict.fromkeys(groups.tolist()):
        sel = np.array([v == g for v in groups.tolist()])
        # k_g * mean half-width = the group's summed half-widths (errors that move together)
        below += np.sum(m[sel] - lo[sel]) ** 2
        above += np.sum(hi[sel] - m[sel]) ** 2
    return float(center - np.sqrt(below) / k), float(center + np.sqrt(above) / k)
