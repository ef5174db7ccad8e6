"""Tests of the voxel-wise ComBat harmonizer (numbers checked against neuroHarmonize)."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from _helpers import rel_diff

from harmonix.combat import ComBatHarmonizer
from harmonix.exceptions import SiteMismatchWarning
from harmonix.persistence import load_model

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

SHAPE = (10, 10, 20)  # 2,000 voxels


def make_data(n_per=(8, 10, 12), shape=SHAPE, seed=0, same_ages=False, n_sites=None):
    """Voxel images with age effects and additive/multiplicative site effects.

    Every voxel is positive (so the common mask is the whole grid). Returns
    imgs (n, *shape) float32, sites, ages.
    """
    rng = np.random.default_rng(seed)
    n_vox = int(np.prod(shape))
    base = rng.uniform(500, 1500, n_vox)
    slope = rng.normal(0, 3, n_vox)
    labels = [f"s{k}" for k in range(len(n_per))]
    sites = np.repeat(labels, n_per)
    if same_ages:
        one = rng.uniform(20, 80, n_per[0])
        ages = np.concatenate([one[:m] for m in n_per])
    else:
        ages = rng.uniform(20, 80, len(sites))
    data = np.empty((len(sites), n_vox))
    for k, lab in enumerate(labels):
        gamma = rng.normal(40 * k, 20, n_vox)
        delta = rng.uniform(0.5, 2.0, n_vox)
        idx = sites == lab
        noise = rng.normal(0, 30, (idx.sum(), n_vox))
        data[idx] = base + np.outer(ages[idx], slope) + gamma + delta * noise
    return data.astype(np.float32).reshape(len(sites), *shape), sites, ages


@pytest.fixture(scope="module")
def data():
    return make_data()


# -- parity with neuroHarmonize ------------------------------------------------------------
@pytest.mark.parametrize("use_ages", [True, False], ids=["age", "no-age"])
@pytest.mark.parametrize("reference", [None, "s1"], ids=["no-ref", "ref"])
@pytest.mark.parametrize("eb", [True, False], ids=["eb", "ls"])
def test_parity_with_neuroharmonize(data, eb, reference, use_ages):
    nh = pytest.importorskip("neuroHarmonize")
    imgs, sites, ages = data
    flat = imgs.reshape(len(imgs), -1).astype(np.float64)
    covars = pd.DataFrame({"SITE": sites, "age": ages} if use_ages else {"SITE": sites})
    model, learned = nh.harmonizationLearn(flat, covars, eb=eb, ref_batch=reference)
    applied = nh.harmonizationApply(flat, covars, model)

    h = ComBatHarmonizer(reference_site=reference, empirical_bayes=eb)
    out = h.fit_transform(imgs, sites, ages if use_ages else None)
    assert out.shape == imgs.shape and h.voxel_mask_.all()
    out = out.reshape(len(imgs), -1)
    assert rel_diff(out, applied) < 1e-4
    assert rel_diff(out, learned) < 1e-4
    np.testing.assert_allclose(h.var_pooled_, model["var_pooled"].ravel(), rtol=1e-5)
    delta = model["delta_star"].copy()
    if reference is not None:  # neuroHarmonize keeps the LS estimates for the reference
        ref = h.sites_.tolist().index(reference)
        delta[ref] = 1.0
    else:
        np.testing.assert_allclose(h.gamma_star_, model["gamma_star"], atol=1e-5)
    np.testing.assert_allclose(h.delta_star_, delta, rtol=1e-5)


def test_parity_with_different_brain_extents():
    """The single-pass common mask keeps exactly the voxels non-zero in every image."""
    nh = pytest.importorskip("neuroHarmonize")
    imgs, sites, ages = make_data(seed=3)
    rng = np.random.default_rng(1)
    imgs[rng.random(imgs.shape) < 0.01] = 0.0  # each image loses different voxels
    common = (imgs != 0).all(axis=0)
    h = ComBatHarmonizer().fit(imgs, sites, ages)
    np.testing.assert_array_equal(h.voxel_mask_, common)
    flat = imgs[:, common].astype(np.float64)
    covars = pd.DataFrame({"SITE": sites, "age": ages})
    model, _ = nh.harmonizationLearn(flat, covars)
    expected = nh.harmonizationApply(flat, covars, model)
    out = h.transform(imgs, sites, ages)
    assert rel_diff(out[:, common], expected) < 1e-4
    assert (out[imgs == 0] == 0).all()  # background stays 0
    # brain voxels outside the common mask (the rim) take the least-squares line of the
    # image's own common-mask outputs on its inputs: neuroHarmonize's outputs here
    n_rim = 0
    for i in range(len(imgs)):
        slope, intercept = np.polyfit(flat[i], expected[i], 1)
        rim = (imgs[i] != 0) & ~common
        want = slope * imgs[i][rim].astype(np.float64) + intercept
        np.testing.assert_allclose(out[i][rim], want, rtol=1e-4, atol=1e-2)
        n_rim += rim.sum()
    assert n_rim > 0


def test_brain_rim_outside_the_common_mask_is_harmonized_too():
    """Traveling subjects whose brains differ in extent: the voxels of the larger brains
    outside the common mask (the rim) reach the reference site's scale like the others."""
    shape = (16, 18, 16)
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    imgs, sites, subjects = [], [], []
    for k, (gain, offset) in enumerate([(1.0, 0.0), (1.4, 30.0), (0.8, -10.0)]):
        for s, extent in enumerate([0.6, 0.68, 0.75, 0.8]):
            brain = radius < extent
            anatomy = 600 + 200 * np.cos(5 * radius + s)
            noise = 1 + 0.01 * rng.standard_normal(shape)
            imgs.append(np.where(brain, (gain * anatomy + offset) * noise, 0.0))
            sites.append(f"site{k}")
            subjects.append(s)
    imgs, sites, subjects = np.stack(imgs).astype(np.float32), np.array(sites), np.array(subjects)
    h = ComBatHarmonizer(reference_site="site0").fit(imgs, sites)
    out = h.transform(imgs, sites)
    n_rim = 0
    for i in np.flatnonzero(sites != "site0"):
        ref = np.flatnonzero((sites == "site0") & (subjects == subjects[i]))[0]
        rim = (imgs[i] != 0) & ~h.voxel_mask_
        n_rim += rim.sum()
        if rim.any():
            before = np.median(np.abs(imgs[i][rim] / imgs[ref][rim] - 1))
            after = np.median(np.abs(out[i][rim] / imgs[ref][rim] - 1))
            assert before > 0.15 and after < 0.1, (before, after)
    assert n_rim > 1000


# -- transform semantics -------------------------------------------------------------------
def test_subset_and_single_image_equal_full_batch(data):
    imgs, sites, ages = data
    h = ComBatHarmonizer().fit(imgs, sites, ages)
    full = h.transform(imgs, sites, ages)
    idx = np.flatnonzero(sites == "s2")[:3]  # one site only (neuroHarmonize issue #50)
    np.testing.assert_array_equal(h.transform(imgs[idx], sites[idx], ages[idx]), full[idx])
    mixed = [0, 29, 12]
    np.testing.assert_array_equal(h.transform(imgs[mixed], sites[mixed], ages[mixed]), full[mixed])
    one = h.transform([imgs[5]], [sites[5]], [ages[5]])
    assert isinstance(one, list) and len(one) == 1
    np.testing.assert_array_equal(one[0], full[5])


def test_reference_site_left_unchanged(data):
    imgs, sites, ages = data
    h = ComBatHarmonizer(reference_site="s0").fit(imgs, sites, ages)
    assert h.reference_site_ == "s0"
    out = h.transform(imgs, sites, ages)
    np.testing.assert_array_equal(out[sites == "s0"], imgs[sites == "s0"])
    assert not np.allclose(out[sites == "s2"], imgs[sites == "s2"])


def test_no_reference_means_pooled_grand_mean(data):
    imgs, sites, ages = data
    h = ComBatHarmonizer().fit(imgs, sites, ages)
    assert h.reference_site_ is None
    with pytest.raises(
        ValueError,
        match="not among the training sites.*or None to harmonize to the pooled grand mean",
    ):
        ComBatHarmonizer(reference_site="nowhere").fit(imgs, sites, ages)


def test_harmonization_removes_site_differences(data):
    imgs, sites, ages = data
    out = ComBatHarmonizer().fit_transform(imgs, sites, ages)

    def site_spread(x):
        means = np.stack([x[sites == s].mean(0) for s in np.unique(sites)])
        return float(np.abs(means - means.mean(0)).mean())

    assert site_spread(out) < 0.2 * site_spread(imgs)


# -- unseen sites --------------------------------------------------------------------------
def test_unseen_site_error_names_labels(data):
    imgs, sites, ages = data
    h = ComBatHarmonizer().fit(imgs, sites, ages)
    with pytest.raises(ValueError, match=r"\['new'\].*known sites: \['s0', 's1', 's2'\]"):
        h.transform(imgs[:2], ["new", "s0"], ages[:2])


def test_unseen_site_keep(data):
    imgs, sites, ages = data
    h = ComBatHarmonizer(unseen_site="keep").fit(imgs, sites, ages)
    with pytest.warns(UserWarning, match=r"\['new'\] were not seen in fit.*unchanged"):
        out = h.transform(imgs[:2], ["new", "s0"], ages[:2])
    np.testing.assert_array_equal(out[0], imgs[0])
    np.testing.assert_array_equal(out[1], h.transform(imgs[1:2], ["s0"], ages[1:2])[0])


def test_unseen_site_fit_removes_known_shift():
    # traveling subjects: the same ages at every site; site s3 is never seen in fit
    imgs, sites, ages = make_data(n_per=(20, 20, 20, 20), same_ages=True, seed=5)
    train = sites != "s3"
    new = ~train
    shifted = (1.6 * imgs[new] + 150.0).astype(np.float32)  # known multiplicative + additive
    h = ComBatHarmonizer(unseen_site="fit").fit(imgs[train], sites[train], ages[train])
    ref_out = h.transform(imgs[train], sites[train], ages[train])
    out = h.transform(shifted, sites[new], ages[new])
    target_mean, target_sd = ref_out.mean(0), ref_out.std(0)
    before = np.abs(shifted.mean(0) - target_mean).mean()
    after = np.abs(out.mean(0) - target_mean).mean()
    assert after < 0.1 * before
    ratio_before = np.median(shifted.std(0) / target_sd)
    ratio_after = np.median(out.std(0) / target_sd)
    assert abs(ratio_after - 1) < 0.15 < abs(ratio_before - 1)
    # without EB as well; a single image of an unseen site cannot give a scale
    h.set_params(empirical_bayes=False)
    assert np.isfinite(h.transform(shifted[:3], sites[new][:3], ages[new][:3])).all()
    with pytest.raises(ValueError, match=r"at least 2 images of each unseen site.*\['s3'\]"):
        h.transform(shifted[:1], ["s3"], ages[new][:1])


# -- degenerate data -----------------------------------------------------------------------
def test_constant_voxels_left_unchanged(data):
    imgs, sites, ages = data
    imgs = imgs.copy()
    imgs[:, 0, 0, :5] = 321.0  # constant over all images
    imgs[:, 1, 1, 1] = np.where(sites == "s0", 7.0, 9.0).astype(np.float32)  # site-only
    h = ComBatHarmonizer().fit(imgs, sites, ages)
    assert h.n_degenerate_ >= 5
    out = h.transform(imgs, sites, ages)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, 0, 0, :5], imgs[:, 0, 0, :5])
    np.testing.assert_array_equal(out[:, 1, 1, 1], imgs[:, 1, 1, 1])
    # the other voxels are harmonized as if the constant ones were absent
    assert np.isfinite(h.gamma_star_).all() and np.isfinite(h.delta_star_).all()


@pytest.mark.parametrize("eb", [True, False])
def test_one_subject_site_is_location_only(eb):
    imgs, sites, ages = make_data(n_per=(10, 10, 1), seed=2)
    with pytest.warns(UserWarning, match=r"single training image"):
        h = ComBatHarmonizer(empirical_bayes=eb).fit(imgs, sites, ages)
    one = h.sites_.tolist().index("s2")
    np.testing.assert_array_equal(h.delta_star_[one], 1.0)
    out = h.transform(imgs, sites, ages)
    assert np.isfinite(out).all()


def test_reference_site_needs_two_images():
    imgs, sites, ages = make_data(n_per=(10, 10, 1), seed=2)
    with (
        pytest.raises(ValueError, match="at least 2 images of the reference site"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        ComBatHarmonizer(reference_site="s2").fit(imgs, sites, ages)


def test_ages_confounded_with_sites():
    imgs, sites, _ = make_data(seed=4)
    ages = np.where(sites == "s0", 30.0, np.where(sites == "s1", 40.0, 50.0))
    with pytest.raises(ValueError, match="'age' is collinear with site"):
        ComBatHarmonizer().fit(imgs, sites, ages)


# -- memory-lean fit -----------------------------------------------------------------------
@pytest.mark.parametrize("reference", [None, "s1"])
def test_chunked_equals_in_memory(data, reference):
    imgs, sites, ages = data
    small = ComBatHarmonizer(reference_site=reference, chunk_size=7).fit(imgs, sites, ages)
    huge = ComBatHarmonizer(reference_site=reference, chunk_size=10**9).fit(imgs, sites, ages)
    for name in [
        "grand_mean_",
        "coef_",
        "var_pooled_",
        "gamma_star_",
        "delta_star_",
        "gamma_bar_",
        "tau2_",
        "a_prior_",
        "b_prior_",
        "n_iter_",
    ]:
        np.testing.assert_array_equal(getattr(small, name), getattr(huge, name), err_msg=name)
    np.testing.assert_array_equal(
        small.transform(imgs, sites, ages), huge.transform(imgs, sites, ages)
    )


def test_fitted_parameters_are_float32(data):
    imgs, sites, ages = data
    h = ComBatHarmonizer().fit(imgs, sites, ages)
    n_vox = int(h.voxel_mask_.sum())
    for name, shape in [
        ("grand_mean_", (n_vox,)),
        ("var_pooled_", (n_vox,)),
        ("coef_", (1, n_vox)),
        ("gamma_star_", (3, n_vox)),
        ("delta_star_", (3, n_vox)),
    ]:
        value = getattr(h, name)
        assert value.dtype == np.float32 and value.shape == shape, name


# -- ages and smooth age -------------------------------------------------------------------
def test_ages_required_iff_fitted_with_ages(data):
    imgs, sites, ages = data
    h = ComBatHarmonizer().fit(imgs, sites, ages)
    with pytest.raises(ValueError, match="fitted with ages"):
        h.transform(imgs[:2], sites[:2])
    no_age = ComBatHarmonizer().fit(imgs, sites)
    np.testing.assert_array_equal(
        no_age.transform(imgs[:2], sites[:2]), no_age.transform(imgs[:2], sites[:2], ages[:2])
    )
    with pytest.raises(ValueError, match=r"smooth_age \(or smooth=\('age',\)\) needs ages"):
        ComBatHarmonizer(smooth_age=True).fit(imgs, sites)


def test_smooth_age(data):
    imgs, sites, ages = data
    linear = ComBatHarmonizer().fit(imgs, sites, ages)
    smooth = ComBatHarmonizer(smooth_age=True).fit(imgs, sites, ages)
    assert smooth.covariates_ == ["age_ns1", "age_ns2", "age_ns3", "age_ns4"]
    assert smooth.coef_.shape == (4, imgs[0].size)
    out_s = smooth.transform(imgs, sites, ages)
    assert np.isfinite(out_s).all()
    # the simulated age effect is linear: the spline fit harmonizes almost identically
    assert rel_diff(out_s, linear.transform(imgs, sites, ages)) < 0.02
    # ages outside the training range extrapolate linearly, without failing (ages 50
    # years out put the images far from the site's model: the site check says so)
    smooth.set_params(site_check="warn")
    for outside in ([100.0, 115.0, 130.0], [10.0, 5.0, 0.0]):
        with pytest.warns(SiteMismatchWarning, match="'s0' .3 image"):
            far = smooth.transform(imgs[[0, 0, 0]], ["s0"] * 3, outside).astype(np.float64)
        assert np.isfinite(far).all()
        np.testing.assert_allclose(far[1] - far[0], far[2] - far[1], atol=0.05)
    assert ComBatHarmonizer(smooth_age=1).fit(imgs, sites, ages).covariates_ == ["age"]
    with pytest.raises(ValueError, match="smooth_age must be"):
        ComBatHarmonizer(smooth_age=-2).fit(imgs, sites, ages)


def test_invalid_parameters(data):
    imgs, sites, ages = data
    with pytest.raises(ValueError, match="unseen_site must be one of"):
        ComBatHarmonizer(unseen_site="ignore").fit(imgs, sites, ages)
    with pytest.raises(ValueError, match="chunk_size"):
        ComBatHarmonizer(chunk_size=0).fit(imgs, sites, ages)


# -- persistence ---------------------------------------------------------------------------
@pytest.mark.parametrize("reference", [None, "s2"])
def test_save_load_roundtrip(data, tmp_path, reference):
    imgs, sites, ages = data
    h = ComBatHarmonizer(reference_site=reference, smooth_age=2).fit(imgs, sites, ages)
    path = tmp_path / "combat.npz"
    h.save(path)
    loaded = ComBatHarmonizer.load(path)
    assert loaded.reference_site_ == reference
    assert loaded.covariates_ == h.covariates_
    assert loaded.spline_knots_.keys() == {"age"}
    np.testing.assert_array_equal(loaded.spline_knots_["age"], h.spline_knots_["age"])
    np.testing.assert_array_equal(
        loaded.transform(imgs, sites, ages), h.transform(imgs, sites, ages)
    )
    params = 4 * (1 + 2 + 1 + 2 * 3) * imgs[0].size  # float32 model
    assert path.stat().st_size < params + 64_000


def test_models_saved_before_the_combat_package_load(data, tmp_path):
    # files and pickles written while ComBatHarmonizer lived in harmonix/combat.py name the
    # class harmonix.combat.ComBatHarmonizer: the package hands it on, so they still load
    # (by the name stored) and transform as the model that wrote them
    imgs, sites, ages = data
    h = ComBatHarmonizer().fit(imgs, sites, ages)
    expected = h.transform(imgs, sites, ages)
    h.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as f:
        arrays = dict(f)
    meta = json.loads(bytes(arrays["__harmonix__"]).decode())
    assert meta["class"] == "harmonix.combat.estimator.ComBatHarmonizer"
    meta["class"] = "harmonix.combat.ComBatHarmonizer"
    arrays["__harmonix__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    for loaded in (load_model(tmp_path / "old.npz"), ComBatHarmonizer.load(tmp_path / "old.npz")):
        assert type(loaded) is ComBatHarmonizer
        np.testing.assert_array_equal(loaded.transform(imgs, sites, ages), expected)
    new = pickle.dumps(h, protocol=0)  # text opcodes: the class is "c<module>\n<name>\n"
    old = new.replace(b"charmonix.combat.estimator\n", b"charmonix.combat\n")
    assert old != new
    np.testing.assert_array_equal(pickle.loads(old).transform(imgs, sites, ages), expected)


def test_eb_iterations_match_neurocombat_it_sol():
    """Frozen-voxel, block-wise EB equals neuroCombat's ``it_sol`` on all voxels."""
    nc = pytest.importorskip("neuroCombat.neuroCombat")
    from harmonix.combat import _math as cm

    rng = np.random.default_rng(0)
    sdat = rng.normal(rng.normal(0.3, 0.5, (3000, 1)), rng.uniform(0.5, 2, (3000, 1)), (3000, 4))
    g_hat, d_hat = sdat.mean(1), sdat.var(1, ddof=1)
    priors = cm.eb_priors(g_hat, d_hat)
    ss = ((sdat - g_hat[:, None]) ** 2).sum(1)
    g_ref, d_ref = nc.it_sol(sdat, g_hat, d_hat, priors[0], priors[1], priors[2], priors[3])
    g, d, n_iter = cm.empirical_bayes(g_hat, g_hat, ss, 4, priors)
    np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(d, d_ref, rtol=1e-9)
    g7, d7, n7 = cm.empirical_bayes(g_hat, g_hat, ss, 4, priors, block=7)
    np.testing.assert_array_equal(g7, g)
    np.testing.assert_array_equal(d7, d)
    assert n7 == n_iter > 1


def test_eb_of_several_sites_at_once_equals_one_by_one():
    """Rows of sites iterated together stop at their own counts and give each site's
    one-site estimates (to the freezing's 1e-12), with the one-site priors."""
    from harmonix.combat import _math as cm

    rng = np.random.default_rng(1)
    n = np.array([4, 9, 30])
    g_hat = rng.normal([[0.0], [0.5], [-0.4]], 0.5, (3, 500))
    ss = rng.gamma(3.0, 1.0, (3, 500)) * n[:, None]
    priors = cm.eb_priors(g_hat, ss / (n[:, None] - 1))
    g, d, n_iter = cm.empirical_bayes(g_hat, g_hat, ss, n, priors)
    for b in range(3):
        one = cm.eb_priors(g_hat[b], ss[b] / (n[b] - 1))
        assert one == tuple(float(p[b]) for p in priors)
        g_b, d_b, it_b = cm.empirical_bayes(g_hat[b], g_hat[b], ss[b], int(n[b]), one)
        np.testing.assert_allclose(g[b], g_b, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(d[b], d_b, rtol=1e-11)
        assert n_iter[b] == it_b
    assert len(set(n_iter.tolist())) > 1  # the sites did stop at different counts


def test_memory_order_of_inputs_does_not_matter(data):
    imgs, sites, ages = data
    h = ComBatHarmonizer().fit(imgs, sites, ages)
    fortran = [np.asfortranarray(img) for img in imgs]
    h_f = ComBatHarmonizer().fit(fortran, sites, ages)
    np.testing.assert_array_equal(h_f.gamma_star_, h.gamma_star_)
    out = h.transform(fortran[:3], sites[:3], ages[:3])
    np.testing.assert_array_equal(np.stack(out), h.transform(imgs[:3], sites[:3], ages[:3]))
