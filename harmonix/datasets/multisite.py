"""Synthetic multi-site traveling-subject data built from real anatomy.

No multi-site structural MRI data set can be downloaded at run time, so tests, tutorials
and benchmarks use images simulated from the ICBM152 2009a template bundled with nilearn
(no network access is needed). Every subject is "scanned" at every site (traveling
subjects), so the ideal harmonized image of each scan is known: the same subject rendered
clean at the reference site.

Simulation recipe
-----------------
Anatomy (once per resolution, cached in memory):
    the ICBM152 T1, GM, WM and brain-mask images are smoothed (anti-aliasing) and resampled
    to the FSL MNI grids; CSF is ``clip(mask - GM - WM, 0, 1)`` and the *texture* is the part
    of the T1 template not explained by a linear tissue model (deep grey matter, vessels...),
    expressed in units of the WM intensity.

Subjects (computed once per subject, reused at every site):
    1. a random affine (each matrix entry within +/- 3 %) and a smooth random displacement
       (cubic B-spline on a 7x7x7 control grid, RMS 1-2.5 mm, evaluated with separable
       tensor products) warp the tissue, texture and mask maps (trilinear interpolation);
    2. ageing: a fraction ``clip(0.004 * p * (age - 20) * w(x), 0, 0.5)`` of the GM turns
       into CSF, where ``w`` is a smooth weight of the template position (about 0.6 in the
       occipital to 1.4 in the frontal lobe) and ``p ~ U(0.75, 1.25)`` the subject's
       ageing pace; the GM volume therefore falls with age, which a harmonization must keep.

Sites, default ``style="preprocessed"``: scans as a harmonization method receives them,
after the standard preprocessing (N4 bias correction, registration to MNI, resampling to
the grid). One seeded parameter set per site; contrast, SNR and scale lie within the range
of the ABIDE sites' MRIQC image quality metrics (GM/WM 0.58-0.85, CSF/WM 0.25-0.44, WM SNR
13-24):
    1. tissue contrast ``I = WM + r_gm * GM + r_csf * CSF + g * texture`` (``g`` 0.6-1.0);
    2. a random monotone nonlinear intensity curve (PCHIP through 7 increasing knots that
       keep pure CSF, GM and WM at ``r_csf``, ``r_gm`` and 1);
    3. residual bias ``exp(b_site(x) + b_scan(x))``, what N4 leaves: a weak site component
       (cubic B-spline, 4x4x4 control points, 5-95th percentile range of ``exp(b_site)``
       inside the brain 0.02-0.10: the coil's profile that every N4 run under-corrects
       alike) and a scan-specific component drawn anew for every scan, so two subjects of
       one site differ (6x6x6 control points, finer than N4's model, range 0.05-0.15,
       recorded in ``MultisiteDataset.residual_inu``);
    4. resolution: an acquisition voxel of ``a x a x t`` mm, in-plane pixel ``a`` 0.8-1.4
       mm (in-plane sharpness) and slice thickness ``t`` 1-3 mm along a random axis (the
       slice direction after registration). Each axis is blurred by a Gaussian of sigma
       ``w / 2`` mm for voxel width ``w`` (box profile of the voxel, variance ``w**2 / 12``,
       then linear interpolation between samples ``w`` apart, variance ``w**2 / 6``). The
       blur is in mm, so it spans more voxels at 1 and 2 mm than at 4 mm;
    5. Rician noise at the WM SNR of the voxel: ``snr_wm`` (13-24) is the SNR of a 1 mm3
       voxel; SNR is linear in the acquisition voxel volume ``V = a**2 t`` (thick slices
       collect more signal) and resampling onto grid voxels of volume ``r**3 > V`` averages
       ``r**3 / V`` of them, so the grid SNR is ``snr_wm * sqrt(V * r**3)`` (``snr_wm * V``
       on a grid finer than the acquisition): 10-140 at 1 mm, 30-165 at 2 mm, 80-470 at 4 mm;
    6. a global scale (WM mapped to 255-4095, log-uniform) and rounding to integers; voxels
       inside the subject's brain are at least 1 and the background is exactly 0.

Sites, ``style="legacy"``: the first simulation, kept bit for bit for the models and
results made with it (``MultisiteDataset.residual_inu`` is 0). Steps 1, 2 and 6 as above;
3. one multiplicative bias field per site ``exp(a * s(x))`` (4x4x4 control points), its
5-95th percentile range the ABIDE sites' INU range before correction (0.2-0.63), the same
for every scan of the site; 4. anisotropic Gaussian blur, sigma 0.3-1.2 mm per axis;
5. Rician noise with the WM SNR 13-24 given for 1 mm voxels, its standard deviation divided
by ``resolution ** 1.5`` on coarser grids.

The ground truth of each image is its subject rendered at the reference site without bias
field and noise (reference contrast, curve, blur and scale; not rounded). The subjects
(anatomy, ages, GM maps and volumes) do not depend on the style.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq

__all__ = ["MultisiteDataset", "disease_region", "make_multisite", "write_nifti_dataset"]

# FSL MNI152 grids: shape and voxel size, all sharing the origin (90, -126, -72) mm and a
# left-right flipped first axis (radiological voxel order, like FSL's MNI152_T1_*mm).
_GRIDS = {
    1: (182, 218, 182),
    2: (91, 109, 91),
    4: (46, 55, 46),
}
_ORIGIN = (90.0, -126.0, -72.0)

# ABIDE per-site ranges (MRIQC image quality metrics, WM median scaled to 1000).
_GM_WM = (0.58, 0.85)
_CSF_WM = (0.25, 0.44)
_SNR_WM = (13.0, 24.0)
_INU_RANGE = (0.20, 0.63)
_BLUR_SIGMA_MM = (0.3, 1.2)
_SCALE = (255.0, 4095.0)
_TEXTURE_GAIN = (0.6, 1.0)

_N_CONTROL = 7  # control points per axis of the subject deformation
_N_CONTROL_BIAS = 4  # control points per axis of the bias field
_DISPLACEMENT_RMS_MM = (1.0, 2.5)
_AFFINE_RANGE = 0.03
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
_CURVE_XMAX = 2.5  # last knot of the intensity curve (in WM units)
_LUT_SIZE = 4096

# Simulation styles: "preprocessed" (default) models scans after N4 and registration;
# "legacy" reproduces the first simulation bit for bit (strong site bias field, isotropic-ish
# blur, noise SNR for 1 mm voxels).
_STYLES = ("preprocessed", "legacy")
# Preprocessed style: residual bias after N4 (5-95th percentile range of exp(field) inside
# the brain), a weak site component and a stronger, finer scan-specific component.
_SITE_INU_RANGE = (0.02, 0.10)
_SCAN_INU_RANGE = (0.05, 0.15)
_N_CONTROL_RESIDUAL = 6  # control points per axis of the scan-specific residual bias
# Acquisition voxel: in-plane pixel and slice thickness (mm); the slice axis is random.
_INPLANE_MM = (0.8, 1.4)
_SLICE_MM = (1.0, 3.0)


def _fsl_affine(resolution: int) -> np.ndarray:
    affine = np.diag([-float(resolution), float(resolution), float(resolution), 1.0])
    affine[:3, 3] = _ORIGIN
    return affine


@dataclass(frozen=True)
class _Anatomy:
    """Template tissue maps on one grid (read-only arrays)."""

    gm: np.ndarray  # float32 (i, j, k)
    wm: np.ndarray
    csf: np.ndarray
    texture: np.ndarray
    mask: np.ndarray  # bool
    maskf: np.ndarray  # float32 copy of ``mask``
    coords: np.ndarray  # float32 (3, n_voxels) voxel coordinates of the grid, C order
    distance: np.ndarray  # float32, distance to the mask in voxels (0 inside)
    center: np.ndarray  # (3,) centre of mass of the mask (voxels)
    radius: float  # largest distance of a mask voxel to ``center`` (voxels)
    affine: np.ndarray
    resolution: int


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@functools.lru_cache(maxsize=3)
def _load_anatomy(resolution: int) -> _Anatomy:
    """Load the nilearn ICBM152 2009a maps and resample them once to an FSL grid."""
    from nilearn import datasets as nl_datasets

    imgs = {
        "t1": nl_datasets.load_mni152_template(resolution=1),
        "gm": nl_datasets.load_mni152_gm_template(resolution=1),
        "wm": nl_datasets.load_mni152_wm_template(resolution=1),
        "mask": nl_datasets.load_mni152_brain_mask(resolution=1),
    }
    shape = _GRIDS[resolution]
    affine = _fsl_affine(resolution)
    # Anti-aliasing before down-sampling: Gaussian whose FWHM brings 1 mm voxels to the
    # target voxel size.
    fwhm = math.sqrt(max(resolution**2 - 1.0, 0.0))
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    maps = {}
    for name, img in imgs.items():
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.max() > 1.5:  # uint8 stored without scaling
            data /= 255.0
        if sigma > 0:
            data = ndimage.gaussian_filter(data, sigma, mode="constant")
        vox = np.linalg.solve(img.affine, affine)  # target voxel -> source voxel
        maps[name] = ndimage.affine_transform(
            data,
            vox[:3, :3],
            offset=vox[:3, 3],
            output_shape=shape,
            order=1,
            mode="constant",
            cval=0.0,
            prefilter=False,
        ).astype(np.float32, copy=False)

    mask = maps["mask"] > 0.5
    mask = ndimage.binary_fill_holes(mask)
    gm = np.clip(maps["gm"], 0.0, 1.0) * mask
    wm = np.clip(maps["wm"], 0.0, 1.0) * mask
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(mask - gm - wm, 0.0, 1.0).astype(np.float32)

    # Texture: T1 minus its least-squares tissue model, in WM units.
    t1 = maps["t1"]
    design = np.stack([wm[mask], gm[mask], csf[mask]], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, t1[mask].astype(np.float64), rcond=None)
    texture = np.zeros(shape, np.float32)
    resid = (t1[mask] - design @ coef) / coef[0]
    texture[mask] = np.clip(resid, -0.4, 0.4)

    distance = ndimage.distance_transform_edt(~mask).astype(np.float32)
    idx = np.argwhere(mask)
    center = idx.mean(axis=0)
    radius = float(np.sqrt(((idx - center) ** 2).sum(axis=1)).max())
    return _Anatomy(
        gm=_readonly(gm.astype(np.float32)),
        wm=_readonly(wm.astype(np.float32)),
        csf=_readonly(csf),
        texture=_readonly(texture),
        mask=_readonly(mask),
        maskf=_readonly(mask.astype(np.float32)),
        coords=_readonly(np.indices(shape, dtype=np.float32).reshape(3, -1)),
        distance=_readonly(distance),
        center=_readonly(center),
        radius=radius,
        affine=_readonly(affine),
        resolution=resolution,
    )


# --------------------------------------------------------------------------------------
# Smooth random fields
# --------------------------------------------------------------------------------------


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    out = np.zeros_like(t)
    near = t < 1
    far = (t >= 1) & (t < 2)
    out[near] = 2.0 / 3.0 - t[near] ** 2 + 0.5 * t[near] ** 3
    out[far] = (2.0 - t[far]) ** 3 / 6.0
    return out


@functools.lru_cache(maxsize=16)
def _bspline_basis(n: int, n_control: int) -> np.ndarray:
    """(n, n_control) cubic B-spline weights with control points spanning the axis."""
    pos = np.linspace(0.0, n_control - 1.0, n)
    basis = _cubic_bspline(pos[:, None] - np.arange(n_control)[None, :])
    return _readonly(basis.astype(np.float32))


def _bspline_field(coef: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Evaluate a tensor-product cubic B-spline with coefficients ``coef`` (c, c, c)."""
    bx, by, bz = (_bspline_basis(n, coef.shape[d]) for d, n in enumerate(shape))
    out = np.tensordot(coef.astype(np.float32), bz, axes=([2], [1]))  # (cx, cy, k)
    out = np.tensordot(by, out, axes=([1], [1]))  # (j, cx, k)
    out = np.tensordot(bx, out, axes=([1], [1]))  # (i, j, k)
    return out


# --------------------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------------------


@dataclass
class _Subject:
    flat: np.ndarray  # flat indices of the subject's brain voxels
    bbox: tuple[slice, slice, slice]
    local: np.ndarray  # flat indices of the brain voxels inside the bbox
    wm: np.ndarray  # values at ``flat`` (float32)
    gm: np.ndarray
    csf: np.ndarray
    texture: np.ndarray
    params: dict[str, Any]


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


def _grid_mm(anat: _Anatomy, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World (MNI, mm) coordinates of voxel coordinates ``coords`` (3, n)."""
    res = np.float32(anat.resolution)
    return (
        np.float32(_ORIGIN[0]) - res * coords[0],  # the first axis is flipped
        np.float32(_ORIGIN[1]) + res * coords[1],
        np.float32(_ORIGIN[2]) + res * coords[2],
    )


def disease_region(resolution: float = 2.0) -> np.ndarray:
    """Voxels of the simulated disease pattern: where its weight exceeds one half.

    The medial temporal region whose grey matter :func:`make_multisite`'s patients lose
    (both hemispheres), inside the template brain mask, on the FSL MNI grid of
    ``resolution``. The truth of a subject's regional GM volume
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


def _draw_subject(
    anat: _Anatomy,
    rng: np.random.Generator,
    age: float,
    sex: str | None = None,
    severity: float = 0.0,
) -> _Subject:
    shape = anat.mask.shape
    res = anat.resolution

    # Deformation: output voxel p samples the template at c + A (p - c) + d(p), with d a
    # cubic B-spline field (separable tensor products on the full grid, in voxels).
    rms_mm = rng.uniform(*_DISPLACEMENT_RMS_MM)
    coef = rng.standard_normal((3, _N_CONTROL, _N_CONTROL, _N_CONTROL))
    disp = np.empty((3, *shape), np.float32)
    for d in range(3):
        disp[d] = _bspline_field(coef[d], shape)
    sq = disp[0] ** 2
    sq += disp[1] ** 2
    sq += disp[2] ** 2
    factor = rms_mm / res / math.sqrt(float(sq.mean(dtype=np.float64)))
    disp *= np.float32(factor)
    max_disp = math.sqrt(float(sq.max())) * factor
    lin = np.eye(3) + rng.uniform(-_AFFINE_RANGE, _AFFINE_RANGE, (3, 3))
    pace = rng.uniform(*_ATROPHY_PACE)

    # Only voxels close enough to the template brain can land inside it.
    max_lin = float(np.linalg.norm(lin - np.eye(3), 2)) * (anat.radius + max_disp + 2.0)
    support = np.flatnonzero(anat.distance.reshape(-1) <= max_disp + max_lin + 2.0)
    c = anat.center.astype(np.float32)[:, None]
    q = lin.astype(np.float32) @ (np.take(anat.coords, support, axis=1) - c)
    q += c
    flat_disp = disp.reshape(3, -1)
    for d in range(3):
        q[d] += np.take(flat_disp[d], support)

    def warp(vol: np.ndarray, coords: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(vol, coords, order=1, mode="constant", prefilter=False)

    # The tissue maps sum to the binary template mask, so WM = warped mask - GM - CSF: warp
    # the mask first, then GM, CSF and texture only where the subject's brain is.
    total = warp(anat.maskf, q)
    inside = total > 0.5
    flat = support[inside]
    total = total[inside]
    q = q[:, inside]
    gm, csf, texture = (warp(v, q) for v in (anat.gm, anat.csf, anat.texture))
    wm = total - gm - csf
    np.maximum(wm, 0.0, out=wm)

    # Ageing: a fraction of GM, weighted by the template position, turns into CSF.
    y_mm = np.float32(_ORIGIN[1]) + np.float32(res) * q[1]
    lost = _atrophy_weight(y_mm)
    lost *= np.float32(_ATROPHY_RATE * pace * (age - 20.0))
    np.clip(lost, 0.0, _ATROPHY_MAX, out=lost)
    lost *= gm
    gm -= lost
    csf += lost
    # Disease and sex (only when drawn): GM turning into CSF with patterns of their own.
    if sex is not None:
        x_mm, _, z_mm = _grid_mm(anat, q)
        for loss, weight in (
            (_DISEASE_LOSS * severity, lambda: _disease_weight(x_mm, y_mm, z_mm)),
            (_SEX_GM_LOSS if sex == "M" else 0.0, lambda: _sex_weight(z_mm)),
        ):
            if loss > 0:
                lost = weight()
                lost *= np.float32(loss)
                np.clip(lost, 0.0, _ATROPHY_MAX, out=lost)
                lost *= gm
                gm -= lost
                csf += lost
    # Renormalise partial volumes so that tissues sum to 1 inside the brain.
    total = wm + gm + csf
    wm /= total
    gm /= total
    csf /= total

    ijk = np.unravel_index(flat, shape)
    bbox = tuple(slice(int(a.min()), int(a.max()) + 1) for a in ijk)
    box_shape = tuple(s.stop - s.start for s in bbox)
    local = np.ravel_multi_index(tuple(a - s.start for a, s in zip(ijk, bbox)), box_shape)
    params = {
        "age": age,
        **({} if sex is None else {"sex": sex, "disease_severity": float(severity)}),
        "atrophy_pace": float(pace),
        "displacement_rms_mm": float(rms_mm),
        "affine": lin.tolist(),
    }
    return _Subject(flat, bbox, local, wm, gm, csf, texture, params)


# --------------------------------------------------------------------------------------
# Sites
# --------------------------------------------------------------------------------------


def _draw_contrast(rng: np.random.Generator) -> tuple[float, float, float]:
    """GM/WM and CSF/WM ratios and texture gain of a site."""
    return rng.uniform(*_GM_WM), rng.uniform(*_CSF_WM), rng.uniform(*_TEXTURE_GAIN)


def _draw_curve(
    rng: np.random.Generator, r_gm: float, r_csf: float
) -> tuple[list[float], list[float]]:
    """Knots of a monotone curve anchored at pure CSF, GM and WM; free knots in between."""
    x = [0.0, r_csf, 0.5 * (r_csf + r_gm), r_gm, 0.5 * (r_gm + 1.0), 1.0, _CURVE_XMAX]
    y = [0.0, r_csf, 0.0, r_gm, 0.0, 1.0, 0.0]
    for k in (2, 4):
        y[k] = y[k - 1] + (y[k + 1] - y[k - 1]) * rng.uniform(0.15, 0.85)
    y[6] = 1.0 + (_CURVE_XMAX - 1.0) * rng.uniform(0.5, 1.5)
    return x, y


def _inu_strength(inside: np.ndarray, inu: float) -> tuple[float, float]:
    """Median of a smooth field's values ``inside`` the brain, and the gain ``a`` such that
    ``exp(a * (field - median))`` has a 5-95th percentile range equal to ``inu``."""
    median = np.median(inside)
    p5, p95 = np.percentile(inside - median, [5, 95])
    strength = brentq(
        lambda a: math.exp(a * p95) - math.exp(a * p5) - inu, 0.0, 100.0 / (p95 - p5)
    )
    return median, strength


def _site_field(anat: _Anatomy, rng: np.random.Generator, inu: float) -> tuple[np.ndarray, float]:
    """A site's smooth log-bias shape (zero median in the template brain) and its gain."""
    coef = rng.standard_normal((_N_CONTROL_BIAS,) * 3)
    smooth = _bspline_field(coef, anat.mask.shape)
    median, strength = _inu_strength(smooth[anat.mask], inu)
    smooth -= median
    return smooth, strength


def _contrast_params(
    name: str, r_gm: float, r_csf: float, gain: float, curve: tuple, inu: float, strength: float
) -> dict[str, Any]:
    """The parameters both styles share: contrast, curve knots and bias range."""
    return {
        "name": name,
        "gm_wm": float(r_gm),
        "csf_wm": float(r_csf),
        "texture_gain": float(gain),
        "curve_x": [float(v) for v in curve[0]],
        "curve_y": [float(v) for v in curve[1]],
        "inu_range": float(inu),
        "bias_strength": float(strength),
    }


def _draw_site(
    anat: _Anatomy, rng: np.random.Generator, name: str
) -> tuple[dict[str, Any], np.ndarray]:
    """Draw one legacy site's parameters; return them and the bias field (float32 volume)."""
    r_gm, r_csf, gain = _draw_contrast(rng)
    snr = rng.uniform(*_SNR_WM)
    inu = rng.uniform(*_INU_RANGE)
    blur = rng.uniform(*_BLUR_SIGMA_MM, size=3)
    scale = math.exp(rng.uniform(math.log(_SCALE[0]), math.log(_SCALE[1])))
    curve = _draw_curve(rng, r_gm, r_csf)

    # Bias field: smooth, zero-median field, exponentiated to the site's INU range.
    smooth, strength = _site_field(anat, rng, inu)
    bias = np.exp(strength * smooth).astype(np.float32)

    noise = 1.0 / (snr * anat.resolution**1.5)
    params = {
        **_contrast_params(name, r_gm, r_csf, gain, curve, inu, strength),
        "snr_wm": float(snr),
        "noise_sigma": float(noise),
        "blur_sigma_mm": [float(v) for v in blur],
        "scale": float(scale),
    }
    return params, bias


def _grid_snr(snr_1mm: float, voxel_mm: Sequence[float], resolution: float) -> float:
    """WM SNR on the grid: linear in the acquisition voxel volume, then averaging.

    The SNR of an acquisition voxel is proportional to its volume; resampling onto grid
    voxels larger than the acquisition voxel averages ``resolution**3 / volume`` of them,
    which divides the noise standard deviation by the square root of that number.
    """
    volume = float(np.prod(voxel_mm))
    return snr_1mm * volume * math.sqrt(max(1.0, resolution**3 / volume))


def _draw_site_preprocessed(
    anat: _Anatomy, rng: np.random.Generator, name: str
) -> tuple[dict[str, Any], np.ndarray]:
    """Draw one preprocessed-style site; return its parameters and log bias (float32)."""
    r_gm, r_csf, gain = _draw_contrast(rng)
    curve = _draw_curve(rng, r_gm, r_csf)
    snr = rng.uniform(*_SNR_WM)
    inplane = rng.uniform(*_INPLANE_MM)
    thickness = rng.uniform(*_SLICE_MM)
    axis = int(rng.integers(3))
    inu = rng.uniform(*_SITE_INU_RANGE)
    scale = math.exp(rng.uniform(math.log(_SCALE[0]), math.log(_SCALE[1])))

    voxel = [inplane] * 3
    voxel[axis] = thickness
    # Through each axis: the acquisition voxel's box profile (variance w**2 / 12), then
    # linear interpolation between samples w apart (variance w**2 / 6): sigma = w / 2.
    blur = [0.5 * w for w in voxel]
    snr_grid = _grid_snr(snr, voxel, anat.resolution)

    smooth, strength = _site_field(anat, rng, inu)
    smooth *= np.float32(strength)
    params = {
        **_contrast_params(name, r_gm, r_csf, gain, curve, inu, strength),
        "slice_axis": axis,
        "slice_thickness_mm": float(thickness),
        "inplane_mm": float(inplane),
        "voxel_mm": [float(v) for v in voxel],
        "blur_sigma_mm": [float(v) for v in blur],
        "snr_wm": float(snr),
        "snr_grid": float(snr_grid),
        "noise_sigma": float(1.0 / snr_grid),
        "scale": float(scale),
    }
    return params, smooth


def _scan_bias(
    site_log_bias: np.ndarray, subj: _Subject, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Bias of one scan at ``subj.flat``: the site's log bias plus a scan-specific residual.

    The residual is a smooth field (cubic B-spline, ``_N_CONTROL_RESIDUAL`` control points
    per axis) centred on its median inside the subject's brain and scaled so that its
    exponential has a 5-95th percentile range drawn in ``_SCAN_INU_RANGE``. Returns the
    multiplicative bias (float32) and that range.
    """
    coef = rng.standard_normal((_N_CONTROL_RESIDUAL,) * 3)
    inu = float(rng.uniform(*_SCAN_INU_RANGE))
    inside = _bspline_field(coef, site_log_bias.shape).reshape(-1)[subj.flat]
    median, strength = _inu_strength(inside, inu)
    inside -= np.float32(median)
    inside *= np.float32(strength)
    inside += site_log_bias.reshape(-1)[subj.flat]
    return np.exp(inside), inu


def _curve_lut(params: dict[str, Any]) -> np.ndarray:
    """Tabulate the site's PCHIP curve on ``_LUT_SIZE`` points of [0, _CURVE_XMAX]."""
    xs = np.linspace(0.0, _CURVE_XMAX, _LUT_SIZE, dtype=np.float64)
    ys = PchipInterpolator(params["curve_x"], params["curve_y"])(xs)
    return ys.astype(np.float32)


def _apply_lut(vals: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Piecewise-linear look-up (faster than ``np.interp`` on a regular grid), clamped."""
    pos = vals * np.float32((lut.size - 1) / _CURVE_XMAX)
    np.clip(pos, 0.0, lut.size - 1.001, out=pos)
    idx = pos.astype(np.intp)
    pos -= idx
    lo = lut[idx]
    return lo + pos * (lut[idx + 1] - lo)


def _render(
    subj: _Subject,
    params: dict[str, Any],
    lut: np.ndarray,
    resolution: int,
    bias: np.ndarray | None,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Render one subject at one site; return the values at ``subj.flat`` (float32).

    ``bias`` holds the multiplicative bias at ``subj.flat`` (None: no bias); without
    ``rng`` there is no noise and no rounding (the clean render).
    """
    vals = subj.wm + params["gm_wm"] * subj.gm + params["csf_wm"] * subj.csf
    vals += params["texture_gain"] * subj.texture
    vals = _apply_lut(vals, lut)
    if bias is not None:
        vals *= bias
    box_shape = tuple(s.stop - s.start for s in subj.bbox)
    box = np.zeros(box_shape, np.float32)
    box.reshape(-1)[subj.local] = vals
    sigma = [s / resolution for s in params["blur_sigma_mm"]]
    box = ndimage.gaussian_filter(box, sigma, mode="constant", truncate=3.0)
    vals = box.reshape(-1)[subj.local]
    if rng is not None:
        sd = np.float32(params["noise_sigma"])
        real = vals + sd * rng.standard_normal(vals.size, dtype=np.float32)
        imag = sd * rng.standard_normal(vals.size, dtype=np.float32)
        vals = np.sqrt(real * real + imag * imag)
        vals *= np.float32(params["scale"])
        np.rint(vals, out=vals)
        np.maximum(vals, 1.0, out=vals)
    else:
        vals *= np.float32(params["scale"])
    return vals


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


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
        The medial temporal region of the disease pattern (:func:`disease_region`).
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


def _check_resolution(resolution: float) -> int:
    value = float("nan")
    if isinstance(resolution, int | float | np.integer | np.floating) and not isinstance(
        resolution, bool
    ):
        value = float(resolution)
    if value not in (1.0, 2.0, 4.0):
        raise ValueError(
            f"resolution must be 1, 2 or 4 (mm), got {resolution!r}; pass one of these "
            "voxel sizes."
        )
    return int(value)


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
    of the site's acquisition voxel. See the module docstring for the recipe and ranges.

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
        Data set from :func:`make_multisite`.
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
