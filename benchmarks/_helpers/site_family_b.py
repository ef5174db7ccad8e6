"""A second family of synthetic sites, with site effects of other kinds than make_multisite's.

:func:`harmonix.datasets.make_multisite` (family A) varies tissue contrast, PCHIP intensity
curves, smooth B-spline bias fields, isotropic-ish Gaussian blur and Rician noise. A model
trained on family A sites meets, at an unseen site of family B, effects it never saw:

1. a *gamma* curve ``I -> s * (I / p99) ** gamma`` (gamma 0.6-1.6: brightens or darkens the
   mid-range as a whole, unlike A's knot-wise curves);
2. *thick slices*: a Gaussian blur along one axis only (sigma 2-3.5 mm, i.e. 5-8 mm
   slices), the other axes untouched;
3. a *linear-gradient* bias ``exp(a * u . x)`` along a random direction ``u`` (5-95th
   percentile range 0.2-0.5 inside the brain), instead of A's smooth random field;
4. additive *Gaussian* noise (standard deviation 1.5-4 % of the WM intensity), not Rician;
5. a global scale (x 100-3000) and rounding to integers.

The same subjects as family A are used: each B image is a subject's clean reference-site
image (``ds.truth``) passed through one B site's effects, so the traveling-subject pairs
across families are known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["FamilyB", "make_family_b"]


@dataclass(frozen=True)
class FamilyB:
    """Images of family B sites (see the module docstring); site-major like family A."""

    imgs: np.ndarray
    sites: np.ndarray
    subjects: np.ndarray
    ages: np.ndarray
    site_params: list


#: Parameter ranges: (gamma, slice sigma mm, gradient range, noise fraction).
RANGES = {
    "default": ((0.6, 1.6), (2.0, 3.5), (0.2, 0.5), (0.015, 0.04)),
    "harsh": ((0.3, 3.0), (4.0, 7.0), (0.8, 1.5), (0.06, 0.12)),
}


def _draw_site(rng: np.random.Generator, name: str, strength: str = "default") -> dict:
    gamma, sigma, gradient, noise = RANGES[strength]
    direction = rng.standard_normal(3)
    return {
        "name": name,
        "gamma": float(np.exp(rng.uniform(np.log(gamma[0]), np.log(gamma[1])))),
        "slice_axis": int(rng.integers(3)),
        "slice_sigma_mm": float(rng.uniform(*sigma)),
        "gradient_direction": (direction / np.linalg.norm(direction)).tolist(),
        "gradient_range": float(rng.uniform(*gradient)),
        "noise_fraction": float(rng.uniform(*noise)),
        "scale": float(np.exp(rng.uniform(np.log(100.0), np.log(3000.0)))),
    }


def _render(
    clean: np.ndarray, brain: np.ndarray, params: dict, resolution: float, rng: np.random.Generator
) -> np.ndarray:
    vals = clean / np.percentile(clean[brain], 99)
    vals = np.clip(vals, 0.0, None) ** params["gamma"]
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in clean.shape], indexing="ij"), -1)
    proj = coords.astype(np.float64) @ np.asarray(params["gradient_direction"]) * resolution
    proj -= np.median(proj[brain])
    p5, p95 = np.percentile(proj[brain], [5, 95])
    strength = np.log1p(params["gradient_range"]) / (p95 - p5)
    vals = vals * np.exp(strength * proj)
    vals[~brain] = 0.0
    sigma = [0.0, 0.0, 0.0]
    sigma[params["slice_axis"]] = params["slice_sigma_mm"] / resolution
    vals = ndimage.gaussian_filter(vals, sigma, mode="constant", truncate=3.0)
    wm = np.percentile(vals[brain], 90)
    vals = vals + params["noise_fraction"] * wm * rng.standard_normal(vals.shape)
    vals = np.rint(np.clip(vals, 0.0, None) * params["scale"])
    vals = np.maximum(vals, 1.0)
    vals[~brain] = 0.0
    return vals.astype(np.float32)


def make_family_b(
    ds, n_sites: int = 3, random_state: int = 0, strength: str = "default"
) -> FamilyB:
    """Scan every subject of ``ds`` (a :class:`~harmonix.datasets.MultisiteDataset`) at
    ``n_sites`` family B sites.

    Parameters
    ----------
    ds : MultisiteDataset
        Family A data; its reference-site ground truths are the clean subjects.
    n_sites : int, default=3
    random_state : int, default=0
    strength : {"default", "harsh"}, default="default"
        "harsh": gamma 0.3-3, slices sigma 4-7 mm, gradient range 0.8-1.5, noise 6-12 %
        (a stress test of the out-of-distribution guard).

    Returns
    -------
    FamilyB
        ``n_sites * n_subjects`` images on ``ds``'s grid, sites ``"B0"``, ``"B1"``...
    """
    rng = np.random.default_rng([int(random_state), 0xB])
    at_ref = np.flatnonzero(ds.sites == ds.reference_site)
    imgs, sites, subjects, ages, params = [], [], [], [], []
    for k in range(n_sites):
        p = _draw_site(rng, f"B{k}", strength)
        params.append(p)
        for i in at_ref:
            brain = ds.masks[i]
            imgs.append(_render(ds.truth[i].astype(np.float64), brain, p, ds.resolution, rng))
            sites.append(p["name"])
            subjects.append(ds.subjects[i])
            ages.append(ds.ages[i])
    return FamilyB(np.stack(imgs), np.array(sites), np.array(subjects), np.array(ages), params)
