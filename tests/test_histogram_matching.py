"""Histogram matching (Nyúl–Udupa): numbers checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from harmonix.intensity._voxelstats import percentiles as fast_percentiles
from harmonix.intensity.histogram_matching import HistogramMatchingHarmonizer
from harmonix.intensity.landmarks import apply_landmarks, compute_landmarks

Q = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


def ramp(n: int, start: float = 1.0) -> np.ndarray:
    """Values start, start+1, ..., start+n-1 as a (1, 1, n) float32 image."""
    return (start + np.arange(n, dtype=np.float32)).reshape(1, 1, n)


def blob_images(seed: int = 0, n: int = 3, shape=(16, 16, 16)) -> list[np.ndarray]:
    """Random positive 'brains' (a ball) with background 0."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, k) for k in shape], indexing="ij"))
    ball = (grid**2).sum(0) < 0.7
    return [
        np.where(ball, rng.gamma(4.0, 50.0, shape) + 10, 0).astype(np.float32) for _ in range(n)
    ]


# -- landmarks ------------------------------------------------------------------------------
def test_landmarks_of_a_ramp_by_hand():
    # 1001 values 1..1001: the p-th percentile is 1 + p / 100 * 1000 (linear interpolation)
    got = compute_landmarks(ramp(1001), percentiles=Q)
    assert np.allclose(got, [1 + 10 * q for q in Q])
    # between two voxels: 4 values 10, 20, 30, 40 -> p50 = 25, p10 = 10 + 0.3 * 10 = 13
    img = np.array([10, 20, 30, 40], dtype=np.float32).reshape(1, 2, 2)
    assert np.allclose(compute_landmarks(img, percentiles=(10, 50, 100)), [13, 25, 40])


def test_landmarks_ignore_background_and_respect_brain_mask():
    img = np.zeros((2, 2, 3), dtype=np.float32)
    img[0, 0] = [5, 6, 7]
    assert np.allclose(compute_landmarks(img, percentiles=(0, 50, 100)), [5, 6, 7])
    brain = np.zeros(img.shape, dtype=bool)
    brain[0, 0, 1:] = True
    assert np.allclose(compute_landmarks(img, brain, percentiles=(0, 100)), [6, 7])


@pytest.mark.parametrize("seed", range(6))
def test_fast_percentiles_equal_numpy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 20000))
    values = [
        rng.normal(500, 100, n).astype(np.float32),
        rng.integers(0, 7, n).astype(np.float32),  # many ties
        np.append(rng.random(n), 1e9).astype(np.float32),  # one huge outlier
    ][seed % 3]
    q = [0, 0.5, 1, 25, 50, 75, 99, 99.5, 100]
    assert np.allclose(fast_percentiles(values, q), np.percentile(values.astype(float), q))


def test_tied_landmarks_are_made_strictly_increasing():
    # 900 voxels at 7 and 100 at 8..107: percentiles 1..80 all equal 7
    img = np.concatenate([np.full(900, 7.0), np.arange(8.0, 108.0)]).astype(np.float32)
    got = compute_landmarks(img.reshape(10, 10, 10), percentiles=Q)
    gap = 1e-5 * got.max()  # the documented rule: predecessor + 1e-5 * max|landmark|
    assert got[0] == 7.0
    assert np.allclose(np.diff(got[:9]), gap)
    assert np.all(np.diff(got) > 0)
    assert got[-1] == np.percentile(img, 99)


def test_landmark_validation():
    img = ramp(10)
    for bad in [(50, 10), (10, 10, 50), (-1, 50), (50, 101), (50,), [[1, 2]]]:
        with pytest.raises(ValueError, match="percentiles"):
            compute_landmarks(img, percentiles=bad)


# -- applying landmarks -------------------------------------------------------------------------
def test_apply_landmarks_by_hand():
    img = np.array([[[0, -5, 5, 10], [15, 20, 25, 0]]], dtype=np.float32)
    out = apply_landmarks(img, [0.0, 10.0, 20.0], [100.0, 150.0, 300.0])
    # segment 1: slope 5; segment 2: slope 15; beyond the ends: the end slopes
    expected = [[[0, 75, 125, 150], [225, 300, 375, 0]]]
    assert out.dtype == np.float32
    assert np.allclose(out, expected)


def test_apply_landmarks_rejects_non_increasing_landmarks():
    with pytest.raises(ValueError, match="strictly increasing"):
        apply_landmarks(ramp(5), [1.0, 1.0, 5.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="same length"):
        apply_landmarks(ramp(5), [1.0, 5.0], [0.0, 1.0, 2.0])


def test_ramp_mapped_onto_reference_ramp_by_hand():
    # reference: 1..1001; other site: 1001 values 2x + 100 -> after matching, the ramp again
    ref, other = ramp(1001), 2 * ramp(1001) + 100
    hm = HistogramMatchingHarmonizer(reference_site="ref").fit([ref, other], ["ref", "b"])
    assert np.allclose(hm.standard_landmarks_, [1 + 10 * q for q in Q])
    out = hm.transform([other, ref])
    assert np.allclose(out[0], ref, atol=1e-3)
    assert np.allclose(out[1], ref, atol=1e-3)


# -- the estimator --------------------------------------------------------------------------
def test_standard_scale_is_the_reference_sites_scale():
    imgs = blob_images(n=4)
    imgs[2] = 3 * imgs[2] + 1000  # other site: another scale
    imgs[3] = 3 * imgs[3] + 1000
    sites = ["a", "a", "b", "b"]
    hm = HistogramMatchingHarmonizer(reference_site="a").fit(imgs, sites)
    lms = np.stack([compute_landmarks(imgs[i]) for i in (0, 1)])
    s_min, s_max = lms[:, 0].mean(), lms[:, -1].mean()
    mapped = s_min + (lms - lms[:, :1]) * (s_max - s_min) / (lms[:, -1:] - lms[:, :1])
    assert np.allclose(hm.standard_landmarks_, mapped.mean(0))
    assert hm.reference_site_ == "a"
    assert list(hm.sites_) == ["a", "b"]
    # a reference image stays on its own scale (close to itself)
    out = hm.transform([imgs[0]])[0]
    brain = imgs[0] != 0
    assert np.median(np.abs(out[brain] / imgs[0][brain] - 1)) < 0.05


def test_single_reference_image_maps_onto_itself():
    imgs = blob_images(n=3)
    hm = HistogramMatchingHarmonizer(reference_site="r").fit(imgs, ["r", "x", "x"])
    assert np.allclose(hm.standard_landmarks_, compute_landmarks(imgs[0]))
    assert np.allclose(hm.transform([imgs[0]])[0], imgs[0], rtol=1e-5, atol=1e-3)


def test_monotone_site_transform_is_removed():
    imgs = blob_images(n=3)
    affine = 2 * imgs[0] + 100 * (imgs[0] != 0)
    curved = np.sqrt(imgs[0]) * 30  # nonlinear, increasing
    hm = HistogramMatchingHarmonizer(reference_site="r").fit(imgs, ["r", "r", "x"])
    out = hm.transform([imgs[0], affine, curved])
    brain = imgs[0] != 0
    assert np.allclose(out[1], out[0], rtol=1e-5, atol=1e-3)  # affine: removed exactly
    # any increasing transform: the output's landmarks are the standard landmarks
    # (up to the kink of the map between the two voxels around each landmark)
    got = np.percentile(out[2][brain], Q)
    assert np.allclose(got, hm.standard_landmarks_, rtol=1e-3)


def test_tied_landmarks_give_finite_output():
    rng = np.random.default_rng(1)
    tied = np.full((10, 10, 10), 50.0, dtype=np.float32)
    tied.flat[:100] = rng.uniform(60, 90, 100)  # 90 % of the voxels share one value
    imgs = [*blob_images(n=2), tied]
    hm = HistogramMatchingHarmonizer().fit(imgs[:2] + [imgs[0] * 2], ["a", "a", "b"])
    out = hm.transform([tied])[0]
    assert np.isfinite(out).all()
    # the tied value is the first landmark: it goes exactly to the first standard landmark
    assert np.allclose(out[tied == 50], hm.standard_landmarks_[0], rtol=1e-6)
    assert np.all(np.diff(np.sort(np.unique(out))) >= 0)
    # fitting on images with tied landmarks works too
    hm2 = HistogramMatchingHarmonizer(reference_site="t").fit([tied, imgs[0]], ["t", "a"])
    assert np.all(np.diff(hm2.standard_landmarks_) > 0)
    assert all(np.isfinite(x).all() for x in hm2.transform([tied, imgs[0]]))


def test_background_zero_unseen_site_float32_and_mask():
    imgs = blob_images(n=4)
    hm = HistogramMatchingHarmonizer().fit(imgs[:3], ["a", "b", "b"])
    new = blob_images(seed=5, n=1)[0] * 7  # a site never seen in fit
    out = hm.transform(np.stack([new]))
    assert out.dtype == np.float32
    assert np.all(out[0][new == 0] == 0)
    assert np.all(out[0][new != 0] != 0)
    assert hm.reference_site_ == "b"  # None -> the largest site
    with pytest.raises(ValueError, match=r"pick one of them or None \(the largest site\)"):
        HistogramMatchingHarmonizer(reference_site="c").fit(imgs[:3], ["a", "b", "b"])
    mask = np.zeros(new.shape, dtype=bool)
    mask[:, :8] = True
    hm_mask = HistogramMatchingHarmonizer(mask=mask).fit(imgs[:3], ["a", "b", "b"])
    out = hm_mask.transform([new])[0]
    assert np.all(out[~mask] == 0)


def test_save_load_round_trip(tmp_path):
    imgs = blob_images(n=3)
    hm = HistogramMatchingHarmonizer(percentiles=(2, 25, 50, 75, 98)).fit(imgs, ["a", "b", "b"])
    hm.save(tmp_path / "hm.npz")
    loaded = HistogramMatchingHarmonizer.load(tmp_path / "hm.npz")
    assert np.array_equal(loaded.standard_landmarks_, hm.standard_landmarks_)
    assert loaded.reference_site_ == hm.reference_site_
    assert np.array_equal(loaded.transform(imgs), hm.transform(imgs))


@pytest.mark.parametrize("bad", [(50, 10), (1, 1, 99), (0, 120), (50,), "abc"])
def test_fit_validates_percentiles(bad):
    with pytest.raises(ValueError, match="percentiles"):
        HistogramMatchingHarmonizer(percentiles=bad).fit(blob_images(n=2), ["a", "b"])


def test_input_is_not_modified():
    imgs = np.stack(blob_images(n=2))
    before = imgs.copy()
    HistogramMatchingHarmonizer().fit_transform(imgs, ["a", "b"])
    assert np.array_equal(imgs, before)


def test_percentiles_changed_after_fit_act_at_the_next_fit_only():
    imgs = blob_images(n=2)
    hm = HistogramMatchingHarmonizer().fit(imgs, ["a", "b"])
    before = hm.transform(imgs)
    hm.set_params(percentiles=(5, 50, 95))
    np.testing.assert_array_equal(hm.transform(imgs), before)  # transform uses percentiles_
    assert hm.fit(imgs, ["a", "b"]).percentiles_.tolist() == [5, 50, 95]
