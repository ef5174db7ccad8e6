"""Tests for harmonix.datasets (synthetic traveling-subject data, 4 mm so they run fast)."""

from __future__ import annotations

import csv
import itertools
import pathlib

import nibabel as nib
import numpy as np
import pytest

from harmonix.datasets import MultisiteDataset, make_multisite, write_nifti_dataset

N_SUBJECTS, N_SITES = 8, 3


@pytest.fixture(scope="module")
def ds() -> MultisiteDataset:
    return make_multisite(N_SUBJECTS, N_SITES, resolution=4, random_state=0)


@pytest.fixture(scope="module")
def small() -> MultisiteDataset:
    return make_multisite(2, 2, resolution=4, random_state=1)


def test_shapes_dtypes_lengths(ds):
    n = N_SUBJECTS * N_SITES
    shape = (46, 55, 46)
    assert len(ds) == n
    assert ds.imgs.shape == (n, *shape) and ds.imgs.dtype == np.float32
    assert ds.truth.shape == (n, *shape) and ds.truth.dtype == np.float32
    assert ds.gm.shape == (n, *shape) and ds.gm.dtype == np.float32
    assert ds.masks.shape == (n, *shape) and ds.masks.dtype == bool
    assert ds.mask.shape == shape and ds.mask.dtype == bool
    assert ds.sites.shape == ds.subjects.shape == ds.ages.shape == (n,)
    assert ds.ages.dtype == np.float64
    assert ds.sites.dtype.kind == ds.subjects.dtype.kind == "U"
    assert ds.affine.shape == (4, 4)
    np.testing.assert_allclose(np.diag(ds.affine), [-4, 4, 4, 1])
    np.testing.assert_allclose(ds.affine[:3, 3], [90, -126, -72])
    assert len(ds.site_params) == N_SITES
    assert ds.reference_site == "site0"
    assert ds.site_params[0]["is_reference"]
    assert not any(p["is_reference"] for p in ds.site_params[1:])
    assert np.isfinite(ds.imgs).all() and np.isfinite(ds.truth).all()
    assert "MultisiteDataset(" in repr(ds) and "n_images=24" in repr(ds)


def _check_contrast_params(p):
    assert 0.58 <= p["gm_wm"] <= 0.85
    assert 0.25 <= p["csf_wm"] <= 0.44
    assert 13 <= p["snr_wm"] <= 24
    assert 255 <= p["scale"] <= 4095
    assert np.all(np.diff(p["curve_x"]) > 0) and np.all(np.diff(p["curve_y"]) > 0)


def test_site_params_within_ranges(ds):
    assert ds.style == "preprocessed"
    for p in ds.site_params:
        _check_contrast_params(p)
        assert 0.02 <= p["inu_range"] <= 0.10  # site part of the residual bias after N4
        assert 1.0 <= p["slice_thickness_mm"] <= 3.0
        assert 0.8 <= p["inplane_mm"] <= 1.4
        assert p["voxel_mm"][p["slice_axis"]] == p["slice_thickness_mm"]
        np.testing.assert_allclose(p["blur_sigma_mm"], 0.5 * np.asarray(p["voxel_mm"]))
        assert p["noise_sigma"] == pytest.approx(1.0 / p["snr_grid"])
    assert ds.residual_inu.shape == (len(ds),)
    assert np.all((ds.residual_inu >= 0.05) & (ds.residual_inu <= 0.15))


def test_legacy_site_params_within_abide_ranges(small):
    legacy = make_multisite(2, 2, resolution=4, random_state=1, style="legacy")
    assert legacy.style == "legacy"
    for p in legacy.site_params:
        _check_contrast_params(p)
        assert 0.2 <= p["inu_range"] <= 0.63
        assert all(0.3 <= s <= 1.2 for s in p["blur_sigma_mm"])
    np.testing.assert_array_equal(legacy.residual_inu, 0.0)
    # The subjects do not depend on the style: same anatomy, ages and GM; other scans.
    for name in ("gm", "masks", "ages", "gm_volume"):
        np.testing.assert_array_equal(getattr(legacy, name), getattr(small, name))
    assert not np.array_equal(legacy.imgs, small.imgs)


def test_every_subject_at_every_site_site_major(ds):
    pairs = list(zip(ds.sites.tolist(), ds.subjects.tolist()))
    assert len(set(pairs)) == len(pairs)
    assert set(pairs) == set(itertools.product(set(ds.sites), set(ds.subjects)))
    # Site-major order: image s * n_subjects + j is subject j at site s.
    assert ds.sites.tolist() == [f"site{s}" for s in range(N_SITES) for _ in range(N_SUBJECTS)]
    first = ds.subjects[:N_SUBJECTS]
    for s in range(N_SITES):
        block = slice(s * N_SUBJECTS, (s + 1) * N_SUBJECTS)
        np.testing.assert_array_equal(ds.subjects[block], first)
        np.testing.assert_array_equal(ds.ages[block], ds.ages[:N_SUBJECTS])
    assert len(set(first)) == N_SUBJECTS
    assert np.all((ds.ages >= 20) & (ds.ages < 80))


def test_background_zero_and_masks(ds):
    np.testing.assert_array_equal(ds.masks, ds.imgs > 0)
    assert np.all(ds.imgs[~ds.masks] == 0)
    assert np.all(ds.truth[~ds.masks] == 0)
    assert np.all(ds.gm[~ds.masks] == 0)
    assert np.all(ds.imgs[ds.masks] >= 1)
    np.testing.assert_array_equal(ds.imgs, np.round(ds.imgs))  # integer-valued scans
    np.testing.assert_array_equal(ds.mask, ds.masks.all(axis=0))
    assert ds.mask.sum() > 0.7 * ds.masks[0].sum()
    assert np.all((ds.gm >= 0) & (ds.gm <= 1))


def test_truth_and_gm_aligned_per_subject(ds):
    for subject in np.unique(ds.subjects):
        idx = np.flatnonzero(ds.subjects == subject)
        assert idx.size == N_SITES
        for i in idx[1:]:
            np.testing.assert_array_equal(ds.truth[i], ds.truth[idx[0]])
            np.testing.assert_array_equal(ds.gm[i], ds.gm[idx[0]])
            np.testing.assert_array_equal(ds.masks[i], ds.masks[idx[0]])
    # Different subjects have different anatomy.
    assert not np.array_equal(ds.truth[0], ds.truth[1])
    # The reference-site scans are noisy, biased (INU up to 0.63) versions of the truth.
    ref = np.flatnonzero(ds.sites == ds.reference_site)
    for i in ref:
        m = ds.masks[i]
        assert np.corrcoef(ds.imgs[i][m], ds.truth[i][m])[0, 1] > 0.6


def test_age_effect_on_gm_volume(ds):
    first = slice(0, N_SUBJECTS)
    gm_volume = (ds.gm[first] * ds.mask).sum(axis=(1, 2, 3))
    assert np.corrcoef(ds.ages[first], gm_volume)[0, 1] < -0.5
    # The true GM volume (mL) of each image, identical at every site of a subject.
    expected = ds.gm.sum(axis=(1, 2, 3), dtype=np.float64) * 4**3 / 1000
    np.testing.assert_allclose(ds.gm_volume, expected, rtol=1e-6)
    assert np.all((ds.gm_volume > 400) & (ds.gm_volume < 1200))
    assert np.corrcoef(ds.ages, ds.gm_volume)[0, 1] < -0.8


def test_sites_differ(ds):
    ratios, medians = [], []
    for s in range(N_SITES):
        idx = np.flatnonzero(ds.sites == f"site{s}")
        gm_vox = (ds.gm[idx] > 0.8) & ds.masks[idx]
        wm_vox = (ds.gm[idx] < 0.05) & (ds.truth[idx] > np.median(ds.truth[idx][ds.masks[idx]]))
        imgs = ds.imgs[idx]
        ratios.append(np.median(imgs[gm_vox]) / np.median(imgs[wm_vox]))
        medians.append(np.median(imgs[ds.masks[idx]]))
    assert np.ptp(ratios) > 0.02
    assert len(set(np.round(medians))) == N_SITES


def test_determinism():
    a = make_multisite(2, 2, resolution=4, random_state=123)
    b = make_multisite(2, 2, resolution=4.0, random_state=np.random.default_rng(123))
    for name in ("imgs", "truth", "gm", "masks", "ages"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.site_params == b.site_params
    c = make_multisite(2, 2, resolution=4, random_state=124)
    assert not np.array_equal(a.imgs, c.imgs)
    assert not np.array_equal(a.ages, c.ages)


def test_subjects_independent_of_site_count(small):
    more = make_multisite(2, 3, resolution=4, random_state=1)
    np.testing.assert_array_equal(more.truth[:2], small.truth[:2])
    np.testing.assert_array_equal(more.imgs[:4], small.imgs)


def test_reference_site_and_names():
    ds = make_multisite(
        1,
        3,
        resolution=4,
        random_state=0,
        reference_site="B",
        site_names=["A", "B", "C"],
        age_range=(30, 40),
    )
    assert ds.reference_site == "B"
    assert [p["is_reference"] for p in ds.site_params] == [False, True, False]
    assert ds.sites.tolist() == ["A", "B", "C"]
    assert 30 <= ds.ages[0] < 40
    # The truth is rendered with the reference scale: its WM level sits near it.
    wm_level = np.percentile(ds.truth[0][ds.masks[0]], 90)
    assert 0.7 < wm_level / ds.site_params[1]["scale"] < 1.3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_subjects": 0}, "n_subjects must be >= 1"),
        ({"n_subjects": 2.5}, "n_subjects must be an integer"),
        ({"n_sites": 1}, "n_sites must be >= 2"),
        ({"resolution": 3}, "resolution must be 1, 2 or 4"),
        ({"resolution": "2"}, "resolution must be 1, 2 or 4"),
        ({"reference_site": "nowhere"}, "reference_site 'nowhere' is not one of"),
        ({"site_names": ["a", "b"]}, "site_names has 2 labels but n_sites=3"),
        ({"site_names": ["a", "a", "b"]}, "site_names must be unique"),
        ({"age_range": (50, 20)}, "age_range must satisfy"),
        ({"age_range": 5}, "age_range must be a pair"),
        ({"style": "raw"}, "style must be one of"),
    ],
)
def test_argument_errors(kwargs, match):
    params = {"n_subjects": 1, "n_sites": 3, "resolution": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_multisite(**params)


@pytest.mark.parametrize("compress", [True, False])
def test_write_nifti_round_trip(small, tmp_path, compress):
    manifest = write_nifti_dataset(small, tmp_path / "out", compress=compress)
    assert manifest == tmp_path / "out" / "manifest.csv"
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "site", "age", "subject"]
    assert len(rows) == len(small)
    ext = ".nii.gz" if compress else ".nii"
    for i, row in enumerate(rows):
        rel = pathlib.PurePosixPath(row["path"])
        assert not rel.is_absolute() and row["path"].endswith(ext)
        img = nib.load(manifest.parent / rel)
        np.testing.assert_allclose(img.affine, small.affine)
        np.testing.assert_array_equal(np.asarray(img.dataobj), small.imgs[i])
        assert row["site"] == small.sites[i] and row["subject"] == small.subjects[i]
        assert float(row["age"]) == small.ages[i]
    leftovers = [p for p in (tmp_path / "out").rglob(".tmp-*")]
    assert leftovers == []
