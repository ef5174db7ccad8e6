"""Tables of features (subjects x features), the other input ComBat harmonizes.

A study often harmonizes regional measures (FreeSurfer ROI volumes, cortical thickness)
rather than voxels: one row per scan, one column per feature. :class:`FeatureTable` is the
validated view of such a table that :class:`harmonix.ComBatHarmonizer` receives, and turns
results back into the form the user passed (a float64 array, or a DataFrame with the same
index and column names).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FeatureCSV", "FeatureTable", "is_table", "read_feature_csv", "write_feature_csv"]


def is_table(obj: Any) -> bool:
    """Whether ``obj`` is a table of features: a DataFrame or a 2-D array."""
    return isinstance(obj, pd.DataFrame) or (isinstance(obj, np.ndarray) and obj.ndim == 2)


class FeatureTable:
    """A checked ``(n_samples, n_features)`` table of finite numbers.

    Parameters
    ----------
    table : pandas.DataFrame or ndarray of shape (n_samples, n_features)
        Numeric features, one row per sample (scan); no missing or infinite value.
    check_finite : bool, default=True
        Check now that every value is finite. ``False`` leaves it to the caller, who
        must call :meth:`check_finite` before using the values for anything it returns
        (ComBat does so from the sums of its one pass over the table, which a NaN or
        infinite value makes non-finite, instead of reading the table once more).

    Attributes
    ----------
    values : ndarray of shape (n_samples, n_features), float64
        The numbers (the caller's array itself when it already is float64: never modified).
    columns : list of str or None
        Feature names of a DataFrame (None for an array).
    index : pandas.Index or None
        Row index of a DataFrame.
    kind : {"frame", "array"}
    finite_checked : bool
        Whether :meth:`check_finite` has run (and passed).

    Raises
    ------
    TypeError
        If a column is not numeric.
    ValueError
        If the table is empty, has duplicated column names, or holds NaN or infinite
        values (the message names the features and rows).
    """

    def __init__(self, table: Any, *, check_finite: bool = True):
        self.columns: list[str] | None = None
        self.index: pd.Index | None = None
        if isinstance(table, pd.DataFrame):
            self.kind = "frame"
            names = [str(c) for c in table.columns]
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"The feature table has duplicated column(s) {dup}.")
            bad = [n for n, c in zip(names, table.columns) if not _numeric(table[c])]
            if bad:
                raise TypeError(
                    f"Feature column(s) {bad[:5]} are not numeric; a feature table holds "
                    "numbers only (pass sites and covariates separately)."
                )
            self.columns, self.index = names, table.index
            values = table.to_numpy(dtype=np.float64)
        else:
            self.kind = "array"
            values = np.asarray(table)
            if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
                raise TypeError(f"A feature table must hold real numbers; got {values.dtype}.")
            values = values.astype(np.float64, copy=False)
        if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
            raise ValueError(
                f"A feature table must be 2-D (n_samples, n_features) and non-empty; got shape "
                f"{values.shape}."
            )
        self.values = values
        self.finite_checked = False
        if check_finite:
            self.check_finite()
        self._restore: np.ndarray | None = None  # output column order, see matched()

    def check_finite(self) -> None:
        """Refuse NaN and infinite values (one pass over the table, without a temporary).

        Raises
        ------
        ValueError
            If the table holds NaN or infinite values; the message names the features and
            rows.
        """
        values = self.values
        # a sum is finite iff every value is (or it overflowed)
        finite = np.isfinite(values) if not np.isfinite(values.sum()) else None
        if finite is not None and not finite.all():
            rows, cols = np.nonzero(~finite)
            names = self.columns or [f"column {j}" for j in range(values.shape[1])]
            which = sorted({names[j] for j in cols.tolist()})[:5]
            raise ValueError(
                f"The feature table has {int((~finite).sum())} NaN or infinite value(s) (features "
                f"{which}, rows {sorted(set(rows.tolist()))[:5]}); impute them or drop those "
                "rows."
            )
        self.finite_checked = True

    def refuse_non_finite(self) -> None:
        """Called when a computation over the values gave non-finite numbers: refuse the
        table if it holds NaN or infinite values (:meth:`check_finite`), else warn that the
        computation overflowed (values near 1e154 or beyond).

        Raises
        ------
        ValueError
            If the table holds NaN or infinite values.
        """
        self.check_finite()
        warnings.warn(
            "Sums over the feature table overflowed (values near 1e154 or beyond): the "
            "results are not finite. Rescale the features.",
            RuntimeWarning,
            stacklevel=4,
        )

    def matched(self, n_features: int, names: Any = None) -> FeatureTable:
        """This table with its columns in a fit's order (checked against it).

        Parameters
        ----------
        n_features : int
            Number of features of the fit.
        names : sequence of str, optional
            The fit's feature names (a DataFrame's columns). A DataFrame given now is
            matched by name (any order; :meth:`wrap` restores its order); an array must
            have the columns in the fit's order.

        Returns
        -------
        FeatureTable

        Raises
        ------
        ValueError
            If features are missing, unknown to the fit, or their number differs.
        """
        if names is not None and self.columns is not None:
            names = [str(n) for n in names]
            missing = [n for n in names if n not in self.columns]
            extra = [n for n in self.columns if n not in names]
            if missing or extra:
                raise ValueError(
                    f"The table {'lacks feature(s) ' + str(missing[:5]) if missing else ''}"
                    f"{' and ' if missing and extra else ''}"
                    f"{'has feature(s) not seen in fit ' + str(extra[:5]) if extra else ''}"
                    "; give the columns the model was fitted on."
                )
            order = np.array([self.columns.index(n) for n in names])
            out = FeatureTable.__new__(FeatureTable)
            out.__dict__.update(self.__dict__)
            out.values = self.values[:, order]
            out._restore = np.argsort(order)
            return out
        if self.n_features != n_features:
            raise ValueError(
                f"The model was fitted on {n_features} features; got {self.n_features}."
            )
        return self

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def subset(self, index: Any) -> FeatureTable:
        """The rows ``index`` (an index array) as a table of the same form."""
        out = FeatureTable.__new__(FeatureTable)
        out.__dict__.update(self.__dict__)
        out.values = self.values[np.asarray(index)]
        if self.index is not None:
            out.index = self.index[np.asarray(index)]
        return out

    @property
    def n_features(self) -> int:
        """Number of features (columns)."""
        return int(self.values.shape[1])

    def wrap(self, out: np.ndarray) -> np.ndarray | pd.DataFrame:
        """``out`` (same shape as the table) in the table's form: a float64 array, or a
        DataFrame with the table's index and column names."""
        out = np.asarray(out, dtype=np.float64)
        if self._restore is not None:
            out = out[:, self._restore]
        if self.kind == "frame":
            return pd.DataFrame(out, index=self.index, columns=self.columns)
        return out


def _numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype)


@dataclass(frozen=True)
class FeatureCSV:
    """A feature table read from a CSV (:func:`read_feature_csv`).

    Attributes
    ----------
    features : pandas.DataFrame
        The feature columns (numbers), in the CSV's order.
    sites : ndarray of str
        The ``site`` column.
    covariates : pandas.DataFrame or None
        The covariate columns asked for.
    table : pandas.DataFrame
        The whole CSV (what :func:`write_feature_csv` writes back, features replaced).
    """

    features: pd.DataFrame
    sites: np.ndarray
    covariates: pd.DataFrame | None
    table: pd.DataFrame


def _site_column(table: pd.DataFrame, path: Path) -> str:
    found = [c for c in table.columns if str(c).strip().lower() == "site"]
    if len(found) != 1:
        raise ValueError(
            f"The table '{path}' needs one 'site' column (the site of each row); found "
            f"{found or 'none'} among {list(table.columns)[:8]}."
        )
    return found[0]


def read_feature_csv(
    path: str | os.PathLike,
    *,
    covariates: Sequence[str] = (),
    id_columns: Sequence[str] = (),
    features: Sequence[str] | None = None,
) -> FeatureCSV:
    """Read a CSV of features (one row per scan) with its sites and covariates.

    The CSV has a ``site`` column, the covariate columns named by ``covariates`` (e.g.
    ``age, sex, diagnosis``), optional identifier columns (``id_columns``, e.g. the
    subject; copied unchanged to outputs) and feature columns (numbers, e.g. ROI
    volumes): by default every other column.

    Parameters
    ----------
    path : str or path-like
        The CSV file.
    covariates : sequence of str, default=()
        Covariate columns.
    id_columns : sequence of str, default=()
        Columns that are neither features nor covariates.
    features : sequence of str, optional
        The feature columns (e.g. a fitted model's ``feature_names_in_``); all other
        columns are then left alone.

    Returns
    -------
    FeatureCSV

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the CSV cannot be parsed, lacks the site column or a named column, or a
        feature column holds text (the message names it) or missing values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Table not found: '{path}'.")
    try:
        table = pd.read_csv(path)
    except Exception as exc:
        raise ValueError(f"Could not parse the table '{path}' as CSV ({exc}).") from exc
    if len(table) == 0:
        raise ValueError(f"The table '{path}' has no rows.")
    table.columns = [str(c).strip() for c in table.columns]
    site = _site_column(table, path)
    named = [*covariates, *id_columns, *(features or [])]
    missing = [c for c in dict.fromkeys(named) if c not in table.columns]
    if missing:
        raise ValueError(
            f"The table '{path}' has no column(s) {missing}; its columns are "
            f"{list(table.columns)[:12]}{' ...' if table.shape[1] > 12 else ''}."
        )
    if features is None:
        skip = {site, *covariates, *id_columns}
        features = [c for c in table.columns if c not in skip]
    features = list(features)
    if not features:
        raise ValueError(f"The table '{path}' has no feature column left to harmonize.")
    text = [c for c in features if not _numeric(table[c])]
    if text:
        raise ValueError(
            f"Feature column(s) {text[:5]} of '{path}' are not numeric; name covariates with "
            "--covariates and identifier columns with --id-columns."
        )
    if table[site].isna().any():
        rows = (np.flatnonzero(table[site].isna().to_numpy()) + 2).tolist()
        raise ValueError(f"The table '{path}' has empty site cells on line(s) {rows[:10]}.")
    cov = table[list(covariates)].reset_index(drop=True) if covariates else None
    return FeatureCSV(
        table[features].reset_index(drop=True),
        table[site].astype(str).to_numpy(),
        cov,
        table,
    )


def write_feature_csv(
    data: FeatureCSV, harmonized: pd.DataFrame, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write ``data``'s table with its feature columns replaced by ``harmonized`` (atomically).

    Parameters
    ----------
    data : FeatureCSV
        The table read by :func:`read_feature_csv`.
    harmonized : pandas.DataFrame
        The harmonized features (the columns of ``data.features``).
    path : str or path-like
        Destination ``.csv`` file.
    overwrite : bool, default=False
        Replace an existing file.

    Returns
    -------
    pathlib.Path
    """
    from harmonix.io import atomic_write

    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"'{path}' must end with .csv.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"'{path}' exists; pass overwrite to replace it.")
    out = data.table.copy()
    for col in harmonized.columns:
        out[col] = harmonized[col].to_numpy()
    with atomic_write(path) as tmp:
        out.to_csv(tmp, index=False)
    return path
