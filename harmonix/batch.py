"""Harmonize many NIfTI files with constant memory, optionally in parallel.

:func:`transform_files` streams: each worker holds one image at a time, and every result
is written (atomically) before the next image is read, so memory does not grow with the
number of files. Parallelism goes through joblib, so any joblib backend works, including
a dask cluster::

    from dask.distributed import Client
    import joblib
    client = Client(...)                      # pip install "harmonix[dask]"
    with joblib.parallel_backend("dask"):
        transform_files(model, paths, "out/", n_jobs=-1)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from joblib import Parallel, delayed
from tqdm.auto import tqdm

from harmonix.io import load_img, save_img

__all__ = ["output_paths", "transform_files"]


def _output_name(src: Path, suffix: str) -> str:
    name = src.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)] + suffix + ext
    return name + suffix + ".nii.gz"


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


def _one(model: Any, src: str, dst: Path, site: Any, age: float | None) -> Path:
    kwargs: dict[str, Any] = {}
    if site is not None:
        kwargs["sites"] = [site]
    if age is not None:
        kwargs["ages"] = [age]
    (img,) = model.transform([src], **kwargs)
    return save_img(img, dst, overwrite=True)


def transform_files(
    model: Any,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    sites: Sequence[Any] | None = None,
    ages: Sequence[float] | None = None,
    suffix: str = "_harmonized",
    n_jobs: int | None = 1,
    overwrite: bool = False,
    overwrite_inputs: bool = False,
    verbose: bool = True,
) -> list[Path]:
    """Harmonize NIfTI files one at a time and write the results to ``out_dir``.

    Parameters
    ----------
    model : BaseHarmonizer
        A fitted harmonizer.
    paths : sequence of str or path-like
        Input ``.nii`` / ``.nii.gz`` files.
    out_dir : str or path-like
        Output folder (created if needed).
    sites, ages : sequence, optional
        Per-file site labels and ages, for methods that need them (ComBat).
    suffix : str, default="_harmonized"
        Added to each output file name.
    n_jobs : int or None, default=1
        joblib workers (``-1``: all cores). Each worker holds one image at a time.
    overwrite : bool, default=False
        Replace existing outputs.
    overwrite_inputs : bool, default=False
        Allow an output to replace its own input file.
    verbose : bool, default=True
        Show a progress bar.

    Returns
    -------
    list of pathlib.Path
        The written files, in input order.

    Raises
    ------
    FileNotFoundError
        If an input is missing.
    FileExistsError
        If an output exists (and not ``overwrite``) or would replace an input.
    ValueError
        If an input's header is not a 3-D NIfTI one, or the sites or ages do not suit the
        model (e.g. sites unseen by ComBat), or an image fails while harmonized.

    Notes
    -----
    Everything that can be checked cheaply -- inputs exist, their headers are readable
    3-D NIfTI headers, the sites and ages suit the model, every destination is free --
    is checked before anything is written. A file whose voxels turn out unreadable
    (truncated) or invalid (NaN) stops the call at that file: the outputs written
    before it are complete files, the failing one is not written, and no temporary file
    is left.
    """
    paths = [Path(p) for p in paths]
    for name, values in (("sites", sites), ("ages", ages)):
        if values is not None and len(values) != len(paths):
            raise ValueError(f"Got {len(paths)} files but {len(values)} {name}.")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Input file(s) not found: {missing[:3]}")
    check = getattr(model, "check_transform_metadata", None)
    if check is not None:
        check(len(paths), sites, ages)
    for src in paths:  # headers only: cheap, and catches non-NIfTI and 4-D files
        load_img(src)
    outputs = output_paths(paths, out_dir, suffix)
    if len(set(outputs)) != len(outputs):
        raise ValueError("Several inputs share a file name; give them distinct names.")
    inputs = {p.resolve() for p in paths}
    for dst in outputs:
        if dst.resolve() in inputs and not overwrite_inputs:
            raise FileExistsError(f"{dst} would overwrite an input; use another folder or suffix.")
        if dst.exists() and not overwrite:
            raise FileExistsError(f"{dst} exists; pass overwrite=True to replace it.")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    jobs = [
        delayed(_one)(
            model,
            str(src),
            dst,
            None if sites is None else sites[i],
            None if ages is None else float(ages[i]),
        )
        for i, (src, dst) in enumerate(zip(paths, outputs))
    ]
    written = []
    with tqdm(total=len(jobs), desc="harmonizing", unit="img", disable=not verbose) as bar:
        for path in Parallel(n_jobs=n_jobs, return_as="generator")(jobs):
            written.append(path)
            bar.update()
    return written
