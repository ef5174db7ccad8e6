"""Scoring one method's outputs: the per-metric functions behind :func:`run_benchmark`.

Each metric of :data:`~harmonix.benchmark.metrics.METRICS` (except the costs) has one
function ``(run, protocol) -> (value, (ci_low, ci_high), reason)`` in
:data:`METRIC_FUNCS`; a :class:`MethodRun` holds one method's outputs and the caches its
metrics share (one tissue segmentation per protocol, the brain-age predictions).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harmonix.benchmark.bootstrap import bootstrap_ci
from harmonix.benchmark.data import DataArrays
from harmonix.benchmark.metrics.biology import brain_age_error, within_site_correlation
from harmonix.benchmark.metrics.disease import (
    auc,
    disease_auc_score,
    effect_design,
    effect_error,
    standardized_effect,
)
from harmonix.benchmark.metrics.scale import robust_range, robust_scale
from harmonix.benchmark.metrics.similarity import (
    distance_correlation_from,
    site_distances,
    specificity_from,
    subject_specificity_score,
    traveling_subject_ssim_score,
    truth_ssim_score,
)
from harmonix.benchmark.metrics.site import balanced_accuracy, site_features, site_predictions
from harmonix.benchmark.metrics.tissue import (
    Tissues,
    pattern_gm_volumes,
    segment_tissues,
    site_gm_volumes,
)

__all__ = ["COST_METRICS", "METRIC_FUNCS", "MethodRun", "Plan", "describe", "score"]

logger = logging.getLogger(__name__)

COST_METRICS = ("fit_seconds", "fit_peak_mb", "transform_seconds", "transform_peak_mb")
_NO_CI = (np.nan, np.nan)


def describe(exc: BaseException) -> str:
    """One-line ``Type: message`` of an exception (160 characters at most)."""
    msg = " ".join(str(exc).split())
    if len(msg) > 160:
        msg = msg[:157] + "..."
    return f"{type(exc).__name__}: {msg}"


@dataclass(frozen=True)
class Plan:
    """What every method's run shares: the data, the split, the metrics and the seeds."""

    data: DataArrays
    train_idx: np.ndarray
    test_idx: np.ndarray
    metrics: list[str]
    protocols: list[str]
    method_seed: int
    metric_seed: int
    raise_errors: bool
    n_boot: int

    def index(self, protocol: str) -> np.ndarray:
        return self.train_idx if protocol == "seen" else self.test_idx


@dataclass
class MethodRun:
    """One method's run: its rows, outputs per protocol and the caches its metrics share."""

    name: str
    plan: Plan
    rows: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    value_range: tuple[float, float] | None = None
    cache: dict[Any, Any] = field(default_factory=dict)
    _tissues: dict[str, Tissues] = field(default_factory=dict)

    def add(
        self,
        protocol: str,
        metric: str,
        value: float,
        ci: tuple[float, float] = _NO_CI,
        reason: str = "",
    ) -> None:
        if metric in self.plan.metrics:
            self.rows.append(
                {
                    "method": self.name,
                    "protocol": protocol,
                    "metric": metric,
                    "value": float(value),
                    "ci_low": float(ci[0]),
                    "ci_high": float(ci[1]),
                    "reason": reason,
                }
            )

    def fail(self, protocols: Iterable[str], reason: str) -> None:
        done = {(r["protocol"], r["metric"]) for r in self.rows}
        for p in protocols:
            for metric in self.plan.metrics:
                if (p, metric) not in done:
                    self.add(p, metric, np.nan, reason=reason)

    def unexpected(self, stage: str, exc: BaseException) -> str:
        if self.plan.raise_errors:
            raise exc
        logger.warning("benchmark: %s failed in %s: %s", self.name, stage, describe(exc))
        return f"{stage} failed: {describe(exc)}"

    def tissues(self, protocol: str) -> Tissues:
        if protocol not in self._tissues:
            scaled = robust_scale(
                self.outputs[protocol], self.plan.data.mask, value_range=self.value_range
            )
            self._tissues[protocol] = segment_tissues(scaled, self.plan.data.mask)
        return self._tissues[protocol]


def score(run: MethodRun) -> None:
    """Every non-cost metric of every protocol the method produced outputs for."""
    if not run.outputs:
        return
    # One intensity scale per method: fitted on its outputs for the training sites and
    # applied to all its outputs, so unseen-site outputs are judged in the same units.
    first = run.outputs.get("seen", next(iter(run.outputs.values())))
    run.value_range = robust_range(first, run.plan.data.mask)
    for protocol in list(run.outputs):
        for metric in run.plan.metrics:
            if metric in COST_METRICS:
                continue
            try:
                value, ci, reason = METRIC_FUNCS[metric](run, protocol)
            except Exception as exc:
                value, ci, reason = (
                    np.nan,
                    _NO_CI,
                    run.unexpected(f"metric {metric} ({protocol})", exc),
                )
            run.add(protocol, metric, value, ci, reason)


# ----------------------------------------------------------------------------------------
# One function per metric: (run, protocol) -> (value, (ci_low, ci_high), reason)
# ----------------------------------------------------------------------------------------
_Result = tuple[float, tuple[float, float], str]
_MetricFunc = Callable[["MethodRun", str], _Result]
_MISSING_SEEN: _Result = (np.nan, _NO_CI, "needs the seen-site outputs, which failed")


def _ci(
    run: MethodRun, statistic: Callable[[np.ndarray], float], groups: np.ndarray
) -> tuple[float, float]:
    if run.plan.n_boot <= 0:
        return _NO_CI
    with warnings.catch_warnings():  # degenerate resamples (one class, constant values)
        warnings.simplefilter("ignore")
        return bootstrap_ci(
            statistic, groups, n_boot=run.plan.n_boot, random_state=run.plan.metric_seed
        )


def _pooled(run: MethodRun, protocol: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Dataset indices of the images a pooled metric reads, and which are training images.

    Seen: the training images. Unseen: the training images followed by the unseen ones
    (``train`` marks the former).
    """
    plan = run.plan
    if protocol == "seen":
        return plan.train_idx, None
    ix = np.concatenate([plan.train_idx, plan.test_idx])
    return ix, np.r_[np.ones(len(plan.train_idx), bool), np.zeros(len(plan.test_idx), bool)]


def _pooled_outputs(run: MethodRun, protocol: str) -> np.ndarray:
    if protocol == "seen":
        return run.outputs["seen"]
    return np.concatenate([run.outputs["seen"], run.outputs["unseen"]])


def _pooled_tissues(run: MethodRun, protocol: str) -> Tissues:
    if protocol == "seen":
        return run.tissues("seen")
    a, b = run.tissues("seen"), run.tissues("unseen")
    return Tissues(
        *(
            np.concatenate([getattr(a, f), getattr(b, f)])
            for f in ("fractions", "labels", "normalized")
        ),
        mask=a.mask,
    )


def _cross_site(
    run: MethodRun,
    protocol: str,
    metric: Callable[..., Any],
    interval: Callable[[Any, np.ndarray], tuple[Callable[[np.ndarray], float], np.ndarray]],
    empty: str,
) -> _Result:
    """``metric(outputs, subjects, sites, mask, ...)`` on the pooled outputs, with the
    bootstrap statistic and groups that ``interval(pairs, subjects)`` makes of the metric's
    pairs and the pooled images' subjects; NaN with the reason ``empty`` without a value."""
    if "seen" not in run.outputs:
        return _MISSING_SEEN
    d = run.plan.data
    ix, train = _pooled(run, protocol)
    value, pairs = metric(
        _pooled_outputs(run, protocol),
        d.subjects[ix],
        d.sites[ix],
        d.mask,
        include=None if train is None else ~train,
        value_range=run.value_range,
        return_pairs=True,
    )
    if np.isnan(value):
        return value, _NO_CI, empty
    return value, _ci(run, *interval(pairs, d.subjects[ix])), ""


def _traveling(run: MethodRun, protocol: str) -> _Result:
    def interval(pairs: list, subjects: np.ndarray) -> tuple[Callable, np.ndarray]:
        vals = np.array([p[2] for p in pairs])
        return lambda k: float(vals[k].mean()), subjects[[p[0] for p in pairs]]

    empty = "no subject has images at two sites"
    return _cross_site(run, protocol, traveling_subject_ssim_score, interval, empty)


def _specificity(run: MethodRun, protocol: str) -> _Result:
    def interval(table: np.ndarray, subjects: np.ndarray) -> tuple[Callable, np.ndarray]:
        same, other = table[:, 2], table[:, 3]
        return lambda k: specificity_from(same[k], other[k]), subjects[table[:, 0].astype(int)]

    empty = "needs subjects with images at two sites and other subjects there"
    return _cross_site(run, protocol, subject_specificity_score, interval, empty)


def _truth(run: MethodRun, protocol: str) -> _Result:
    d, idx = run.plan.data, run.plan.index(protocol)
    if d.truth is None:
        return np.nan, _NO_CI, "dataset has no truth"
    truth = np.asarray(d.truth)
    value, vals = truth_ssim_score(
        run.outputs[protocol],
        truth[idx],
        d.mask,
        value_range=run.value_range,
        truth_range=robust_range(truth[run.plan.train_idx], d.mask),
        return_values=True,
    )
    return value, _ci(run, lambda k: float(vals[k].mean()), d.subjects[idx]), ""


def _distances(run: MethodRun, protocol: str) -> _Result:
    # within-site and scale-free: each set on its own pooled range (no clipping of a
    # differently scaled unseen site)
    d, idx = run.plan.data, run.plan.index(protocol)
    dist = site_distances(d.imgs[idx], run.outputs[protocol], d.sites[idx], d.mask)
    value = distance_correlation_from(dist)
    if np.isnan(value):
        return value, _NO_CI, "needs >= 3 subjects in a site, at distinct distances before"
    return value, _ci(run, lambda k: distance_correlation_from(dist, keep=k), d.subjects[idx]), ""


def _site_metric(kind: str) -> Callable[[MethodRun, str], _Result]:
    def compute(run: MethodRun, protocol: str) -> _Result:
        if "seen" not in run.outputs:
            return _MISSING_SEEN
        d = run.plan.data
        ix, _ = _pooled(run, protocol)
        if kind == "tissue":
            X = site_features(None, d.mask, tissues=_pooled_tissues(run, protocol))
        else:
            X = site_features(
                _pooled_outputs(run, protocol), d.mask, kind=kind, value_range=run.value_range
            )
        y, pred = site_predictions(
            X, d.sites[ix], d.subjects[ix], random_state=run.plan.metric_seed
        )
        value = balanced_accuracy(y, pred)
        return value, _ci(run, lambda k: balanced_accuracy(y[k], pred[k]), d.subjects[ix]), ""

    return compute


def _chance(run: MethodRun, protocol: str) -> _Result:
    ix, _ = _pooled(run, protocol)
    return 1.0 / len(np.unique(run.plan.data.sites[ix])), _NO_CI, ""


def _brain_age(null: bool = False, correlation: bool = False) -> _MetricFunc:
    def compute(run: MethodRun, protocol: str) -> _Result:
        d = run.plan.data
        if d.ages is None:
            return np.nan, _NO_CI, "dataset has no ages"
        if "seen" not in run.outputs:
            return _MISSING_SEEN
        ix, train = _pooled(run, protocol)
        key = ("brain_age", protocol)
        if key not in run.cache:
            run.cache[key] = brain_age_error(
                None,
                d.ages[ix],
                d.mask,
                d.subjects[ix],
                train=train,
                tissues=_pooled_tissues(run, protocol),
                random_state=run.plan.metric_seed,
                return_predictions=True,
            )[1]
        p = run.cache[key]
        groups = d.subjects[ix][p.index]
        if correlation:
            return p.correlation(), _ci(run, p.correlation, groups), ""
        err = np.abs((p.null if null else p.predicted) - p.age)
        return float(err.mean()), _ci(run, lambda k: float(err[k].mean()), groups), ""

    return compute


def _age_correlation(run: MethodRun, protocol: str, volumes: np.ndarray) -> _Result:
    d, idx = run.plan.data, run.plan.index(protocol)
    ages, sites = d.ages[idx], d.sites[idx]
    value = within_site_correlation(volumes, ages, sites)
    if np.isnan(value):
        return value, _NO_CI, "needs >= 3 images of different ages in a site"
    return (
        value,
        _ci(
            run, lambda k: within_site_correlation(volumes[k], ages[k], sites[k]), d.subjects[idx]
        ),
        "",
    )


def _gm_age(run: MethodRun, protocol: str) -> _Result:
    if run.plan.data.ages is None:
        return np.nan, _NO_CI, "dataset has no ages"
    key = ("gm_volumes", protocol)
    if key not in run.cache:
        d = run.plan.data
        sites = d.sites[run.plan.index(protocol)]
        run.cache[key] = site_gm_volumes(run.outputs[protocol], d.mask, sites)
    return _age_correlation(run, protocol, run.cache[key])


def _true_gm_age(run: MethodRun, protocol: str) -> _Result:
    d = run.plan.data
    if d.ages is None:
        return np.nan, _NO_CI, "dataset has no ages"
    true = d.true_gm_volumes()
    if true is None:
        return np.nan, _NO_CI, "dataset has no true GM maps"
    return _age_correlation(run, protocol, true[run.plan.index(protocol)])


def _disease_inputs(run: MethodRun, protocol: str) -> tuple[Any, ...] | str:
    """Diagnosis, adjusting covariates and subjects of the protocol's images, or why the
    disease metrics cannot be computed."""
    d = run.plan.data
    cov = d.covariates
    if cov is None or "diagnosis" not in cov.columns:
        return "dataset has no diagnosis covariate"
    idx = run.plan.index(protocol)
    dx = cov["diagnosis"].to_numpy()[idx]
    if len(set(dx.tolist())) < 2:
        return "needs patients and controls among these images"
    adjust = cov.drop(columns="diagnosis").iloc[idx].reset_index(drop=True)
    return dx, adjust, d.subjects[idx]


def _region_margin(data: DataArrays) -> int:
    """About 10 mm around the disease region, in voxels of the data set's grid."""
    res = data.resolution or 2.0
    return max(1, int(round(10.0 / float(res))))


def _disease_effect(true_only: bool) -> Callable[[MethodRun, str], _Result]:
    def compute(run: MethodRun, protocol: str) -> _Result:
        d = run.plan.data
        inputs = _disease_inputs(run, protocol)
        if isinstance(inputs, str):
            return np.nan, _NO_CI, inputs
        if d.disease_region is None or d.pattern_gm_volume is None:
            return np.nan, _NO_CI, "dataset has no disease region or true regional volumes"
        dx, adjust, subjects = inputs
        true = d.pattern_gm_volume[run.plan.index(protocol)]
        design = effect_design(dx, adjust, len(dx), "CN")
        degenerate = "the effect regression is degenerate (too few subjects for its columns)"
        if true_only:
            value = standardized_effect(true, design)
            if np.isnan(value):
                return value, _NO_CI, degenerate
            return value, _ci(run, lambda k: standardized_effect(true[k], design[k]), subjects), ""
        measured = pattern_gm_volumes(
            run.outputs[protocol], d.mask, d.disease_region, margin=_region_margin(d)
        )
        value = effect_error(measured, true, design)
        if np.isnan(value):
            return value, _NO_CI, degenerate
        return (
            value,
            _ci(run, lambda k: effect_error(measured[k], true[k], design[k]), subjects),
            "",
        )

    return compute


def _disease_auc(run: MethodRun, protocol: str) -> _Result:
    inputs = _disease_inputs(run, protocol)
    if isinstance(inputs, str):
        return np.nan, _NO_CI, inputs
    dx, _, subjects = inputs
    value, p = disease_auc_score(
        None,
        dx,
        run.plan.data.mask,
        subjects,
        tissues=run.tissues(protocol),
        random_state=run.plan.metric_seed,
        return_predictions=True,
    )
    return value, _ci(run, lambda k: auc(p.patient[k], p.score[k]), subjects[p.index]), ""


METRIC_FUNCS: dict[str, Callable[[MethodRun, str], _Result]] = {
    "traveling_subject_ssim_score": _traveling,
    "subject_specificity_score": _specificity,
    "truth_ssim_score": _truth,
    "distance_correlation_score": _distances,
    "site_predictability_error": _site_metric("tissue"),
    "site_histogram_error": _site_metric("histogram"),
    "site_chance_level": _chance,
    "brain_age_error": _brain_age(),
    "brain_age_correlation_score": _brain_age(correlation=True),
    "brain_age_null_error": _brain_age(null=True),
    "gm_age_correlation": _gm_age,
    "true_gm_age_correlation": _true_gm_age,
    "disease_effect_error": _disease_effect(true_only=False),
    "true_disease_effect": _disease_effect(true_only=True),
    "disease_auc_score": _disease_auc,
}
