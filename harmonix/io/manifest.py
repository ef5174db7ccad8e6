"""Manifests: the CSV files that list images with their site, age, BIDS entities and
covariates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harmonix.io._entities import ENTITIES
from harmonix.io.files import PathLike


def _entity_columns() -> set[str]:
    """Manifest columns that are BIDS entities (``subject``, ``session``, ``run``...)."""
    return {name for name, _ in ENTITIES}


@dataclass(frozen=True)
class Manifest:
    """Contents of a manifest CSV (see :func:`read_manifest`).

    ``extra`` holds the columns other than ``path, site, age`` and the BIDS entities
    (``subject``, ``session``, ``run``...), e.g.
    ``sex``, ``diagnosis``, in the CSV's order, or None when there are none. Entities
    name images, never covariates.
    """

    paths: list[Path]
    sites: np.ndarray
    ages: np.ndarray | None
    subjects: np.ndarray | None
    extra: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def covariates(self, names: Sequence[str]) -> pd.DataFrame | None:
        """The columns ``names`` of the manifest, as covariates (one row per image).

        ``age`` is left out (it is :attr:`ages`, the short form of the ``age``
        covariate); names are matched case-insensitively, like every manifest column.

        Parameters
        ----------
        names : sequence of str

        Returns
        -------
        pandas.DataFrame or None
            None when no column is asked for (besides ``age``).

        Raises
        ------
        ValueError
            If a column is absent, naming the columns there are.
        """
        wanted = [str(n).strip().lower() for n in names]
        wanted = [n for n in dict.fromkeys(wanted) if n != "age"]
        if not wanted:
            return None
        entities = [n for n in wanted if n in _entity_columns()]
        if entities:
            raise ValueError(
                f"{entities} name BIDS entities of the images (which scan), not covariates; "
                "give a participant or session property (e.g. sex, diagnosis) instead."
            )
        have = [] if self.extra is None else list(self.extra.columns)
        missing = [n for n in wanted if n not in have]
        if missing:
            raise ValueError(
                f"The manifest has no column(s) {missing} for the covariates; its other "
                f"columns are {have} (besides path, site, age and the BIDS entities)."
            )
        return self.extra[wanted].reset_index(drop=True)


def read_manifest(csv: PathLike, *, check_files: bool = True) -> Manifest:
    """Read a manifest CSV with columns ``path, site[, age, subject, ...]``.

    Further columns (e.g. ``sex``, ``diagnosis``) are kept in ``Manifest.extra``, for
    covariates (:meth:`Manifest.covariates`); BIDS entity columns (``session``, ``run``...,
    as :func:`harmonix.bids.bids_manifest` writes them) are not. Column names are read
    case-insensitively (lower-cased).

    Parameters
    ----------
    csv : str or path-like
        The CSV file. Relative paths in it are relative to the CSV's folder.
    check_files : bool, default=True
        Raise if a listed file does not exist.

    Returns
    -------
    Manifest
        ``paths`` (absolute), ``sites`` (str), ``ages`` (float or None),
        ``subjects`` (str or None) and the other columns (``extra``), in the CSV's row
        order. Values of ``path``, ``site`` and ``subject`` are stripped of surrounding
        spaces, like the column names; an empty ``path`` or ``site`` cell is an error
        naming its line.
    """
    csv = Path(csv)
    if not csv.is_file():
        raise FileNotFoundError(f"Manifest not found: '{csv}'.")
    try:
        df = pd.read_csv(csv, dtype={"site": str, "subject": str, "path": str})
    except Exception as exc:
        raise ValueError(f"Could not parse manifest '{csv}' as CSV ({exc}).") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = {"path", "site"} - set(df.columns)
    if missing:
        raise ValueError(
            f"Manifest '{csv}' lacks column(s) {sorted(missing)}; it needs 'path' and 'site' "
            f"(optional 'age', 'subject'); found {list(df.columns)}."
        )
    if len(df) == 0:
        raise ValueError(f"Manifest '{csv}' lists no images.")
    for column in ("path", "site", "subject"):  # values stripped like the headers
        if column in df.columns:
            df[column] = df[column].map(lambda v: v.strip() if isinstance(v, str) else v)
            df.loc[df[column] == "", column] = np.nan
    if df["path"].isna().any() or df["site"].isna().any():
        rows = sorted(set(df.index[df["path"].isna() | df["site"].isna()] + 2))
        raise ValueError(f"Manifest '{csv}' has empty path or site cells on line(s) {rows}.")
    base = csv.resolve().parent
    paths = [Path(p) if Path(p).is_absolute() else base / p for p in df["path"]]
    if check_files:
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            more = f" (and {len(absent) - 3} more)" if len(absent) > 3 else ""
            raise FileNotFoundError(f"Manifest '{csv}' lists missing file(s): {absent[:3]}{more}.")
    ages = None
    if "age" in df.columns:
        ages = pd.to_numeric(df["age"], errors="coerce").to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(ages)):
            rows = (np.flatnonzero(~np.isfinite(ages)) + 2).tolist()
            raise ValueError(f"Manifest {csv} has missing or non-numeric ages on line(s) {rows}.")
    subjects = df["subject"].astype(str).to_numpy() if "subject" in df.columns else None
    taken = {"path", "site", "age", *_entity_columns()}
    rest = [c for c in df.columns if c not in taken]
    extra = df[rest].reset_index(drop=True) if rest else None
    return Manifest(paths, df["site"].astype(str).to_numpy(), ages, subjects, extra)
