"""Data sets the benchmark scores: checks of their arrays and NIfTI manifests."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harmonix.exceptions import BenchmarkWarning

__all__ = ["BenchmarkDataset", "check_subjects", "dataset_from_manifest"]

#: Largest age difference (years) between one subject's images before
#: :func:`check_subjects` warns: traveling-subject designs scan a subject at every site
#: within months; 2 years also allows ages rounded to whole years.
MAX_AGE_GAP = 2.0


@dataclass(frozen=True, eq=False)
class DataArrays:
    """The checked arrays of a data set (what the runner and the figures read)."""

    imgs: np.ndarray
    sites: np.ndarray
    subjects: np.ndarray
    ages: np.ndarray | None
    truth: Any
    gm: Any
    mask: np.ndarray
    reference: Any
    gm_volume: np.ndarray | None = None
    #: voxel size (mm) from the data set's ``affine``, None without one
    voxel_size: tuple[float, float, float] | None = None
    covariates: pd.DataFrame | None = None
    disease_region: np.ndarray | None = None
    pattern_gm_volume: np.ndarray | None = None
    reference_imgs: np.ndarray | None = None
    resolution: float | None = None

    def digest(self) -> str:
        """A short fingerprint of the images and their labels: runs of the benchmark on
        one data set share it (see :func:`harmonix.benchmark.summarize`)."""
        from harmonix.inputs._digest import ImageDigest

        d = ImageDigest()
        for img in self.imgs:
            d.update(img)
        for labels in (self.sites, self.subjects, self.ages):
            if labels is not None:
                d.update_labels(labels)
        return d.hexdigest()

    def true_gm_volumes(self) -> np.ndarray | None:
        """True GM volume of each image: ``dataset.gm_volume``, else the sum of each true
        GM map (``dataset.gm``); None without either."""
        if self.gm_volume is not None:
            return self.gm_volume
        if self.gm is None:
            return None
        return np.asarray(self.gm, dtype=np.float64).reshape(len(self.imgs), -1).sum(axis=1)


def dataset_arrays(dataset: Any) -> DataArrays:
    """Check a data set's attributes and return them as arrays."""
    missing = [a for a in ("imgs", "sites", "subjects", "mask") if not hasattr(dataset, a)]
    if missing:
        raise ValueError(
            f"dataset lacks attribute(s) {missing}; pass harmonix.datasets.make_multisite(...) "
            "or an object with imgs, sites, subjects, mask (and optionally ages, truth, gm)."
        )
    imgs = np.asarray(dataset.imgs)
    if imgs.ndim != 4:
        raise ValueError(f"dataset.imgs must be (n_images, i, j, k); got shape {imgs.shape}.")
    n = len(imgs)
    sites = np.asarray(dataset.sites)
    subjects = np.asarray(dataset.subjects)
    ages = getattr(dataset, "ages", None)
    ages = None if ages is None else np.asarray(ages, dtype=np.float64)
    truth = getattr(dataset, "truth", None)
    gm = getattr(dataset, "gm", None)
    for name, arr in (("sites", sites), ("subjects", subjects), ("ages", ages)):
        if arr is not None and arr.shape != (n,):
            raise ValueError(f"dataset.{name} must have one entry per image ({n}).")
    if truth is not None and np.shape(truth) != imgs.shape:
        raise ValueError("dataset.truth must have the shape of dataset.imgs.")
    if gm is not None and np.shape(gm) != imgs.shape:
        raise ValueError("dataset.gm (true GM maps) must have the shape of dataset.imgs.")
    mask = np.asarray(dataset.mask) != 0
    if mask.shape != imgs.shape[1:]:
        raise ValueError(f"dataset.mask must have shape {imgs.shape[1:]}, got {mask.shape}.")
    check_subjects(subjects, sites, ages, _sexes(dataset, n))
    gm_volume = getattr(dataset, "gm_volume", None)
    pattern = getattr(dataset, "pattern_gm_volume", None)
    for name, arr in (("gm_volume", gm_volume), ("pattern_gm_volume", pattern)):
        if arr is not None and np.shape(arr) != (n,):
            raise ValueError(f"dataset.{name} must have one entry per image ({n}).")
    gm_volume = None if gm_volume is None else np.asarray(gm_volume, dtype=np.float64)
    pattern = None if pattern is None else np.asarray(pattern, dtype=np.float64)
    covariates = getattr(dataset, "covariates", None)
    if covariates is not None:
        covariates = pd.DataFrame(covariates).reset_index(drop=True)
        if len(covariates) != n:
            raise ValueError(f"dataset.covariates must have one row per image ({n}).")
    region = getattr(dataset, "disease_region", None)
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if region.shape != imgs.shape[1:]:
            raise ValueError("dataset.disease_region must have the shape of one image.")
    reference_imgs = getattr(dataset, "reference_imgs", None)
    if reference_imgs is not None and np.shape(reference_imgs) != imgs.shape:
        raise ValueError("dataset.reference_imgs must have the shape of dataset.imgs.")
    affine = getattr(dataset, "affine", None)
    voxel_size = None
    if affine is not None:
        voxel_size = tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    return DataArrays(
        imgs,
        sites,
        subjects,
        ages,
        truth,
        gm,
        mask,
        getattr(dataset, "reference_site", None),
        gm_volume,
        voxel_size,
        covariates,
        region,
        pattern,
        reference_imgs,
        getattr(dataset, "resolution", None),
    )


def _sexes(dataset: Any, n: int) -> np.ndarray | None:
    """The ``sex`` of each image: ``dataset.sex``, else a ``sex`` column of
    ``dataset.covariates`` (any case); None without either."""
    sex = getattr(dataset, "sex", None)
    covariates = getattr(dataset, "covariates", None)
    if sex is None and covariates is not None:
        keys = {str(k).lower(): k for k in getattr(covariates, "keys", lambda: [])()}
        if "sex" in keys:
            sex = covariates[keys["sex"]]
    if sex is None:
        return None
    sex = np.asarray(sex)
    if sex.shape != (n,):
        raise ValueError(f"dataset sex must have one entry per image ({n}).")
    return sex


def check_subjects(
    subjects: Any,
    sites: Any,
    ages: Any = None,
    sex: Any = None,
    *,
    max_age_gap: float = MAX_AGE_GAP,
) -> None:
    """Warn when a subject label seems to name different people at different sites.

    Traveling-subject metrics pair the images that share a subject label across sites. If
    the labels are site-local (``sub-01`` at site A is not ``sub-01`` at site B), images
    of different people are compared as one subject's and every such metric is wrong
    without error (histogram matching's traveling SSIM on 4 mm synthetic sites reads 0.874
    instead of 0.961). A subject whose ages differ by more than ``max_age_gap`` years, or
    whose sex differs, between its images is taken as a sign of that.

    Parameters
    ----------
    subjects, sites : array-like of shape (n_images,)
        Subject and site of each image.
    ages : array-like of shape (n_images,), default=None
        Age of each image (not checked when None).
    sex : array-like of shape (n_images,), default=None
        Sex of each image (not checked when None).
    max_age_gap : float, default=2.0
        Largest age difference (years) allowed within a subject.

    Warns
    -----
    BenchmarkWarning
        Naming the first subjects concerned and the fix.
    """
    subjects = np.asarray(subjects)
    sites = np.asarray(sites)
    if len(np.unique(subjects)) == len(subjects):
        return
    problems = []
    for subject in dict.fromkeys(subjects.tolist()):
        idx = np.flatnonzero(subjects == subject)
        if len(idx) < 2:
            continue
        parts = []
        if ages is not None:
            a = np.asarray(ages, dtype=np.float64)[idx]
            if np.nanmax(a) - np.nanmin(a) > max_age_gap:
                parts.append("ages " + ", ".join(f"{v:g} ({sites[i]})" for v, i in zip(a, idx)))
        if sex is not None:
            values = np.asarray(sex)[idx]
            if len({str(v) for v in values.tolist()}) > 1:
                parts.append("sex " + ", ".join(f"{v} ({sites[i]})" for v, i in zip(values, idx)))
        if parts:
            problems.append(f"{subject!r}: {'; '.join(parts)}")
    if problems:
        warnings.warn(
            f"{len(problems)} subject label(s) have different ages (more than "
            f"{max_age_gap:g} years apart) or sexes at different sites, e.g. "
            f"{' | '.join(problems[:3])}. Subject labels may be site-local: the "
            "traveling-subject metrics would compare different people as one subject. "
            "Give each person one label across sites (e.g. prefix site-local IDs with "
            "the site), or check the ages.",
            BenchmarkWarning,
            stacklevel=4,  # run_benchmark's caller
        )


@dataclass(frozen=True, repr=False, eq=False)
class BenchmarkDataset:
    """Images and labels for :func:`run_benchmark` (see :func:`dataset_from_manifest`).

    Attributes
    ----------
    imgs : ndarray of shape (n, i, j, k), float32
    sites : ndarray of shape (n,)
    subjects : ndarray of shape (n,)
        Subject labels (one per image when the manifest has none).
    ages : ndarray of shape (n,) or None
    mask : ndarray of shape (i, j, k), bool
        Voxels non-zero in every image.
    affine : ndarray of shape (4, 4)
        Affine of the first image.
    truth : None
        No ground truth for real data.
    reference_site : None
    """

    imgs: np.ndarray
    sites: np.ndarray
    subjects: np.ndarray
    ages: np.ndarray | None
    mask: np.ndarray
    affine: np.ndarray
    truth: None = None
    reference_site: Any = None

    def __len__(self) -> int:
        return int(self.imgs.shape[0])

    def __repr__(self) -> str:
        return (
            f"BenchmarkDataset(n_images={len(self)}, n_sites={len(set(self.sites.tolist()))}, "
            f"shape={'x'.join(map(str, self.imgs.shape[1:]))})"
        )


def dataset_from_manifest(manifest: Any) -> BenchmarkDataset:
    """Load the images of a manifest into a data set :func:`run_benchmark` accepts.

    The benchmark scores images in memory, so every image is loaded (float32) and all must
    share one grid (e.g. registered to MNI space).

    Parameters
    ----------
    manifest : harmonix.io.Manifest, str or path-like
        A manifest (:func:`harmonix.io.read_manifest`) or the path of its CSV, with columns
        ``path, site`` and optionally ``age`` and ``subject`` (traveling-subject metrics
        need subjects scanned at several sites).

    Returns
    -------
    BenchmarkDataset
        With ``mask`` the voxels non-zero in every image and no ground truth.
    """
    from harmonix.io import Manifest, as_collection, load_img, read_manifest

    man = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    coll = as_collection(list(man.paths))
    shapes = {coll.shape(i) for i in range(len(coll))}
    if len(shapes) != 1:
        raise ValueError(
            f"The benchmark needs all images on one grid; found shapes {sorted(shapes)}. "
            "Resample them to a common space first."
        )
    imgs = np.stack([coll[i] for i in range(len(coll))]).astype(np.float32, copy=False)
    mask = (imgs != 0).all(axis=0)
    if not mask.any():
        raise ValueError("The images share no non-zero voxel; check that they are aligned.")
    subjects = (
        np.asarray(man.subjects)
        if man.subjects is not None
        else np.array([f"img{i}" for i in range(len(imgs))])
    )
    return BenchmarkDataset(
        imgs=imgs,
        sites=np.asarray(man.sites),
        subjects=subjects,
        ages=None if man.ages is None else np.asarray(man.ages, dtype=np.float64),
        mask=mask,
        affine=np.asarray(load_img(man.paths[0]).affine),
    )


def _site_order(sites: np.ndarray) -> list[Any]:
    return list(dict.fromkeys(sites.tolist()))
