"""Disease effects kept by harmonization: effect size and classification.

A harmonization must remove site effects without removing biology. When a diagnosis is
unbalanced across sites (e.g. 10 % patients at one site, 70 % at another), a method that
does not know the diagnosis can take part of the disease effect for a site effect (ComBat
without the covariate) and remove it. Two measures:

* :func:`disease_effect_error`: the standardized effect of diagnosis on the GM volume of
  the disease's region (:func:`~harmonix.benchmark.metrics.tissue.pattern_gm_volumes`), adjusted
  for the other covariates (age, sex), measured on the harmonized images of all sites
  pooled, minus the same effect on the true regional volumes (:func:`disease_effect`);
* :func:`disease_auc_score`: the subject-grouped cross-validated AUC of a logistic
  regression of diagnosis on regional tissue fractions. Site confounding inflates it for
  unharmonized images (the classifier can read the site, which predicts the diagnosis);
  compare it with the oracle's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from harmonix._docs import docdict, fill_doc
from harmonix.benchmark._folds import grouped_splits
from harmonix.benchmark.metrics.biology import _tissue_age_features
from harmonix.benchmark.metrics.scale import _as_labels, robust_scale
from harmonix.benchmark.metrics.tissue import Tissues, pattern_gm_volumes, segment_tissues

__all__ = [
    "DiseasePredictions",
    "auc",
    "disease_auc_score",
    "disease_effect",
    "disease_effect_error",
]

# Parameters documented once for the disease functions (harmonix._docs.fill_doc).
docdict["bm_diagnosis"] = """\
diagnosis : array-like of shape (n_images,)
    Two levels: ``control`` and the patients'."""

docdict["bm_adjust_for"] = """\
covariates : pandas.DataFrame or mapping, default=None
    Columns to adjust for (e.g. age and sex), one row per image."""

docdict["bm_control"] = """\
control : hashable, default="CN"
    The control level."""


def _patients(diagnosis: Any, n: int, control: Any) -> np.ndarray:
    labels = _as_labels(diagnosis, n, "diagnosis").astype(str)
    levels = sorted(set(labels.tolist()))
    if len(levels) != 2 or str(control) not in levels:
        raise ValueError(
            f"diagnosis must hold two levels, one of them the control level {control!r}; "
            f"got {levels}."
        )
    return labels != str(control)


def _adjusters(covariates: Any, n: int) -> np.ndarray:
    """The design columns of the covariates to adjust for (indicators for categories)."""
    if covariates is None:
        return np.empty((n, 0))
    frame = pd.DataFrame(covariates).reset_index(drop=True)
    if len(frame) != n:
        raise ValueError(f"covariates must have one row per image ({n}); got {len(frame)}.")
    cols = []
    for name in frame.columns:
        col = frame[name]
        if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col):
            cols.append(col.to_numpy(dtype=np.float64)[:, None])
        else:
            text = col.astype(str).to_numpy()
            cols += [(text == lev).astype(np.float64)[:, None] for lev in sorted(set(text))[1:]]
    return np.hstack(cols) if cols else np.empty((n, 0))


def standardized_effect(y: np.ndarray, design: np.ndarray) -> float:
    """Last column's OLS coefficient over the residual standard deviation (NaN when the
    design is rank deficient or leaves no residual degree of freedom)."""
    n, p = design.shape
    if n <= p:
        return float("nan")
    coef, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    if rank < p:
        return float("nan")
    resid = y - design @ coef
    sd = float(np.sqrt(resid @ resid / (n - p)))
    if not sd > 1e-9 * float(np.std(y)):  # an exact fit (e.g. as many subjects as columns)
        return float("nan")
    return float(coef[-1] / sd)


def effect_design(diagnosis: Any, covariates: Any, n: int, control: Any) -> np.ndarray:
    return np.hstack(
        [np.ones((n, 1)), _adjusters(covariates, n), _patients(diagnosis, n, control)[:, None]]
    )


@fill_doc
def disease_effect(
    volumes: Any, diagnosis: Any, covariates: Any = None, *, control: Any = "CN"
) -> float:
    """Standardized effect of diagnosis on a volume, adjusted for covariates.

    The coefficient of the patient indicator in the least-squares regression of the
    volumes on an intercept, the covariates (continuous columns as they are, categorical
    ones as indicators) and the diagnosis, divided by the residual standard deviation:
    Cohen's d adjusted for the covariates. Negative when patients have less volume.

    Parameters
    ----------
    volumes : array-like of shape (n_images,)
        E.g. the GM volume of the disease's region.
    %(bm_diagnosis)s
    %(bm_adjust_for)s
    %(bm_control)s

    Returns
    -------
    float
        The adjusted standardized effect (NaN when the design is degenerate).
    """
    y = np.asarray(volumes, dtype=np.float64)
    if y.ndim != 1 or not np.isfinite(y).all():
        raise ValueError("volumes must be finite numbers, one per image.")
    return standardized_effect(y, effect_design(diagnosis, covariates, len(y), control))


@fill_doc
def disease_effect_error(
    imgs: Any,
    diagnosis: Any,
    mask: Any,
    region: Any,
    true_volumes: Any,
    covariates: Any = None,
    *,
    control: Any = "CN",
    margin: int = 5,
) -> float:
    """How much of the disease effect the harmonized images keep, in units of d.

    The standardized effect of diagnosis (:func:`disease_effect`, adjusted for
    ``covariates``) on the regional GM volumes measured from ``imgs`` pooled over sites
    (:func:`~harmonix.benchmark.metrics.tissue.pattern_gm_volumes`), minus the same on the true
    regional volumes, signed so that a negative error means a weaker effect than the
    truth (part of it lost) and a positive one a stronger effect. 0 is best; even a
    perfect harmonization stays below 0 here, since any intensity-based volume is a noisy
    measure of the true one (compare with the benchmark's oracle row).

    Parameters
    ----------
    %(bm_harmonized)s
    %(bm_diagnosis)s
    %(bm_mask2)s
    region : ndarray of bool of shape (i, j, k)
        The disease's region (``make_multisite(...).disease_region``).
    true_volumes : array-like of shape (n_images,)
        True GM volume of the region (``make_multisite(...).pattern_gm_volume``).
    %(bm_adjust_for)s
    %(bm_control)s
    margin : int, default=5
        Neighbourhood of the region for the local normalization, in voxels.

    Returns
    -------
    float
    """
    measured = pattern_gm_volumes(imgs, mask, region, margin=margin)
    true = np.asarray(true_volumes, dtype=np.float64)
    if true.shape != measured.shape:
        raise ValueError(f"true_volumes must have one value per image ({len(measured)}).")
    return effect_error(measured, true, effect_design(diagnosis, covariates, len(true), control))


def effect_error(measured: np.ndarray, true: np.ndarray, design: np.ndarray) -> float:
    """:func:`disease_effect_error` from volumes and the effect design."""
    d_true = standardized_effect(true, design)
    return float(np.sign(d_true) * (standardized_effect(measured, design) - d_true))


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of scores for binary labels (ties count one half).

    The Mann-Whitney statistic from ranks: the value of
    :func:`sklearn.metrics.roc_auc_score` without its input checks (the bootstrap calls
    it thousands of times). NaN when a class is absent.
    """
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = np.asarray(score)[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True)
class DiseasePredictions:
    """Out-of-fold scores of :func:`disease_auc_score` (``return_predictions=True``).

    Attributes
    ----------
    index : ndarray of int
        Image of each prediction.
    patient : ndarray of bool
        Whether the image is a patient's.
    score : ndarray
        Out-of-fold decision value of the classifier (higher: more likely a patient).
    """

    index: np.ndarray
    patient: np.ndarray
    score: np.ndarray


@fill_doc
def disease_auc_score(
    imgs: Any,
    diagnosis: Any,
    mask: Any,
    groups: Any = None,
    *,
    control: Any = "CN",
    n_splits: int = 5,
    regions: int = 6,
    C: float = 0.1,
    random_state: Any = None,
    tissues: Tissues | None = None,
    return_predictions: bool = False,
) -> float | tuple[float, DiseasePredictions]:
    """Cross-validated AUC of diagnosis from regional tissue fractions. Higher is better.

    Features: the mean CSF and GM fractions of
    :func:`~harmonix.benchmark.metrics.tissue.segment_tissues` in blocks of a grid of about
    ``regions`` blocks along the longest axis, and the global fractions (the brain-age
    features); a standardized logistic regression (L2, ``C``) is cross-validated with
    folds stratified by diagnosis and grouped by subject, and the AUC is computed on the
    pooled out-of-fold decision values.

    When the diagnosis is unbalanced across sites, images that still carry site effects
    score *higher* than they should: the classifier reads the site, which predicts the
    diagnosis. Judge a method by its distance to the oracle's AUC (images without site
    effects), not by the largest value.

    Parameters
    ----------
    %(bm_harmonized)s
    %(bm_diagnosis)s
    %(bm_mask2)s
    %(bm_groups)s
    %(bm_control)s
    n_splits : int, default=5
        Folds (fewer when a class has fewer subjects).
    regions : int, default=6
        Blocks along the longest image axis.
    C : float, default=0.1
        Inverse L2 penalty of the logistic regression.
    %(bm_fold_seed)s
    %(bm_tissues)s
    return_predictions : bool, default=False
        Also return the out-of-fold scores (:class:`DiseasePredictions`).

    Returns
    -------
    float or (float, DiseasePredictions)
    """
    if tissues is None:
        tissues = segment_tissues(robust_scale(imgs, mask), mask)
    n = len(tissues)
    patient = _patients(diagnosis, n, control)
    g = np.arange(n) if groups is None else _as_labels(groups, n, "groups")
    X = _tissue_age_features(tissues, regions)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
    n_splits = min(n_splits, int(min(patient.sum(), (~patient).sum())))
    if n_splits < 2:
        raise ValueError("disease_auc_score needs at least 2 patients and 2 controls.")
    score = np.full(n, np.nan)
    for train, test in grouped_splits(patient.astype(int), g, n_splits, random_state):
        if len(np.unique(patient[train])) < 2:
            continue
        score[test] = model.fit(X[train], patient[train]).decision_function(X[test])
    ok = np.isfinite(score)
    pred = DiseasePredictions(np.flatnonzero(ok), patient[ok], score[ok])
    value = auc(pred.patient, pred.score)
    return (value, pred) if return_predictions else value
