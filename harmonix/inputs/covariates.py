"""Covariates: the per-image biology a harmonization must keep (age, sex, diagnosis...).

Every harmonizer, :func:`harmonix.batch.transform_files`, the command line and
:class:`harmonix.HarmonizerStep` check covariates with the functions of this module, so
the same input is accepted or refused, with the same message, whatever the entry point:

* :func:`check_covariates` checks the form of what a user passes: a
  :class:`pandas.DataFrame` or a mapping column -> values, one row per image, no missing
  value, numeric or categorical columns; ``ages`` is the short form of an ``age`` column;
* :func:`fit_covariate_levels` checks what a fit can learn from and describes it: no
  constant column, no column that the sites (or the other columns) determine;
* :func:`match_covariates` checks transform-time covariates against that description
  (same kinds, no category unseen in fit, every fitted column when the method needs
  them);
* :func:`covariate_design` turns them into the linear design of the models that use them
  (ComBat): continuous columns as they are, categorical ones as indicators of every level
  but the first (the reference level).

Column kinds: integer and float columns are *continuous*; strings, booleans and pandas
categoricals are *categorical*. Category levels are compared by their text (``str``), so a
boolean column at fit and the strings ``"True"``/``"False"`` at transform match, and a
fitted model stores its levels as plain strings. A categorical column coded with integers
(``0/1``) is continuous unless it is a pandas categorical; with two levels the two codings
give the same model.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from numbers import Number
from typing import Any

import numpy as np
import pandas as pd

from harmonix.inputs.labels import site_codes

__all__ = [
    "CovariateLevels",
    "age_column",
    "categorical_strata",
    "check_ages",
    "check_covariates",
    "column_design",
    "covariate_design",
    "fit_covariate_levels",
    "match_covariates",
    "site_gram",
]

#: What a fit learned about its covariates: column name -> category levels (first one the
#: reference level) or None for a continuous column, in the order of the columns.
CovariateLevels = dict[str, "list[str] | None"]

_AGE = "age"


def _rows(bad: np.ndarray) -> str:
    rows = np.flatnonzero(bad)
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return f"{rows[:5].tolist()}{more}"


def _as_column(values: Any, name: str, n_images: int) -> np.ndarray | pd.Categorical:
    """One covariate's values by position: a 1-D ndarray, or a pandas categorical."""
    if isinstance(values, pd.Series):  # by position: the index is ignored
        col = values.array if isinstance(values.dtype, pd.CategoricalDtype) else values.to_numpy()
    elif isinstance(values, (str, bytes)) or np.ndim(values) == 0:
        raise ValueError(f"covariate {name!r} must hold one value per image, got {values!r}.")
    elif isinstance(values, pd.Categorical):
        col = values
    else:
        # a list keeps its Python objects (np.asarray would turn ["F", 1] into text)
        col = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
        if col.ndim != 1:
            raise ValueError(
                f"covariate {name!r} must be 1-D, one value per image; got shape {col.shape}."
            )
        if col.dtype == object and not isinstance(values, np.ndarray):
            col = pd.Series(list(col)).to_numpy()  # pandas' inference: numbers stay numbers
    if len(col) != n_images:
        raise ValueError(
            f"Got {n_images} images but {len(col)} values of covariate {name!r}; give one "
            "row per image."
        )
    return col


def _missing(name: Any, bad: np.ndarray) -> ValueError:
    return ValueError(
        f"covariate {name!r} has missing values (NaN/None) at row(s) {_rows(bad)}; "
        "every image needs a value (impute them or drop those images)."
    )


def _continuous(name: Any, values: np.ndarray) -> np.ndarray:
    values = np.array(values, dtype=np.float64)  # a copy: the caller's array stays theirs
    if not np.isfinite(values.sum()):
        if np.isnan(values).any():
            raise _missing(name, np.isnan(values))
        raise ValueError(
            f"covariate {name!r} has infinite values at row(s) {_rows(~np.isfinite(values))}; "
            "give finite numbers."
        )
    return values


def _clean_column(name: str, col: np.ndarray | pd.Categorical) -> np.ndarray | pd.Categorical:
    """A checked continuous (float64 ndarray) or categorical (pandas categorical of text
    levels) column.

    Numbers (not booleans) are continuous; strings, booleans and pandas categoricals are
    categorical. Values are classified by their distinct values only (one factorization),
    which also finds the missing ones.
    """
    if isinstance(col, pd.Categorical):  # keep the user's level order
        if (col.codes < 0).any():
            raise _missing(name, col.codes < 0)
        present = col.remove_unused_categories()
        return present.rename_categories([str(c) for c in present.categories])
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return _continuous(name, col)
    codes, uniques = pd.factorize(col)
    if (codes < 0).any():
        raise _missing(name, codes < 0)
    kinds = {
        "number"
        if isinstance(u, Number) and not isinstance(u, (bool, np.bool_))
        else "bool"
        if isinstance(u, (bool, np.bool_))
        else "text"
        if isinstance(u, str)
        else type(u).__name__
        for u in uniques
    }
    if kinds == {"number"}:
        return _continuous(name, col)
    text = [str(u) for u in uniques]
    if len(kinds) != 1 or kinds - {"bool", "text"} or len(set(text)) != len(text):
        raise TypeError(
            f"covariate {name!r} mixes value types ({', '.join(sorted(kinds))}); give numbers "
            "for a continuous covariate or strings for a categorical one."
        )
    order = np.argsort(text)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return pd.Categorical.from_codes(  # codes made here: no validation needed
        rank[codes], dtype=_text_levels(tuple(text[i] for i in order)), validate=False
    )


@lru_cache(maxsize=256)
def _text_levels(levels: tuple[str, ...]) -> pd.CategoricalDtype:
    """The categorical dtype of these levels, made once (a dtype is immutable; making one
    checks its levels, which costs more than the rest of a column's check)."""
    return pd.CategoricalDtype(list(levels))


def check_covariates(covariates: Any, n_images: int, ages: Any = None) -> pd.DataFrame | None:
    """Check covariates (and ages) given for ``n_images`` images; return them as a frame.

    Parameters
    ----------
    covariates : pandas.DataFrame, mapping of str to array-like, or None
        One row per image (a DataFrame's index is ignored: rows are matched by position),
        numeric (continuous) or categorical (strings, booleans, pandas categoricals)
        columns, without missing values.
    n_images : int
        Number of images they describe.
    ages : array-like of shape (n_images,), default=None
        The short form of an ``age`` column; giving both is an error.

    Returns
    -------
    pandas.DataFrame or None
        Columns in the given order (``age`` first when it comes from ``ages``); continuous
        columns as float64, categorical ones as pandas categoricals of text levels (the
        levels present, sorted, or in a given categorical's order); a RangeIndex. None
        when there is nothing.

    Raises
    ------
    TypeError
        If ``covariates`` is not a DataFrame or mapping, or a column mixes value types.
    ValueError
        For a length that differs from ``n_images``, a missing or infinite value, a
        non-string or duplicated column name, or an ``age`` column given twice.
    """
    columns: dict[str, np.ndarray | pd.Categorical] = {}
    if ages is not None:
        try:
            age = np.array(ages, dtype=np.float64)  # a copy: the caller's array stays theirs
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ages must be numbers, one per image ({exc}).") from exc
        if age.ndim != 1 or len(age) != n_images:
            raise ValueError(
                f"Got {n_images} images but ages of shape {age.shape}; give one age per image."
            )
        if not np.isfinite(age).all():
            raise ValueError("ages contain NaN or infinite values; give every image a finite age.")
        columns[_AGE] = age
    if covariates is None:
        return pd.DataFrame(columns, copy=False) if columns else None
    if isinstance(covariates, pd.DataFrame):
        items = [(c, covariates[c]) for c in covariates.columns]
        if covariates.columns.duplicated().any():
            dup = covariates.columns[covariates.columns.duplicated()].tolist()
            raise ValueError(f"covariates has duplicated column(s) {dup}; name each once.")
    elif isinstance(covariates, Mapping):
        items = list(covariates.items())
    else:
        raise TypeError(
            f"covariates must be a pandas DataFrame or a mapping column -> values, got "
            f"{type(covariates).__name__}; e.g. pd.DataFrame({{'sex': [...], 'dx': [...]}})."
        )
    for name, values in items:
        if not isinstance(name, str) or not name:
            raise ValueError(f"covariate names must be non-empty strings, got {name!r}.")
        if name in columns:
            raise ValueError(
                "ages were given both as ages=... and as the 'age' column of covariates; "
                "give them once (ages is the short form of the 'age' column)."
            )
        columns[name] = _clean_column(name, _as_column(values, name, n_images))
    if not columns:
        return None
    return pd.DataFrame(columns, copy=False)  # every column is a new array made here


def check_ages(ages: Any, n_images: int) -> np.ndarray | None:
    """Validate ages (``None`` or one finite number per image).

    Parameters
    ----------
    ages : array-like of shape (n_images,) or None
    n_images : int

    Returns
    -------
    ndarray of float64 or None
    """
    frame = check_covariates(None, n_images, ages)
    return None if frame is None else frame["age"].to_numpy()


def age_column(cov: pd.DataFrame | None, levels: CovariateLevels) -> np.ndarray | None:
    """The continuous ``age`` covariate: what methods that only use ages read.

    Parameters
    ----------
    cov : pandas.DataFrame or None
        Checked covariates (:func:`check_covariates`).
    levels : dict
        The fit's covariates (:func:`fit_covariate_levels`).

    Returns
    -------
    ndarray of float64 or None
        The ages, or None when there is no continuous ``age`` covariate.
    """
    if cov is None or "age" not in cov.columns or levels.get("age", ()) is not None:
        return None
    return cov["age"].to_numpy(dtype=np.float64)


def _categorical(col: pd.Series | pd.Categorical) -> pd.Categorical:
    """The pandas categorical of a checked categorical column (a Series' own array)."""
    return col.array if isinstance(col, pd.Series) else col


def _as_levels(col: pd.Series) -> pd.Categorical:
    """A column as a categorical of level texts (integral floats, i.e. integer codes,
    without ``.0``)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return _categorical(col)
    if pd.api.types.is_float_dtype(col.dtype):
        v = col.to_numpy()
        integral = v == np.round(v)
        text = np.where(integral, np.round(v).astype(np.int64).astype(str), v.astype(str))
        return pd.Categorical(text)
    return pd.Categorical(col.astype(str))


def _levels_of(col: pd.Series | pd.Categorical) -> list[str]:
    """The levels present in a checked categorical column, in its order (the user's
    categorical order, or sorted)."""
    cat = _categorical(col)
    cats, codes = cat.categories, cat.codes
    known = codes if len(codes) and codes.min() >= 0 else codes[codes >= 0]  # no missing: as is
    if len(cats) and np.bincount(known, minlength=len(cats)).all():
        return [str(c) for c in cats]
    return [str(c) for c in cat.remove_unused_categories().categories]


def column_design(col: pd.Series, levels: list[str] | None) -> np.ndarray:
    """The design columns of one checked covariate (see :func:`covariate_design`)."""
    if levels is None:
        return col.to_numpy(dtype=np.float64)[:, None]
    cat = _categorical(col)
    if list(cat.categories) != list(levels):
        cat = cat.set_categories(levels)
    return (cat.codes[:, None] == np.arange(1, len(levels))).astype(np.float64)


def covariate_design(frame: pd.DataFrame, levels: CovariateLevels) -> tuple[np.ndarray, list[str]]:
    """The linear design of covariates: one column per continuous covariate, indicators
    of every level but the first (the reference level) for each categorical one.

    Parameters
    ----------
    frame : pandas.DataFrame
        Checked covariates (:func:`match_covariates`) holding every column of ``levels``.
    levels : dict
        From :func:`fit_covariate_levels`.

    Returns
    -------
    design : ndarray of shape (n_images, n_columns), float64
    names : list of str
        ``"age"`` for a continuous column, ``"sex[M]"`` for the indicator of level ``M``.
    """
    blocks, names = [], []
    for name, lev in levels.items():
        blocks.append(column_design(frame[name], lev))
        names.extend([name] if lev is None else [f"{name}[{v}]" for v in lev[1:]])
    if not blocks:
        return np.empty((len(frame), 0)), []
    return np.hstack(blocks), names


def _standardized_rows(rows: np.ndarray) -> np.ndarray:
    """Design columns given as the rows of a ``(k, n)`` array, each centred and scaled to
    a largest absolute value of 1 (a constant row stays 0)."""
    centred = rows - rows.mean(axis=1, keepdims=True)
    scale = np.abs(centred).max(axis=1, initial=0.0, keepdims=True)
    return centred / np.where(scale > 0, scale, 1.0)


def _full_rank(gram: np.ndarray, cols: np.ndarray) -> bool:
    """Whether the design columns ``cols`` (of the Gram matrix ``gram``) are independent."""
    whole = len(cols) == len(gram) and bool((np.diff(cols) == 1).all())  # all, in order
    sub = gram if whole else gram[np.ix_(cols, cols)]
    return bool(np.linalg.matrix_rank(sub, hermitian=True) == len(cols))


def fit_covariate_levels(frame: pd.DataFrame | None, sites: np.ndarray) -> CovariateLevels:
    """Describe the covariates of a fit, refusing those a fit cannot learn from.

    Parameters
    ----------
    frame : pandas.DataFrame or None
        From :func:`check_covariates`.
    sites : ndarray of shape (n_images,)
        Site of each image.

    Returns
    -------
    dict
        Column name -> sorted category levels (a pandas categorical keeps its order; only
        the levels present count; the first is the reference level) or None for a
        continuous column; ``{}`` without covariates.

    Raises
    ------
    ValueError
        If a column is constant, or the sites and the other columns determine a column
        (e.g. every site holds a single diagnosis, or a continuous covariate is constant
        within each site): its effect could not be told apart from the site effect.
    """
    if frame is None:
        return {}
    levels: CovariateLevels = {}
    for name in frame.columns:
        col = frame[name]
        if pd.api.types.is_float_dtype(col.dtype):
            if np.ptp(col.to_numpy()) == 0:
                raise ValueError(
                    f"covariate {name!r} is constant ({col.iloc[0]:g} for every image): it "
                    "carries no information; drop it."
                )
            levels[name] = None
        else:
            lev = _levels_of(col)
            if len(lev) < 2:
                raise ValueError(
                    f"covariate {name!r} is constant ({lev[0]!r} for every image): it "
                    "carries no information; drop it."
                )
            levels[name] = lev
    _check_separable(frame, levels, sites)
    return levels


def site_gram(codes: np.ndarray, n_sites: int, columns: np.ndarray) -> np.ndarray:
    """The Gram matrix of the design ``[site indicators | columns]``, from per-site sums.

    Parameters
    ----------
    codes : ndarray of int of shape (n_images,)
        Each image's site index.
    n_sites : int
    columns : ndarray of shape (n_images, k)

    Returns
    -------
    ndarray of shape (n_sites + k, n_sites + k)
        ``diag(counts)``, the columns' sums per site and ``columns' columns``, without
        the ``n_images x n_sites`` indicator matrix.
    """
    k = columns.shape[1]
    gram = np.zeros((n_sites + k, n_sites + k))
    gram[np.arange(n_sites), np.arange(n_sites)] = np.bincount(codes, minlength=n_sites)
    per_site = gram[:n_sites, n_sites:]
    # column by column (no copy for an F-ordered array): numpy walks a narrow C-ordered
    # (n, k) array row by row
    for j, col in enumerate(np.ascontiguousarray(columns.T)):
        per_site[:, j] = np.bincount(codes, weights=col, minlength=n_sites)
    gram[n_sites:, :n_sites] = per_site.T
    gram[n_sites:, n_sites:] = columns.T @ columns
    return gram


def _check_separable(frame: pd.DataFrame, levels: CovariateLevels, sites: np.ndarray) -> None:
    """Refuse covariates that the sites (and the columns before them) determine.

    One Gram matrix of ``[site indicators | standardized covariate columns]``; a column
    block is refused when it adds less rank than its width, first against the sites
    alone, then against the sites and the blocks before it.
    """
    _, codes, counts = site_codes(sites)
    n_sites = len(counts)
    widths = []
    rows = [np.empty((0, len(codes)))]  # the design's columns as rows (k, n)
    for name, lev in levels.items():
        block = column_design(frame[name], lev)
        widths.append(block.shape[1])
        rows.append(block.T)
    gram = site_gram(codes, n_sites, _standardized_rows(np.vstack(rows)).T)
    if _full_rank(gram, np.arange(len(gram))):  # then so is every block with the sites
        return
    site_cols = np.arange(n_sites)
    start, seen = n_sites, []
    for (name, lev), width in zip(levels.items(), widths):
        cols = np.arange(start, start + width)
        start += width
        if not _full_rank(gram, np.r_[site_cols, cols]):
            what = (
                "its level is determined by the site"
                if lev is not None
                else "it is constant within every site"
            )
            if len(codes) < n_sites + len(cols):
                what = f"only {len(codes)} images for {n_sites + len(cols)} design columns"
            raise ValueError(
                f"covariate {name!r} is collinear with site ({what}): the design cannot "
                "separate its effect from the site effect. Drop it, or add images where it "
                "varies within sites."
            )
        if not _full_rank(gram, np.arange(start)):
            raise ValueError(
                f"covariate {name!r} is collinear with site and the covariates {seen} (a "
                "combination of them gives it): the design cannot separate their effects. "
                "Drop one of them."
            )
        seen.append(name)


def match_covariates(
    frame: pd.DataFrame | None, levels: CovariateLevels, *, required: bool
) -> pd.DataFrame | None:
    """Check transform-time covariates against a fit's (:func:`fit_covariate_levels`).

    Parameters
    ----------
    frame : pandas.DataFrame or None
        From :func:`check_covariates`.
    levels : dict
        The fit's description.
    required : bool
        The method needs every fitted covariate at transform (ComBat); otherwise missing
        columns are allowed.

    Returns
    -------
    pandas.DataFrame or None
        The fitted columns, in the fitted order, continuous ones as float64 and
        categorical ones as pandas categoricals of text levels (columns unknown to the fit
        are dropped); ``frame`` itself when it already is that (nothing is copied); None
        when no fitted column is given.

    Raises
    ------
    ValueError
        If a fitted column is missing (``required``), a continuous column gets text, or a
        categorical column holds a level unseen in fit.
    """
    given = [] if frame is None else list(frame.columns)
    missing = [name for name in levels if name not in given]
    if required and missing:
        what, how = (
            ("ages", "pass ages=[...] (or an 'age' covariate)")
            if list(levels) == [_AGE]
            else (f"covariates {list(levels)}", f"pass covariates with the column(s) {missing}")
        )
        raise ValueError(
            f"This harmonizer was fitted with {what}; {how} to transform, one value per image."
        )
    present = [name for name in levels if name in given]
    if not present:
        return None
    out = {}
    same = present == given  # the frame's own columns, in order
    for name in present:
        col, lev = frame[name], levels[name]
        if lev is None:
            if not pd.api.types.is_float_dtype(col.dtype):
                raise ValueError(
                    f"covariate {name!r} was continuous in fit but holds text here "
                    f"({col.iloc[0]!r}, ...); give numbers."
                )
            out[name] = col.to_numpy()
        else:
            values = _as_levels(col)
            unseen = sorted(set(_levels_of(values)) - set(lev))
            if unseen:
                raise ValueError(
                    f"covariate {name!r} has level(s) {unseen} not seen in fit (levels "
                    f"{lev}); the model has no effect for them. Refit with images of those "
                    "levels, or leave those images out."
                )
            same = same and values is _categorical(col)
            out[name] = values
    if same:  # nothing changed: the checked frame itself (check_covariates made it)
        return frame
    return pd.DataFrame(out, copy=False)  # columns of the checked frame, or made here


def categorical_strata(frame: pd.DataFrame | None, levels: CovariateLevels) -> np.ndarray | None:
    """One label per image combining its categorical covariates (e.g. ``"F|AD"``).

    Parameters
    ----------
    frame : pandas.DataFrame or None
    levels : dict
        The fit's description (only its categorical columns are used).

    Returns
    -------
    ndarray of str or None
        None when there is no categorical covariate.
    """
    names = [name for name, lev in levels.items() if lev is not None]
    if frame is None or not names:
        return None
    parts = [frame[name].astype(str).to_numpy() for name in names]
    return np.array(["|".join(row) for row in zip(*parts)])
