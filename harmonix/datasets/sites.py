"""Sites in two styles, and the rendering of a subject scanned at a site.

Both styles draw a tissue contrast and a monotone intensity curve; ``"legacy"`` adds one
strong bias field per site, a blur drawn per axis and noise for 1 mm voxels,
``"preprocessed"`` a weak site bias with a residual of its own for every scan, the blur of
the site's acquisition voxel and the noise of that voxel on the grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq

from harmonix.datasets.anatomy import _Anatomy
from harmonix.datasets.fields import _bspline_field
from harmonix.datasets.subjects import _Subject

# ABIDE per-site ranges (MRIQC image quality metrics, WM median scaled to 1000).
_GM_WM = (0.58, 0.85)
_CSF_WM = (0.25, 0.44)
_SNR_WM = (13.0, 24.0)
_INU_RANGE = (0.20, 0.63)
_BLUR_SIGMA_MM = (0.3, 1.2)
_SCALE = (255.0, 4095.0)
_TEXTURE_GAIN = (0.6, 1.0)
_N_CONTROL_BIAS = 4  # control points per axis of the bias field
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
