"""``transform --bids-out``: harmonized images named for their sources, with sidecars."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmonix.batch import _model_covariates, transform_files
from harmonix.bids.derivatives import (
    DerivativeDataset,
    check_distinct,
    harmonized_path,
    read_sidecar,
)
from harmonix.bids.manifest import manifest_entities
from harmonix.bids.names import parse_name
from harmonix.io import read_manifest
from harmonix.persistence import model_file, to_plain

__all__ = ["transform_manifest_to_bids", "transform_to_bids"]


def _entities_of(
    paths: Sequence[Path], entities: Sequence[Mapping[str, str]] | None
) -> list[Mapping[str, str]]:
    """The given entities, or those of the files' BIDS T1w names."""
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
    covariates: Any = None,
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
    covariates : pandas.DataFrame or mapping of str to sequence, optional
        Per-image covariates, for a model fitted with them (see
        :func:`harmonix.batch.transform_files`).
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
    check_distinct(outputs, paths)
    record = _model_record(model, model_path)
    sidecars = []
    for i, src in enumerate(paths):
        skull = read_sidecar(src).get("SkullStripped", True)
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
        covariates=covariates,
        outputs=outputs,
        sidecars=sidecars,
        n_jobs=n_jobs,
        overwrite=overwrite,
        skip_existing=skip_existing,
        verbose=verbose,
    )
    dataset.write_description()
    return written


def transform_manifest_to_bids(
    model: Any,
    manifest: str | os.PathLike,
    bids_out: str | os.PathLike,
    **kwargs: Any,
) -> list[Path]:
    """Harmonize the images of a manifest into a BIDS derivatives folder.

    The Python form of ``harmonix transform --manifest MANIFEST --bids-out BIDS_OUT``:
    :func:`transform_to_bids` on the manifest's images, with their BIDS entities
    (:func:`manifest_entities`), sites, ages and the covariate columns the model was
    fitted with.

    Parameters
    ----------
    model : BaseHarmonizer
        A fitted harmonizer.
    manifest : str or path-like
        A manifest CSV with BIDS entity columns (e.g. from :func:`write_bids_manifest`,
        ``harmonix bids-manifest``).
    bids_out : str or path-like
        The derivatives folder (not a raw dataset).
    **kwargs
        Passed to :func:`transform_to_bids` (``model_path``, ``n_jobs``, ``overwrite``,
        ``skip_existing``, ``verbose``).

    Returns
    -------
    list of pathlib.Path
        The output images (written or kept), in the manifest's order.

    Raises
    ------
    ValueError
        If the manifest has no BIDS entity columns or lacks a covariate the model needs,
        or as :func:`transform_to_bids` raises; nothing is written then.
    """
    man = read_manifest(manifest)
    return transform_to_bids(
        model,
        man.paths,
        bids_out,
        entities=manifest_entities(manifest),
        sites=man.sites,
        ages=man.ages,
        covariates=man.covariates(_model_covariates(model)),
        **kwargs,
    )
