"""Harmonize many NIfTI files with constant memory, optionally in parallel.

:func:`transform_files` streams: it takes the images site by site (so that its result
equals one ``transform`` call on all of them), each worker holds one image at a time, and
every result is written (atomically) before the next image is read, so memory does not
grow with the number of files. Parallelism goes through joblib, so any joblib backend
works, including a dask cluster::

    from dask.distributed import Client
    import joblib
    client = Client(...)                      # pip install "harmonix[dask]"
    with joblib.parallel_backend("dask"):
        transform_files(model, paths, "out/", n_jobs=-1)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from harmonix.exceptions import OutputExistsError
from harmonix.inputs.covariates import check_covariates
from harmonix.io import atomic_write, load_img, save_img

__all__ = ["output_paths", "sidecar_path", "transform_files"]


def _output_name(src: Path, suffix: str) -> str:
    name = src.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)] + suffix + ext
    return name + suffix + ".nii.gz"


def _model_covariates(model: Any) -> list[str]:
    """The covariate columns a fitted model needs at transform (none for most methods)."""
    if not getattr(model, "_needs_covariates", False):
        return []
    return list(model._fitted_covariate_levels())


def output_paths(
    paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, suffix: str = "_harmonized"
) -> list[Path]:
    """Output file names for ``paths`` in ``out_dir``: ``<name><suffix>.nii[.gz]``.

    Parameters
    ----------
    paths : sequence of str or path-like
    out_dir : str or path-like
    suffix : str, default="_harmonized"

    Returns
    -------
    list of pathlib.Path
    """
    return [Path(out_dir) / _output_name(Path(p), suffix) for p in paths]


def sidecar_path(image: str | os.PathLike) -> Path:
    """The JSON sidecar of an image: ``a.nii.gz`` -> ``a.json``."""
    image = Path(image)
    for ext in (".nii.gz", ".nii"):
        if image.name.endswith(ext):
            return image.with_name(image.name[: -len(ext)] + ".json")
    return image.with_suffix(".json")


def _one(
    model: Any,
    src: str,
    dst: Path,
    site: Any,
    age: float | None,
    row: pd.DataFrame | None,
    stats: dict | None,
    sidecar: Mapping[str, Any] | None = None,
) -> Path:
    kwargs: dict[str, Any] = {}
    if site is not None:
        kwargs["sites"] = [site]
    if age is not None:
        kwargs["ages"] = [age]
    if row is not None:
        kwargs["covariates"] = row
    if stats:
        kwargs["site_statistics"] = stats
    (img,) = model.transform([src], **kwargs)
    if sidecar is not None:  # before the image: an image on disk has its sidecar
        with atomic_write(sidecar_path(dst)) as tmp:
            tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return save_img(img, dst, overwrite=True)


def _site_groups(sites: Sequence[Any] | None, n: int) -> list[list[int]]:
    """Image indices grouped by site, sites in order of first appearance."""
    if sites is None:
        return [list(range(n))]
    groups: dict[Any, list[int]] = {}
    for i, site in enumerate(sites):
        groups.setdefault(site, []).append(i)
    return list(groups.values())


def transform_files(
    model: Any,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    sites: Sequence[Any] | None = None,
    ages: Sequence[float] | None = None,
    covariates: Any = None,
    suffix: str = "_harmonized",
    outputs: Sequence[str | os.PathLike] | None = None,
    sidecars: Sequence[Mapping[str, Any]] | None = None,
    n_jobs: int | None = 1,
    overwrite: bool = False,
    skip_existing: bool = False,
    overwrite_inputs: bool = False,
    verbose: bool = True,
) -> list[Path]:
    """Harmonize NIfTI files site by site, one image at a time, and write the results.

    The result equals ``model.transform(paths, sites=sites, ages=ages,
    covariates=covariates)`` written to files, including for methods that pool a site's
    images at transform time (ComBat's ``unseen_site="fit"``, IGUANe's per-site
    histogram map of a new site): images are grouped by site, each group's statistics
    are computed in one streaming pass
    (:meth:`~harmonix.base.BaseHarmonizer.site_statistics`), then its images are
    harmonized one at a time with them. Memory holds one image per worker and one
    site's statistics.

    Parameters
    ----------
    model : BaseHarmonizer
        A fitted harmonizer.
    paths : sequence of str or path-like
        Input ``.nii`` / ``.nii.gz`` files.
    out_dir : str or path-like
        Output folder (created if needed).
    sites, ages : sequence, optional
        Per-file site labels and ages, for methods that need them (ComBat) and to group
        the images of a site.
    covariates : pandas.DataFrame or mapping of str to sequence, optional
        Per-file covariates (one row per file, in the order of ``paths``), for methods
        that model them (ComBat); checked like ``transform`` checks them
        (:mod:`harmonix.inputs.covariates`), before anything is written.
    suffix : str, default="_harmonized"
        Added to each output file name (when ``outputs`` is not given).
    outputs : sequence of str or path-like, optional
        One destination per file instead of ``<name><suffix>``; relative ones are under
        ``out_dir`` (e.g. BIDS paths, see :mod:`harmonix.bids`).
    sidecars : sequence of dict, optional
        One JSON sidecar per file, written (``<output name>.json``) just before its
        image, so every image written has its sidecar (and an existing image, kept by
        ``skip_existing``, has its own).
    n_jobs : int or None, default=1
        joblib workers (``-1``: all cores). Each worker holds one image at a time.
    overwrite : bool, default=False
        Replace existing outputs.
    skip_existing : bool, default=False
        Keep existing outputs and harmonize only the other files (to finish an
        interrupted run: outputs are written atomically, so an existing one is complete).
        Site statistics still pool every image of a site, so the result is the one of
        an uninterrupted run. Outputs written by another model are kept as well.
    overwrite_inputs : bool, default=False
        Allow an output to replace its own input file.
    verbose : bool, default=True
        Show a progress bar.

    Returns
    -------
    list of pathlib.Path
        The output files of all inputs (written or kept), in input order.

    Raises
    ------
    FileNotFoundError
        If an input is missing.
    harmonix.exceptions.OutputExistsError
        If an output exists (and neither ``overwrite`` nor ``skip_existing``) or would
        replace an input (a :class:`FileExistsError`).
    ValueError
        If an input's header is not a 3-D NIfTI one, or the sites, ages or covariates do
        not suit the model (e.g. sites unseen by ComBat, a missing covariate), or an input's
        grid does not (another voxel size for IGUANe, another affine for ComBat: see
        :mod:`harmonix.inputs.grids`), or an image fails while harmonized.

    Notes
    -----
    Everything that can be checked cheaply -- inputs exist, their headers are readable
    3-D NIfTI headers on a grid the model accepts, the sites and ages suit the model,
    every destination is free -- is checked before anything is written. A file whose
    voxels turn out unreadable (truncated) or invalid (NaN) stops the call at that file:
    the outputs written before it are complete files, the failing one is not written, and
    no temporary file is left. The same holds for a site group that fails the model's site
    check with ``site_check="error"`` (or ComBat's default, which handles it as an unseen
    site): the check reads the group's voxels, so it runs when the group's turn comes.
    """
    paths = [Path(p) for p in paths]
    for name, values in (
        ("sites", sites),
        ("ages", ages),
        ("outputs", outputs),
        ("sidecars", sidecars),
    ):
        if values is not None and len(values) != len(paths):
            raise ValueError(f"Got {len(paths)} files but {len(values)} {name}.")
    if overwrite and skip_existing:
        raise ValueError("overwrite and skip_existing exclude each other; choose one.")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Input file(s) not found: {missing[:3]}")
    check = getattr(model, "check_transform_metadata", None)
    if check is not None:  # labels as text; the covariates the model uses (age included)
        sites, ages, cov = check(len(paths), sites, ages, covariates)
        if cov is not None:
            ages = None  # the age column travels with the other covariates
    else:
        cov = check_covariates(covariates, len(paths))
    for src in paths:  # headers only: cheap, and catches non-NIfTI and 4-D files
        load_img(src)
    check_grid = getattr(model, "check_grid", None)
    if check_grid is not None:  # headers only: affines (ComBat), voxel sizes (IGUANe)
        check_grid([str(p) for p in paths])
    if outputs is None:
        outputs = output_paths(paths, out_dir, suffix)
    else:
        outputs = [Path(out_dir) / p for p in outputs]
    if len(set(outputs)) != len(outputs):
        raise ValueError("Several inputs share a file name; give them distinct names.")
    inputs = {p.resolve() for p in paths}
    for dst in outputs:
        if dst.resolve() in inputs and not overwrite_inputs:
            raise OutputExistsError(
                dst, "would overwrite an input", {"overwrite_inputs": "allow it"}
            )
        if dst.exists() and not (overwrite or skip_existing):
            raise OutputExistsError(
                dst,
                "exists",
                {"overwrite": "replace it", "skip_existing": "keep it and do the others"},
            )
        # a sidecar without its image: an interrupted run (skip_existing redoes both)
        taken = sidecar_path(dst)
        if sidecars is not None and taken.exists() and not (overwrite or skip_existing):
            raise OutputExistsError(
                taken,
                "exists",
                {"overwrite": "replace it", "skip_existing": "keep finished images"},
            )
    todo = {i for i, dst in enumerate(outputs) if not (skip_existing and dst.exists())}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    prepare = getattr(model, "site_statistics", None)
    with (
        tqdm(total=len(todo), desc="harmonizing", unit="img", disable=not verbose) as bar,
        Parallel(n_jobs=n_jobs, return_as="generator") as parallel,
    ):
        for group in _site_groups(sites, len(paths)):
            pending = [i for i in group if i in todo]
            if not pending:
                continue
            stats = None
            if prepare is not None and sites is not None:
                stats = prepare(
                    [str(paths[i]) for i in group],
                    [sites[i] for i in group],
                    None if ages is None else [ages[i] for i in group],
                    None if cov is None else cov.iloc[group].reset_index(drop=True),
                )
            jobs = (
                delayed(_one)(
                    model,
                    str(paths[i]),
                    outputs[i],
                    None if sites is None else sites[i],
                    None if ages is None else float(ages[i]),
                    None if cov is None else cov.iloc[[i]].reset_index(drop=True),
                    stats,
                    None if sidecars is None else sidecars[i],
                )
                for i in pending
            )
            for _ in parallel(jobs):
                bar.update()
    return outputs
