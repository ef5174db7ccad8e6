"""BIDS derivatives out: harmonix's outputs named for their sources, with sidecars.

A derivatives folder (``--bids-out DIR``) receives, per source image with entities
``sub-X[_ses-Y][_acq-…][_run-…]``:

- ``preprocess``: ``…_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz`` and its ``.json``
  sidecar (which also holds the template transform and the QC numbers, so
  ``harmonix to-native --transform`` reads it), ``…_desc-brain_mask.nii.gz`` (on the
  source's grid) and its sidecar, ``sub-X/figures/…_desc-preproc_T1w.png``, and at the top
  ``desc-preproc_qc.tsv`` and ``desc-preproc_manifest.csv`` (the manifest ``fit`` and
  ``transform`` read next);
- ``transform``: ``…_desc-harmonized_T1w.nii.gz`` (in the source's space) and its sidecar
  (method, model hash, parameters);
- ``to-native``: ``…_desc-harmonized_T1w.nii.gz`` without ``space-``: on the raw scan's grid.

Every sidecar lists its ``Sources`` as BIDS URIs (``bids:raw:sub-01/anat/…``), the
datasets they name being recorded in ``dataset_description.json``'s ``DatasetLinks``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from harmonix._version import __version__
from harmonix.batch import sidecar_path
from harmonix.bids.names import build_name, relative_path
from harmonix.io import atomic_write
from harmonix.preprocessing.template import TEMPLATE_SPACE

# check_distinct, read_sidecar and without serve the writers of this package
__all__ = ["DerivativeDataset", "harmonized_path", "native_path", "preprocessed_paths"]

_DESCRIPTION = "dataset_description.json"
_BIDS_VERSION = "1.9.0"


def _absolute(path: str | os.PathLike) -> Path:
    """An absolute, normalized path whose symlinks are kept: a file of a DataLad dataset
    is a link into ``.git/annex``, but its name in the dataset is the link's."""
    return Path(os.path.abspath(path))


def _dataset_root(path: Path) -> Path | None:
    """The nearest folder above ``path`` holding a dataset_description.json."""
    for folder in path.parents:
        if (folder / _DESCRIPTION).is_file():
            return folder
    return None


def _read_description(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"'{path}' is not valid JSON ({exc}); fix or remove it.") from exc
    if not isinstance(values, dict):
        raise ValueError(f"'{path}' must hold a JSON object.")
    return values


class DerivativeDataset:
    """A BIDS derivatives folder harmonix writes to: its description and source links.

    Opening one reads an existing ``dataset_description.json`` and refuses a raw dataset
    (derivatives go in a folder of their own, e.g. ``<raw>/derivatives/harmonix``);
    nothing is written until :meth:`write_description`.

    Parameters
    ----------
    root : str or path-like
        The derivatives folder (created when written).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        path = self.root / _DESCRIPTION
        self.description: dict[str, Any] = {}
        if path.is_file():
            self.description = _read_description(path)
            if self.description.get("DatasetType") != "derivative":
                raise ValueError(
                    f"'{self.root}' is a raw BIDS dataset ({path} has no DatasetType "
                    "'derivative'); write derivatives to a folder of their own, e.g. "
                    f"'{self.root / 'derivatives' / 'harmonix'}'."
                )
        elif self.root.is_file():
            raise ValueError(f"'{self.root}' is a file; --bids-out needs a folder.")
        self.links: dict[str, str] = dict(self.description.get("DatasetLinks", {}))

    def _linked(self, value: str) -> Path:
        value = value.removeprefix("file://")
        return _absolute(self.root / value)

    def _link(self, dataset: Path) -> str:
        """The DatasetLinks name of another dataset, added if new."""
        for name, value in self.links.items():
            if self._linked(value) == dataset:
                return name
        kind = _read_description(dataset / _DESCRIPTION).get("DatasetType", "raw")
        base = "raw" if kind != "derivative" else re.sub(r"[^A-Za-z0-9]", "", dataset.name)
        base = base or "source"
        name, n = base, 1
        while name in self.links:
            n += 1
            name = f"{base}{n}"
        try:
            value = Path(os.path.relpath(dataset, _absolute(self.root))).as_posix()
        except ValueError:  # another drive (Windows)
            value = dataset.as_uri()
        self.links[name] = value
        return name

    def source(self, path: str | os.PathLike) -> str:
        """How a sidecar's ``Sources`` names a file: a BIDS URI.

        ``bids::<path>`` for a file of this dataset, ``bids:<name>:<path>`` for a file of
        another BIDS dataset (``name`` added to ``DatasetLinks``: ``raw`` for a raw
        dataset, the folder's name for a derivative one), and the path relative to this
        dataset for a file in no BIDS dataset.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        str
        """
        path = _absolute(path)
        dataset = _dataset_root(path)
        if dataset is None:
            return Path(os.path.relpath(path, _absolute(self.root))).as_posix()
        inner = path.relative_to(dataset).as_posix()
        if dataset == _absolute(self.root):
            return f"bids::{inner}"
        return f"bids:{self._link(dataset)}:{inner}"

    def write_description(self) -> Path:
        """Write (or update) ``dataset_description.json``: DatasetType derivative,
        GeneratedBy harmonix and its version, the DatasetLinks used.

        Returns
        -------
        pathlib.Path
        """
        values = {
            "Name": "harmonix derivatives",
            "BIDSVersion": _BIDS_VERSION,
            **self.description,
            "DatasetType": "derivative",
        }
        generated = list(values.get("GeneratedBy", []))
        me = {
            "Name": "harmonix",
            "Version": __version__,
            "Description": "Harmonization of multi-site structural brain MRI",
        }
        if not any(
            g.get("Name") == "harmonix" and g.get("Version") == __version__ for g in generated
        ):
            generated.append(me)
        values["GeneratedBy"] = generated
        if self.links:
            values["DatasetLinks"] = dict(self.links)
        path = self.root / _DESCRIPTION
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(values, indent=2) + "\n")
        self.description = values
        return path


# -- names ------------------------------------------------------------------------------------
def without(entities: Mapping[str, str], *names: str) -> dict[str, str]:
    """The entities less some of them."""
    return {k: v for k, v in entities.items() if k not in names}


def preprocessed_paths(entities: Mapping[str, str]) -> dict[str, PurePosixPath]:
    """The files ``preprocess --bids-out`` writes for a source with these entities.

    Parameters
    ----------
    entities : mapping
        The source's entities (pybids names).

    Returns
    -------
    dict of str to pathlib.PurePosixPath
        Relative to the derivatives folder: ``image``
        (``…_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz``), ``json`` (its sidecar),
        ``native_mask`` (``…_desc-brain_mask.nii.gz``, on the source's grid), ``mask_json``
        and ``png`` (``sub-X/figures/…_desc-preproc_T1w.png``).
    """
    base = without(entities, "desc")
    prep = {**without(base, "space"), "space": TEMPLATE_SPACE, "desc": "preproc"}
    mask = {**base, "desc": "brain"}
    image = relative_path(prep, "T1w", ".nii.gz")
    return {
        "image": image,
        "json": relative_path(prep, "T1w", ".json"),
        "native_mask": relative_path(mask, "mask", ".nii.gz"),
        "mask_json": relative_path(mask, "mask", ".json"),
        "png": PurePosixPath(image.parts[0], "figures", build_name(prep, "T1w", ".png")),
    }


def harmonized_path(entities: Mapping[str, str]) -> PurePosixPath:
    """``…_desc-harmonized_T1w.nii.gz`` for a source with these entities (its space kept).

    Parameters
    ----------
    entities : mapping
        The source's entities (pybids names); a ``desc`` is replaced.

    Returns
    -------
    pathlib.PurePosixPath
        Relative to the derivatives folder.
    """
    return relative_path({**without(entities, "desc"), "desc": "harmonized"}, "T1w", ".nii.gz")


def native_path(entities: Mapping[str, str], suffix: str = "T1w") -> PurePosixPath:
    """The native-space name of a template-space image: its name without ``space-``.

    Parameters
    ----------
    entities : mapping
        The template-space image's entities.
    suffix : str, default="T1w"

    Returns
    -------
    pathlib.PurePosixPath
        Relative to the derivatives folder.
    """
    return relative_path(without(entities, "space"), suffix, ".nii.gz")


def check_distinct(outputs: Sequence[Any], sources: Sequence[Any]) -> None:
    """Two sources with one output name (one BIDS key) -> an error naming both."""
    first: dict[Any, Any] = {}
    for out, src in zip(outputs, sources):
        if out in first:
            raise ValueError(
                f"'{first[out]}' and '{src}' have the same BIDS entities, so both would be "
                f"written to {out}; give them distinct entities (session, run, acq...) in "
                "the manifest."
            )
        first[out] = src


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar beside an image (``{}`` when absent or unreadable)."""
    json_path = sidecar_path(path)
    if json_path.is_file():
        try:
            values = json.loads(json_path.read_text())
            return values if isinstance(values, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
    return {}
