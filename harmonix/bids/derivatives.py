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

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from harmonix._version import __version__
from harmonix.batch import sidecar_path, transform_files
from harmonix.bids.manifest import manifest_entities
from harmonix.bids.names import build_name, parse_name, relative_path
from harmonix.io import atomic_write, read_manifest, save_img
from harmonix.persistence import model_file, to_plain
from harmonix.preprocessing.template import TEMPLATE_SPACE

__all__ = [
    "DerivativeDataset",
    "derivatives_to_native",
    "harmonized_path",
    "native_path",
    "preprocess_to_bids",
    "preprocessed_paths",
    "to_native_bids",
    "transform_to_bids",
]

logger = logging.getLogger(__name__)

_DESCRIPTION = "dataset_description.json"
_BIDS_VERSION = "1.9.0"
#: Names of the dataset-level files ``preprocess --bids-out`` writes.
PREPROC_QC = "desc-preproc_qc.tsv"
PREPROC_MANIFEST = "desc-preproc_manifest.csv"


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
def _without(entities: Mapping[str, str], *names: str) -> dict[str, str]:
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
    base = _without(entities, "desc")
    prep = {**_without(base, "space"), "space": TEMPLATE_SPACE, "desc": "preproc"}
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
    return relative_path({**_without(entities, "desc"), "desc": "harmonized"}, "T1w", ".nii.gz")


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
    return relative_path(_without(entities, "space"), suffix, ".nii.gz")


def _check_distinct(outputs: Sequence[Any], sources: Sequence[Any]) -> None:
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


def _sidecar(path: Path) -> dict[str, Any]:
    json_path = sidecar_path(path)
    if json_path.is_file():
        try:
            values = json.loads(json_path.read_text())
            return values if isinstance(values, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
    return {}


def _entities_of(
    paths: Sequence[Path], entities: Sequence[Mapping[str, str]] | None
) -> list[Mapping[str, str]]:
    if entities is None:
        out = []
        for path in paths:
            ents, suffix, _ = parse_name(path.name)
            if suffix != "T1w":
                raise ValueError(
                    f"'{path.name}' is not a BIDS T1w file name (sub-<label>[_ses-<label>]..."
                    "_T1w.nii.gz); name it so, or give the entities in a manifest."
                )
            out.append(ents)
        return out
    if len(entities) != len(paths):
        raise ValueError(f"Got {len(paths)} files but {len(entities)} entity sets.")
    return list(entities)


# -- harmonized images ------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parameter(value: Any) -> Any:
    """A constructor parameter for a sidecar: arrays (e.g. a mask) by shape and hash."""
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"shape": list(data.shape), "sha256": hashlib.sha256(data.tobytes()).hexdigest()}
    try:
        return to_plain(value, "a parameter", target="torch")
    except TypeError:
        return repr(value)


def _model_record(model: Any, path: str | os.PathLike | None) -> dict[str, Any]:
    """The ``Harmonization`` entry every harmonized sidecar shares."""
    record: dict[str, Any] = {"Method": type(model).__name__}
    if path is not None:
        resolved = model_file(path)
        record["Model"] = resolved.name
        record["ModelSHA256"] = _sha256(resolved)
    record["Parameters"] = {k: _parameter(v) for k, v in model.get_params().items()}
    for attribute, key in (("reference_site_", "ReferenceSite"), ("sites_", "FittedSites")):
        value = getattr(model, attribute, None)
        if value is not None:
            record[key] = to_plain(value, attribute, target="torch")
    return record


def transform_to_bids(
    model: Any,
    paths: Sequence[str | os.PathLike],
    bids_out: str | os.PathLike,
    *,
    entities: Sequence[Mapping[str, str]] | None = None,
    sites: Sequence[Any] | None = None,
    ages: Sequence[float] | None = None,
    model_path: str | os.PathLike | None = None,
    n_jobs: int | None = 1,
    overwrite: bool = False,
    skip_existing: bool = False,
    verbose: bool = True,
) -> list[Path]:
    """Harmonize NIfTI files into a BIDS derivatives folder (``transform --bids-out``).

    Each image becomes ``<its entities>_desc-harmonized_T1w.nii.gz`` (in its space: a
    ``space-`` entity is kept) with a JSON sidecar: ``Sources`` (a BIDS URI of the input),
    ``SkullStripped`` (the input sidecar's value, else true: harmonix treats zero voxels
    as background) and ``Harmonization`` (method, model file name and SHA-256, parameters,
    fitted sites, the image's site). ``dataset_description.json`` is written last.

    Parameters
    ----------
    model : BaseHarmonizer
        A fitted harmonizer.
    paths : sequence of str or path-like
        The images.
    bids_out : str or path-like
        The derivatives folder (not a raw dataset).
    entities : sequence of dict, optional
        Each image's BIDS entities (pybids names), e.g. from
        :func:`harmonix.bids.manifest_entities`; by default parsed from the file names.
    sites, ages : sequence, optional
        Per-image sites and ages (ComBat needs them).
    model_path : str or path-like, optional
        The model's file, whose name and hash go into the sidecars.
    n_jobs : int or None, default=1
        joblib workers.
    overwrite : bool, default=False
        Replace existing outputs.
    skip_existing : bool, default=False
        Keep existing outputs (with their sidecars) and harmonize the other images, e.g.
        to finish an interrupted run (see :func:`harmonix.batch.transform_files`).
    verbose : bool, default=True
        Show a progress bar.

    Returns
    -------
    list of pathlib.Path
        The output images (written or kept), in input order.

    Raises
    ------
    ValueError
        If ``bids_out`` is a raw dataset, an image has no valid entities, or two images
        have the same entities; nothing is written then.
    """
    paths = [Path(p) for p in paths]
    dataset = DerivativeDataset(bids_out)
    ents = _entities_of(paths, entities)
    outputs = [harmonized_path(e) for e in ents]
    _check_distinct(outputs, paths)
    record = _model_record(model, model_path)
    sidecars = []
    for i, src in enumerate(paths):
        skull = _sidecar(src).get("SkullStripped", True)
        site = None if sites is None else to_plain(sites[i], "site", target="torch")
        sidecars.append(
            {
                "Description": f"T1w image harmonized by harmonix ({record['Method']}).",
                "Sources": [dataset.source(src)],
                "SkullStripped": skull,
                "Harmonization": {**record, "Site": site},
            }
        )
    written = transform_files(
        model,
        paths,
        dataset.root,
        sites=sites,
        ages=ages,
        outputs=outputs,
        sidecars=sidecars,
        n_jobs=n_jobs,
        overwrite=overwrite,
        skip_existing=skip_existing,
        verbose=verbose,
    )
    dataset.write_description()
    return written


# -- preprocessed images ----------------------------------------------------------------------
def preprocess_to_bids(
    manifest: str | os.PathLike,
    bids_out: str | os.PathLike,
    **kwargs: Any,
) -> tuple[Path, pd.DataFrame]:
    """Preprocess the scans of a manifest into a BIDS derivatives folder.

    The BIDS counterpart of :func:`harmonix.preprocessing.preprocess_manifest`: the same
    chain, resumable the same way, with the files named as :func:`preprocessed_paths`
    says, ``desc-preproc_qc.tsv`` (the QC table, one row per scan, sources as BIDS URIs)
    and ``desc-preproc_manifest.csv`` (the preprocessed images of the scans that did not
    fail, every column of the input manifest kept, ``space`` and ``desc`` set) at the top.

    Parameters
    ----------
    manifest : str or path-like
        A manifest with BIDS entity columns (e.g. from ``harmonix bids-manifest``).
    bids_out : str or path-like
        The derivatives folder (not a raw dataset).
    **kwargs
        Passed to :func:`harmonix.preprocessing.preprocess_files` (``preprocessor``,
        ``n_jobs``, ``overwrite``, ``qc_png``, ``verbose``).

    Returns
    -------
    manifest : pathlib.Path
        The written ``desc-preproc_manifest.csv``.
    qc : pandas.DataFrame
        The QC table (as :func:`~harmonix.preprocessing.preprocess_files` returns it, with
        the ``site`` column).
    """
    from harmonix.preprocessing import preprocess_files

    man = read_manifest(manifest)
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    rows.columns = [str(c).strip().lower() for c in rows.columns]
    ents = manifest_entities(rows)
    dataset = DerivativeDataset(bids_out)
    files = [preprocessed_paths(e) for e in ents]
    _check_distinct([f["image"] for f in files], man.paths)
    sources = [dataset.source(p) for p in man.paths]
    metadata = [
        {
            "json": {
                "Description": "T1w image skull-stripped (deepbet), N4-corrected, rigidly "
                f"registered to {TEMPLATE_SPACE} (1 mm), brain median scaled to 500 and "
                "cropped by harmonix preprocess.",
                "Sources": [src],
                "SkullStripped": True,
            },
            "mask_json": {
                "Description": "Brain mask on the grid of the source T1w image.",
                "Type": "Brain",
                "Sources": [src],
            },
        }
        for src in sources
    ]
    table = preprocess_files(
        man.paths,
        dataset.root,
        outputs=[{k: Path(v) for k, v in f.items()} for f in files],
        metadata=metadata,
        **kwargs,
    )
    table.insert(2, "site", man.sites)
    dataset.write_description()
    ok = (table["status"] != "failed").to_numpy()
    out_rows = rows.copy()
    out_rows["path"] = [f["image"].as_posix() for f in files]
    out_rows["space"] = TEMPLATE_SPACE
    out_rows["desc"] = "preproc"
    out_rows = out_rows[ok]
    tsv = table.drop(columns=["stem"]).copy()
    tsv.insert(0, "filename", [f["image"].as_posix() for f in files])
    tsv["source"] = sources
    with atomic_write(dataset.root / PREPROC_QC) as tmp:
        tsv.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    out = dataset.root / PREPROC_MANIFEST
    with atomic_write(out) as tmp:
        out_rows.to_csv(tmp, index=False)
    return out, table


# -- back to native space ---------------------------------------------------------------------
def _native_target(dataset: DerivativeDataset, img: Path, overwrite: bool) -> Path:
    """Where the native-space version of ``img`` goes; refused before anything is written."""
    entities, suffix, _ = parse_name(img.name)
    if "space" not in entities:
        raise ValueError(
            f"'{img.name}' has no space- entity: to-native maps a template-space image "
            f"(e.g. ..._space-{TEMPLATE_SPACE}_desc-harmonized_T1w.nii.gz) back to its scan."
        )
    out = dataset.root / native_path(entities, suffix)
    if out.exists() and not overwrite:
        raise FileExistsError(f"'{out}' exists; pass overwrite=True (--overwrite) to replace it.")
    return out


def _write_native(
    dataset: DerivativeDataset,
    img: Path,
    transform: str | os.PathLike,
    mask: str | os.PathLike | None,
    rescale: bool,
    out: Path,
) -> Path:
    from harmonix.preprocessing import to_native

    result = to_native(img, transform, mask=mask, rescale=rescale)
    sidecar = {
        "Description": f"{img.name} mapped back onto the grid of its source scan by harmonix.",
        "Sources": [dataset.source(p) for p in (img, transform, mask) if p is not None],
        "SkullStripped": True if mask is not None else _sidecar(img).get("SkullStripped", True),
    }
    with atomic_write(sidecar_path(out)) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return save_img(result, out, overwrite=True)


def to_native_bids(
    img: str | os.PathLike,
    transform: str | os.PathLike,
    bids_out: str | os.PathLike,
    *,
    mask: str | os.PathLike | None = None,
    rescale: bool = False,
    overwrite: bool = False,
) -> Path:
    """Map a template-space BIDS derivative back onto its raw scan's grid, BIDS-named.

    ``sub-01_space-MNI152NLin2009aSym_desc-harmonized_T1w.nii.gz`` becomes
    ``sub-01_desc-harmonized_T1w.nii.gz`` (no ``space-``: the source scan's space) in
    ``bids_out``, with a sidecar whose ``Sources`` name the image, the transform and the
    mask. :func:`derivatives_to_native` does it for every harmonized image of a folder.

    Parameters
    ----------
    img : str or path-like
        A template-space image with a BIDS name (e.g. from ``transform --bids-out``).
    transform : str or path-like
        The scan's preprocessing sidecar (``…_desc-preproc_T1w.json``) or ``*_prep.json``.
    bids_out : str or path-like
        The derivatives folder (not a raw dataset).
    mask : str or path-like, optional
        The native brain mask (``…_desc-brain_mask.nii.gz``); voxels outside become 0.
    rescale : bool, default=False
        Undo the median normalization.
    overwrite : bool, default=False
        Replace an existing output.

    Returns
    -------
    pathlib.Path
        The written image.
    """
    img = Path(img)
    dataset = DerivativeDataset(bids_out)
    out = _native_target(dataset, img, overwrite)
    written = _write_native(dataset, img, transform, mask, rescale, out)
    dataset.write_description()
    return written


def derivatives_to_native(
    bids_dir: str | os.PathLike,
    *,
    desc: str = "harmonized",
    rescale: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Map every template-space ``desc-<desc>`` T1w image of a harmonix derivatives folder
    back onto its raw scan's grid (``to-native --bids-out DIR`` without ``--input``).

    Each ``…_space-MNI152NLin2009aSym_desc-harmonized_T1w.nii.gz`` is mapped with the
    transform in its scan's preprocessing sidecar and masked with its scan's brain mask,
    both found by name in the same folder (``preprocess --bids-out`` wrote them), and
    written as :func:`to_native_bids` does.

    Parameters
    ----------
    bids_dir : str or path-like
        The derivatives folder holding the preprocessed and harmonized images.
    desc : str, default="harmonized"
        Which images to map back.
    rescale : bool, default=False
        Undo the median normalization.
    overwrite : bool, default=False
        Replace existing outputs.

    Returns
    -------
    list of pathlib.Path
        The written images.

    Raises
    ------
    ValueError
        If the folder holds no such image, or an image's preprocessing sidecar or mask is
        missing (all are checked before anything is written).
    """
    dataset = DerivativeDataset(bids_dir)
    pattern = f"sub-*/**/anat/*_space-{TEMPLATE_SPACE}_desc-{desc}_T1w.nii.gz"
    images = sorted(dataset.root.glob(pattern))
    if not images:
        raise ValueError(f"No {pattern.rsplit('/', 1)[-1]} image in '{dataset.root}'.")
    jobs, missing = [], []
    for img in images:
        source = _without(parse_name(img.name)[0], "space", "desc")
        files = {k: dataset.root / v for k, v in preprocessed_paths(source).items()}
        absent = [files[k].name for k in ("json", "native_mask") if not files[k].is_file()]
        if absent:
            missing.append(f"{img.name} (no {', '.join(absent)})")
        jobs.append((img, files["json"], files["native_mask"]))
    if missing:
        raise ValueError(
            f"The preprocessing files of {len(missing)} image(s) are not in '{dataset.root}': "
            f"{'; '.join(missing[:3])}. Run harmonix preprocess --bids-out into that folder, "
            "or map images one at a time with --input, --transform and --mask."
        )
    targets = [_native_target(dataset, img, overwrite) for img, _, _ in jobs]
    written = [
        _write_native(dataset, img, transform, mask, rescale, out)
        for (img, transform, mask), out in zip(jobs, targets)
    ]
    dataset.write_description()
    return written
