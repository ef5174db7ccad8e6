"""Effects of the preprocessed-style simulation of harmonix.datasets, each on a planted case,
and the legacy style reproducing the first simulation bit for bit."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from harmonix.datasets import make_multisite
from harmonix.datasets.anatomy import _load_anatomy
from harmonix.datasets.sites import (
    _curve_lut,
    _draw_site_preprocessed,
    _grid_snr,
    _render,
    _scan_bias,
)
from harmonix.datasets.subjects import _draw_subject

RES = 4


@pytest.fixture(scope="module")
def anat():
    return _load_anatomy(RES)


@pytest.fixture(scope="module")
def subjects(anat):
    return [_draw_subject(anat, np.random.default_rng(seed), 50.0) for seed in (0, 1)]


def _site(anat, seed=0, **overrides):
    """A preprocessed-style site with some parameters planted."""
    params, log_bias = _draw_site_preprocessed(anat, np.random.default_rng(seed), "s")
    params.update(overrides)
    return params, log_bias, _curve_lut(params)


def _volume(anat, subj, vals):
    out = np.zeros(anat.mask.size, np.float32)
    out[subj.flat] = vals
    return out.reshape(anat.mask.shape)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


# Checksums of arrays made by make_multisite before the preprocessed style existed (commit
# 22b6f20); style="legacy" must keep reproducing them bit for bit.
LEGACY_CASES = [
    (
        {"n_subjects": 3, "n_sites": 3, "resolution": 4, "random_state": 0},
        {
            "imgs": "cfd063798a739c21",
            "truth": "fb2b49028d597370",
            "gm": "bdb9b04fe19a85d4",
            "masks": "9c811cc8db343e60",
            "ages": "2cb9a6fe74eb00fe",
        },
    ),
    (
        {
            "n_subjects": 2,
            "n_sites": 2,
            "resolution": 4,
            "random_state": 7,
            "reference_site": "b",
            "site_names": ["a", "b"],
            "age_range": (30, 60),
        },
        {
            "imgs": "772dff806edd4279",
            "truth": "30f2f5b73e30a4c4",
            "gm": "1b06be7f708d9b75",
            "masks": "c6d3b62b28194328",
            "ages": "d7c25f9b200e9b1d",
        },
    ),
    (
        {"n_subjects": 2, "n_sites": 2, "resolution": 2, "random_state": 1},
        {
            "imgs": "d7247ce2fad307a9",
            "truth": "efc306dcb9bc66b9",
            "gm": "6a2dc48e572aa314",
            "masks": "86ac2a58a656bf0d",
            "ages": "76be8940fbe09159",
        },
    ),
]


@pytest.mark.parametrize(("kwargs", "expected"), LEGACY_CASES)
def test_legacy_style_is_bit_for_bit(kwargs, expected):
    ds = make_multisite(**kwargs, style="legacy")
    assert {name: _sha(getattr(ds, name)) for name in expected} == expected
    default = make_multisite(**kwargs)
    assert _sha(default.imgs) != expected["imgs"]


def test_site_residual_bias_has_the_site_inu_range(anat):
    params, log_bias, _ = _site(anat, seed=3)
    p5, p95 = np.percentile(np.exp(log_bias[anat.mask]), [5, 95])
    assert p95 - p5 == pytest.approx(params["inu_range"], rel=0.02)
    assert 0.02 <= params["inu_range"] <= 0.10


def test_scan_bias_differs_between_two_subjects_of_one_site(anat, subjects):
    _, log_bias, _ = _site(anat)
    residuals = []
    for k, subj in enumerate(subjects):
        bias, inu = _scan_bias(log_bias, subj, np.random.default_rng(10 + k))
        assert bias.dtype == np.float32 and bias.shape == subj.flat.shape
        assert 0.05 <= inu <= 0.15
        resid = np.log(bias.astype(np.float64)) - log_bias.reshape(-1)[subj.flat]
        p5, p95 = np.percentile(np.exp(resid), [5, 95])
        assert p95 - p5 == pytest.approx(inu, rel=0.02)
        residuals.append(_volume(anat, subj, resid).reshape(-1))
    common = np.intersect1d(subjects[0].flat, subjects[1].flat)
    r = np.corrcoef(residuals[0][common], residuals[1][common])[0, 1]
    assert abs(r) < 0.8, r


def _log_bias_estimate(ds, i, region):
    """log(scan / truth) in ``region``: the scan's bias for a reference-site scan."""
    return np.log(ds.imgs[i][region] / ds.truth[i][region])


@pytest.mark.parametrize("style", ["preprocessed", "legacy"])
def test_reference_scans_bias_in_data_set(style):
    ds = make_multisite(2, 2, resolution=RES, random_state=5, style=style)
    wm = ds.mask & (ds.gm[0] < 0.05) & (ds.gm[1] < 0.05) & (ds.truth[0] > 0)
    wm &= ds.truth[0] > np.percentile(ds.truth[0][ds.mask], 50)
    ref = np.flatnonzero(ds.sites == ds.reference_site)
    a, b = (_log_bias_estimate(ds, i, wm) for i in ref)
    r = np.corrcoef(a, b)[0, 1]
    spread = np.percentile(a, 95) - np.percentile(a, 5)
    if style == "legacy":  # one strong bias field shared by the site's scans
        assert r > 0.9 and spread > 0.15
    else:  # small residuals, different for each subject of the site
        assert r < 0.8 and spread < 0.25


def test_slice_thickness_blurs_one_axis_only():
    # At 2 mm, the benchmarks' grid: 3 mm slices along the last axis against 1 mm ones.
    anat2 = _load_anatomy(2)
    subj = _draw_subject(anat2, np.random.default_rng(0), 50.0)
    params, _, lut = _site(anat2)

    def render(voxel):
        p = dict(params, blur_sigma_mm=[0.5 * v for v in voxel])
        return _volume(anat2, subj, _render(subj, p, lut, 2, None, None))

    power = {}

    def high_freq(img, axis):
        """Power at high frequencies along ``axis`` and low ones along the others."""
        if id(img) not in power:
            power[id(img)] = np.abs(np.fft.fftn(img)) ** 2
        k = np.meshgrid(*(2 * np.abs(np.fft.fftfreq(n)) for n in img.shape), indexing="ij")
        sel = k[axis] > 0.5  # in units of the Nyquist frequency
        for other in {0, 1, 2} - {axis}:
            sel &= k[other] < 0.25
        return float(power[id(img)][sel].sum())

    iso, thick = render([1.0, 1.0, 1.0]), render([1.0, 1.0, 3.0])
    ratio = [high_freq(thick, a) / high_freq(iso, a) for a in range(3)]
    assert ratio[2] < 0.6, ratio  # measured 0.41
    assert min(ratio[:2]) > 0.9, ratio  # measured 0.96-0.98


def test_blur_is_in_mm_and_scales_with_resolution():
    # The same seed draws the same sites (in mm) at every grid; only the noise on the grid
    # depends on the voxel size.
    a = make_multisite(1, 2, resolution=2, random_state=0)
    b = make_multisite(1, 2, resolution=4, random_state=0)
    for pa, pb in zip(a.site_params, b.site_params):
        for key in ("slice_axis", "voxel_mm", "blur_sigma_mm", "snr_wm", "inu_range"):
            assert pa[key] == pb[key]
        # Acquisition voxels (<= 1.4 x 1.4 x 3 mm) are smaller than 8 mm3: averaging.
        assert pb["snr_grid"] / pa["snr_grid"] == pytest.approx(math.sqrt(8), rel=1e-9)


def test_grid_snr_rule():
    assert _grid_snr(20.0, [1, 1, 1], 1) == pytest.approx(20.0)
    assert _grid_snr(20.0, [1, 1, 1], 2) == pytest.approx(20.0 * math.sqrt(8))
    assert _grid_snr(20.0, [1, 1, 3], 2) == pytest.approx(20.0 * math.sqrt(24))
    # A grid finer than the acquisition voxel averages nothing: SNR is linear in volume.
    assert _grid_snr(20.0, [1, 1, 3], 1) == pytest.approx(60.0)
    assert _grid_snr(20.0, [0.8, 0.8, 1], 1) == pytest.approx(20.0 * 0.64 * 1.25)


def test_noise_sd_matches_snr_rule(anat, subjects):
    params, _, lut = _site(anat, seed=2, scale=4095.0)  # large scale: rounding negligible
    assert params["noise_sigma"] == pytest.approx(
        1.0 / _grid_snr(params["snr_wm"], params["voxel_mm"], RES)
    )
    subj = subjects[0]
    a, b = (_render(subj, params, lut, RES, None, np.random.default_rng(s)) for s in (1, 2))
    wm = subj.wm > 0.9  # bright voxels: Rician noise is Gaussian there
    sd = np.std((a - b)[wm]) / math.sqrt(2.0) / params["scale"]
    assert sd == pytest.approx(params["noise_sigma"], rel=0.05)


def test_curve_keeps_tissue_anchors(anat):
    for seed in range(5):
        p, _, lut = _site(anat, seed=seed)
        x, y = np.asarray(p["curve_x"]), np.asarray(p["curve_y"])
        assert np.all(np.diff(y) > 0) and np.all(np.diff(lut) >= 0)
        assert (y[1], y[3], y[5]) == (x[1], x[3], x[5]) == (p["csf_wm"], p["gm_wm"], 1.0)
        assert not np.allclose(y, x)  # nonlinear between the anchors


@pytest.mark.slow
def test_effects_leave_room_at_2mm():
    from harmonix import HistogramMatchingHarmonizer
    from harmonix.benchmark.metrics import traveling_subject_ssim_score

    ds = make_multisite(3, 4, resolution=2, random_state=0)
    hm = HistogramMatchingHarmonizer(reference_site=ds.reference_site)
    out = hm.fit(ds.imgs, ds.sites).transform(ds.imgs)
    assert traveling_subject_ssim_score(out, ds.subjects, ds.sites, ds.mask) <= 0.95
    assert np.corrcoef(ds.ages[:3], ds.gm_volume[:3])[0, 1] < -0.5
