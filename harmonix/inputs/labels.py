"""Site labels: the one rule that says what a label is and when two labels are the same site.

A site label is compared by its text: every label is turned into a ``str`` with surrounding
whitespace stripped, so ``1``, ``numpy.int64(1)``, ``"1"`` and ``" 1 "`` name the same site,
whether the labels came from a CSV file (text), a pandas column (numbers, ``Int64``,
``string``, ``category``) or Python code. Integral floats are written as integers
(``1.0`` is ``"1"``: pandas turns an integer column with a gap into floats), other floats
as Python prints them, bytes are decoded as UTF-8.

A label is *missing* when it is ``None``, a float NaN, ``pandas.NA``, ``NaT``, an empty or
whitespace-only text, or the text a missing value becomes when converted with ``str``
(``"nan"``, ``"NaN"``, ``"None"``, ``"<NA>"``, ``"NaT"``, as ``df.site.astype(str)``
gives). Missing labels are refused with the positions of the images that lack one:
an image without a site must never become a site called "nan".
"""

from __future__ import annotations

import numbers
import weakref
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "MISSING_TEXTS",
    "as_label",
    "as_labels",
    "check_label",
    "check_sites",
    "distinct_sites",
    "site_codes",
]

#: Texts that ``str`` gives for missing values: refused like the values themselves.
MISSING_TEXTS = frozenset({"nan", "NaN", "None", "<NA>", "NaT"})


def _is_missing_scalar(value: Any) -> bool:
    if value is None:
        return True
    if np.ndim(value) != 0:
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def as_label(value: Any) -> str | None:
    """The text of one site label, or None if it is missing (see the module's rule).

    Parameters
    ----------
    value : object
        A label: str, int, float, bool, bytes, numpy or pandas scalar...

    Returns
    -------
    str or None
    """
    if _is_missing_scalar(value):
        return None
    if isinstance(value, (bytes, np.bytes_)):
        text = bytes(value).decode("utf-8", errors="replace")
    elif isinstance(value, (bool, np.bool_)):
        text = str(bool(value))
    elif isinstance(value, numbers.Integral):
        text = str(int(value))
    elif isinstance(value, numbers.Real):
        as_float = float(value)
        text = str(int(as_float)) if as_float.is_integer() else str(value)
    else:
        text = str(value)
    text = text.strip()
    if not text or text in MISSING_TEXTS:
        return None
    return text


def as_labels(values: Any) -> np.ndarray:
    """Labels already known to be present (e.g. a fitted ``sites_``) as text.

    Parameters
    ----------
    values : array-like
        Labels, e.g. the ``sites_`` of a model saved by an older harmonix (numbers).

    Returns
    -------
    ndarray of str
    """
    out = [as_label(v) for v in np.asarray(values, dtype=object).ravel().tolist()]
    return np.asarray(["" if v is None else v for v in out], dtype=str)


def check_label(value: Any, name: str) -> str:
    """One label given as a parameter (e.g. ``reference_site``), as text.

    Parameters
    ----------
    value : object
        The label.
    name : str
        The parameter's name, for the error message.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If the label is missing (NaN, empty text...).
    """
    if isinstance(value, (list, tuple, set, dict, np.ndarray)):
        raise ValueError(f"{name} must be one site label, got {value!r}.")
    label = as_label(value)
    if label is None:
        raise ValueError(f"{name}={value!r} is a missing value; give a site label.")
    return label


def _items(sites: Any, name: str) -> list[Any]:
    """The labels of ``sites`` as a list, refusing anything but one label per image."""
    if isinstance(sites, (pd.Series, pd.Index)):
        items = sites.tolist()
    elif isinstance(sites, np.ndarray):
        if sites.ndim != 1:
            raise ValueError(f"{name} must be 1-D, one label per image; got shape {sites.shape}.")
        items = sites.tolist()
    else:
        items = list(sites)
    for item in items:
        if not isinstance(item, (str, bytes)) and np.ndim(item) != 0:
            shape = np.shape(items) if np.ndim(items) > 1 else (len(items), "...")
            raise ValueError(f"{name} must be 1-D, one label per image; got shape {shape}.")
    return items


def _labels_by_value(sites: Any) -> tuple[np.ndarray, Any] | None:
    """The labels' texts computed once per distinct value, for 1-D inputs of one kind of
    value (text, integers, floats or booleans, where equal values have one text); None
    for anything else (mixed types, objects), which takes the per-item path."""
    if isinstance(sites, (pd.Series, pd.Index)):
        sites = sites.to_numpy()
    elif isinstance(sites, (list, tuple)):
        if not sites or not isinstance(sites[0], str):
            return None
        sites = np.asarray(sites, dtype=object)
    if not isinstance(sites, np.ndarray) or sites.ndim != 1:
        return None
    if sites.dtype == object:
        if pd.api.types.infer_dtype(sites, skipna=False) != "string":
            return None
    elif sites.dtype.kind not in "USiub":
        return None
    codes, uniques = _factorize(sites)
    texts = [as_label(u) for u in np.asarray(uniques, dtype=object).tolist()]
    if None not in texts:  # the usual case: text labels, indexed once (no per-label objects)
        if sites.dtype.kind == "U" and texts == uniques.tolist():  # already their texts
            labels = sites.copy()  # one copy, faster than indexing the texts
        else:
            labels = np.asarray(texts, dtype=str)[codes]
        if len(set(texts)) == len(texts):  # distinct values, distinct texts: the groups
            _GROUPS.remember(labels, texts, codes)
        return labels, sites
    return np.asarray(texts, dtype=object)[codes], sites


def check_sites(sites: Any, n_images: int, *, name: str = "sites") -> np.ndarray:
    """Validate site labels and return them as text (see :mod:`harmonix.inputs.labels`).

    Parameters
    ----------
    sites : array-like of shape (n_images,)
        One label per image: a list, tuple, ndarray, pandas Series or array.
    n_images : int
        Number of images they label.
    name : str, default="sites"
        Argument name used in error messages.

    Returns
    -------
    ndarray of str of shape (n_images,)
        The labels as text, surrounding whitespace stripped.

    Raises
    ------
    ValueError
        If ``sites`` is not one label per image, or a label is missing (the message lists
        the positions of the images without a label).
    """
    if isinstance(sites, (str, bytes)) or np.ndim(sites) == 0:
        raise ValueError(
            f"{name} must be a sequence with one label per image, got {sites!r}; "
            f"for one image pass [{sites!r}]."
        )
    fast = _labels_by_value(sites)
    if fast is not None:  # one conversion per distinct label (10,000 labels of 10 sites)
        if len(fast[0]) != n_images:
            raise ValueError(
                f"Got {n_images} images but {len(fast[0])} {name}; give exactly one label per "
                "image."
            )
        labels, items = fast
        if labels.dtype != object:  # no missing label
            return labels
        labels = labels.tolist()
    else:
        items = _items(sites, name)
        if len(items) != n_images:
            raise ValueError(
                f"Got {n_images} images but {len(items)} {name}; give exactly one label per image."
            )
        labels = [as_label(s) for s in items]
    missing = [i for i, s in enumerate(labels) if s is None]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        values = sorted({repr(items[i]) for i in missing})[:5]
        raise ValueError(
            f"{name} has {len(missing)} missing label(s) at position(s) [{shown}] (0-based; "
            f"values {', '.join(values)}): every image needs a site label. Fill them in or "
            "drop those images (None, NaN, pandas NA/NaT, empty text and 'nan' count as "
            "missing)."
        )
    return np.asarray(labels, dtype=str)


def _text_keys(values: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each text of a 1-D ``<U`` array (its code points as the
    coefficients of a polynomial, computed with unsigned wrap-around)."""
    width = values.dtype.itemsize // 4
    words = np.ascontiguousarray(values).view(np.uint32).reshape(len(values), width)
    weights = np.full(width, 1_000_003, dtype=np.uint64) ** np.arange(width, dtype=np.uint64)
    return words.astype(np.uint64) @ weights


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize(values)`` (codes in order of first appearance, and the distinct
    values), faster for fixed-width text (numpy ``<U``) arrays.

    pandas hashes Python objects, so a ``<U`` array is first turned into 10,000 ``str``
    objects (most of its 0.6 ms). Here each text's UTF-32 code points are hashed into one
    64-bit integer (a polynomial with wrap-around), the integers are factorized, and the
    result is verified: every value must equal its group's first value, else (a hash
    collision: never seen, but possible) the object path answers. Exact either way.
    """
    if values.dtype.kind != "U" or values.ndim != 1 or values.dtype.itemsize == 0:
        return pd.factorize(values)
    keys = _latin1_keys(values)
    exact = keys is not None
    codes, _ = pd.factorize(keys if exact else _text_keys(values))
    first = np.empty(codes.max() + 1 if len(codes) else 0, dtype=np.intp)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)
    uniques = values[first]
    if not exact and not np.array_equal(uniques[codes], values):
        return pd.factorize(values)
    return codes, uniques


def _latin1_keys(values: np.ndarray) -> np.ndarray | None:
    """Each text of a 1-D ``<U`` array of at most 6 characters, all below U+0100 (e.g.
    ASCII site names), as one number: its characters are the digits in base 256, a sum
    below 2**48 that float64 holds exactly, so equal keys are equal texts (no
    verification needed). None for other arrays."""
    width = values.dtype.itemsize // 4
    if width > 6 or not len(values):
        return None
    words = np.ascontiguousarray(values).view(np.uint32).reshape(len(values), width)
    if words.max() > 0xFF:
        return None
    # integers hash faster than floats
    return (words.astype(np.float64) @ (256.0 ** np.arange(width))).astype(np.uint64)


class _GroupsMemo:
    """The groups (:func:`distinct_sites`) of the labels :func:`check_sites` returned
    last, so that the checks and the method of one call factorize them once.

    An entry is found by the labels array itself (a weak reference: it dies with the
    array) and used only while the array still holds the labels it was made from
    (compared with a copy: a caller may have changed it in place); its codes are
    read-only.
    """

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._entries: list[tuple[weakref.ref, np.ndarray, list[str], np.ndarray]] = []

    def remember(self, labels: np.ndarray, texts: list[str], codes: np.ndarray) -> None:
        codes = np.asarray(codes, dtype=np.intp)
        codes.flags.writeable = False
        entry = (weakref.ref(labels), labels.copy(), list(texts), codes)
        self._entries = [e for e in self._entries[-(self._size - 1) :] if e[0]() is not None]
        self._entries.append(entry)

    def recall(self, labels: np.ndarray) -> tuple[list[str], np.ndarray] | None:
        for ref, content, texts, codes in reversed(self._entries):
            if ref() is labels and np.array_equal(content, labels):
                return list(texts), codes
        return None


_GROUPS = _GroupsMemo()


def distinct_sites(sites: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The distinct labels of checked sites (:func:`check_sites`), in order of first
    appearance, and each image's position among them: one hash pass in C, where a Python
    loop over 10,000 labels (``dict.fromkeys(sites.tolist())``) takes milliseconds; the
    labels that :func:`check_sites` returned are not factorized again."""
    if isinstance(sites, np.ndarray):
        known = _GROUPS.recall(sites)
        if known is not None:
            return known
    codes, uniques = _factorize(np.asarray(sites))
    return [str(u) for u in uniques.tolist()], codes


def site_codes(sites: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorted distinct labels of checked sites, each image's index into them and the
    images per label (what ``np.unique(sites, return_inverse=True, return_counts=True)``
    gives, without sorting every label's text).

    Returns
    -------
    labels : ndarray of str
    codes : ndarray of int of shape (n_images,)
    counts : ndarray of int of shape (len(labels),)
    """
    first, codes = distinct_sites(sites)
    order = np.argsort(np.asarray(first, dtype=str), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    codes = rank[codes]
    labels = np.asarray(first, dtype=str)[order]
    return labels, codes, np.bincount(codes, minlength=len(labels))
