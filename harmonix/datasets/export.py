"""Writing a synthetic data set as NIfTI files with a CSV manifest."""

from __future__ import annotations

import csv
import os
import pathlib

import numpy as np

from harmonix.datasets.multisite import MultisiteDataset


def _safe_name(label: str) -> str:
    """File-name-safe version of a label (letters, digits, ``-``, ``_`` and ``.`` kept)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    return safe.strip(".") or "_"


def write_nifti_dataset(
    dataset: MultisiteDataset,
    out_dir: str | os.PathLike[str],
    *,
    compress: bool = True,
) -> pathlib.Path:
    """Write every image of a data set to NIfTI files with a CSV manifest.

    Images are written as ``<site>/<subject>_<site>.nii.gz`` (``.nii`` when ``compress`` is
    false) under ``out_dir``, and ``manifest.csv`` lists them with columns
    ``path,site,age,subject`` and the other covariates (``sex,diagnosis`` for data made
    with ``diagnosis_prevalence``); paths are relative to the manifest's folder. Each file is
    written under a temporary name and renamed, so no half-written file is left behind.

    Parameters
    ----------
    dataset : MultisiteDataset
        Data set from :func:`~harmonix.datasets.make_multisite`.
    out_dir : str or path-like
        Output folder, created if needed.
    compress : bool, default=True
        Write gzip-compressed ``.nii.gz`` files.

    Returns
    -------
    pathlib.Path
        Path of the manifest CSV.
    """
    import nibabel as nib

    from harmonix.io import atomic_write, save_img

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if compress else ".nii"
    rows = []
    used: set[str] = set()
    cov = getattr(dataset, "covariates", None)
    others = [] if cov is None else [c for c in cov.columns if c != "age"]
    for i in range(len(dataset)):
        site, subject = str(dataset.sites[i]), str(dataset.subjects[i])
        site_dir, stem = _safe_name(site), f"{_safe_name(subject)}_{_safe_name(site)}"
        rel = pathlib.PurePosixPath(site_dir) / f"{stem}{ext}"
        if str(rel) in used:  # labels that differ only by unsafe characters
            rel = pathlib.PurePosixPath(site_dir) / f"{stem}_{i}{ext}"
        used.add(str(rel))
        img = nib.Nifti1Image(np.asarray(dataset.imgs[i], dtype=np.float32), dataset.affine)
        img.header.set_xyzt_units("mm")
        save_img(img, out / rel, overwrite=True)
        extra = [str(dataset.covariates[c].iloc[i]) for c in others]
        rows.append((str(rel), site, repr(float(dataset.ages[i])), subject, *extra))

    manifest = out / "manifest.csv"
    with atomic_write(manifest) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "site", "age", "subject", *others])
        writer.writerows(rows)
    return manifest
