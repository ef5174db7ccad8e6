"""Run every harmonizer on one data set and score it with the common metrics.

:func:`run_benchmark` fits each harmonizer on the training sites and scores its outputs on
those sites ("seen" protocol) and on held-out sites ("unseen" protocol), optionally with
an *oracle* row giving the ceiling of every metric; it returns a tidy
:class:`pandas.DataFrame` with a 95 % bootstrap interval (subjects resampled) for every
value. The per-metric scoring lives in :mod:`harmonix.benchmark.scoring`; summaries, tables
and figures in :mod:`harmonix.benchmark.report` (also importable from here, where they used
to be).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from tqdm.auto import tqdm

from harmonix.benchmark.data import (
    BenchmarkDataset,
    DataArrays,
    dataset_arrays,
    dataset_from_manifest,
)
from harmonix.benchmark.metrics import METRICS, resolve_metric_names
from harmonix.benchmark.metrics.cost import measure_cost
from harmonix.benchmark.report import plot_metrics, plot_slices, summarize, to_markdown
from harmonix.benchmark.scoring import COST_METRICS, MethodRun, Plan, describe, score
from harmonix.exceptions import UnseenSiteError

__all__ = [
    "ORACLE",
    "BenchmarkDataset",
    "dataset_from_manifest",
    "oracle_outputs",
    "plot_metrics",
    "plot_slices",
    "run_benchmark",
    "summarize",
    "to_markdown",
]

logger = logging.getLogger(__name__)

#: Name of the oracle row (see :func:`oracle_outputs`).
ORACLE = "oracle"
COLUMNS = [
    "method",
    "protocol",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "reason",
    "held_out",
    "dataset",
]


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------
def _label_key(label: Any) -> tuple[str, str]:
    return type(label).__name__, str(label)


def _draw_test_site(
    labels: list[Any], reference: Any, seed: int, random_state: Any
) -> tuple[list[Any], str]:
    """The default held-out site: one site other than the reference, drawn with ``seed``
    (from ``random_state``) among the labels in sorted order (the order of the images
    does not matter)."""
    candidates = sorted((s for s in labels if s != reference), key=_label_key)
    if len(labels) < 3 or not candidates:
        return [], "none held out: fewer than 3 sites"
    pick = candidates[int(np.random.default_rng(seed).integers(len(candidates)))]
    names = ", ".join(map(str, candidates))
    generator = isinstance(random_state, np.random.Generator)
    state = "a Generator" if generator else repr(random_state)
    return [pick], f"drawn with random_state={state} among the non-reference sites ({names})"


def _check_test_sites(test_sites: Any, labels: list[Any], reference: Any) -> list[Any]:
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
    metrics = resolve_metric_names(metrics)
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


def oracle_outputs(dataset: Any) -> np.ndarray:
    """The oracle's "harmonized" images: each subject's own scan at the reference site.

    With traveling subjects, a perfect harmonization to the reference site would turn
    every scan of a subject into that subject's reference-site scan; using the real scan
    gives the ceiling of every metric that compares images (traveling-subject SSIM 1, site
    predictability at chance...).

    Parameters
    ----------
    dataset : MultisiteDataset or object
        With ``imgs``, ``subjects``, ``sites``, ``mask`` and ``reference_site``; every
        subject must have an image at the reference site, unless the data set gives each
        image's reference-site scan as ``reference_imgs`` (``make_multisite(...,
        traveling=False)``), which is then returned.

    Returns
    -------
    ndarray of shape (n_images, i, j, k), float32
        Image ``k`` is the reference-site image of subject ``subjects[k]``.
    """
    data = dataset if isinstance(dataset, DataArrays) else dataset_arrays(dataset)
    if data.reference_imgs is not None:  # subjects not scanned at every site
        return np.asarray(data.reference_imgs, np.float32)
    if data.reference is None:
        raise ValueError("The oracle needs dataset.reference_site; this data set has none.")
    at_ref = {
        s: i for i, s in enumerate(data.subjects.tolist()) if data.sites[i] == data.reference
    }
    missing = sorted({str(s) for s in data.subjects.tolist() if s not in at_ref})
    if missing:
        raise ValueError(
            f"The oracle needs every subject scanned at the reference site "
            f"{data.reference!r}; missing: {missing[:5]}."
        )
    return np.asarray(data.imgs[[at_ref[s] for s in data.subjects.tolist()]], np.float32)


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
    oracle: bool = False,
    n_boot: int = 1000,
    verbose: bool = False,
    raise_errors: bool = False,
    return_outputs: bool | Sequence[int] = False,
    covariates: Mapping[str, Iterable[str]] | None = None,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Fit every harmonizer on the training sites and score it on seen and unseen sites.

    For each ``name, estimator`` pair, a clone of the estimator is fitted on the images of
    all sites except ``test_sites`` (``fit(imgs, sites, ages)``), then harmonizes

    * the training images themselves — protocol ``"seen"``;
    * the images of ``test_sites`` — protocol ``"unseen"`` (sites never seen in fit).

    ``sites`` and the covariates (``dataset.covariates``: age, sex, diagnosis...; else
    ``ages``) are passed to ``fit`` and ``transform`` when they accept them (ComBat needs
    them). Each metric of :data:`harmonix.benchmark.metrics.METRICS` is then computed per
    protocol with the same folds and seeds for every method:

    ============================ ==========================================================
    metric                       seen / unseen
    ============================ ==========================================================
    traveling_subject_ssim_score pairs of seen images / pairs with an unseen image (its
    subject_specificity_score    subject at any other site, seen or unseen)
    truth_ssim_score             seen / unseen images vs ``dataset.truth``
    distance_correlation_score   within each seen / unseen site, before vs after
    site_predictability_error,   seen images (chance 1/n_train_sites) / all images
    site_histogram_error,        (chance 1/n_sites)
    site_chance_level
    brain_age_error,             CV on seen images / trained on seen images of training
    brain_age_null_error         subjects, tested on unseen images of held-out subjects
    gm_age_correlation           within each seen / unseen site, averaged
    true_gm_age_correlation      the same with the true GM volumes (``dataset.gm``)
    disease_effect_error,        seen images, all sites pooled / unseen images (needs
    true_disease_effect          ``covariates["diagnosis"]``, ``disease_region`` and
                                 ``pattern_gm_volume``; adjusted for the other covariates)
    disease_auc_score            CV on seen images / on unseen images
    fit_seconds, fit_peak_mb     the one fit (same value in both protocols)
    transform_seconds (/image),  transform of the seen / unseen images
    transform_peak_mb
    ============================ ==========================================================

    Every value comes with a 95 % bootstrap interval (``ci_low``, ``ci_high``): subjects
    are resampled with replacement ``n_boot`` times and the value recomputed from the
    per-image (per-pair, per-prediction) results; cross-validated models are not refitted
    (:mod:`harmonix.benchmark.bootstrap`). Costs and the chance level have no interval.

    With ``oracle=True``, a row named ``"oracle"`` scores each subject's own scan at the
    reference site as the harmonized image of all its scans (:func:`oracle_outputs`): the
    ceiling of the image metrics. It is not a method, so it has no costs; its
    ``truth_ssim_score`` is below 1 because the truth has no bias field or noise.

    A method that refuses unseen sites by raising
    :class:`~harmonix.exceptions.UnseenSiteError` (e.g.
    ``ComBatHarmonizer(unseen_site="error")``) gets NaN unseen values with that reason.
    Any other exception (in fit, transform or a metric) gives NaN values with the reason
    and a logged warning, unless ``raise_errors=True``, which re-raises it.

    Image metrics see one intensity scale per method: the
    :func:`~harmonix.benchmark.metrics.robust_range` of its outputs for the training
    sites, applied to all its outputs (see :mod:`harmonix.benchmark.metrics`), so a method
    that puts an unseen site on another scale is penalized.

    Parameters
    ----------
    harmonizers : mapping of str to estimator
        Display name -> harmonizer (``fit(imgs, sites, ages)`` / ``transform(imgs, ...)``);
        each is cloned, never modified. May be empty when ``oracle=True``.
    dataset : MultisiteDataset or object
        Needs ``imgs`` (n, i, j, k), ``sites``, ``subjects`` and ``mask`` (common brain
        mask); ``ages`` (for the biology metrics and fitting), ``truth`` (for
        ``truth_ssim_score``) and ``gm_volume`` or ``gm`` (true GM volumes or maps, for
        ``true_gm_age_correlation``)
        are used when present, ``reference_site`` for the oracle and when choosing the
        default held-out site; ``affine`` gives the voxel size to harmonizers whose
        ``voxel_size`` parameter is None (IGUANe: the images are arrays).
    test_sites : label or sequence of labels, default=None
        Sites held out of fit. ``None``: with at least 3 sites, one site other than the
        reference site, drawn with ``random_state`` among the site labels in sorted order
        (so the order of the images does not matter); with 2 sites none. ``[]``: no
        unseen protocol. The result's ``held_out`` column names the held-out sites and
        ``df.attrs["held_out"]`` also says how they were chosen.
    random_state : int, numpy Generator or None, default=None
        Seeds the choice of the held-out site, the metrics' cross-validation folds and
        bootstrap, and every harmonizer whose ``random_state`` parameter is None (all
        methods get the same seed).
    metrics : iterable of str, default=None
        Subset of :data:`~harmonix.benchmark.metrics.METRICS` to compute (default: all;
        former names such as ``"traveling_ssim_score"`` are accepted with a warning).
    oracle : bool, default=False
        Add the oracle row.
    n_boot : int, default=1000
        Bootstrap samples per value (0: no intervals).
    verbose : bool, default=False
        Show a progress bar (tqdm) and log progress at INFO level.
    raise_errors : bool, default=False
        Re-raise unexpected exceptions instead of recording NaN with the reason.
    return_outputs : bool or sequence of int, default=False
        Also return the harmonized images: ``{name: float32 array (n, i, j, k)}`` in
        dataset order, NaN for images a method could not harmonize. A sequence of image
        indices returns those images only, in that order (e.g. one subject's, for
        :func:`plot_slices`): the benchmark keeps one method's outputs in memory at a
        time, and all of them only when they are returned.
    covariates : mapping of str to sequence of str, default=None
        The columns of ``dataset.covariates`` each named harmonizer receives (e.g.
        ``{"ComBat": ["age", "sex"], "ComBat+dx": ["age", "sex", "diagnosis"]}`` to run
        ComBat with and without the diagnosis); harmonizers not named receive every
        column.

    Returns
    -------
    pandas.DataFrame or (DataFrame, dict)
        Tidy results with columns ``method, protocol, metric, value, ci_low, ci_high,
        reason, held_out, dataset``: ``reason`` is ``""`` when the value was computed,
        ``held_out`` the held-out sites (comma-separated), ``dataset`` a short
        fingerprint of the data set's images and labels, with which
        :func:`~harmonix.benchmark.summarize` recognizes runs on the same subjects.
        ``df.attrs["held_out"]`` is ``{"sites": [...], "rule": "..."}``.

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
    >>> df = run_benchmark({"none": IdentityHarmonizer()}, ds, oracle=True,
    ...                    random_state=0)  # doctest: +SKIP
    """
    data = dataset_arrays(dataset)
    if not isinstance(harmonizers, Mapping) or not (harmonizers or oracle):
        raise ValueError("harmonizers must be a non-empty dict {name: estimator}.")
    if oracle and ORACLE in harmonizers:
        raise ValueError(f"{ORACLE!r} is the oracle row's name; rename that harmonizer.")
    labels = list(dict.fromkeys(data.sites.tolist()))
    rng = np.random.default_rng(random_state)
    method_seed, metric_seed, site_seed = (int(s) for s in rng.integers(0, 2**31 - 1, size=3))
    if test_sites is None:
        test, rule = _draw_test_site(labels, data.reference, site_seed, random_state)
    else:
        test, rule = _check_test_sites(test_sites, labels, data.reference), "given (test_sites)"
    logger.info("benchmark: held-out site(s) %s, %s", test, rule)
    is_test = np.isin(data.sites, test) if test else np.zeros(len(data.sites), bool)
    plan = Plan(
        data=data,
        train_idx=np.flatnonzero(~is_test),
        test_idx=np.flatnonzero(is_test),
        metrics=_check_metrics(metrics),
        protocols=["seen", "unseen"] if is_test.any() else ["seen"],
        method_seed=method_seed,
        metric_seed=metric_seed,
        raise_errors=raise_errors,
        n_boot=int(n_boot),
    )
    keep = _output_indices(return_outputs, len(data.imgs))
    columns = _check_covariate_columns(covariates, harmonizers, data)
    oracle_imgs = oracle_outputs(data) if oracle else None
    rows: list[dict[str, Any]] = []
    outputs: dict[str, np.ndarray] = {}
    items = list(harmonizers.items()) + ([(ORACLE, None)] if oracle else [])
    for name, estimator in tqdm(items, desc="harmonizers", disable=not verbose):
        if verbose:
            logger.info("benchmark: %s", name)
        run = MethodRun(str(name), plan)
        if estimator is None:
            _run_oracle(run, oracle_imgs)
        else:
            _run_method(run, estimator, columns.get(str(name)))
        score(run)
        rows.extend(run.rows)
        if keep is not None:
            full = np.full((len(keep), *data.imgs.shape[1:]), np.nan, np.float32)
            where = {int(i): k for k, i in enumerate(keep)}
            for protocol, out in run.outputs.items():
                for j, i in enumerate(plan.index(protocol).tolist()):
                    if i in where:
                        full[where[i]] = out[j]
            outputs[run.name] = full
        del run  # one method's outputs in memory at a time
    df = pd.DataFrame(rows, columns=COLUMNS[:-2])
    df[["value", "ci_low", "ci_high"]] = df[["value", "ci_low", "ci_high"]].astype(float)
    df["held_out"] = ", ".join(map(str, test))
    df["dataset"] = data.digest()
    df.attrs["held_out"] = {"sites": list(test), "rule": rule}
    return df if keep is None else (df, outputs)


def _output_indices(return_outputs: Any, n: int) -> np.ndarray | None:
    """The images whose outputs :func:`run_benchmark` returns (None: no outputs)."""
    if return_outputs is True:
        return np.arange(n)
    if return_outputs is False or return_outputs is None:
        return None
    idx = np.asarray(return_outputs)
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or len(idx) == 0:
        raise TypeError(
            "return_outputs must be True, False or a sequence of image indices, "
            f"got {return_outputs!r:.80}."
        )
    if idx.min() < -n or idx.max() >= n:
        raise ValueError(f"return_outputs has indices outside the {n} images.")
    return idx % n


def _check_covariate_columns(
    covariates: Mapping[str, Iterable[str]] | None,
    harmonizers: Mapping[str, Any],
    data: DataArrays,
) -> dict[str, list[str]]:
    if covariates is None:
        return {}
    if not isinstance(covariates, Mapping):
        raise ValueError("covariates must map harmonizer names to lists of column names.")
    unknown = sorted(set(map(str, covariates)) - set(map(str, harmonizers)))
    if unknown:
        raise ValueError(f"covariates names {unknown}, which are not harmonizers.")
    have = [] if data.covariates is None else list(data.covariates.columns)
    out = {}
    for name, cols in covariates.items():
        cols = [cols] if isinstance(cols, str) else list(cols)
        missing = [c for c in cols if c not in have]
        if missing:
            raise ValueError(
                f"covariates[{name!r}] names {missing}, not columns of dataset.covariates {have}."
            )
        out[str(name)] = cols
    return out


def _metadata(
    est_method: Callable[..., Any], data: DataArrays, idx: np.ndarray, columns: Any
) -> dict:
    """The ages or covariates (of images ``idx``) a fit or transform accepts."""
    kwargs: dict[str, Any] = {}
    cov = data.covariates
    if cov is not None and columns is not None:
        cov = cov[list(columns)]
    if cov is not None and len(cov.columns) and _accepts(est_method, "covariates"):
        kwargs["covariates"] = cov.iloc[idx].reset_index(drop=True)
        if "age" in cov.columns:
            return kwargs
    if data.ages is not None and _accepts(est_method, "ages"):
        kwargs["ages"] = data.ages[idx]
    return kwargs


def _run_oracle(run: MethodRun, oracle_imgs: np.ndarray) -> None:
    for protocol in run.plan.protocols:
        run.outputs[protocol] = oracle_imgs[run.plan.index(protocol)]
        for metric in COST_METRICS:
            run.add(protocol, metric, np.nan, reason="the oracle is not a method: no cost")


def _run_method(run: MethodRun, estimator: Any, columns: list[str] | None = None) -> None:
    plan, data = run.plan, run.plan.data
    try:
        est = clone(estimator)
        params = est.get_params(deep=False) if hasattr(est, "get_params") else {}
        if "random_state" in params and params["random_state"] is None:
            est.set_params(random_state=plan.method_seed)
        if params.get("voxel_size", 0) is None and data.voxel_size is not None:
            est.set_params(voxel_size=data.voxel_size)  # the arrays' voxel size (IGUANe)
        fit_args = (data.imgs[plan.train_idx], data.sites[plan.train_idx])
        fit_kwargs = _metadata(est.fit, data, plan.train_idx, columns)
        _, fit_s, fit_mb = measure_cost(est.fit, *fit_args, **fit_kwargs)
    except Exception as exc:
        run.fail(plan.protocols, run.unexpected("fit", exc))
        return
    for protocol in plan.protocols:
        idx = plan.index(protocol)
        run.add(protocol, "fit_seconds", fit_s)
        run.add(protocol, "fit_peak_mb", fit_mb)
        kwargs: dict[str, Any] = _metadata(est.transform, data, idx, columns)
        if _accepts(est.transform, "sites"):
            kwargs["sites"] = data.sites[idx]
        try:
            out, tr_s, tr_mb = measure_cost(est.transform, data.imgs[idx], **kwargs)
            run.outputs[protocol] = _as_output(out, len(idx), data.imgs.shape[1:])
        except UnseenSiteError as exc:
            reason = f"cannot harmonize unseen sites ({describe(exc)})"
            logger.info("benchmark: %s: %s", run.name, reason)
            run.fail([protocol], reason)
            continue
        except Exception as exc:
            run.fail([protocol], run.unexpected(f"transform ({protocol})", exc))
            continue
        run.add(protocol, "transform_seconds", tr_s / max(len(idx), 1))
        run.add(protocol, "transform_peak_mb", tr_mb)
