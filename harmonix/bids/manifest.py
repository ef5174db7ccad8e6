"""A BIDS dataset's T1w images as a harmonix manifest (path, site, entities, covariates).

pybids (the ``bids`` extra) indexes the dataset and resolves each image's sidecar
metadata through the BIDS inheritance principle; ``participants.tsv`` and
``sub-<label>_sessions.tsv`` give the site column and the covariates.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harmonix.bids._pybids import require_pybids
from harmonix.bids.names import check_entities
from harmonix.io import atomic_write
from harmonix.io._entities import ENTITIES

__all__ = [
    "DEFAULT_SITE_FIELDS",
    "bids_manifest",
    "manifest_entities",
    "write_bids_manifest",
]

logger = logging.getLogger(__name__)

#: Sidecar fields that name a scanner, joined into the site label by default.
DEFAULT_SITE_FIELDS = ("Manufacturer", "ManufacturersModelName", "MagneticFieldStrength")
_T1W_EXTENSIONS = [".nii", ".nii.gz"]
_MISSING = ("", "n/a")
#: Datatype folders other than anat (sub-X/[ses-Y/]func...), left out of the index.
_OTHER_DATATYPES = re.compile(r"^/sub-[^/]+/(ses-[^/]+/)?(?!anat(/|$))[a-z]+(/|$)")


def _as_list(value: str | Sequence[str] | None, what: str) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` as a list of stripped, non-empty names."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    items = [item.strip() for item in items]
    if not items or any(not item for item in items):
        raise ValueError(f"{what} has an empty name in {value!r}; give comma-separated names.")
    return items


def _check_root(bids_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    root = Path(bids_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"BIDS folder not found: '{root}'.")
    description = root / "dataset_description.json"
    if not description.is_file():
        raise ValueError(
            f"'{root}' is not a BIDS dataset: it has no dataset_description.json. Give the "
            "dataset's top folder (the one holding dataset_description.json and sub-*/)."
        )
    try:
        return root, json.loads(description.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"'{description}' is not valid JSON ({exc}); fix the file.") from exc


def _read_tsv(path: Path, id_column: str, prefix: str) -> pd.DataFrame:
    """A BIDS table indexed by its id column (``prefix`` added where a table left it out),
    values as text, ``n/a`` and blanks missing."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ValueError(f"Could not read '{path}' as a TSV table ({exc}).") from exc
    table.columns = [str(c).strip() for c in table.columns]
    if id_column not in table.columns:
        raise ValueError(f"'{path}' has no {id_column} column; found {list(table.columns)}.")
    table = table.apply(
        lambda col: col.map(lambda v: None if v.strip() in _MISSING else v.strip())
    )
    ids = table[id_column].map(lambda v: v if v is None or v.startswith(prefix) else prefix + v)
    table[id_column] = ids
    if table[id_column].duplicated().any():
        dup = sorted(set(table[id_column][table[id_column].duplicated()].dropna()))
        raise ValueError(f"'{path}' lists {dup[:3]} more than once; keep one row each.")
    return table.set_index(id_column)


class _Tables:
    """``participants.tsv`` and the ``sessions.tsv`` files, read once each, looked up by
    (subject, session): a sessions.tsv value wins over the participants.tsv one."""

    def __init__(self, root: Path):
        self.root = root
        self.participants_path = root / "participants.tsv"
        self._participants: pd.DataFrame | None = None
        self._sessions: dict[str, pd.DataFrame | None] = {}

    @property
    def participants(self) -> pd.DataFrame | None:
        if self._participants is None and self.participants_path.is_file():
            self._participants = _read_tsv(self.participants_path, "participant_id", "sub-")
        return self._participants

    def sessions(self, subject: str) -> pd.DataFrame | None:
        if subject not in self._sessions:
            path = self.root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
            self._sessions[subject] = (
                _read_tsv(path, "session_id", "ses-") if path.is_file() else None
            )
        return self._sessions[subject]

    def check_column(self, column: str, option: str, subjects: Sequence[str]) -> None:
        """Raise unless ``column`` is in participants.tsv or a sessions.tsv."""
        participants = self.participants
        if participants is not None and column in participants.columns:
            return
        if any(
            (table := self.sessions(s)) is not None and column in table.columns
            for s in dict.fromkeys(subjects)
        ):
            return
        if participants is None:
            raise ValueError(
                f"{option} {column!r}: '{self.participants_path}' does not exist and no "
                "sub-*_sessions.tsv has that column; add the column to participants.tsv."
            )
        raise ValueError(
            f"{option} {column!r}: '{self.participants_path}' has no column {column!r} (nor "
            f"has any sessions.tsv); its columns are {list(participants.columns)}."
        )

    def value(self, column: str, subject: str, session: str | None) -> str | None:
        sessions = self.sessions(subject)
        if session is not None and sessions is not None and column in sessions.columns:
            value = sessions[column].get(f"ses-{session}")
            if value is not None:
                return value
        participants = self.participants
        if participants is not None and column in participants.columns:
            return participants[column].get(f"sub-{subject}")
        return None


def _field_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return f"{value:g}"
    return " ".join(str(value).split())


def _scanner_site(metadata: dict[str, Any], fields: Sequence[str]) -> tuple[str | None, list[str]]:
    """The site label from sidecar fields, or None and the fields missing."""
    texts = [_field_text(metadata[f]) if f in metadata else "" for f in fields]
    missing = [f for f, text in zip(fields, texts) if not text]
    return (None, missing) if missing else ("_".join(texts), [])


def _listing(items: Sequence[str], limit: int = 5) -> str:
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _numeric_or_text(values: list[str]) -> list[Any]:
    numbers = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
    return numbers.tolist() if numbers.notna().all() else values


def _find_images(
    root: Path, description: dict[str, Any], filters: dict[str, list[str]]
) -> list[Any]:
    bids = require_pybids("Reading a BIDS dataset")
    from bids.layout import BIDSLayoutIndexer

    # bidsschematools logs at INFO which bundled schema it validates names with
    logging.getLogger("bidsschematools").setLevel(logging.WARNING)
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    derivative = description.get("DatasetType") == "derivative"
    # anat folders and the metadata of T1w images only: indexing every file and sidecar
    # of a large dataset is what takes pybids long (3.5x less CPU time on 10,000 files:
    # benchmarks/results/bids_manifest.md)
    indexer = BIDSLayoutIndexer(
        validate=not derivative,
        ignore=[*DEFAULT_LOCATIONS_TO_IGNORE, _OTHER_DATATYPES],
        suffix="T1w",
    )
    layout = bids.BIDSLayout(
        str(root), validate=not derivative, is_derivative=derivative, indexer=indexer
    )
    images = layout.get(
        suffix="T1w",
        extension=_T1W_EXTENSIONS,
        datatype="anat",
        return_type="object",
        **filters,
    )
    if filters:
        return images
    indexed = {os.path.abspath(f.path) for f in images}
    skipped = [
        str(p.relative_to(root))
        for p in sorted(root.glob("sub-*/**/*_T1w.nii*"))
        if p.name.endswith((".nii", ".nii.gz")) and os.path.abspath(p) not in indexed
    ]
    if skipped:
        logger.warning(
            "skipped %d T1w file(s) whose names or places are not valid BIDS: %s",
            len(skipped),
            _listing(skipped),
        )
    return images


def bids_manifest(
    bids_dir: str | os.PathLike,
    *,
    site_column: str | None = None,
    site_from: str | Sequence[str] | None = None,
    covariates: str | Sequence[str] | None = None,
    session: str | Sequence[str] | None = None,
    acquisition: str | Sequence[str] | None = None,
    run: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """List the T1w images of a BIDS dataset with their site, entities and covariates.

    Needs pybids (``pip install "harmonix[bids]"``). Images are
    ``sub-<label>/[ses-<label>/]anat/*_T1w.nii[.gz]`` files; their metadata comes from
    their JSON sidecars as BIDS defines it (sidecars higher in the tree apply to every
    image below them, deeper ones win).

    Parameters
    ----------
    bids_dir : str or path-like
        The dataset's top folder (holding ``dataset_description.json``).
    site_column : str, optional
        Take the site from this column of ``sub-<label>_sessions.tsv`` (per session) or,
        failing that, ``participants.tsv`` (per subject).
    site_from : str or sequence of str, optional
        Sidecar fields whose values, joined with ``_``, name the site (a scanner), e.g.
        ``Siemens_Prisma_3``. Default when no ``site_column`` is given:
        :data:`DEFAULT_SITE_FIELDS` (``Manufacturer``, ``ManufacturersModelName``,
        ``MagneticFieldStrength``).
    covariates : str or sequence of str, optional
        Columns of ``participants.tsv`` / ``sessions.tsv`` (a sessions.tsv value wins)
        copied into the manifest, e.g. ``"age,sex,diagnosis"``; numbers stay numbers.
    session, acquisition, run : str or sequence of str, optional
        Keep only these sessions, acquisitions or runs (comma-separated or a list).

    Returns
    -------
    pandas.DataFrame
        One row per image, sorted by path: ``path`` (absolute), ``site``, the entity
        columns the images have (``subject``, then ``session``, ``acquisition``, ``run``...
        as pybids names them; labels without their ``sub-``/``ses-`` prefix) and the
        covariate columns.

    Raises
    ------
    FileNotFoundError
        If ``bids_dir`` does not exist.
    ValueError
        If it is not a BIDS dataset, has no T1w image (after the filters), a column is
        missing from the tables, a site or covariate cannot be determined for an image,
        or two images have the same entities (e.g. ``.nii`` and ``.nii.gz`` copies); the
        message names the files.
    ImportError
        If pybids is not installed.
    """
    if site_column is not None and site_from is not None:
        raise ValueError("Give site_column or site_from, not both.")
    root, description = _check_root(bids_dir)
    fields = _as_list(site_from, "site_from") or list(DEFAULT_SITE_FIELDS)
    names = _as_list(covariates, "covariates")
    entity_names = {name for name, _ in ENTITIES}
    clash = [c for c in names if c in entity_names | {"path", "site"}]
    if clash:
        raise ValueError(f"covariates {clash} clash with manifest columns; rename them.")
    filters = {
        name: _as_list(value, name)
        for name, value in (("session", session), ("acquisition", acquisition), ("run", run))
        if value is not None
    }
    images = _find_images(root, description, filters)
    if not images:
        shown = "".join(f", {k} {','.join(v)}" for k, v in filters.items())
        raise ValueError(
            f"No T1w image found in '{root}' (sub-*/[ses-*/]anat/*_T1w.nii[.gz]{shown})."
        )
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[tuple[str, str], ...], str] = {}
    for image in sorted(images, key=lambda f: f.path):
        ents = {k: str(v) for k, v in image.get_entities().items() if k in entity_names}
        ents = check_entities(ents, f"'{image.path}'")
        key = tuple(ents.items())
        if key in seen:
            raise ValueError(
                f"'{seen[key]}' and '{image.path}' have the same BIDS entities "
                f"({image.filename.split('.')[0]}); keep one of them."
            )
        seen[key] = image.path
        # absolute, symlinks kept (a DataLad file is a link into .git/annex)
        rows.append({"path": os.path.abspath(image.path), "image": image, **ents})

    tables = _Tables(root)
    subjects = [r["subject"] for r in rows]
    if site_column is not None:
        tables.check_column(site_column, "site_column", subjects)
    for name in names:
        tables.check_column(name, "covariate", subjects)
    unknown_site: list[str] = []
    for row in rows:
        if site_column is not None:
            row["site"] = tables.value(site_column, row["subject"], row.get("session"))
            if row["site"] is None:
                unknown_site.append(f"{Path(row['path']).name} (no {site_column} value)")
        else:
            row["site"], missing = _scanner_site(row["image"].get_metadata(), fields)
            if missing:
                unknown_site.append(f"{Path(row['path']).name} (no {', '.join(missing)})")
    if unknown_site:
        where = (
            f"'{tables.participants_path}' or its sessions.tsv"
            if site_column is not None
            else "its JSON sidecars"
        )
        raise ValueError(
            f"The site of {len(unknown_site)} image(s) cannot be determined from {where}: "
            f"{_listing(unknown_site)}. Fill the values in, or choose the site with "
            "site_column (--site-column) or other sidecar fields (--site-from)."
        )
    table = pd.DataFrame({"path": [r["path"] for r in rows], "site": [r["site"] for r in rows]})
    for name, _ in ENTITIES:
        values = [r.get(name) for r in rows]
        if any(v is not None for v in values):
            table[name] = values
    for name in names:
        values = [tables.value(name, r["subject"], r.get("session")) for r in rows]
        absent = [Path(r["path"]).name for r, v in zip(rows, values) if v is None]
        if absent:
            raise ValueError(
                f"Covariate {name!r} is missing (n/a or no row) in '{tables.participants_path}'"
                f" and the sessions.tsv files for {len(absent)} image(s): {_listing(absent)}. "
                "Fill the values in or leave the covariate out."
            )
        table[name] = _numeric_or_text(values)
    return table


def write_bids_manifest(
    bids_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    **kwargs: Any,
) -> Path:
    """Write :func:`bids_manifest`'s table as a manifest CSV that every command reads.

    Parameters
    ----------
    bids_dir : str or path-like
        The BIDS dataset.
    out : str or path-like
        The CSV to write (atomically); paths in it are relative to its folder.
    overwrite : bool, default=False
        Replace an existing file.
    **kwargs
        Passed to :func:`bids_manifest` (``site_column``, ``site_from``, ``covariates``,
        ``session``, ``acquisition``, ``run``).

    Returns
    -------
    pathlib.Path
        The written manifest.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"'{out}' exists; pass overwrite=True (--overwrite) to replace it.")
    table = bids_manifest(bids_dir, **kwargs)
    base = Path(os.path.abspath(out)).parent
    table["path"] = [_relative(Path(p), base) for p in table["path"]]
    with atomic_write(out) as tmp:
        table.to_csv(tmp, index=False)
    return out


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive (Windows): keep it absolute
        return str(path)


def manifest_entities(manifest: str | os.PathLike | pd.DataFrame) -> list[dict[str, str]]:
    """The BIDS entities of every row of a manifest (its entity columns).

    Parameters
    ----------
    manifest : str, path-like or pandas.DataFrame
        A manifest CSV (e.g. from :func:`write_bids_manifest` or ``harmonix preprocess
        --bids-out``) or its table.

    Returns
    -------
    list of dict
        One dict per row: pybids entity names to labels (checked, in BIDS order).

    Raises
    ------
    ValueError
        If the manifest has no ``subject`` column, or a row's labels are not valid BIDS
        labels.
    """
    if isinstance(manifest, pd.DataFrame):
        table, source = manifest, "the manifest"
    else:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        source = f"manifest '{manifest}'"
    table = table.rename(columns=lambda c: str(c).strip().lower())
    names = [name for name, _ in ENTITIES if name in table.columns]
    if "subject" not in names:
        raise ValueError(
            f"BIDS output needs each image's BIDS entities, but {source} has no 'subject' "
            "column; make the manifest with harmonix bids-manifest (or add subject, session, "
            "run... columns)."
        )
    out = []
    for line, row in enumerate(table[names].itertuples(index=False), start=2):
        out.append(check_entities(dict(zip(names, row)), f"line {line} of {source}"))
    return out
