"""Subject-grouped cross-validation folds shared by the cross-validated metrics."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from harmonix.exceptions import BenchmarkWarning


def subject_groups(groups: Any, n: int, metric: str) -> np.ndarray:
    """The subject of each of ``n`` images, or a warning and one subject per image.

    Without ``groups`` a cross-validated metric cannot keep a subject's images together:
    with traveling subjects or repeated scans the model is tested on subjects it was
    trained on, and the score looks better than it is (on 4 mm synthetic traveling
    subjects: the oracle's site predictability 0.167, below chance 0.333, and a brain-age
    error of 7.8 years instead of 11.6).
    """
    if groups is None:
        warnings.warn(
            f"{metric} got no groups: every image is taken for a different subject, so "
            "the images of one subject (traveling subjects, repeated scans) may fall in "
            "both training and test folds and the score looks better than it is. Pass "
            "groups=subjects, or groups=numpy.arange(n_images) when every image is of a "
            "different subject.",
            BenchmarkWarning,
            stacklevel=3,
        )
        return np.arange(n)
    arr = np.asarray(groups)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"groups must have one entry per image ({n}); got shape {arr.shape}.")
    return arr


def grouped_splits(
    y_strat: np.ndarray | None,
    groups: np.ndarray | None,
    n_splits: int,
    random_state: Any,
) -> list[tuple[np.ndarray, np.ndarray]]:
    n = len(y_strat) if y_strat is not None else len(groups)
    x = np.zeros((n, 1))
    seed = None if random_state is None else np.random.default_rng(random_state).integers(2**31)
    if groups is not None:
        n_splits = min(n_splits, len(np.unique(groups)))
        if n_splits < 2:
            raise ValueError("Cross-validation needs at least 2 subjects (groups).")
        if y_strat is not None:
            cv = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
            return list(cv.split(x, y_strat, groups))
        return list(GroupKFold(n_splits, shuffle=True, random_state=seed).split(x, groups=groups))
    if y_strat is not None:
        n_splits = min(n_splits, int(np.unique(y_strat, return_counts=True)[1].min()))
        if n_splits < 2:
            raise ValueError("Cross-validation needs at least 2 images per site.")
        return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(x, y_strat))
    n_splits = min(n_splits, n)
    return list(KFold(n_splits, shuffle=True, random_state=seed).split(x))
