"""Subject-grouped cross-validation folds shared by the cross-validated metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold


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
