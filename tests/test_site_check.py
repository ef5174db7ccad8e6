"""The site check: a label that names a training site is trusted only if the images agree.

IGUANe (its per-site intensity maps) and ComBat (its per-site effects) check every
labelled group of a training site before applying what they stored for it; a group from
another scanner with the same name is warned about and handled by ``site_check``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from harmonix import ComBatHarmonizer
from harmonix.benchmark import traveling_subject_ssim_score
from harmonix.benchmark.metrics import robust_range
from harmonix.datasets import make_multisite
from harmonix.exceptions import SiteMismatchError, SiteMismatchWarning, UnseenSiteError
from harmonix.iguane.inputs import site_agreement as SA
from harmonix.iguane.inputs.normalization import InputNormalizer
from harmonix.iguane.pretrained import DEMO_SITE_PREFIX, load_demo_model
from harmonix.inputs.site_check import SiteAgreement, act_on_agreements, check_policy
from harmonix.intensity.landmarks import standard_scale

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


# -- the shared policy -----------------------------------------------------------------------
def test_policy_values_and_actions():
    assert [check_policy(p) for p in ("refit", "warn", "error")] == ["refit", "warn", "error"]
    for bad in ("Refit", None, 1):
        with pytest.raises(ValueError, match="site_check must be one of"):
            check_policy(bad)
    good = SiteAgreement("a", 3, 0.5, 2.0, "fine")
    off = SiteAgreement("b", 2, 7.0, 2.0, "off by a lot")
    unknown = SiteAgreement("c", 1, float("nan"), 2.0, "not checked")
    assert good.agrees and not off.agrees and unknown.agrees
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: no warning
        assert act_on_agreements([good, unknown], "refit", what="map", as_new="x") == set()
    with pytest.warns(SiteMismatchWarning, match="'b' .2 image.*off by a lot.*treated as a new"):
        assert act_on_agreements([good, off], "refit", what="map", as_new="x") == {"b"}
    with pytest.warns(SiteMismatchWarning, match="applied anyway"):
        assert act_on_agreements([off], "warn", what="map", as_new="x") == set()
    with pytest.raises(SiteMismatchError, match="'b'.*site_check='refit'"):
        act_on_agreements([off], "error", what="map", as_new="x")


# -- IGUANe: the landmark statistic ----------------------------------------------------------
def _landmarks(rng, n_per_site=(6, 7, 5), scale=(1.0, 1.6, 0.7), tilt=(0.0, 0.1, 0.2)):
    """Landmarks of three sites: one curve per site (scale, tilt), per-image jitter."""
    base = np.array([50, 200, 300, 380, 440, 500, 560, 620, 700, 800, 1000.0])
    rows, sites = [], []
    for k, (n, s, t) in enumerate(zip(n_per_site, scale, tilt)):
        curve = s * base * (1 + t * np.linspace(-1, 1, base.size))
        for _ in range(n):
            rows.append(np.sort(curve * (1 + 0.02 * rng.standard_normal()) + rng.normal(0, 4, 11)))
            sites.append(f"s{k}")
    return np.array(rows), np.array(sites)


def _reference_statistic(lm, sites, group, label):
    """The statistic computed from scratch (no rank-one updates), and the threshold by
    refitting without each training image."""
    labels = list(dict.fromkeys(sites.tolist()))
    standard = standard_scale(lm[sites == labels[0]])

    def slopes(m):
        g = np.gradient(standard, m)  # central differences inside, one-sided at the ends
        g[1:-1] = (standard[2:] - standard[:-2]) / (m[2:] - m[:-2])
        return g

    means = {s: lm[sites == s].mean(0) for s in labels}

    def covariance(rows, row_sites):
        dev = [
            slopes(means[s]) * (r - rows[row_sites == s].mean(0)) for r, s in zip(rows, row_sites)
        ]
        dev = np.array(dev)
        cov = dev.T @ dev / (len(rows) - len(labels))
        return 0.95 * cov + np.diag(0.05 * np.diag(cov) + 1e-9 * np.diag(cov).max())

    loo = []
    for i in range(len(lm)):
        keep = np.arange(len(lm)) != i
        rest = lm[keep & (sites == sites[i])]
        d = slopes(means[sites[i]]) * (lm[i] - rest.mean(0))
        cov = covariance(lm[keep], sites[keep])
        loo.append(d @ np.linalg.inv(cov) @ d / (11 * (1 + 1 / len(rest))))
    d = slopes(means[label]) * (group.mean(0) - means[label])
    n_b = int((sites == label).sum())
    stat = d @ np.linalg.inv(covariance(lm, sites)) @ d / (11 * (1 / len(group) + 1 / n_b))
    return stat, 4.0 * max(loo)


def test_landmark_statistic_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    lm, sites = _landmarks(rng)
    norm = InputNormalizer.fit("histogram", lm, sites, "s0")
    new, _ = _landmarks(np.random.default_rng(1))
    for label, group in (("s1", new[6:10]), ("s2", new[13:14]), ("s1", new[:3] * 1.3)):
        (agreement,) = norm.check_sites(np.full(len(group), label), lambda i, g=group: g[i])
        stat, threshold = _reference_statistic(lm, sites, group, label)
        assert agreement.statistic == pytest.approx(stat, rel=1e-9)
        assert agreement.threshold == pytest.approx(threshold, rel=1e-9)
    # the training images of a site, as a group, sit exactly on its stored landmarks
    (own,) = norm.check_sites(sites[sites == "s2"], lambda i: lm[sites == "s2"][i])
    assert own.statistic == pytest.approx(0.0, abs=1e-20) and own.agrees


def test_landmark_check_separates_new_scans_from_another_scanner():
    rng = np.random.default_rng(0)
    lm, sites = _landmarks(rng, n_per_site=(8, 8, 8))
    norm = InputNormalizer.fit("histogram", lm, sites, "s0")
    new, _ = _landmarks(np.random.default_rng(2), n_per_site=(8, 8, 8))
    # other scanners: another gain and another contrast than the site of that name
    other, _ = _landmarks(
        np.random.default_rng(3), (8, 8, 8), scale=(1.3, 1.2, 0.9), tilt=(0.1, 0.0, 0.1)
    )
    for k, label in enumerate(["s0", "s1", "s2"]):
        rows = slice(8 * k, 8 * k + 8)
        for n in (1, 8):
            same = norm.check_sites(np.full(n, label), lambda i, r=new[rows]: r[i])[0]
            wrong = norm.check_sites(np.full(n, label), lambda i, r=other[rows]: r[i])[0]
            assert same.agrees and not wrong.agrees, (label, n, same, wrong)
            assert same.statistic < same.threshold / 4  # the threshold has a margin
    assert "% of the brain median" in wrong.mismatch


def test_landmark_spread_is_saved_and_rebuilt_from_the_training_images():
    lm, sites = _landmarks(np.random.default_rng(0))
    norm = InputNormalizer.fit("histogram", lm, sites, "s0")
    again = InputNormalizer.from_dict(norm.to_dict())
    np.testing.assert_array_equal(again.spread.covariance, norm.spread.covariance)
    assert again.spread.threshold == norm.spread.threshold
    assert again.spread.counts == [6, 7, 5]
    # a model saved before the check: no yardstick, labels trusted (no agreement to act on)
    old = {k: v for k, v in norm.to_dict().items() if k != "site_spread"}
    legacy = InputNormalizer.from_dict(old)
    assert legacy.spread is None and legacy.check_sites(sites, lambda i: lm[i] * 3) == []
    rebuilt = legacy.with_spread(lm, sites)
    np.testing.assert_array_equal(rebuilt.spread.covariance, norm.spread.covariance)
    assert rebuilt.spread.threshold == norm.spread.threshold
    with pytest.raises(ValueError, match="not those the model was fitted on"):
        legacy.with_spread(lm * 1.01, sites)
    with pytest.raises(ValueError, match="not the model's training sites"):
        legacy.with_spread(lm, np.where(sites == "s2", "s9", sites))
    # no image can be left out, or nothing varies: no yardstick, no check
    one_each = np.array([0, 6, 13])
    assert (
        SA.LandmarkSpread.fit(
            lm[one_each],
            sites[one_each],
            ["s0", "s1", "s2"],
            norm.site_landmarks,
            norm.standard_landmarks,
        )
        is None
    )
    flat = np.repeat(lm[[0, 6, 13]], [6, 7, 5], axis=0)
    assert InputNormalizer.fit("histogram", flat, sites, "s0").spread is None


# -- IGUANe: the shipped model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    return load_demo_model().set_params(ood_action="ignore")


@pytest.fixture(scope="module")
def other_data():
    """Two sites the shipped model never saw, with make_multisite's default names."""
    return make_multisite(n_subjects=4, n_sites=3, resolution=4, random_state=3, style="legacy")


def _ssim(out, ds):
    return traveling_subject_ssim_score(
        out, ds.subjects, ds.sites, ds.mask, value_range=robust_range(out, ds.mask)
    )


def test_demo_model_labels_cannot_collide_with_make_multisite_names(demo, other_data):
    ds = other_data
    assert demo.reference_site_ == f"{DEMO_SITE_PREFIX}site0"
    assert demo.sites_.tolist() == [f"{DEMO_SITE_PREFIX}site{k}" for k in range(4)]
    assert demo.input_normalization_["site_spread"]["counts"] == [8, 8, 8, 8]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SiteMismatchWarning)
        out = demo.transform(ds.imgs, ds.sites)  # site0...: new to the model
    np.testing.assert_array_equal(out, demo.transform(ds.imgs, np.char.add("x-", ds.sites)))
    assert demo.site_agreement(ds.imgs, ds.sites).empty


def test_colliding_label_warns_and_is_mapped_as_if_renamed(demo, other_data):
    ds = other_data
    colliding = np.char.add(DEMO_SITE_PREFIX, ds.sites)  # another scanner's names
    renamed = demo.transform(ds.imgs, ds.sites)
    with pytest.warns(SiteMismatchWarning) as caught:
        out = demo.transform(ds.imgs, colliding)
    text = str(caught[0].message)
    assert caught[0].filename == __file__  # the warning points at the caller
    for site in np.unique(colliding):
        assert f"'{site}' (4 image(s))" in text
    assert "% of the brain median" in text and "treated as a new site" in text
    np.testing.assert_array_equal(out, renamed)  # quality as if renamed, bit for bit
    # the stored maps of the other scanner, as before the check: much worse
    demo.set_params(site_check="warn")
    try:
        with pytest.warns(SiteMismatchWarning, match="applied anyway"):
            stored = demo.transform(ds.imgs, colliding)
    finally:
        demo.set_params(site_check="refit")
    assert _ssim(renamed, ds) > _ssim(stored, ds) + 0.2
    with pytest.raises(SiteMismatchError, match=f"'{DEMO_SITE_PREFIX}site1'"):
        demo.set_params(site_check="error").transform(ds.imgs, colliding)
    demo.set_params(site_check="refit")
    # the guard methods normalize the images as transform does
    with pytest.warns(SiteMismatchWarning):
        dist = demo.distribution_distance(ds.imgs, colliding)
    np.testing.assert_array_equal(dist, demo.distribution_distance(ds.imgs, ds.sites))
    frame = demo.site_agreement(ds.imgs, colliding)
    assert frame["site"].tolist() == np.unique(colliding).tolist()
    assert not frame["agrees"].any() and (frame["statistic"] > frame["threshold"]).all()


def test_true_site_with_new_scans_keeps_its_stored_map_bit_for_bit(demo):
    # make_multisite renders the same sites for a seed whatever the number of subjects:
    # subjects 8-11 of the model's training data set are new scans of its sites
    ds = make_multisite(n_subjects=12, n_sites=2, resolution=4, random_state=0, style="legacy")
    new = np.flatnonzero(np.isin(ds.subjects, [f"sub-{j:02d}" for j in range(8, 12)]))
    labels = np.char.add(DEMO_SITE_PREFIX, ds.sites[new])
    with warnings.catch_warnings():
        warnings.simplefilter("error", SiteMismatchWarning)
        out = demo.transform(ds.imgs[new], labels)
        singles = [demo.transform(ds.imgs[[i]], labels[[k]])[0] for k, i in enumerate(new)]
    np.testing.assert_array_equal(out, np.stack(singles))
    # as before the check: a model without the yardstick trusts its labels
    trusting = load_demo_model().set_params(ood_action="ignore")
    del trusting.input_normalization_["site_spread"]
    np.testing.assert_array_equal(out, trusting.transform(ds.imgs[new], labels))
    # and not what a new label gets (its own landmarks)
    assert not np.array_equal(out, demo.transform(ds.imgs[new], ds.sites[new]))
    frame = demo.site_agreement(ds.imgs[new], labels)
    assert frame["agrees"].all() and (frame["statistic"] < 1).all()


def test_guard_report_shows_which_site_is_off(demo, other_data):
    ds = other_data
    top = np.percentile(ds.imgs[:4][:, ds.mask], 99.5)  # contrast inverted (T2-like)
    inverted = np.where(ds.imgs[:4] > 0, np.maximum(1.05 * top - ds.imgs[:4], 1.0), 0.0)
    imgs = np.concatenate([ds.imgs, inverted])
    sites = np.r_[ds.sites[:4], np.char.add(DEMO_SITE_PREFIX, ds.sites[4:]), ["inv"] * 4]
    with pytest.warns(SiteMismatchWarning):
        report = demo.guard_report(imgs, sites)
    assert report["site"].tolist() == [
        "site0",
        f"{DEMO_SITE_PREFIX}site1",
        f"{DEMO_SITE_PREFIX}site2",
        "inv",
    ]
    assert report["site_map"].tolist() == ["new site", "refit", "refit", "new site"]
    assert report["n_images"].tolist() == [4, 4, 4, 4]
    assert report["agreement"].isna().tolist() == [True, False, False, True]
    with pytest.warns(SiteMismatchWarning):
        dist = demo.distribution_distance(imgs, sites)
        corr = demo.profile_correlation(imgs, sites)
    flagged = (dist > demo.ood_threshold_) | (corr < demo.profile_threshold_)
    for k, row in report.iterrows():
        part = slice(4 * k, 4 * k + 4)
        assert row["n_flagged"] == flagged[part].sum()
        assert row["distance_max"] == pytest.approx(dist[part].max())
        assert row["profile_min"] == pytest.approx(corr[part].min())
    assert report["n_flagged"].tolist()[-1] == 4 and report["n_flagged"][:3].sum() == 0
    # the transform warning says which sites its flagged images come from
    with pytest.warns(Warning) as caught:
        demo.set_params(ood_action="warn").transform(imgs, sites)
    demo.set_params(ood_action="ignore")
    assert any("by site: 'inv' 4 of 4" in str(w.message) for w in caught)
    # without labels: one row, each image by its own landmarks
    whole = demo.guard_report(ds.imgs)
    assert whole["site"].tolist() == [None] and whole["site_map"].tolist() == ["per image"]


# -- ComBat ----------------------------------------------------------------------------------
def _voxel_data(seed, n_per=8, scale=(1.0, 1.0), shape=(8, 8, 10)):
    """Two sites of voxel images with ages, per-voxel site effects of fixed seeds."""
    rng = np.random.default_rng(seed)
    site_rng = np.random.default_rng(100)  # the same scanners for every seed
    n_vox = int(np.prod(shape))
    base = site_rng.uniform(500, 1500, n_vox)
    slope = site_rng.normal(0, 3, n_vox)
    imgs, sites, ages = [], [], []
    for k in range(2):
        gamma = site_rng.normal(60 * k, 20, n_vox)
        delta = site_rng.uniform(0.5, 2.0, n_vox)
        for _ in range(n_per):
            age = rng.uniform(20, 80)
            noise = rng.normal(0, 30, n_vox)
            imgs.append(scale[k] * (base + age * slope + gamma + delta * noise))
            sites.append(f"s{k}")
            ages.append(age)
    return np.array(imgs, np.float32).reshape(-1, *shape), np.array(sites), np.array(ages)


@pytest.fixture(scope="module")
def combat_data():
    train = _voxel_data(0)
    new = _voxel_data(1)  # new scans of the same two scanners
    other = _voxel_data(2, scale=(1.4, 1.0))  # "s0" is another scanner now
    return train, new, other


def test_combat_statistic_matches_a_direct_computation(combat_data):
    (imgs, sites, ages), (new, new_sites, new_ages), _ = combat_data
    cb = ComBatHarmonizer().fit(imgs, sites, ages)
    frame = cb.site_agreement(new, new_sites, new_ages)
    assert frame["site"].tolist() == ["s0", "s1"]
    flat = new.reshape(len(new), -1).astype(np.float64)
    mean = cb.grand_mean_ + np.outer(new_ages - cb.covariate_means_[0], cb.coef_[0])
    s = (flat - mean) / np.sqrt(cb.var_pooled_.astype(np.float64))
    for j, label in enumerate(["s0", "s1"]):
        rows = new_sites == label
        r = ((s[rows] - cb.gamma_star_[j]) ** 2 / cb.delta_star_[j]).mean()
        n_b = 8
        expected = r / ((1 + 1 / n_b) * (n_b - 1) / (n_b - 3))
        assert frame["statistic"][j] == pytest.approx(expected, rel=1e-5)
    assert frame["agrees"].all() and (frame["statistic"] < 2).all()


def test_combat_true_site_keeps_stored_effects_and_colliding_label_is_caught(combat_data):
    (imgs, sites, ages), (new, new_sites, new_ages), (other, other_sites, other_ages) = combat_data
    cb = ComBatHarmonizer().fit(imgs, sites, ages)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SiteMismatchWarning)
        out = cb.transform(new, new_sites, new_ages)
    np.testing.assert_array_equal(
        out, cb.set_params(site_check="warn").transform(new, new_sites, new_ages)
    )
    cb.set_params(site_check="refit")
    frame = cb.site_agreement(other, other_sites, other_ages)
    assert frame["agrees"].tolist() == [False, True]
    # default unseen_site="error": a disagreeing group is a site ComBat cannot serve
    with pytest.raises(UnseenSiteError, match="'s0' .8 image.*unseen_site='fit'"):
        cb.transform(other, other_sites, other_ages)
    # unseen_site="fit": estimated from its images, exactly as under a new label
    cb.set_params(unseen_site="fit")
    with pytest.warns(SiteMismatchWarning, match="'s0'.*estimated from these images"):
        refit = cb.transform(other, other_sites, other_ages)
    renamed = cb.transform(other, np.where(other_sites == "s0", "new", other_sites), other_ages)
    np.testing.assert_array_equal(refit, renamed)
    cb.set_params(unseen_site="keep")
    with pytest.warns(SiteMismatchWarning, match="returned unchanged"):
        kept = cb.transform(other, other_sites, other_ages)
    np.testing.assert_array_equal(kept[other_sites == "s0"], other[other_sites == "s0"])
    cb.set_params(site_check="warn")
    with pytest.warns(SiteMismatchWarning, match="applied anyway"):
        stored = cb.transform(other, other_sites, other_ages)
    assert not np.allclose(stored, refit)
    with pytest.raises(SiteMismatchError, match="'s0'"):
        cb.set_params(site_check="error").transform(other, other_sites, other_ages)


def test_combat_site_with_few_training_images_is_not_checked(combat_data):
    (imgs, sites, ages), _, (other, other_sites, other_ages) = combat_data
    keep = np.r_[np.arange(3), np.arange(8, 16)]  # 3 images of s0
    cb = ComBatHarmonizer(unseen_site="fit").fit(imgs[keep], sites[keep], ages[keep])
    frame = cb.site_agreement(other, other_sites, other_ages)
    assert np.isnan(frame["statistic"][0]) and frame["agrees"][0]
    assert "fewer than 4" in frame["mismatch"][0]


def test_iguane_fit_measures_the_spread_and_save_load_keeps_it(tmp_path):
    from _helpers import make_tiny_images

    from harmonix import IGUANeHarmonizer

    imgs, sites, ages, _ = make_tiny_images(n_subjects=4)
    est = IGUANeHarmonizer(
        n_epochs=1,
        steps_per_epoch=1,
        base_width=2,
        random_state=0,
        input_normalization="histogram",
        device="cpu",
        voxel_size=2.0,  # the tiny images' (shift_mm needs it)
    ).fit(imgs, sites, ages)
    spread = est.input_normalization_["site_spread"]
    assert spread["counts"] == [4, 4, 4] and spread["threshold"] > 0
    est.save(tmp_path / "m.pt")
    loaded = IGUANeHarmonizer.load(tmp_path / "m.pt")
    assert loaded.input_normalization_["site_spread"] == spread
    # a model saved before the check: fit_site_check measures the same yardstick
    del loaded.input_normalization_["site_spread"]
    assert loaded.site_agreement(imgs, sites).empty
    assert loaded.fit_site_check(imgs, sites) is loaded
    assert loaded.input_normalization_["site_spread"] == spread
    with pytest.raises(ValueError, match="not those the model was fitted on"):
        loaded.fit_site_check(imgs * 1.5, sites)
    with pytest.raises(ValueError, match="site_check must be one of"):
        loaded.set_params(site_check="sometimes").transform(imgs[:1], sites[:1])
    with pytest.raises(ValueError, match="site_check must be one of"):
        ComBatHarmonizer().fit(imgs, sites).set_params(site_check="x").transform(imgs, sites)


def test_site_check_streams_one_image_at_a_time_like_one_call(demo, other_data):
    # harmonix transform / transform_files: site_statistics of a whole site group, then one
    # image at a time; the check runs once per group, with the group's size
    ds = other_data
    colliding = np.char.add(DEMO_SITE_PREFIX, ds.sites)
    with pytest.warns(SiteMismatchWarning):
        everything = demo.transform(ds.imgs, colliding)
    with pytest.warns(SiteMismatchWarning) as caught:
        stats = demo.site_statistics(ds.imgs, colliding)
    assert len(caught) == 1 and sorted(stats) == sorted(set(colliding.tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SiteMismatchWarning)
        ones = [
            demo.transform(ds.imgs[[i]], colliding[[i]], site_statistics=stats)[0]
            for i in range(len(ds.imgs))
        ]
    np.testing.assert_array_equal(np.stack(ones), everything)


def test_combat_site_check_streams_one_image_at_a_time_like_one_call(combat_data):
    (imgs, sites, ages), _, (other, other_sites, other_ages) = combat_data
    cb = ComBatHarmonizer(unseen_site="fit").fit(imgs, sites, ages)
    with pytest.warns(SiteMismatchWarning):
        everything = cb.transform(other, other_sites, other_ages)
    with pytest.warns(SiteMismatchWarning, match="'s0'"):
        stats = cb.site_statistics(other, other_sites, other_ages)
    assert isinstance(stats["s0"], tuple) and stats["s1"] is None  # refit / stored
    with warnings.catch_warnings():
        warnings.simplefilter("error", SiteMismatchWarning)
        ones = [
            cb.transform(other[[i]], other_sites[[i]], other_ages[[i]], site_statistics=stats)[0]
            for i in range(len(other))
        ]
    np.testing.assert_allclose(np.stack(ones), everything, rtol=0, atol=1e-4)
