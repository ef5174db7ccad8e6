"""BIDS file names: entities in, entities out.

A BIDS file name is ``key-label`` pairs joined by ``_`` in a fixed order, then a suffix and
an extension: ``sub-01_ses-2_acq-mprage_run-1_T1w.nii.gz``. harmonix carries the entities
of every image in its manifest (columns named like pybids names them: ``subject``,
``session``, ``acquisition``, ``run``...) and names its derivatives from them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from harmonix.io._entities import ENTITIES

__all__ = ["build_name", "check_entities", "parse_name", "relative_path"]

_KEYS = {name: key for name, key in ENTITIES}
_NAMES = {key: name for name, key in ENTITIES}
#: Entities whose label is an index (digits only).
_INDEX = {"run", "echo", "flip", "inv", "chunk"}
_LABEL = re.compile(r"[A-Za-z0-9]+")
_DIGITS = re.compile(r"[0-9]+")
_EXTENSIONS = (".nii.gz", ".nii", ".json", ".tsv", ".png")


def _text(value: Any) -> str | None:
    """An entity value as text; None for missing values (None, NaN, empty)."""
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN: an empty manifest cell
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text or None


def check_entities(entities: Mapping[str, Any], source: str = "an image") -> dict[str, str]:
    """Validate entity labels and return them as text, in BIDS order.

    Parameters
    ----------
    entities : mapping
        pybids entity names (``subject``, ``session``...) to labels; missing values (None,
        NaN, empty) are dropped. A ``sub-``/``ses-`` prefix in a label is removed.
    source : str, default="an image"
        What the entities belong to, for error messages (e.g. the image's path).

    Returns
    -------
    dict of str to str
        The entities present, in the order file names use.

    Raises
    ------
    ValueError
        If an entity is unknown, ``subject`` is missing, a label is not alphanumeric, or an
        index (``run``, ``echo``...) is not a number.
    """
    unknown = sorted(set(entities) - set(_KEYS))
    if unknown:
        raise ValueError(
            f"Unknown BIDS entit{'y' if len(unknown) == 1 else 'ies'} {unknown} for {source}; "
            f"harmonix knows {[name for name, _ in ENTITIES]}."
        )
    out: dict[str, str] = {}
    for name, key in ENTITIES:
        value = _text(entities.get(name))
        if value is None:
            continue
        if value.startswith(f"{key}-"):
            value = value[len(key) + 1 :]
        pattern = _DIGITS if name in _INDEX else _LABEL
        if not pattern.fullmatch(value):
            kind = "a number" if name in _INDEX else "letters and digits only"
            raise ValueError(
                f"The BIDS {name} of {source} is {value!r}; a {key}- label must be {kind}."
            )
        out[name] = value
    if "subject" not in out:
        raise ValueError(
            f"{source} has no BIDS subject: every image needs one (a 'subject' column in the "
            "manifest; harmonix bids-manifest writes it)."
        )
    return out


def build_name(entities: Mapping[str, Any], suffix: str, extension: str) -> str:
    """A BIDS file name from entities, e.g. ``sub-01_ses-2_desc-preproc_T1w.nii.gz``.

    Parameters
    ----------
    entities : mapping
        pybids entity names to labels (checked with :func:`check_entities`).
    suffix : str
        ``T1w``, ``mask``...
    extension : str
        ``.nii.gz``, ``.json``...

    Returns
    -------
    str
    """
    checked = check_entities(entities)
    parts = [f"{_KEYS[name]}-{value}" for name, value in checked.items()]
    return "_".join([*parts, suffix]) + extension


def relative_path(entities: Mapping[str, Any], suffix: str, extension: str) -> PurePosixPath:
    """Where a file lives in a BIDS dataset: ``sub-X/[ses-Y/]anat/<name>``.

    Parameters
    ----------
    entities, suffix, extension
        As for :func:`build_name`.

    Returns
    -------
    pathlib.PurePosixPath
        Relative to the dataset's root.
    """
    checked = check_entities(entities)
    folder = PurePosixPath(f"sub-{checked['subject']}")
    if "session" in checked:
        folder /= f"ses-{checked['session']}"
    return folder / "anat" / build_name(checked, suffix, extension)


def parse_name(name: str) -> tuple[dict[str, str], str, str]:
    """Split a BIDS file name into entities, suffix and extension.

    Parameters
    ----------
    name : str
        A file name (a path's last part is used), e.g. ``sub-01_run-2_T1w.nii.gz``.

    Returns
    -------
    entities : dict of str to str
        pybids entity names to labels, in BIDS order.
    suffix : str
    extension : str

    Raises
    ------
    ValueError
        If the name is not a BIDS name (``sub-<label>_..._<suffix><extension>``).
    """
    base = PurePosixPath(str(name).replace("\\", "/")).name
    extension = next((e for e in _EXTENSIONS if base.endswith(e)), PurePosixPath(base).suffix)
    stem = base[: len(base) - len(extension)] if extension else base
    *pairs, suffix = stem.split("_")
    entities: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("-")
        if not sep or key not in _NAMES or _NAMES[key] in entities:
            raise ValueError(
                f"'{base}' is not a BIDS file name: {pair!r} is not a known key-label pair "
                "(expected e.g. sub-01_ses-1_run-1_T1w.nii.gz)."
            )
        entities[_NAMES[key]] = value
    if not pairs or not _LABEL.fullmatch(suffix):
        raise ValueError(
            f"'{base}' is not a BIDS file name (expected e.g. sub-01_ses-1_run-1_T1w.nii.gz)."
        )
    return check_entities(entities, f"'{base}'"), suffix, extension
