"""The multi-site data set: :class:`MultisiteDataset` and :func:`make_multisite`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harmonix.datasets.anatomy import _check_resolution, _load_anatomy
from harmonix.datasets.biology import _check_prevalence, _draw_biology, disease_region
from harmonix.datasets.sites import (
    _STYLES,
    _curve_lut,
    _draw_site,
    _draw_site_preprocessed,
    _render,
    _scan_bias,
)
from harmonix.datasets.subjects import _draw_subject, _Subject


@dataclass(frozen=True, repr=False, eq=False)
class MultisiteDataset:
    """Synthetic traveling-subject data set returned by :func:`make_multisite`.

    Images are ordered **site-major**: image ``s * n_subjects + j`` is subject ``j``
    scanned at site ``s``, so ``imgs[:n_subjects]`` are all subjects at the first site
    (without traveling subjects, subject ``j`` of site ``s``).

    Attributes
    ----------
    imgs : ndarray of shape (n, i, j, k), float32
        Simulated scans (integer-valued intensities, background exactly 0).
    sites : ndarray of shape (n,), str
        Site label of each image.
    ages : ndarray of shape (n,), float64
        Age of each image's subject (identical at every site).
    subjects : ndarray of shape (n,), str
        Subject identifier of each image (``"sub-00"``, ``"sub-01"``...).
    affine : ndarray of shape (4, 4)
        Voxel-to-world (MNI, mm) affine shared by all images.
    mask : ndarray of shape (i, j, k), bool
        Common brain mask: voxels inside the brain of every image.
    masks : ndarray of shape (n, i, j, k), bool
        Brain mask of each image (``imgs > 0``).
    gm : ndarray of shape (n, i, j, k), float32
        Grey-matter probability of each image's subject after deformation and atrophy
        (identical at every site).
    truth : ndarray of shape (n, i, j, k), float32
        Ground truth: each image's subject rendered at the reference site without bias
        field or noise (identical for all images of a subject).
    reference_site : str
        Site whose appearance defines ``truth``.
    site_params : list of dict
        Parameters drawn for each site, in the order of ``site_names``.
    subject_params : list of dict
        Parameters drawn for each subject (age, displacement RMS, affine).
    site_names : tuple of str
        Site labels in order.
    resolution : float
        Voxel size in mm.
    gm_volume : ndarray of shape (n,), float64, optional
        True grey-matter volume (mL) of each image's subject: the sum of ``gm`` times the
        voxel volume (identical at every site; falls with age).
    residual_inu : ndarray of shape (n,), float64, optional
        5-95th percentile range of each scan's own residual bias (``style="preprocessed"``;
        0 for ``"legacy"``), on top of its site's component (``site_params[s]["inu_range"]``).
    style : {"preprocessed", "legacy"}
        Simulation style (see :func:`make_multisite`).
    covariates : pandas.DataFrame
        One row per image: ``age``, and with ``diagnosis_prevalence`` also ``sex``
        (``"F"``/``"M"``) and ``diagnosis`` (``"AD"``/``"CN"``). Pass it to ``fit``.
    pattern_gm_volume : ndarray of shape (n,), float64
        True GM volume (mL) of each image's subject inside ``disease_region``: the
        truth that a disease-effect measure should find.
    disease_region : ndarray of bool, shape (i, j, k)
        The medial temporal region of the disease pattern
        (:func:`~harmonix.datasets.disease_region`).
    disease_severity : ndarray of shape (n,) or None
        Each subject's pattern size (0 for controls; None without a diagnosis).
    reference_imgs : ndarray of shape (n, i, j, k), float32, or None
        Without traveling subjects: each image's subject scanned at the reference site
        (with that site's bias and noise; the image itself at the reference site). None
        for traveling subjects, whose reference-site scans are among ``imgs``.
    traveling : bool
        Whether every subject is scanned at every site.
    """

    imgs: np.ndarray
    sites: np.ndarray
    ages: np.ndarray
    subjects: np.ndarray
    affine: np.ndarray
    mask: np.ndarray
    masks: np.ndarray
    gm: np.ndarray
    truth: np.ndarray
    reference_site: str
    site_params: list[dict[str, Any]]
    subject_params: list[dict[str, Any]] = field(default_factory=list)
    site_names: tuple[str, ...] = ()
    resolution: float = 2.0
    gm_volume: np.ndarray | None = None
    residual_inu: np.ndarray | None = None
    style: str = "preprocessed"
    covariates: pd.DataFrame | None = None
    pattern_gm_volume: np.ndarray | None = None
    disease_region: np.ndarray | None = None
    disease_severity: np.ndarray | None = None
    reference_imgs: np.ndarray | None = None
    traveling: bool = True

    def __len__(self) -> int:
        return int(self.imgs.shape[0])

    def __repr__(self) -> str:
        n_subjects = len(np.unique(self.subjects))
        shape = "x".join(str(s) for s in self.imgs.shape[1:])
        return (
            f"MultisiteDataset(n_images={len(self)}, n_subjects={n_subjects}, "
            f"n_sites={len(self.site_names)}, shape={shape}, resolution={self.resolution:g} mm, "
            f"reference_site={self.reference_site!r})"
        )


def _check_count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(
            f"{name} must be >= {minimum}, got {value}; pass {name}={minimum} or more."
        )
    return int(value)


def make_multisite(
    n_subjects: int = 20,
    n_sites: int = 5,
    resolution: float = 2.0,
    random_state: int | np.random.Generator | None = None,
    *,
    reference_site: str | None = None,
    age_range: tuple[float, float] = (20, 80),
    site_names: Sequence[str] | None = None,
    style: str = "preprocessed",
    diagnosis_prevalence: float | Sequence[float] | None = None,
    traveling: bool = True,
) -> MultisiteDataset:
    """Simulate traveling subjects scanned at several sites, from real anatomy.

    Each of ``n_subjects`` subjects (a random deformation and age-related atrophy of the
    ICBM152 2009a template) is scanned at each of ``n_sites`` sites (tissue contrast,
    nonlinear intensity curve, bias field, blur, Rician noise and global scale drawn within
    the range of real ABIDE sites). By default the scans look preprocessed (after N4 and
    registration): a small residual bias specific to each scan over a weak site component,
    the site's slice thickness and in-plane resolution as blur in mm, and noise at the SNR
    of the site's acquisition voxel. See :mod:`harmonix.datasets` for the recipe and ranges.

    Parameters
    ----------
    n_subjects : int, default=20
        Number of subjects (>= 1).
    n_sites : int, default=5
        Number of sites (>= 2).
    resolution : {1, 2, 4}, default=2.0
        Voxel size in mm. The grids are FSL's MNI152 grids: 182x218x182 (1 mm), 91x109x91
        (2 mm) and 46x55x46 (4 mm), with origin (90, -126, -72) mm and a flipped x axis.
    random_state : int, numpy.random.Generator or None, default=None
        Seed or generator; the same integer gives identical data sets. Subjects do not
        depend on ``n_sites`` and sites do not depend on ``n_subjects``, so a smaller data
        set with the same seed is a subset of a larger one.
    reference_site : str, optional
        Site defining the ground truth; the first site by default.
    age_range : tuple of float, default=(20, 80)
        Ages are drawn uniformly in ``[low, high)``; atrophy starts at 20.
    site_names : sequence of str, optional
        Unique site labels, one per site; ``"site0"``, ``"site1"``... by default.
    style : {"preprocessed", "legacy"}, default="preprocessed"
        ``"preprocessed"`` simulates scans after N4 and registration (see above);
        ``"legacy"`` reproduces, bit for bit, the data of harmonix's first simulation
        (one strong bias field per site, blur drawn per axis, noise for 1 mm voxels), on
        which the shipped demo IGUANe model and the IGUANe learning benchmark were made.
        The subjects are the same in both styles.
    diagnosis_prevalence : float or sequence of float, default=None
        Simulate a disease and a sex. Each subject gets a sex (``"F"``/``"M"``, 50/50;
        males lose 5 % of their GM, more in the superior brain) and a diagnosis:
        ``round(prevalence * n_subjects)`` patients per site (``"AD"``, the others
        ``"CN"``) lose GM in the medial temporal lobes (up to 15 % at the centre of the
        pattern, times a severity drawn per patient in [0.5, 1.5]), a pattern of its own,
        distinct from ageing's. One value per site makes the diagnosis site-confounded
        (e.g. ``(0.1, 0.7, 0.4, 0.4)``; needs ``traveling=False``). None: neither is
        drawn and the images are those of earlier versions for the same seed.
    traveling : bool, default=True
        Scan every subject at every site (traveling subjects). False: every site scans
        ``n_subjects`` subjects of its own (site 0's are the traveling subjects), and
        ``reference_imgs`` holds each subject's scan at the reference site (the
        benchmark's oracle).

    Returns
    -------
    MultisiteDataset
        ``n_subjects * n_sites`` images ordered site-major (image ``s * n_subjects + j`` is
        subject ``j`` at site ``s``), with masks, GM maps, ground truth and the drawn
        parameters.

    Raises
    ------
    ValueError
        If a count, the resolution, the age range, the site names, the reference site,
        the style or the prevalences are invalid, or the prevalences differ between sites
        of traveling subjects.

    Examples
    --------
    >>> from harmonix.datasets import make_multisite
    >>> ds = make_multisite(n_subjects=2, n_sites=3, resolution=4, random_state=0)
    >>> len(ds), ds.imgs.shape
    (6, (6, 46, 55, 46))
    """
    n_subjects = _check_count(n_subjects, "n_subjects", 1)
    n_sites = _check_count(n_sites, "n_sites", 2)
    res = _check_resolution(resolution)
    try:
        low, high = (float(a) for a in age_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"age_range must be a pair (low, high) of numbers, got {age_range!r}."
        ) from None
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low <= high):
        raise ValueError(
            f"age_range must satisfy 0 <= low <= high, got {age_range!r}; e.g. (20, 80)."
        )
    if site_names is None:
        names = tuple(f"site{s}" for s in range(n_sites))
    else:
        if isinstance(site_names, str):
            raise ValueError("site_names must be a sequence of strings, not a single string.")
        names = tuple(str(s) for s in site_names)
        if len(names) != n_sites:
            raise ValueError(
                f"site_names has {len(names)} labels but n_sites={n_sites}; give one label "
                "per site."
            )
        if len(set(names)) != len(names):
            raise ValueError(f"site_names must be unique, got {list(names)}.")
    if reference_site is None:
        reference_site = names[0]
    elif str(reference_site) not in names:
        raise ValueError(
            f"reference_site {reference_site!r} is not one of the sites {list(names)}; pass "
            "one of them or None for the first site."
        )
    reference_site = str(reference_site)
    ref_idx = names.index(reference_site)
    if style not in _STYLES:
        raise ValueError(
            f"style must be one of {list(_STYLES)}, got {style!r}; pass style='legacy' to "
            "reproduce data made before the preprocessed simulation."
        )
    legacy = style == "legacy"

    if not isinstance(traveling, (bool, np.bool_)):
        raise ValueError(f"traveling must be True or False, got {traveling!r}.")
    prevalence = _check_prevalence(diagnosis_prevalence, n_sites, bool(traveling))

    rng = np.random.default_rng(random_state)
    site_seed, subject_seed, noise_seed = (int(s) for s in rng.integers(0, 2**63, size=3))
    anat = _load_anatomy(res)
    shape = anat.mask.shape
    n = n_subjects * n_sites

    draw_site = _draw_site if legacy else _draw_site_preprocessed
    site_params, biases, luts = [], [], []
    for s, seed in enumerate(np.random.SeedSequence(site_seed).spawn(n_sites)):
        params, bias = draw_site(anat, np.random.default_rng(seed), names[s])
        params["is_reference"] = s == ref_idx
        site_params.append(params)
        biases.append(bias)
        luts.append(_curve_lut(params))

    def scan(subj: _Subject, s: int, noise_rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """One scan of a subject at site ``s``: its values and its residual bias range."""
        if legacy:
            bias, inu = biases[s].reshape(-1)[subj.flat], 0.0
        else:
            bias, inu = _scan_bias(biases[s], subj, noise_rng)
        return _render(subj, site_params[s], luts[s], res, bias, noise_rng), inu

    imgs = np.zeros((n, *shape), np.float32)
    truth = np.zeros((n, *shape), np.float32)
    gm = np.zeros((n, *shape), np.float32)
    masks = np.zeros((n, *shape), bool)
    ages = np.empty(n, np.float64)
    residual_inu = np.zeros(n, np.float64)
    reference_imgs = None if traveling else np.zeros((n, *shape), np.float32)
    n_ids = n_subjects if traveling else n
    width = max(2, len(str(n_ids - 1)))
    subject_ids = np.array([f"sub-{j:0{width}d}" for j in range(n_ids)])
    biology = _draw_biology(prevalence, n_subjects, n_sites, subject_seed, traveling)
    noise_root = np.random.SeedSequence(noise_seed)
    subject_seqs = np.random.SeedSequence(subject_seed).spawn(n_subjects)
    # traveling: subject j is scanned at every site; otherwise image s * n_subjects + j is
    # subject (s, j), seen at site s only (site 0's subjects are the traveling ones)
    draws = (
        [(j, None) for j in range(n_subjects)]
        if traveling
        else [(j, s) for s in range(n_sites) for j in range(n_subjects)]
    )
    subject_params = []
    for j, site in draws:
        i = j if traveling else site * n_subjects + j
        seq = (
            subject_seqs[j]
            if traveling or site == 0
            else np.random.SeedSequence(subject_seed, spawn_key=(j, site))
        )
        subj_rng = np.random.default_rng(seq)
        ages[i] = subj_rng.uniform(low, high) if high > low else low
        sex, severity = (None, 0.0) if biology is None else biology[i]
        subj = _draw_subject(anat, subj_rng, float(ages[i]), sex, severity)
        subject_params.append({"subject": subject_ids[i], **subj.params})
        truth[i].reshape(-1)[subj.flat] = _render(
            subj, site_params[ref_idx], luts[ref_idx], res, None, None
        )
        gm[i].reshape(-1)[subj.flat] = subj.gm
        masks[i].reshape(-1)[subj.flat] = True
        noise_seqs = np.random.SeedSequence(noise_root.entropy, spawn_key=(j,)).spawn(n_sites)
        for s in range(n_sites) if traveling else [site]:
            k = s * n_subjects + j
            vals, residual_inu[k] = scan(subj, s, np.random.default_rng(noise_seqs[s]))
            imgs[k].reshape(-1)[subj.flat] = vals
        if reference_imgs is not None:  # the subject's scan at the reference site
            if site == ref_idx:
                reference_imgs[i] = imgs[i]
            else:
                ref_seq = np.random.SeedSequence(noise_root.entropy, spawn_key=(j, site, 0))
                vals, _ = scan(subj, ref_idx, np.random.default_rng(ref_seq))
                reference_imgs[i].reshape(-1)[subj.flat] = vals
    if traveling:  # site-independent maps: copy the first site's block to the other sites
        for s in range(1, n_sites):
            block = slice(s * n_subjects, (s + 1) * n_subjects)
            truth[block] = truth[:n_subjects]
            gm[block] = gm[:n_subjects]
            masks[block] = masks[:n_subjects]
            ages[block] = ages[:n_subjects]
        subjects = np.tile(subject_ids, n_sites)
    else:
        subjects = subject_ids
    common = masks.all(axis=0)
    gm_volume = gm.sum(axis=(1, 2, 3), dtype=np.float64) * (res**3 / 1000.0)
    region = disease_region(res)
    pattern = gm[:, region].sum(axis=1, dtype=np.float64) * (res**3 / 1000.0)
    covariates = pd.DataFrame({"age": ages})
    if biology is not None:
        order = [j for j, _ in draws] if traveling else range(n)
        sexes = [biology[i][0] for i in order]
        dx = ["AD" if biology[i][1] > 0 else "CN" for i in order]
        severity = np.array([biology[i][1] for i in order])
        reps = n_sites if traveling else 1
        covariates["sex"] = np.tile(sexes, reps)
        covariates["diagnosis"] = np.tile(dx, reps)
        severity = np.tile(severity, reps)
    else:
        severity = None

    return MultisiteDataset(
        imgs=imgs,
        sites=np.repeat(np.array(names), n_subjects),
        ages=ages,
        subjects=subjects,
        affine=anat.affine.copy(),
        mask=common,
        masks=masks,
        gm=gm,
        truth=truth,
        reference_site=reference_site,
        site_params=site_params,
        subject_params=subject_params,
        site_names=names,
        resolution=float(res),
        gm_volume=gm_volume,
        residual_inu=residual_inu,
        style=style,
        covariates=covariates,
        pattern_gm_volume=pattern,
        disease_region=region,
        disease_severity=severity,
        reference_imgs=reference_imgs,
        traveling=traveling,
    )
