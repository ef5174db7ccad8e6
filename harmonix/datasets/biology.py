"""The biology a harmonization must keep: ageing, disease and sex effects on grey matter.

Spatial weights of each effect (where GM turns into CSF), the disease region, and the
draw of every subject's sex and diagnosis from a stream of its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harmonix.datasets.anatomy import _check_resolution, _grid_mm, _load_anatomy

_ATROPHY_RATE = 0.004  # fraction of GM lost per year after 20, before the spatial weight
_ATROPHY_MAX = 0.5
_ATROPHY_PACE = (0.75, 1.25)  # individual ageing speed (multiplies the atrophy rate)
# Disease (medial temporal GM loss) and sex effects, drawn only with diagnosis_prevalence.
_DISEASE_LOSS = 0.15  # fraction of GM lost at the pattern's centre, at severity 1
_DISEASE_SEVERITY = (0.5, 1.5)  # a patient's pattern size (multiplies _DISEASE_LOSS)
_DISEASE_CENTRES_MM = ((25.0, -18.0, -18.0), (-25.0, -18.0, -18.0))  # left/right MTL
_DISEASE_SIGMA_MM = (8.0, 14.0, 8.0)  # Gaussian extent (x, y, z), long along the MTL
_SEX_GM_LOSS = 0.05  # males: fraction of GM lost where the sex weight is 1 (superior)
_BIOLOGY_STREAM = 0xB10  # seed tag of the sex/diagnosis draws (independent of anatomy)


def _atrophy_weight(y_mm: np.ndarray) -> np.ndarray:
    """Smooth spatial atrophy weight: ~0.6 in occipital to ~1.4 in frontal cortex."""
    ramp = 0.5 + 0.5 * np.tanh((y_mm + np.float32(10.0)) / np.float32(30.0))
    return np.float32(0.6) + np.float32(0.8) * ramp


def _disease_weight(x_mm: np.ndarray, y_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
    """Spatial weight of the disease pattern: 1 at the left and right medial temporal lobe
    (hippocampus, parahippocampal gyrus), a Gaussian of 8 x 14 x 8 mm around them."""
    out = np.zeros(np.shape(x_mm), np.float32)
    sx, sy, sz = (np.float32(v) for v in _DISEASE_SIGMA_MM)
    for cx, cy, cz in _DISEASE_CENTRES_MM:
        d2 = ((x_mm - np.float32(cx)) / sx) ** 2 + ((y_mm - np.float32(cy)) / sy) ** 2
        d2 += ((z_mm - np.float32(cz)) / sz) ** 2
        np.maximum(out, np.exp(np.float32(-0.5) * d2), out=out)
    return out


def _sex_weight(z_mm: np.ndarray) -> np.ndarray:
    """Spatial weight of the sex effect: ~0 in the inferior brain to ~1 superiorly."""
    return np.float32(0.5) + np.float32(0.5) * np.tanh(
        (z_mm - np.float32(20.0)) / np.float32(20.0)
    )


def disease_region(resolution: float = 2.0) -> np.ndarray:
    """Voxels of the simulated disease pattern: where its weight exceeds one half.

    The medial temporal region whose grey matter the patients of
    :func:`~harmonix.datasets.make_multisite` lose (both hemispheres), inside the template
    brain mask, on the FSL MNI grid of ``resolution``. The truth of a subject's regional GM volume
    (``MultisiteDataset.pattern_gm_volume``) is its GM map summed over this region.

    Parameters
    ----------
    resolution : {1, 2, 4}, default=2.0
        Voxel size in mm.

    Returns
    -------
    ndarray of bool of shape (i, j, k)
    """
    anat = _load_anatomy(_check_resolution(resolution))
    weight = _disease_weight(*_grid_mm(anat, anat.coords)).reshape(anat.mask.shape)
    return (weight > 0.5) & anat.mask


def _check_prevalence(value: Any, n_sites: int, traveling: bool) -> np.ndarray | None:
    """Per-site diagnosis prevalences (None: no diagnosis and no sex drawn)."""
    if value is None:
        return None
    arr = np.atleast_1d(np.asarray(value, dtype=object))
    if arr.ndim != 1 or len(arr) not in (1, n_sites):
        raise ValueError(
            f"diagnosis_prevalence must be a number in [0, 1] or one per site ({n_sites}); "
            f"got {value!r}."
        )
    try:
        prev = np.broadcast_to(arr.astype(np.float64), (n_sites,)).copy()
    except (TypeError, ValueError):
        prev = np.full(n_sites, np.nan)
    if not (np.isfinite(prev).all() and (prev >= 0).all() and (prev <= 1).all()):
        raise ValueError(f"diagnosis_prevalence values must lie in [0, 1]; got {value!r}.")
    if traveling and np.ptp(prev) > 0:
        raise ValueError(
            f"Per-site prevalences {prev.tolist()} need traveling=False: a traveling subject "
            "has one diagnosis at every site, so every site would hold the same patients."
        )
    return prev


def _draw_biology(
    prevalence: np.ndarray | None, n_subjects: int, n_sites: int, seed: int, traveling: bool
) -> list[tuple[str, float]] | None:
    """Sex and disease severity (0 for controls) of every subject, from their own stream
    (the anatomy and age draws are unchanged by them). ``round(prevalence * n_subjects)``
    patients per site (or in the traveling group), at random; sexes 50/50 at random."""
    if prevalence is None:
        return None
    out: list[tuple[str, float]] = []
    for s in range(1 if traveling else n_sites):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _BIOLOGY_STREAM, s]))
        sexes = np.where(rng.random(n_subjects) < 0.5, "F", "M")
        k = int(round(prevalence[s] * n_subjects))
        severity = np.zeros(n_subjects)
        severity[rng.permutation(n_subjects)[:k]] = rng.uniform(*_DISEASE_SEVERITY, k)
        out.extend((str(x), float(v)) for x, v in zip(sexes, severity))
    return out
