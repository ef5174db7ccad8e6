"""WhiteStripe: mode, stripe and mapping checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import argrelmax
from scipy.stats import norm, truncnorm

from harmonix.intensity.whitestripe import WhiteStripeHarmonizer, whitestripe_stats

SHAPE = (50, 60, 40)  # 120,000 voxels


def mixture_image(components, n=SHAPE[0] * SHAPE[1] * SHAPE[2], seed=0) -> np.ndarray:
    """An image whose histogram is a known Gaussian mixture, without sampling noise.

    Each component (weight, mean, sd) contributes its quantiles at (i + 0.5) / n_k, so the
    histogram follows the mixture density closely; voxels are shuffled into SHAPE.
    """
    values = []
    for weight, mean, sd in components:
        k = int(round(weight * n))
        values.append(mean + sd * norm.ppf((np.arange(k) + 0.5) / k))
    values = np.concatenate(values)[:n]
    values = np.pad(values, (0, n - values.size), constant_values=components[-1][1])
    return np.random.default_rng(seed).permutation(values).reshape(SHAPE).astype(np.float32)


T1 = [(0.15, 300.0, 40.0), (0.45, 600.0, 50.0), (0.40, 1000.0, 40.0)]  # CSF, GM, WM


def stripe_by_numpy(img: np.ndarray, mode: float, width: float) -> tuple[float, float]:
    v = img[img != 0].astype(np.float64)
    q = 0.5 * (np.mean(v < mode) + np.mean(v <= mode))
    low, high = np.quantile(v, np.clip([q - width, q + width], 0, 1))
    stripe = v[(v >= low) & (v <= high)]
    return stripe.mean(), stripe.std()


def test_mode_of_a_known_histogram_within_one_bin():
    img = mixture_image(T1)
    v = img.ravel()
    bin_width = (np.percentile(v[::8], 99.5) - np.percentile(v[::8], 0.5)) / 2000
    _, _, mode = whitestripe_stats(img)
    assert abs(mode - 1000.0) <= bin_width
    # WM not the largest class: still the last (WM) peak, not the GM peak
    img = mixture_image([(0.15, 300.0, 40.0), (0.65, 600.0, 50.0), (0.20, 900.0, 30.0)])
    _, _, mode = whitestripe_stats(img)
    assert abs(mode - 900.0) <= 1.0


def test_wm_shoulder_is_not_taken_for_the_gm_peak():
    # WM only a shoulder of a broad GM peak (as with a strong bias field): no WM peak
    components = [(0.15, 250.0, 60.0), (0.55, 600.0, 90.0), (0.30, 820.0, 90.0)]
    x = np.linspace(0, 1400, 14001)
    density = sum(w * norm.pdf(x, m, s) for w, m, s in components)
    assert np.all(x[argrelmax(density)[0]] < 650)  # peaks: CSF and GM only
    _, _, mode = whitestripe_stats(mixture_image(components))
    assert 750 < mode < 900


def test_stripe_statistics_equal_direct_numpy():
    img = mixture_image(T1)
    for width in (0.05, 0.1, 0.3):
        mu, sigma, mode = whitestripe_stats(img, width=width)
        ref_mu, ref_sigma = stripe_by_numpy(img, mode, width)
        assert mu == pytest.approx(ref_mu, rel=1e-9)
        assert sigma == pytest.approx(ref_sigma, rel=1e-6)
    # the stripe of a Gaussian WM peak (40 % of the voxels): +-5 % of all voxels is the
    # WM class's quantiles 0.5 +- 0.125, i.e. a normal truncated to +-0.3186 sd
    mu, sigma, _ = whitestripe_stats(img, width=0.05)
    a = norm.ppf(0.625)
    assert mu == pytest.approx(1000.0, abs=0.5)
    assert sigma == pytest.approx(40.0 * truncnorm(-a, a).std(), rel=0.02)


def test_brain_mask_argument():
    img = mixture_image(T1)
    brain = np.zeros(SHAPE, dtype=bool)
    brain[:25] = True
    mu, sigma, mode = whitestripe_stats(img, brain)
    ref_mu, ref_sigma = stripe_by_numpy(np.where(brain, img, 0), mode, 0.05)
    assert (mu, sigma) == (pytest.approx(ref_mu), pytest.approx(ref_sigma))


def test_deterministic():
    img = mixture_image(T1, seed=3)
    img += np.random.default_rng(0).normal(0, 5, SHAPE).astype(np.float32)
    first = whitestripe_stats(img)
    assert whitestripe_stats(img.copy()) == first
    ws = WhiteStripeHarmonizer().fit([img, img * 2], ["a", "b"])
    assert np.array_equal(ws.transform([img])[0], ws.transform([img.copy()])[0])


def test_zscore_mapped_onto_the_reference_scale():
    ref1, ref2 = mixture_image(T1, seed=1), mixture_image(T1, seed=2) * 1.1
    other = mixture_image([(0.2, 100.0, 20.0), (0.4, 250.0, 25.0), (0.4, 420.0, 15.0)])
    ws = WhiteStripeHarmonizer(reference_site="r").fit([ref1, other, ref2], ["r", "o", "r"])
    stats = [whitestripe_stats(x) for x in (ref1, ref2)]
    assert ws.reference_mean_ == pytest.approx(np.mean([s[0] for s in stats]))
    assert ws.reference_std_ == pytest.approx(np.mean([s[1] for s in stats]))
    mu, sigma, _ = whitestripe_stats(other)
    expected = (other - mu) / sigma * ws.reference_std_ + ws.reference_mean_
    out = ws.transform([other])[0]
    assert out.dtype == np.float32
    assert np.allclose(out, expected, rtol=1e-5, atol=1e-3)
    # the output's own stripe is the reference stripe
    mu_out, sigma_out, _ = whitestripe_stats(out)
    assert mu_out == pytest.approx(ws.reference_mean_, rel=1e-4)
    assert sigma_out == pytest.approx(ws.reference_std_, rel=1e-3)


def test_affine_site_shift_is_removed_exactly():
    img = mixture_image(T1, seed=4)
    img += np.random.default_rng(1).normal(0, 5, SHAPE).astype(np.float32)
    shifted = 3.0 * img + 20.0
    mu, sigma, mode = whitestripe_stats(img)
    mu2, sigma2, mode2 = whitestripe_stats(shifted)
    assert mode2 == pytest.approx(3 * mode + 20, rel=1e-6)
    assert (mu2, sigma2) == (pytest.approx(3 * mu + 20, rel=1e-6), pytest.approx(3 * sigma))
    ws = WhiteStripeHarmonizer(reference_site="a").fit([img, shifted], ["a", "b"])
    out = ws.transform([img, shifted])
    assert np.allclose(out[1], out[0], rtol=1e-5, atol=1e-3)
    assert np.allclose(out[0], img, rtol=1e-5, atol=1e-3)  # the reference is unchanged


def test_background_zero_unseen_site_and_mask():
    imgs = [mixture_image(T1, seed=s) for s in range(3)]
    for img in imgs:
        img[:5] = 0  # background slab
    ws = WhiteStripeHarmonizer().fit(imgs, ["a", "b", "b"])
    assert ws.reference_site_ == "b"
    new = 0.5 * imgs[0]  # a site never seen in fit
    out = ws.transform(np.stack([new]))[0]
    assert out.dtype == np.float32
    assert np.all(out[:5] == 0)
    assert np.all(out[5:] != 0)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:, :30] = True
    out = WhiteStripeHarmonizer(mask=mask).fit(imgs, ["a", "b", "b"]).transform([new])[0]
    assert np.all(out[~mask] == 0)


def test_small_images_are_mapped_onto_the_reference_stripe():
    """8x8x8 images: each output's own white stripe has the reference's mean and sd (the
    map is affine, so the stripe quantiles follow it), the background stays 0."""
    rng = np.random.default_rng(0)
    imgs = [
        np.abs(np.where(rng.random((8, 8, 8)) < 0.7, rng.normal(600, 80, (8, 8, 8)), 0)) * scale
        for scale in (1.0, 1.5)
    ]
    imgs = [x.astype(np.float32) for x in imgs]
    ws = WhiteStripeHarmonizer().fit(imgs, ["a", "b"])
    out = ws.transform(imgs, ["a", "b"])
    for before, after in zip(imgs, out):
        mu, sigma, _ = whitestripe_stats(after)
        assert mu == pytest.approx(ws.reference_mean_, rel=1e-3)
        assert sigma == pytest.approx(ws.reference_std_, rel=1e-3)
        np.testing.assert_array_equal(after[before == 0], 0)
    assert not np.allclose(out[1], imgs[1])  # the scaled site really moved


def test_save_load_round_trip(tmp_path):
    imgs = [mixture_image(T1, seed=s) * (1 + 0.3 * s) for s in range(3)]
    ws = WhiteStripeHarmonizer(width=0.1).fit(imgs, ["a", "b", "b"])
    ws.save(tmp_path / "ws.npz")
    loaded = WhiteStripeHarmonizer.load(tmp_path / "ws.npz")
    assert (loaded.reference_mean_, loaded.reference_std_) == (
        ws.reference_mean_,
        ws.reference_std_,
    )
    assert loaded.width == 0.1
    assert np.array_equal(loaded.transform(imgs), ws.transform(imgs))


@pytest.mark.parametrize("width", [0, 0.5, -0.1, 1.0, "wide", None])
def test_width_is_validated(width):
    imgs = [mixture_image(T1, seed=s) for s in range(2)]
    with pytest.raises(ValueError, match="width"):
        WhiteStripeHarmonizer(width=width).fit(imgs, ["a", "b"])
    with pytest.raises(ValueError, match="width"):
        whitestripe_stats(imgs[0], width=width)


def test_constant_image_raises_clearly():
    img = np.full((6, 6, 6), 5.0, dtype=np.float32)
    with pytest.raises(ValueError, match="one intensity"):
        whitestripe_stats(img)


@pytest.mark.slow
def test_mode_is_white_matter_on_simulated_multisite_data():
    from harmonix.datasets import make_multisite

    ds = make_multisite(n_subjects=2, n_sites=6, resolution=2, random_state=1)
    ref = next(p for p in ds.site_params if p["is_reference"])
    wm_truth, gm_truth = ref["scale"], ref["scale"] * ref["gm_wm"]
    for img, truth in zip(ds.imgs, ds.truth):
        brain = img != 0
        # the image intensities of the voxels that are pure WM / pure GM in the ground truth
        wm = np.median(img[brain & (np.abs(truth / wm_truth - 1) < 0.03)])
        gm = np.median(img[brain & (np.abs(truth / gm_truth - 1) < 0.03)])
        _, _, mode = whitestripe_stats(img)
        assert wm > gm
        assert abs(mode - wm) < 0.5 * (wm - gm)  # on WM's side of the GM/WM midpoint


def test_three_voxel_brain_gives_a_clear_error_without_nan_warnings():
    """Every voxel outside the histogram's inner range: no NaN arithmetic, a clear error."""
    import warnings

    img = np.zeros((6, 6, 6), np.float32)
    img[2, 2, 2:5] = [1, 5, 9]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="stripe holds 0 voxel"):
            whitestripe_stats(img)


def test_whitestripe_does_not_depend_on_how_voxels_are_stored():
    """The same scans flipped left-right, or stored in Fortran order (as NIfTI data), give
    the same statistics and outputs (before: up to 0.3 % mean relative difference, max
    7.5, from a subsample of every 8th voxel in memory order)."""
    from harmonix import make_multisite

    ds = make_multisite(n_subjects=3, n_sites=3, resolution=4, random_state=2)
    imgs, sites = ds.imgs, ds.sites
    ws = WhiteStripeHarmonizer().fit(imgs, sites)
    out = ws.transform(imgs)
    flipped = imgs[:, ::-1].copy()
    np.testing.assert_allclose(ws.transform(flipped)[:, ::-1], out, rtol=1e-6, atol=1e-4)
    fortran = [np.asfortranarray(img) for img in imgs]
    np.testing.assert_allclose(np.stack(ws.transform(fortran)), out, rtol=1e-6, atol=1e-4)
    refit = WhiteStripeHarmonizer().fit(flipped, sites)
    assert refit.reference_mean_ == pytest.approx(ws.reference_mean_, rel=1e-9)
    assert refit.reference_std_ == pytest.approx(ws.reference_std_, rel=1e-9)
    for img in imgs[:3]:
        assert whitestripe_stats(img[::-1, ::-1]) == pytest.approx(whitestripe_stats(img), 1e-9)
