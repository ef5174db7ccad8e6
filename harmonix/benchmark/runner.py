"""Run every harmonizer on one data set and score it with the common metrics.

:func:`run_benchmark` fits each harmonizer on the training sites and scores its outputs on
those sites ("seen" protocol) and on held-out sites ("unseen" protocol); it returns a
tidy :class:`pandas.DataFrame`. :func:`summarize` aggregates several runs (seeds) into
mean ± sd, :func:`to_markdown` renders tables, :func:`plot_metrics` and
:func:`plot_slices` draw figures (matplotlib, no display needed).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from tqdm.auto import tqdm

from harmonix.benchmark.metrics import (
    METRICS,
    brain_age_error,
    distance_correlation_score,
    gm_age_correlation,
    measure_cost,
    robust_range,
    robust_scale,
    site_predictability,
    traveling_subject_ssim_score,
    truth_ssim_score,
)

__all__ = [
    "BenchmarkDataset",
    "dataset_from_manifest",
    "plot_metrics",
    "plot_slices",
    "run_benchmark",
    "summarize",
    "to_markdown",
]

logger = logging.getLogger(__name__)

PROTOCOLS = ("seen", "unseen")
_COLUMNS = ["method", "protocol", "metric", "value", "reason"]
_COST_METRICS = ("fit_seconds", "fit_peak_mb", "transform_seconds", "transform_peak_mb")


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------
def _dataset_arrays(dataset: Any) -> dict[str, Any]:
    missing = [a for a in ("imgs", "sites", "subjects", "mask") if not hasattr(dataset, a)]
    if missing:
        raise ValueError(
            f"dataset lacks attribute(s) {missing}; pass harmonix.datasets.make_multisite(...) "
            "or an object with imgs, sites, subjects, mask (and optionally ages, truth)."
        )
    imgs = np.asarray(dataset.imgs)
    if imgs.ndim != 4:
        raise ValueError(f"dataset.imgs must be (n_images, i, j, k); got shape {imgs.shape}.")
    n = len(imgs)
    sites = np.asarray(dataset.sites)
    subjects = np.asarray(dataset.subjects)
    ages = getattr(dataset, "ages", None)
    ages = None if ages is None else np.asarray(ages, dtype=np.float64)
    truth = getattr(dataset, "truth", None)
    for name, arr in (("sites", sites), ("subjects", subjects), ("ages", ages)):
        if arr is not None and arr.shape != (n,):
            raise ValueError(f"dataset.{name} must have one entry per image ({n}).")
    if truth is not None and np.shape(truth) != imgs.shape:
        raise ValueError("dataset.truth must have the shape of dataset.imgs.")
    mask = np.asarray(dataset.mask) != 0
    if mask.shape != imgs.shape[1:]:
        raise ValueError(f"dataset.mask must have shape {imgs.shape[1:]}, got {mask.shape}.")
    return {
        "imgs": imgs,
        "sites": sites,
        "subjects": subjects,
        "ages": ages,
        "truth": truth,
        "mask": mask,
        "reference": getattr(dataset, "reference_site", None),
    }


@dataclass(frozen=True, repr=False, eq=False)
class BenchmarkDataset:
    """Images and labels for :func:`run_benchmark` (see :func:`dataset_from_manifest`).

    Attributes
    ----------
    imgs : ndarray of shape (n, i, j, k), float32
    sites : ndarray of shape (n,)
    subjects : ndarray of shape (n,)
        Subject labels (one per image when the manifest has none).
    ages : ndarray of shape (n,) or None
    mask : ndarray of shape (i, j, k), bool
        Voxels non-zero in every image.
    affine : ndarray of shape (4, 4)
        Affine of the first image.
    truth : None
        No ground truth for real data.
    reference_site : None
    """

    imgs: np.ndarray
    sites: np.ndarray
    subjects: np.ndarray
    ages: np.ndarray | None
    mask: np.ndarray
    affine: np.ndarray
    truth: None = None
    reference_site: Any = None

    def __len__(self) -> int:
        return int(self.imgs.shape[0])

    def __repr__(self) -> str:
        return (
            f"BenchmarkDataset(n_images={len(self)}, n_sites={len(set(self.sites.tolist()))}, "
            f"shape={'x'.join(map(str, self.imgs.shape[1:]))})"
        )


def dataset_from_manifest(manifest: Any) -> BenchmarkDataset:
    """Load the images of a manifest into a data set :func:`run_benchmark` accepts.

    The benchmark scores images in memory, so every image is loaded (float32) and all must
    share one grid (e.g. registered to MNI space).

    Parameters
    ----------
    manifest : harmonix.io.Manifest, str or path-like
        A manifest (:func:`harmonix.io.read_manifest`) or the path of its CSV, with columns
        ``path, site`` and optionally ``age`` and ``subject`` (traveling-subject metrics
        need subjects scanned at several sites).

    Returns
    -------
    BenchmarkDataset
        With ``mask`` the voxels non-zero in every image and no ground truth.
    """
    from harmonix.io import Manifest, as_collection, load_img, read_manifest

    man = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    coll = as_collection(list(man.paths))
    shapes = {coll.shape(i) for i in range(len(coll))}
    if len(shapes) != 1:
        raise ValueError(
            f"The benchmark needs all images on one grid; found shapes {sorted(shapes)}. "
            "Resample them to a common space first."
        )
    imgs = np.stack([coll[i] for i in range(len(coll))]).astype(np.float32, copy=False)
    mask = (imgs != 0).all(axis=0)
    if not mask.any():
        raise ValueError("The images share no non-zero voxel; check that they are aligned.")
    subjects = (
        np.asarray(man.subjects)
        if man.subjects is not None
        else np.array([f"img{i}" for i in range(len(imgs))])
    )
    return BenchmarkDataset(
        imgs=imgs,
        sites=np.asarray(man.sites),
        subjects=subjects,
        ages=None if man.ages is None else np.asarray(man.ages, dtype=np.float64),
        mask=mask,
        affine=np.asarray(load_img(man.paths[0]).affine),
    )


def _site_order(sites: np.ndarray) -> list[Any]:
    return list(dict.fromkeys(sites.tolist()))


def _check_test_sites(test_sites: Any, labels: list[Any], reference: Any) -> list[Any]:
    if test_sites is None:
        candidates = [s for s in labels if s != reference]
        return [candidates[-1]] if len(labels) >= 3 and candidates else []
    if isinstance(test_sites, (str, bytes)) or np.ndim(test_sites) == 0:
        test_sites = [test_sites]
    test_sites = list(test_sites)
    unknown = [s for s in test_sites if s not in labels]
    if unknown:
        raise ValueError(f"test_sites {unknown} are not sites of the dataset {labels}.")
    if len(labels) - len(set(test_sites)) < 2:
        raise ValueError(
            f"Holding out {test_sites} leaves fewer than 2 training sites of {labels}; "
            "hold out fewer sites."
        )
    if reference is not None and reference in test_sites:
        logger.warning(
            "The reference site %r is held out; methods with a reference site will use "
            "another one.",
            reference,
        )
    return list(dict.fromkeys(test_sites))


def _check_metrics(metrics: Any) -> list[str]:
    if metrics is None:
        return list(METRICS)
    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; choose among {list(METRICS)}.")
    return [m for m in METRICS if m in set(metrics)]


def _accepts(func: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _as_output(out: Any, n: int, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(out, np.ndarray):
        arr = out
    else:
        arr = np.stack([np.asarray(o.dataobj if hasattr(o, "dataobj") else o) for o in out])
    arr = np.asarray(arr, dtype=np.float32)
    if arr.shape != (n, *shape):
        raise ValueError(f"transform returned shape {arr.shape}, expected {(n, *shape)}.")
    if not np.isfinite(arr).all():
        raise ValueError("transform returned NaN or infinite voxels.")
    return arr


def _describe(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    if len(msg) > 160:
        msg = msg[:157] + "..."
    return f"{type(exc).__name__}: {msg}"


def _is_unseen_refusal(exc: BaseException, test_sites: list[Any]) -> bool:
    if not isinstance(exc, ValueError):
        return False
    msg = str(exc).lower()
    return "unseen" in msg or any(str(s).lower() in msg for s in test_sites)


# ----------------------------------------------------------------------------------------
# run_benchmark
# ----------------------------------------------------------------------------------------
def run_benchmark(
    harmonizers: Mapping[str, Any],
    dataset: Any,
    *,
    test_sites: Any = None,
    random_state: int | np.random.Generator | None = None,
    metrics: Iterable[str] | None = None,
    verbose: bool = False,
    raise_errors: bool = False,
    return_outputs: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Fit every harmonizer on the training sites and score it on seen and unseen sites.

    For each ``name, estimator`` pair, a clone of the estimator is fitted on the images of
    all sites except ``test_sites`` (``fit(imgs, sites, ages)``), then harmonizes

    * the training images themselves — protocol ``"seen"``;
    * the images of ``test_sites`` — protocol ``"unseen"`` (sites never seen in fit).

    ``sites`` and ``ages`` are passed to ``transform`` when it accepts them (ComBat needs
    them). Each metric of :data:`harmonix.benchmark.metrics.METRICS` is then computed per
    protocol with the same folds and seeds for every method:

    ============================ ==========================================================
    metric                       seen / unseen
    ============================ ==========================================================
    traveling_ssim_score         pairs of seen images / pairs with an unseen image (its
                                 subject at any other site, seen or unseen)
    truth_ssim_score             seen / unseen images vs ``dataset.truth``
    distance_correlation_score   within each seen / unseen site, before vs after
    site_predictability          seen images (chance 1/n_train_sites) / all images
                                 (chance 1/n_sites)
    brain_age_error              CV on seen images / trained on seen images of training
                                 subjects, tested on unseen images of held-out subjects
    gm_age_correlation           seen / unseen images
    fit_seconds, fit_peak_mb     the one fit (same value in both protocols)
    transform_seconds (/image),  transform of the seen / unseen images
    transform_peak_mb
    ============================ ==========================================================

    A method that refuses unseen sites (a ``ValueError`` naming an unseen site or saying
    "unseen", e.g. ``ComBatHarmonizer(unseen_site="error")``) gets NaN unseen values with
    that reason. Any other exception (in fit, transform or a metric) gives NaN values with
    the reason and a logged warning, unless ``raise_errors=True``, which re-raises it.

    Image metrics see one intensity scale per method: the
    :func:`~harmonix.benchmark.metrics.robust_range` of its outputs for the training
    sites, applied to all its outputs (see :mod:`harmonix.benchmark.metrics`), so a method
    that puts an unseen site on another scale is penalized.

    Parameters
    ----------
    harmonizers : mapping of str to estimator
        Display name -> harmonizer (``fit(imgs, sites, ages)`` / ``transform(imgs, ...)``);
        each is cloned, never modified.
    dataset : MultisiteDataset or object
        Needs ``imgs`` (n, i, j, k), ``sites``, ``subjects`` and ``mask`` (common brain
        mask); ``ages`` (for the biology metrics and fitting) and ``truth`` (for
        ``truth_ssim_score``) are used when present, ``reference_site`` when choosing the
        default held-out site.
    test_sites : label or sequence of labels, default=None
        Sites held out of fit. ``None``: the last site that is not the reference site when
        there are at least 3 sites, else none. ``[]``: no unseen protocol.
    random_state : int, numpy Generator or None, default=None
        Seeds the metrics' cross-validation folds, and every harmonizer whose
        ``random_state`` parameter is None (all methods get the same seed).
    metrics : iterable of str, default=None
        Subset of :data:`~harmonix.benchmark.metrics.METRICS` to compute (default: all).
    verbose : bool, default=False
        Show a progress bar (tqdm) and log progress at INFO level.
    raise_errors : bool, default=False
        Re-raise unexpected exceptions instead of recording NaN with the reason.
    return_outputs : bool, default=False
        Also return the harmonized images: ``{name: float32 array (n, i, j, k)}`` in
        dataset order, NaN for images a method could not harmonize.

    Returns
    -------
    pandas.DataFrame or (DataFrame, dict)
        Tidy results with columns ``method, protocol, metric, value, reason`` (``reason``
        is ``""`` when the value was computed).

    Notes
    -----
    With traveling subjects (every subject at every site, as in
    :func:`harmonix.datasets.make_multisite`), the unseen-site images show subjects whose
    seen-site images were in the training set: the unseen protocol tests new *sites*, not
    new subjects (the brain-age metric does hold subjects out). All images are held in
    memory.

    Examples
    --------
    >>> from harmonix import IdentityHarmonizer
    >>> from harmonix.datasets import make_multisite
    >>> ds = make_multisite(n_subjects=4, n_sites=3, resolution=4, random_state=0)
    >>> df = run_benchmark({"none": IdentityHarmonizer()}, ds, random_state=0)  # doctest: +SKIP
    """
    data = _dataset_arrays(dataset)
    if not isinstance(harmonizers, Mapping) or not harmonizers:
        raise ValueError("harmonizers must be a non-empty dict {name: estimator}.")
    labels = _site_order(data["sites"])
    test = _check_test_sites(test_sites, labels, data["reference"])
    wanted = _check_metrics(metrics)
    is_test = np.isin(data["sites"], test) if test else np.zeros(len(data["sites"]), bool)
    train_idx, test_idx = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    protocols = ["seen", "unseen"] if len(test_idx) else ["seen"]
    rng = np.random.default_rng(random_state)
    method_seed, metric_seed = (int(s) for s in rng.integers(0, 2**31 - 1, size=2))

    rows: list[dict[str, Any]] = []
    outputs: dict[str, np.ndarray] = {}
    items = list(harmonizers.items())
    for name, estimator in tqdm(items, desc="harmonizers", disable=not verbose):
        if verbose:
            logger.info("benchmark: %s", name)
        res, out = _run_one(
            str(name), estimator, data, train_idx, test_idx, test, wanted, protocols,
            method_seed, metric_seed, raise_errors, return_outputs,
        )
        rows.extend(res)
        if return_outputs:
            outputs[str(name)] = out
    df = pd.DataFrame(rows, columns=_COLUMNS)
    df["value"] = df["value"].astype(float)
    return (df, outputs) if return_outputs else df


def _run_one(
    name: str,
    estimator: Any,
    data: dict[str, Any],
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    test_sites: list[Any],
    wanted: list[str],
    protocols: list[str],
    method_seed: int,
    metric_seed: int,
    raise_errors: bool,
    keep_outputs: bool,
) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    imgs, sites, ages = data["imgs"], data["sites"], data["ages"]
    shape = imgs.shape[1:]
    rows: list[dict[str, Any]] = []

    def add(protocol: str, metric: str, value: float, reason: str = "") -> None:
        if metric in wanted:
            rows.append(
                {"method": name, "protocol": protocol, "metric": metric,
                 "value": float(value), "reason": reason}
            )

    def fail_all(protocol_list: Sequence[str], reason: str) -> None:
        for p in protocol_list:
            for metric in wanted:
                if not any(r["protocol"] == p and r["metric"] == metric for r in rows):
                    add(p, metric, np.nan, reason)

    def unexpected(stage: str, exc: BaseException) -> str:
        if raise_errors:
            raise exc
        logger.warning("benchmark: %s failed in %s: %s", name, stage, _describe(exc))
        return f"{stage} failed: {_describe(exc)}"

    full = np.full(imgs.shape, np.nan, np.float32) if keep_outputs else None
    try:
        est = clone(estimator)
        params = est.get_params(deep=False) if hasattr(est, "get_params") else {}
        if "random_state" in params and params["random_state"] is None:
            est.set_params(random_state=method_seed)
        fit_args: tuple[Any, ...] = (imgs[train_idx], sites[train_idx])
        if ages is not None and _accepts(est.fit, "ages"):
            fit_args += (ages[train_idx],)
        _, fit_s, fit_mb = measure_cost(est.fit, *fit_args)
    except Exception as exc:
        fail_all(protocols, unexpected("fit", exc))
        return rows, full

    results: dict[str, np.ndarray] = {}
    for protocol, idx in (("seen", train_idx), ("unseen", test_idx)):
        if protocol not in protocols:
            continue
        add(protocol, "fit_seconds", fit_s)
        add(protocol, "fit_peak_mb", fit_mb)
        kwargs: dict[str, Any] = {}
        if _accepts(est.transform, "sites"):
            kwargs["sites"] = sites[idx]
        if ages is not None and _accepts(est.transform, "ages"):
            kwargs["ages"] = ages[idx]
        try:
            out, tr_s, tr_mb = measure_cost(est.transform, imgs[idx], **kwargs)
            results[protocol] = _as_output(out, len(idx), shape)
        except Exception as exc:
            if protocol == "unseen" and _is_unseen_refusal(exc, test_sites):
                reason = f"cannot harmonize unseen sites ({_describe(exc)})"
                logger.info("benchmark: %s: %s", name, reason)
            else:
                reason = unexpected(f"transform ({protocol})", exc)
            fail_all([protocol], reason)
            continue
        add(protocol, "transform_seconds", tr_s / max(len(idx), 1))
        add(protocol, "transform_peak_mb", tr_mb)
        if keep_outputs:
            full[idx] = results[protocol]

    # One intensity scale per method: fitted on its outputs for the training sites and
    # applied to all its outputs, so unseen-site outputs are judged in the same units.
    ranges: dict[str, Any] = {}
    if results:
        ranges["out"] = robust_range(results.get("seen", results.get("unseen")), data["mask"])
    for protocol in results:
        for metric in wanted:
            if metric in _COST_METRICS:
                continue
            try:
                value, reason = _compute(metric, protocol, results, data, train_idx,
                                         test_idx, metric_seed, ranges)
            except Exception as exc:
                value, reason = np.nan, unexpected(f"metric {metric} ({protocol})", exc)
            add(protocol, metric, value, reason)
    return rows, full


def _compute(
    metric: str,
    protocol: str,
    results: dict[str, np.ndarray],
    data: dict[str, Any],
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    seed: int,
    ranges: dict[str, Any],
) -> tuple[float, str]:
    mask, sites, subjects, ages = data["mask"], data["sites"], data["subjects"], data["ages"]
    idx = train_idx if protocol == "seen" else test_idx
    out = results[protocol]
    vr = ranges["out"]
    value: float
    if metric == "traveling_ssim_score":
        if protocol == "seen":
            value = traveling_subject_ssim_score(out, subjects[idx], sites[idx], mask,
                                                 value_range=vr)
        else:
            if "seen" not in results:
                return np.nan, "needs the seen-site outputs, which failed"
            both = np.concatenate([results["seen"], out])
            all_idx = np.concatenate([train_idx, test_idx])
            include = np.r_[np.zeros(len(train_idx), bool), np.ones(len(test_idx), bool)]
            value = traveling_subject_ssim_score(
                both, subjects[all_idx], sites[all_idx], mask, include=include, value_range=vr
            )
        reason = "no subject has images at two sites" if np.isnan(value) else ""
        return value, reason
    if metric == "truth_ssim_score":
        if data["truth"] is None:
            return np.nan, "dataset has no truth"
        if "truth" not in ranges:
            ranges["truth"] = robust_range(np.asarray(data["truth"])[train_idx], mask)
        return truth_ssim_score(out, np.asarray(data["truth"])[idx], mask, value_range=vr,
                                truth_range=ranges["truth"]), ""
    if metric == "distance_correlation_score":
        # within-site and scale-free: each set on its own pooled range (no clipping of a
        # differently scaled unseen site)
        value = distance_correlation_score(data["imgs"][idx], out, sites[idx], mask)
        return value, ("needs >= 3 subjects in a site" if np.isnan(value) else "")
    if metric == "site_predictability":
        if protocol == "seen":
            return site_predictability(out, sites[idx], mask, subjects[idx],
                                       value_range=vr, random_state=seed), ""
        if "seen" not in results:
            return np.nan, "needs the seen-site outputs, which failed"
        both = np.concatenate([results["seen"], out])
        all_idx = np.concatenate([train_idx, test_idx])
        return site_predictability(both, sites[all_idx], mask, subjects[all_idx],
                                   value_range=vr, random_state=seed), ""
    if ages is None:
        return np.nan, "dataset has no ages"
    if metric == "brain_age_error":
        if protocol == "seen":
            return brain_age_error(out, ages[idx], mask, subjects[idx], value_range=vr,
                                   random_state=seed), ""
        if "seen" not in results:
            return np.nan, "needs the seen-site outputs, which failed"
        both = np.concatenate([results["seen"], out])
        all_idx = np.concatenate([train_idx, test_idx])
        train = np.r_[np.ones(len(train_idx), bool), np.zeros(len(test_idx), bool)]
        return brain_age_error(both, ages[all_idx], mask, subjects[all_idx], train=train,
                               value_range=vr, random_state=seed), ""
    if metric == "gm_age_correlation":
        value = gm_age_correlation(out, ages[idx], mask)
        return value, ("GM volume or age is constant" if np.isnan(value) else "")
    raise ValueError(f"Unknown metric {metric!r}.")  # pragma: no cover


# ----------------------------------------------------------------------------------------
# Aggregation and reports
# ----------------------------------------------------------------------------------------
def summarize(dfs: pd.DataFrame | Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Aggregate several benchmark runs (e.g. seeds) into mean ± sd.

    Parameters
    ----------
    dfs : DataFrame or sequence of DataFrames
        Results of :func:`run_benchmark`: one frame per run, or one frame holding several
        runs (rows with the same method, protocol and metric are aggregated).

    Returns
    -------
    pandas.DataFrame
        Columns ``method, protocol, metric, mean, sd, n, reason``: mean and sample standard
        deviation (ddof=1; NaN for a single value) over the runs with a finite value, ``n``
        the number of such runs, ``reason`` the distinct reasons of the missing ones.
    """
    frames = [dfs] if isinstance(dfs, pd.DataFrame) else list(dfs)
    if not frames:
        raise ValueError("summarize needs at least one result DataFrame.")
    df = pd.concat(frames, ignore_index=True)
    missing = {"method", "protocol", "metric", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"Not a run_benchmark result: columns {sorted(missing)} are missing.")
    if "reason" not in df.columns:
        df["reason"] = ""
    out = []
    for (method, protocol, metric), g in df.groupby(
        ["method", "protocol", "metric"], sort=False
    ):
        vals = g["value"].to_numpy(dtype=float)
        ok = vals[np.isfinite(vals)]
        reasons = [r for r in dict.fromkeys(g["reason"].fillna("").astype(str)) if r]
        out.append({
            "method": method,
            "protocol": protocol,
            "metric": metric,
            "mean": float(ok.mean()) if len(ok) else np.nan,
            "sd": float(ok.std(ddof=1)) if len(ok) > 1 else np.nan,
            "n": len(ok),
            "reason": "; ".join(reasons),
        })
    return pd.DataFrame(out, columns=["method", "protocol", "metric", "mean", "sd", "n",
                                      "reason"])


def _arrow(metric: str) -> str:
    direction = METRICS.get(metric, ("", ""))[0]
    return {"higher": "↑", "lower": "↓"}.get(direction, "")


def _decimals(value: float) -> int:
    a = abs(value)
    if a >= 100 or a == 0:
        return 0
    if a >= 10:
        return 1
    if a >= 1:
        return 2
    return max(3, int(-np.floor(np.log10(a))) + 1)


def _fmt(mean: float, sd: float | None) -> str:
    d = _decimals(mean)
    text = f"{mean:.{d}f}"
    if sd is not None and np.isfinite(sd):
        text += f" ± {sd:.{d}f}"
    return text


def _ordered(values: Iterable[Any], order: Sequence[Any]) -> list[Any]:
    seen = list(dict.fromkeys(values))
    return [v for v in order if v in seen] + [v for v in seen if v not in order]


def to_markdown(
    df: pd.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    legend: bool = True,
) -> str:
    """Render benchmark results as Markdown tables, one per protocol.

    Rows are methods, columns metrics with an arrow saying whether higher (↑) or lower
    (↓) is better. Values missing for a reason show ``n/a`` with a numbered note.

    Parameters
    ----------
    df : DataFrame
        Output of :func:`run_benchmark` (one run: values) or :func:`summarize` (several
        runs: cells read ``mean ± sd``).
    metrics : sequence of str, default=None
        Columns to show, in order (default: every metric present).
    legend : bool, default=True
        Append a list of the metrics with their descriptions.

    Returns
    -------
    str
        Markdown text.
    """
    summary = "mean" in df.columns
    value_col = "mean" if summary else "value"
    cols = list(metrics) if metrics is not None else _ordered(df["metric"], list(METRICS))
    lines: list[str] = []
    notes: dict[str, int] = {}
    for protocol in _ordered(df["protocol"], PROTOCOLS):
        sub = df[df["protocol"] == protocol]
        title = {"seen": "Seen sites (harmonizers fitted on them)",
                 "unseen": "Unseen sites (held out of fit)"}.get(protocol, str(protocol))
        lines += [f"### {title}", ""]
        lines.append("| method | " + " | ".join(f"{m} {_arrow(m)}" for m in cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for method in _ordered(sub["method"], []):
            cells = []
            for metric in cols:
                hit = sub[(sub["method"] == method) & (sub["metric"] == metric)]
                if hit.empty:
                    cells.append("")
                    continue
                row = hit.iloc[0]
                value = float(row[value_col])
                reason = str(row.get("reason", "") or "")
                if np.isfinite(value):
                    sd = float(row["sd"]) if summary else None
                    cells.append(_fmt(value, sd))
                else:
                    if reason:
                        key = reason
                        notes.setdefault(key, len(notes) + 1)
                        cells.append(f"n/a [{notes[key]}]")
                    else:
                        cells.append("n/a")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if notes:
        lines += ["Notes:", ""]
        lines += [f"[{i}] {reason}  " for reason, i in notes.items()]
        lines.append("")
    if legend:
        lines += ["Metrics (↑ higher is better, ↓ lower is better):", ""]
        for m in cols:
            if m in METRICS:
                lines.append(f"- `{m}` {_arrow(m)}: {METRICS[m][1]}")
        if summary:
            n = int(df["n"].max()) if len(df) else 0
            lines.append(f"- cells: mean ± sd over up to {n} runs")
        lines.append("")
    return "\n".join(lines)


def plot_metrics(
    df: pd.DataFrame,
    path: str | PathLike,
    *,
    metrics: Sequence[str] | None = None,
    dpi: int = 100,
) -> Path:
    """Bar charts: one panel per metric, one bar per method and protocol.

    Parameters
    ----------
    df : DataFrame
        Output of :func:`run_benchmark` or :func:`summarize` (then error bars show ± sd).
    path : str or path-like
        PNG file to write (its folder is created).
    metrics : sequence of str, default=None
        Panels to draw (default: every metric present).
    dpi : int, default=100
        Resolution.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from matplotlib.figure import Figure  # Agg canvas: no display, no pyplot state

    summary = "mean" in df.columns
    value_col = "mean" if summary else "value"
    cols = list(metrics) if metrics is not None else _ordered(df["metric"], list(METRICS))
    if not cols:
        raise ValueError("Nothing to plot: the DataFrame has no metric rows.")
    methods = _ordered(df["method"], [])
    protocols = _ordered(df["protocol"], PROTOCOLS)
    ncols = min(4, len(cols))
    nrows = int(np.ceil(len(cols) / ncols))
    fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows + 0.4))
    fig.subplots_adjust(left=0.06, right=0.99, top=0.93, bottom=0.12, wspace=0.3, hspace=0.75)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    width = 0.8 / len(protocols)
    x = np.arange(len(methods))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for k, metric in enumerate(cols):
        ax = axes.flat[k]
        for p, protocol in enumerate(protocols):
            sub = df[(df["metric"] == metric) & (df["protocol"] == protocol)]
            vals, errs = [], []
            for method in methods:
                hit = sub[sub["method"] == method]
                vals.append(float(hit[value_col].iloc[0]) if len(hit) else np.nan)
                errs.append(float(hit["sd"].iloc[0]) if summary and len(hit) else np.nan)
            vals_a = np.asarray(vals)
            errs_a = np.nan_to_num(np.asarray(errs))
            pos = x - 0.4 + width * (p + 0.5)
            ax.bar(pos, np.nan_to_num(vals_a), width, yerr=errs_a if summary else None,
                   color=colors[p % len(colors)], label=protocol, capsize=2)
            for xi, v in zip(pos, vals_a):
                if not np.isfinite(v):
                    ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_title(f"{metric} {_arrow(metric)}", fontsize=9)
        ax.set_xticks(x, methods, rotation=30, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.axhline(0, color="black", linewidth=0.5)
    for ax in list(axes.flat)[len(cols):]:
        ax.set_visible(False)
    if len(protocols) > 1:
        axes.flat[0].legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_slices(
    outputs: Mapping[str, Any],
    dataset: Any,
    subject: Any,
    path: str | PathLike,
    *,
    sites: Sequence[Any] | None = None,
    axis: int = 2,
    index: int | None = None,
    test_sites: Sequence[Any] | None = None,
    dpi: int = 100,
) -> Path:
    """One slice of one subject at several sites: input, each method and the truth.

    Each row (the raw input, each method's output, then ``dataset.truth`` when present) is
    displayed on the common scale of :func:`~harmonix.benchmark.metrics.robust_scale`
    fitted on that row's images, so a site's remaining intensity difference shows.

    Parameters
    ----------
    outputs : mapping of str to ndarray of shape (n_images, i, j, k)
        Harmonized images of every dataset image, in dataset order (as returned by
        ``run_benchmark(..., return_outputs=True)``); NaN images are shown as n/a.
    dataset : MultisiteDataset or object
        With ``imgs``, ``sites``, ``subjects``, ``mask`` (and optionally ``truth``).
    subject : label
        Subject to show.
    path : str or path-like
        PNG file to write.
    sites : sequence of labels, default=None
        Columns (default: every site where the subject was scanned).
    axis : int, default=2
        Axis orthogonal to the slice (2 = axial on the MNI grids).
    index : int, default=None
        Slice index (default: middle of the brain mask along ``axis``).
    test_sites : sequence of labels, default=None
        Sites to mark "(unseen)" in the column titles.
    dpi : int, default=100

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from matplotlib.figure import Figure

    data = _dataset_arrays(dataset)
    rows_idx = np.flatnonzero(data["subjects"] == subject)
    if not len(rows_idx):
        raise ValueError(f"Subject {subject!r} is not in the dataset.")
    by_site = {data["sites"][i]: i for i in rows_idx}
    columns = list(sites) if sites is not None else _site_order(data["sites"][rows_idx])
    absent = [s for s in columns if s not in by_site]
    if absent:
        raise ValueError(f"Subject {subject!r} has no image at site(s) {absent}.")
    idx = [by_site[s] for s in columns]
    mask = data["mask"]
    if index is None:
        where = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        index = int((where.min() + where.max()) // 2)
    panels: list[tuple[str, Any]] = [("input", data["imgs"])]
    panels += [(str(k), v) for k, v in outputs.items()]
    if data["truth"] is not None:
        panels.append(("truth", data["truth"]))
    unseen = set(test_sites or [])
    fig = Figure(figsize=(2.0 * len(columns) + 0.6, 2.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), len(columns), squeeze=False)
    for r, (label, images) in enumerate(panels):
        arr = np.asarray(images)[idx].astype(np.float32)
        ok = np.isfinite(arr).all(axis=(1, 2, 3))
        shown = np.zeros_like(arr)
        if ok.any():
            shown[ok] = robust_scale(arr[ok], mask)
        for c, site in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if ok[c]:
                ax.imshow(np.rot90(np.take(shown[c], index, axis=axis)), cmap="gray",
                          vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            if r == 0:
                ax.set_title(f"{site}{' (unseen)' if site in unseen else ''}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(f"subject {subject}", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
