"""Tests of harmonix.benchmark: metrics with known answers, the runner and the reports."""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from sklearn.base import BaseEstimator, TransformerMixin

from harmonix import IdentityHarmonizer
from harmonix.base import BaseHarmonizer
from harmonix.benchmark.bootstrap import bootstrap_ci, combine_intervals
from harmonix.benchmark.metrics import (
    METRICS,
    distance_correlation_score,
    masked_ssim,
    traveling_subject_ssim_score,
    truth_ssim_score,
)
from harmonix.benchmark.metrics.biology import (
    brain_age_error,
    brain_age_null_error,
    gm_age_correlation,
    gm_volumes,
    within_site_correlation,
)
from harmonix.benchmark.metrics.cost import measure_cost
from harmonix.benchmark.metrics.scale import robust_range, robust_scale
from harmonix.benchmark.metrics.site import (
    site_histogram_error,
    site_predictability,
    site_predictability_error,
)
from harmonix.benchmark.metrics.tissue import segment_tissues
from harmonix.benchmark.report import plot_metrics, plot_slices, summarize, to_markdown
from harmonix.benchmark.runner import oracle_outputs, run_benchmark
from harmonix.exceptions import UnseenSiteError

SHAPE = (14, 14, 14)


# ----------------------------------------------------------------------------------------
# Hand-made data with known structure
# ----------------------------------------------------------------------------------------
def _sphere(shape=SHAPE, radius=6.0):
    grid = np.indices(shape) - (np.array(shape)[:, None, None, None] - 1) / 2
    return np.sqrt((grid**2).sum(0)) <= radius


def _subject(rng, mask, atrophy=0.0, gm_spread=0.0):
    """A 3-tissue 'brain': CSF 0.3, GM 0.6, WM 1.0; a fraction ``atrophy`` of GM -> CSF.

    ``gm_spread``: the GM share varies between subjects by up to this much (0: fixed).
    """
    field = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.5)
    top = 0.6 + (gm_spread * rng.uniform(-1, 1) if gm_spread else 0.0)
    lo, hi = np.quantile(field[mask], [0.25, top])
    tissue = np.where(field < lo, 0.3, np.where(field < hi, 0.6, 1.0))
    gm = tissue == 0.6
    tissue[gm & (rng.random(mask.shape) < atrophy)] = 0.3
    return np.where(mask, tissue, 0.0)


def _toy(
    n_subjects=10,
    scales=(1.0, 1.0, 1.0),
    noise=0.02,
    atrophy_rate=0.0,
    seed=0,
    gm_levels=None,
    gm_spread=0.0,
):
    """Traveling subjects: subject j at site s = scales[s] * (anatomy_j + noise).

    ``gm_levels[s]``: GM intensity at site s instead of 0.6 (a contrast change).
    """
    rng = np.random.default_rng(seed)
    mask = _sphere()
    ages = rng.uniform(20, 80, n_subjects)
    anat = [_subject(rng, mask, atrophy_rate * (a - 20), gm_spread) for a in ages]
    imgs, sites, subjects, img_ages = [], [], [], []
    for s, c in enumerate(scales):
        for j in range(n_subjects):
            anatomy = anat[j]
            if gm_levels is not None:
                anatomy = np.where(anatomy == 0.6, gm_levels[s], anatomy)
            img = c * (anatomy + noise * rng.standard_normal(SHAPE))
            imgs.append(np.where(mask, np.maximum(img, 1e-3), 0.0))
            sites.append(f"s{s}")
            subjects.append(f"sub{j}")
            img_ages.append(ages[j])
    return SimpleNamespace(
        imgs=np.asarray(imgs, np.float32),
        sites=np.asarray(sites),
        subjects=np.asarray(subjects),
        ages=np.asarray(img_ages),
        mask=mask,
        truth=np.asarray([anat[j] for j in range(n_subjects)] * len(scales), np.float32),
        reference_site="s0",
    )


class SiteScaler(BaseHarmonizer):
    """Divide each site by its mean brain median (undoes a pure per-site scale)."""

    _needs_sites = True

    def _fit(self, data):
        meds = np.array([np.median(d[b]) for d, b in self._iter_brains(data.imgs)])
        sites = data.sites
        self.scale_ = {str(s): float(meds[sites == s].mean()) for s in np.unique(sites)}

    def _transform_one(self, data, brain, site, age):
        if str(site) not in self.scale_:
            raise UnseenSiteError(f"Site {site!r} was not seen in fit (unseen site).")
        return data / self.scale_[str(site)]


class BrokenHarmonizer(IdentityHarmonizer):
    """A buggy method: transform crashes."""

    def _transform_one(self, data, brain, site, age):
        raise RuntimeError("boom")


class PlainScaler(TransformerMixin, BaseEstimator):
    """Duck-typed harmonizer whose transform takes only images (no sites/ages)."""

    def __init__(self, factor=2.0, random_state=None):
        self.factor = factor
        self.random_state = random_state

    def fit(self, imgs, sites):
        self.fitted_ = True
        return self

    def transform(self, imgs):
        return np.asarray(imgs) * self.factor


# ----------------------------------------------------------------------------------------
# Common scale and SSIM
# ----------------------------------------------------------------------------------------
def test_robust_scale_is_invariant_to_affine_maps():
    ds = _toy(n_subjects=3, scales=(1.0, 2.0))
    a = robust_scale(ds.imgs, ds.mask)
    b = robust_scale(3.0 * ds.imgs - 7.0, ds.mask)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a.min() == 0.0 and a.max() == 1.0
    assert (a[:, ~ds.mask] == 0).all()
    lo, hi = robust_range(ds.imgs, ds.mask)
    np.testing.assert_allclose(robust_scale(ds.imgs, ds.mask, value_range=(lo, hi)), a)


def test_ssim_of_identical_images_is_one():
    ds = _toy(n_subjects=3)
    assert masked_ssim(ds.imgs[0], ds.imgs[0], ds.mask) == pytest.approx(1.0)
    same = np.concatenate([ds.imgs[:3]] * 3)  # every subject identical at each site
    score, pairs = traveling_subject_ssim_score(
        same, ds.subjects, ds.sites, ds.mask, return_pairs=True
    )
    assert score == pytest.approx(1.0)
    assert len(pairs) == 3 * 3  # 3 subjects x 3 site pairs
    assert truth_ssim_score(ds.truth, ds.truth * 5.0, ds.mask) == pytest.approx(1.0)


def test_traveling_ssim_sees_site_scale_and_include():
    ds = _toy(n_subjects=4, scales=(1.0, 1.0, 3.0))
    score = traveling_subject_ssim_score(ds.imgs, ds.subjects, ds.sites, ds.mask)
    assert score < 0.9
    # only pairs touching site s2 (scaled by 3): worse than pairs between s0 and s1
    on_s2 = traveling_subject_ssim_score(
        ds.imgs, ds.subjects, ds.sites, ds.mask, include=ds.sites == "s2"
    )
    s01 = ds.sites != "s2"
    between_01 = traveling_subject_ssim_score(
        ds.imgs[s01], ds.subjects[s01], ds.sites[s01], ds.mask
    )
    assert on_s2 < between_01
    assert between_01 > 0.9


def test_ssim_rejects_bad_input():
    ds = _toy(n_subjects=2)
    with pytest.raises(ValueError, match="mask"):
        masked_ssim(ds.imgs[0], ds.imgs[1], np.zeros(SHAPE, bool))
    with pytest.raises(ValueError, match="4-D"):
        traveling_subject_ssim_score(ds.imgs[0], ds.subjects, ds.sites, ds.mask)
    bad = ds.imgs.copy()
    bad[0, 7, 7, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        truth_ssim_score(bad, ds.truth, ds.mask)


# ----------------------------------------------------------------------------------------
# Distances, site predictability, biology
# ----------------------------------------------------------------------------------------
def test_distance_correlation_is_one_for_affine_maps():
    ds = _toy(n_subjects=6, scales=(1.0, 2.0))
    assert distance_correlation_score(ds.imgs, 4.0 * ds.imgs + 2.0, ds.sites, ds.mask) == (
        pytest.approx(1.0)
    )
    assert distance_correlation_score(
        ds.imgs, 4.0 * ds.imgs, ds.sites, ds.mask, method="pearson"
    ) == pytest.approx(1.0)
    # replacing every image by random noise destroys the distances
    rng = np.random.default_rng(1)
    noise = np.where(ds.mask, rng.random(ds.imgs.shape), 0).astype(np.float32)
    assert distance_correlation_score(ds.imgs, noise, ds.sites, ds.mask) < 0.7
    # fewer than 3 subjects per site: undefined
    assert np.isnan(distance_correlation_score(ds.imgs[:2], ds.imgs[:2], ds.sites[:2], ds.mask))


def test_site_histogram_error_pure_site_shift():
    ds = _toy(n_subjects=12, scales=(1.0, 1.4, 2.0), seed=3)
    before = site_histogram_error(ds.imgs, ds.sites, ds.mask, ds.subjects, random_state=0)
    assert before > 0.9
    harmonized = SiteScaler().fit_transform(ds.imgs, ds.sites)
    after = site_histogram_error(harmonized, ds.sites, ds.mask, ds.subjects, random_state=0)
    assert after < 0.6  # chance = 1/3
    assert after < before - 0.3
    with pytest.warns(DeprecationWarning, match="site_histogram_error"):
        old = site_predictability(ds.imgs, ds.sites, ds.mask, ds.subjects, random_state=0)
    assert old == before


def test_site_predictability_error_sees_contrast_not_scale():
    # sites differ by their GM intensity (a contrast change) and by a global scale
    ds = _toy(n_subjects=12, scales=(1.0, 1.4, 2.0), gm_levels=(0.5, 0.6, 0.7), seed=3)
    shifted = site_predictability_error(ds.imgs, ds.sites, ds.mask, ds.subjects, random_state=0)
    assert shifted > 0.9
    # a global scale alone is invisible after the per-image median normalization
    scale_only = _toy(n_subjects=12, scales=(1.0, 1.4, 2.0), seed=3)
    assert (
        site_predictability_error(
            scale_only.imgs, scale_only.sites, scale_only.mask, scale_only.subjects, random_state=0
        )
        < 0.6
    )
    # the oracle: each subject's first-site image at every site -> chance (1/3)
    oracle = np.concatenate([ds.imgs[:12]] * 3)
    assert site_predictability_error(
        oracle, ds.sites, ds.mask, ds.subjects, random_state=0
    ) == pytest.approx(1 / 3, abs=0.1)


def test_brain_age_error_beats_null_with_planted_atrophy():
    ds = _toy(n_subjects=40, scales=(1.0,), atrophy_rate=0.008, seed=4)
    mae = brain_age_error(ds.imgs, ds.ages, ds.mask, ds.subjects, random_state=0)
    null = brain_age_null_error(ds.ages, ds.subjects, random_state=0)
    assert 10 < null < 20  # ages uniform in 20-80: about 15 years
    assert mae < 0.7 * null
    shuffled = brain_age_error(
        ds.imgs,
        np.random.default_rng(1).permutation(ds.ages),
        ds.mask,
        ds.subjects,
        random_state=0,
    )
    assert shuffled > 0.8 * null  # no signal: no better than the null model
    # the null model by hand: with one fold per subject it predicts the others' mean
    loo = np.mean([abs(a - np.delete(ds.ages, i).mean()) for i, a in enumerate(ds.ages)])
    assert brain_age_null_error(ds.ages, np.arange(40), n_splits=40) == pytest.approx(loo)
    # train on the first half, test on the second (the "unseen" protocol)
    n = len(ds.ages)
    train = np.arange(n) < n // 2
    groups = np.r_[np.arange(n // 2), np.arange(n // 2)]
    assert brain_age_error(ds.imgs, ds.ages, ds.mask, groups, train=train, random_state=0) < 15
    with pytest.raises(ValueError, match="ages"):
        brain_age_error(ds.imgs, ds.ages[:-1], ds.mask)


def _true_gm(ds):
    return np.array([(np.isclose(t, 0.6) & ds.mask).sum() for t in ds.truth])


def test_gm_age_correlation_follows_true_volumes():
    ds = _toy(n_subjects=15, scales=(1.0,), atrophy_rate=0.006, seed=2)
    vols = gm_volumes(ds.imgs, ds.mask)
    assert np.corrcoef(vols, _true_gm(ds))[0, 1] > 0.95
    r_true = np.corrcoef(_true_gm(ds), ds.ages)[0, 1]
    assert r_true < -0.8
    assert gm_age_correlation(ds.imgs, ds.ages, ds.mask) == pytest.approx(r_true, abs=0.1)
    # no atrophy: the measure follows the (age-unrelated) true volumes, finds no decline
    flat = _toy(n_subjects=15, scales=(1.0,), atrophy_rate=0.0, seed=2, gm_spread=0.1)
    assert np.corrcoef(gm_volumes(flat.imgs, flat.mask), _true_gm(flat))[0, 1] > 0.95
    r_flat_true = np.corrcoef(_true_gm(flat), flat.ages)[0, 1]
    r_flat = gm_age_correlation(flat.imgs, flat.ages, flat.mask)
    assert r_flat == pytest.approx(r_flat_true, abs=0.1)
    assert abs(r_flat) < abs(r_true) - 0.3


def test_gm_volumes_robust_to_units_and_monotone_remaps():
    ds = _toy(n_subjects=6, scales=(1.0,), atrophy_rate=0.006, seed=2)
    vols = gm_volumes(ds.imgs, ds.mask)
    np.testing.assert_allclose(gm_volumes(10 * ds.imgs + 1, ds.mask), vols, rtol=1e-4)
    remapped = np.where(ds.mask, ds.imgs**0.7, 0.0)  # increasing, nonlinear contrast
    np.testing.assert_allclose(gm_volumes(remapped, ds.mask), vols, rtol=0.03)


def _partial_volume_sites(n_subjects=16, seed=0):
    """Cortex made of GM-CSF mixtures: ageing darkens the GM peak instead of emptying it.

    Each of 3000 cortical voxels holds GM fraction ``f`` (the rest CSF) with ``f`` drawn
    in ``[1 - 0.6 * atrophy, 1]``; 2000 voxels are pure WM. Site ``b`` sees the linear
    image through a concave curve (mixtures look like GM) and another scale.
    """
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 80, n_subjects)
    mask = np.ones((10, 10, 50), bool)
    imgs, true = [], []
    for age in ages:
        f = 1.0 - 0.6 * (age - 20) / 60 * rng.uniform(0.0, 1.0, 3000)
        lin = np.concatenate([0.3 + 0.4 * f, np.ones(2000)])  # CSF 0.3, GM 0.7, WM 1
        imgs.append((lin + 0.01 * rng.standard_normal(lin.size)).reshape(mask.shape))
        true.append(f.sum())
    linear = np.asarray(imgs)
    curved = 500.0 * linear**0.5  # increasing, concave: brightens the mixtures
    return SimpleNamespace(
        imgs=np.concatenate([linear, curved]).astype(np.float32),
        sites=np.repeat(["a", "b"], n_subjects),
        ages=np.tile(ages, 2),
        true=np.tile(true, 2),
        mask=mask,
    )


def test_gm_volumes_share_classes_within_sites():
    d = _partial_volume_sites()
    n = len(d.ages) // 2
    vols = gm_volumes(d.imgs, d.mask, d.sites)
    for site in (slice(0, n), slice(n, None)):  # follows the truth at both contrasts
        assert np.corrcoef(vols[site], d.true[site])[0, 1] > 0.95
    r_true = within_site_correlation(d.true, d.ages, d.sites)
    assert gm_age_correlation(d.imgs, d.ages, d.mask, d.sites) == pytest.approx(r_true, abs=0.05)
    # per-image classes follow the darkening peak and lose much of the ageing signal
    per_image = gm_volumes(d.imgs, d.mask, tissues=segment_tissues(d.imgs, d.mask))
    for site in (slice(0, n), slice(n, None)):
        assert np.corrcoef(per_image[site], d.true[site])[0, 1] < 0.85
    # units: an increasing affine map per site changes nothing
    gain = np.where(d.sites == "a", 3.0, 0.01)[:, None, None, None]
    offset = np.where(d.sites == "a", -7.0, 2.0)[:, None, None, None]
    np.testing.assert_allclose(
        gm_volumes(gain * d.imgs + offset, d.mask, d.sites), vols, rtol=1e-5
    )


def test_within_site_correlation_ignores_site_offsets():
    rng = np.random.default_rng(0)
    ages = np.tile(rng.uniform(20, 80, 30), 2)
    sites = np.repeat(["a", "b"], 30)
    volumes = -ages + rng.normal(0, 5, 60) + np.where(sites == "b", 200.0, 0.0)
    per_site = within_site_correlation(volumes, ages, sites)
    expected = np.tanh(
        np.mean(
            [np.arctanh(np.corrcoef(volumes[sites == s], ages[sites == s])[0, 1]) for s in "ab"]
        )
    )
    assert per_site == pytest.approx(expected)
    assert per_site < -0.9
    assert within_site_correlation(volumes, ages) > -0.3  # the offset dilutes pooled r


def test_bootstrap_ci_has_the_known_spread():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 2.0, 400)
    lo, hi = bootstrap_ci(lambda i: x[i].mean(), np.arange(400), random_state=0)
    expected = 2 * 1.96 * x.std() / np.sqrt(400)  # normal theory for a mean
    assert hi - lo == pytest.approx(expected, rel=0.15)
    assert lo < x.mean() < hi
    # 100 subjects with 4 identical images each: 100 independent values, not 400
    y = np.repeat(x[:100], 4)
    glo, ghi = bootstrap_ci(lambda i: y[i].mean(), np.repeat(np.arange(100), 4), random_state=0)
    assert ghi - glo == pytest.approx(2 * 1.96 * x[:100].std() / 10, rel=0.15)
    assert np.isnan(bootstrap_ci(lambda i: y[i].mean(), np.zeros(400))[0])  # one subject
    # per-run intervals -> interval of the mean of two independent runs: half / sqrt(2)
    lo2, hi2 = combine_intervals([1.0, 3.0], [0.0, 2.0], [2.0, 4.0])
    assert (lo2, hi2) == pytest.approx((2.0 - 1 / np.sqrt(2), 2.0 + 1 / np.sqrt(2)))


def test_measure_cost_records_time_and_memory():
    def allocate():
        a = np.ones(50_000_000 // 8)
        time.sleep(0.2)
        return float(a.sum())

    result, seconds, peak_mb = measure_cost(allocate)
    assert result == 50_000_000 // 8
    assert 0.2 <= seconds < 2.0
    assert peak_mb > 30


# ----------------------------------------------------------------------------------------
# run_benchmark and reports
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    try:
        from harmonix.datasets import make_multisite
    except ImportError:  # pragma: no cover - the generator is part of the package
        return _toy(n_subjects=5, scales=(1.0, 1.5, 2.0))
    return make_multisite(n_subjects=4, n_sites=3, resolution=4, random_state=0)


class RefusingScaler(SiteScaler):
    """Refuses unseen sites with a plain ValueError: a failure, not a declared refusal."""

    def _transform_one(self, data, brain, site, age):
        if str(site) not in self.scale_:
            raise ValueError(f"Site {site!r} is unseen.")
        return data / self.scale_[str(site)]


@pytest.fixture(scope="module")
def results(tiny):
    harmonizers = {
        "none": IdentityHarmonizer(),
        "scaler": SiteScaler(),
        "plain": PlainScaler(),
    }
    return run_benchmark(
        harmonizers, tiny, random_state=0, oracle=True, n_boot=200, return_outputs=True
    )


def documented_columns(func: Callable) -> list[str]:
    """The columns that ``func``'s docstring promises (its "columns ``a, b, ...``")."""
    text = " ".join(func.__doc__.split())
    return re.search(r"[Cc]olumns ``([^`]+)``", text)[1].split(", ")


SCORED = [m for m in METRICS if not m.endswith(("_seconds", "_mb"))]
DISEASE_METRICS = ["disease_effect_error", "true_disease_effect", "disease_auc_score"]


def test_run_benchmark_tidy_frame(results, tiny):
    df, outputs = results
    assert list(df.columns) == documented_columns(run_benchmark)
    assert set(df["held_out"]) == {"site2"} and df["dataset"].nunique() == 1
    assert set(df["protocol"]) == {"seen", "unseen"}
    assert set(df["metric"]) == set(METRICS)
    assert len(df) == 4 * 2 * len(METRICS)
    seen = df[(df.protocol == "seen") & (df.method != "oracle")]
    disease = seen.metric.isin(DISEASE_METRICS)  # no diagnosis in these data: NaN, why
    assert seen[~disease]["value"].notna().all(), seen[seen["value"].isna()]
    assert seen[disease]["value"].isna().all()
    assert (seen[disease]["reason"] == "dataset has no diagnosis covariate").all()
    none = df[(df.method == "none") & (df.protocol == "seen")].set_index("metric")
    assert none.loc["distance_correlation_score", "value"] == pytest.approx(1.0)
    assert 0 < none.loc["traveling_subject_ssim_score", "value"] < 1
    assert none.loc["site_chance_level", "value"] == pytest.approx(1 / 2)  # 2 seen sites
    # every scored value but the chance level lies inside its bootstrap interval
    scored = df[df.metric.isin(SCORED) & (df.metric != "site_chance_level") & df["value"].notna()]
    assert (scored["ci_low"] <= scored["value"] + 1e-9).all()
    assert (scored["value"] <= scored["ci_high"] + 1e-9).all()
    assert (scored["ci_high"] > scored["ci_low"]).any()
    # an affine map of the identity output scores the same image metrics
    plain = df[(df.method == "plain") & (df.protocol == "seen")].set_index("metric")["value"]
    for m in (
        "traveling_subject_ssim_score",
        "truth_ssim_score",
        "distance_correlation_score",
        "site_predictability_error",
        "brain_age_error",
    ):
        assert plain[m] == pytest.approx(none.loc[m, "value"], abs=1e-4)
    assert set(outputs) == {"none", "scaler", "plain", "oracle"}
    np.testing.assert_allclose(outputs["none"], tiny.imgs)
    # only some images' outputs (e.g. one subject's, for plot_slices): the same images
    some = [7, 0, 11]
    _, few = run_benchmark(
        {"none": IdentityHarmonizer(), "scaler": SiteScaler()},
        tiny,
        metrics=["fit_seconds"],
        n_boot=0,
        random_state=0,  # the same held-out site as the fixture's run
        return_outputs=some,
    )
    np.testing.assert_array_equal(few["none"], outputs["none"][some])
    np.testing.assert_array_equal(few["scaler"], outputs["scaler"][some])  # NaN: refused
    for bad, error in (([12], ValueError), (["a"], TypeError), ([], TypeError)):
        with pytest.raises(error, match="return_outputs"):
            run_benchmark({"none": IdentityHarmonizer()}, tiny, return_outputs=bad)


def test_oracle_reaches_the_ceiling(results, tiny):
    df, outputs = results
    ref = np.flatnonzero(tiny.sites == tiny.reference_site)
    np.testing.assert_array_equal(outputs["oracle"], np.concatenate([tiny.imgs[ref]] * 3))
    np.testing.assert_array_equal(oracle_outputs(tiny), outputs["oracle"])
    for protocol in ("seen", "unseen"):
        sub = df[df.protocol == protocol]
        get = sub.set_index(["method", "metric"])["value"]
        assert get["oracle", "traveling_subject_ssim_score"] == pytest.approx(1.0)
        for m in ("site_predictability_error", "site_histogram_error"):
            # identical images at every site: no better than chance
            assert get["oracle", m] <= get["oracle", "site_chance_level"] + 1e-9
            assert get["none", m] > get["oracle", m]
        for m in ("traveling_subject_ssim_score", "truth_ssim_score"):
            assert get["oracle", m] >= max(get[k, m] for k in ("none", "plain"))
        assert get["oracle", "truth_ssim_score"] < 1  # the truth has no bias or noise
        costs = sub[(sub.method == "oracle") & sub.metric.str.endswith(("_seconds", "_mb"))]
        assert costs["value"].isna().all() and costs["reason"].str.contains("oracle").all()
    with pytest.raises(ValueError, match="reference_site"):
        oracle_outputs(
            SimpleNamespace(
                imgs=tiny.imgs, sites=tiny.sites, subjects=tiny.subjects, mask=tiny.mask
            )
        )


def test_run_benchmark_unseen_refusal_gives_nan_with_reason(results, tiny):
    df, outputs = results
    unseen = df[(df.method == "scaler") & (df.protocol == "unseen")]
    costs = {"fit_seconds", "fit_peak_mb"}
    refused = unseen[~unseen.metric.isin(costs)]
    assert refused["value"].isna().all()
    assert refused["reason"].str.contains("cannot harmonize unseen sites").all()
    assert unseen[unseen.metric.isin(costs)]["value"].notna().all()
    assert np.isnan(outputs["scaler"][-1]).all()  # last site is the held-out one
    ok = df[(df.method == "none") & (df.protocol == "unseen")]
    ok = ok[~ok.metric.isin(DISEASE_METRICS)]
    assert ok["value"].notna().all()
    assert (ok["reason"] == "").all()
    # the refusal is recognized by its type, not by its message
    other = run_benchmark(
        {"refusing": RefusingScaler()}, tiny, metrics=["fit_seconds", "truth_ssim_score"], n_boot=0
    )
    reason = other[(other.protocol == "unseen") & (other.metric == "truth_ssim_score")]
    assert reason["reason"].str.startswith("transform (unseen) failed: ValueError").all()


def test_combat_refuses_unseen_sites_with_unseen_site_error():
    from harmonix.combat import ComBatHarmonizer

    ds = _toy(n_subjects=4, scales=(1.0, 1.5, 2.0))
    seen = ds.sites != "s2"
    model = ComBatHarmonizer().fit(ds.imgs[seen], ds.sites[seen])
    with pytest.raises(UnseenSiteError, match="s2"):
        model.transform(ds.imgs[~seen], sites=ds.sites[~seen])
    assert issubclass(UnseenSiteError, ValueError)  # callers catching ValueError still work


def test_run_benchmark_other_errors_are_recorded_or_raised(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="harmonix.benchmark"):
        df = run_benchmark(
            {"broken": BrokenHarmonizer()},
            tiny,
            metrics=["traveling_subject_ssim_score", "fit_seconds"],
            test_sites=[],
        )
    assert set(df["protocol"]) == {"seen"}
    row = df[df.metric == "traveling_subject_ssim_score"].iloc[0]
    assert np.isnan(row["value"]) and "RuntimeError: boom" in row["reason"]
    assert np.isfinite(df[df.metric == "fit_seconds"]["value"]).all()
    assert any("boom" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="boom"):
        run_benchmark({"broken": BrokenHarmonizer()}, tiny, test_sites=[], raise_errors=True)


def test_run_benchmark_validates_arguments(tiny):
    est = PlainScaler()
    with pytest.raises(ValueError, match="not sites"):
        run_benchmark({"x": est}, tiny, test_sites=["nowhere"])
    with pytest.raises(ValueError, match="fewer than 2 training sites"):
        run_benchmark({"x": est}, tiny, test_sites=["site1", "site2"])
    with pytest.raises(ValueError, match="Unknown metric"):
        run_benchmark({"x": est}, tiny, metrics=["accuracy"])
    with pytest.raises(ValueError, match="dict"):
        run_benchmark({}, tiny)
    with pytest.raises(ValueError, match="lacks"):
        run_benchmark({"x": est}, SimpleNamespace(imgs=tiny.imgs))
    df = run_benchmark({"x": est}, tiny, metrics=["fit_seconds"], test_sites="site1")
    assert set(df["protocol"]) == {"seen", "unseen"}
    assert est.get_params()["random_state"] is None  # the given estimator is not touched
    assert not hasattr(est, "fitted_")


def test_summarize_and_markdown(results, tiny):
    df, _ = results
    with pytest.warns(DeprecationWarning, match="site_histogram_error"):
        df2 = run_benchmark(
            {"none": IdentityHarmonizer(), "scaler": SiteScaler()},
            tiny,
            random_state=1,
            n_boot=200,
            metrics=["fit_seconds", "site_predictability"],  # former name still accepted
        )
    assert set(df2.metric) == {"fit_seconds", "site_histogram_error"}
    summary = summarize([df, df2])
    assert list(summary.columns) == documented_columns(summarize)
    fit_seconds = summary[(summary.metric == "fit_seconds") & (summary.protocol == "seen")]
    none, plain = (fit_seconds.set_index("method").loc[m] for m in ("none", "plain"))
    assert none["n"] == 2 and np.isfinite(none["sd"])
    assert plain["n"] == 1 and np.isnan(plain["sd"])
    # two runs on one data set: their intervals are averaged, not narrowed
    key = ["method", "protocol", "metric"]
    pair = df.merge(df2, on=key, suffixes=("_1", "_2"))
    pair = pair[pair["ci_low_1"].notna() & pair["ci_low_2"].notna()].iloc[0]
    got = summary.set_index(key).loc[tuple(pair[key])]
    expected = combine_intervals(
        [pair["value_1"], pair["value_2"]],
        [pair["ci_low_1"], pair["ci_low_2"]],
        [pair["ci_high_1"], pair["ci_high_2"]],
        datasets=["one", "one"],
    )
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(expected)
    mean = (pair["value_1"] + pair["value_2"]) / 2
    half = (pair["ci_high_1"] - pair["value_1"] + pair["ci_high_2"] - pair["value_2"]) / 2
    assert got["ci_high"] == pytest.approx(mean + half)
    md = to_markdown(summary)
    assert "### Seen sites" in md and "### Unseen sites" in md
    assert "traveling_subject_ssim_score ↑" in md and "brain_age_error ↓" in md
    assert "gm_age_correlation → true" in md
    assert " ± " in md
    assert "n/a [1]" in md and "cannot harmonize unseen sites" in md
    assert "Reference values (the same for every method): `site_chance_level` 0.500" in md
    assert "| site_chance_level" not in md  # references are listed, not columns
    md_single = to_markdown(df, metrics=["traveling_subject_ssim_score"], legend=False)
    assert " ± " not in md_single and md_single.count("| none |") == 2
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_markdown_marks_intervals_that_do_not_overlap_none():
    import pandas as pd

    rows = [("none", 0.50, 0.45, 0.55), ("far", 0.90, 0.85, 0.95), ("near", 0.56, 0.52, 0.60)]
    df = pd.DataFrame(
        [
            {
                "method": m,
                "protocol": "seen",
                "metric": "truth_ssim_score",
                "value": v,
                "ci_low": lo,
                "ci_high": hi,
                "reason": "",
            }
            for m, v, lo, hi in rows
        ]
    )
    md = to_markdown(df)
    assert "| far | 0.900 [0.850, 0.950] * |" in md
    assert "| near | 0.560 [0.520, 0.600] |" in md
    assert "| none | 0.500 [0.450, 0.550] |" in md
    assert "does not overlap that of `none`" in md
    assert " * " not in to_markdown(df, baseline=None)


def test_plots_write_png(results, tiny, tmp_path):
    df, outputs = results
    png = b"\x89PNG"
    p1 = plot_metrics(df, tmp_path / "metrics.png")
    p2 = plot_metrics(summarize([df, df]), tmp_path / "sub" / "summary.png")
    p3 = plot_slices(
        outputs, tiny, tiny.subjects[0], tmp_path / "slices.png", test_sites=[tiny.sites[-1]]
    )
    for p in (p1, p2, p3):
        assert p.read_bytes()[:4] == png and p.stat().st_size > 1000
    with pytest.raises(ValueError, match="not in the dataset"):
        plot_slices(outputs, tiny, "nobody", tmp_path / "x.png")


def test_metrics_registry_directions():
    from harmonix.benchmark import metrics as metrics_module

    assert all(d in ("higher", "lower", "target", "reference") for d, _ in METRICS.values())
    for name, (direction, _) in METRICS.items():
        if name.endswith("_score"):
            assert direction == "higher"
        if name.endswith("_error"):  # a signed error is a target metric (0 is the truth)
            assert direction in ("lower", "reference", "target")
        if direction == "target":  # every target names what it should reach
            target = metrics_module.METRIC_TARGETS[name]
            assert target in METRICS or isinstance(target, float), name
        if direction in ("higher", "lower", "target") and not name.endswith(("_seconds", "_mb")):
            assert callable(getattr(metrics_module, name)), name  # key = function name


def test_dataset_from_manifest(tiny, tmp_path):
    from harmonix.benchmark import dataset_from_manifest
    from harmonix.datasets import write_nifti_dataset

    manifest = write_nifti_dataset(tiny, tmp_path / "data", compress=False)
    ds = dataset_from_manifest(manifest)
    assert len(ds) == len(tiny.imgs) and ds.truth is None
    np.testing.assert_array_equal(ds.imgs, tiny.imgs)
    np.testing.assert_array_equal(ds.mask, tiny.mask)
    np.testing.assert_array_equal(ds.subjects, tiny.subjects)
    df = run_benchmark(
        {"none": IdentityHarmonizer()},
        ds,
        metrics=["traveling_subject_ssim_score", "truth_ssim_score"],
    )
    truth = df[df.metric == "truth_ssim_score"]
    assert truth["value"].isna().all() and (truth["reason"] == "dataset has no truth").all()
    assert df[df.metric == "traveling_subject_ssim_score"]["value"].notna().all()


# ----------------------------------------------------------------------------------------
# Sanity: garbage must score worst, and every metric must give it a number
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sanity():
    """Identity, oracle, a mean image for every input ("collapse") and noise, on
    traveling subjects with planted atrophy and per-site scale and contrast."""
    from harmonix.benchmark.sanity import MeanImageHarmonizer, NoiseHarmonizer

    ds = _toy(
        n_subjects=14,
        scales=(1.0, 1.3, 0.8),
        gm_levels=(0.6, 0.55, 0.65),
        atrophy_rate=0.008,
        noise=0.02,
        seed=5,
    )
    df = run_benchmark(
        {
            "none": IdentityHarmonizer(),
            "collapse": MeanImageHarmonizer(),
            "noise": NoiseHarmonizer(),
        },
        ds,
        oracle=True,
        random_state=0,
        n_boot=0,
        # the disease metrics need a diagnosis, which these traveling subjects lack
        metrics=[m for m in SCORED if m not in DISEASE_METRICS],
    )
    return df


#: What every metric must say of the identity (none), the oracle, a mean image for every
#: input (collapse) and noise: (value of each) -> bool, and why. Blind spots are asserted
#: too, so that a change in what a metric can see is a decision, not an accident.
SANITY_RULES = {
    "traveling_subject_ssim_score": (
        lambda v: (
            v["oracle"] == pytest.approx(1.0)
            and v["collapse"] == pytest.approx(1.0)  # blind: one image for all is "alike"
            and v["noise"] <= 0.05  # unrelated images: about 0
            and v["none"] > v["noise"] + 0.2
        )
    ),
    "subject_specificity_score": (
        lambda v: (
            v["oracle"] == pytest.approx(1.0)
            and v["collapse"] == 0.0
            and abs(v["noise"]) < 0.02
            and v["none"] > 0.3
        )
    ),
    "truth_ssim_score": (
        lambda v: v["noise"] <= 0.05 and min(v["none"], v["oracle"]) > v["collapse"] > v["noise"]
    ),
    "distance_correlation_score": (
        lambda v: (
            v["none"] == pytest.approx(1.0)
            and v["collapse"] == 0.0  # equal distances: no difference kept
            and abs(v["noise"]) < 0.4
            and v["oracle"] > 0.6
        )
    ),
    "site_predictability_error": (  # blind: neither garbage has a site
        lambda v: (
            v["collapse"] <= v["chance"] + 1e-9
            and v["oracle"] <= v["chance"] + 1e-9
            and v["noise"] < v["none"]
            and v["none"] > 0.9
        )
    ),
    "site_histogram_error": (
        lambda v: (
            v["collapse"] <= v["chance"] + 1e-9
            and v["oracle"] <= v["chance"] + 1e-9
            and v["noise"] < v["none"]
            and v["none"] > 0.9
        )
    ),
    "site_chance_level": lambda v: len({v["none"], v["oracle"], v["collapse"], v["noise"]}) == 1,
    "brain_age_error": (
        lambda v: (
            v["collapse"] == pytest.approx(v["null"])  # constant features: the null
            and v["noise"] > 0.9 * v["null"]
            and max(v["none"], v["oracle"]) < 0.85 * v["null"]
        )
    ),
    "brain_age_correlation_score": (
        lambda v: (
            v["collapse"] == 0.0  # constant predictions: no age information
            and abs(v["noise"]) < 0.4
            and min(v["none"], v["oracle"]) > v["noise"] + 0.3
        )
    ),
    "brain_age_null_error": lambda v: (
        len({v["none"], v["oracle"], v["collapse"], v["noise"]}) == 1
    ),
    "gm_age_correlation": (
        lambda v: (
            v["collapse"] == 0.0  # equal volumes: no age information
            and v["noise"] > max(v["none"], v["oracle"]) + 0.3  # farther from the true r
            and max(v["none"], v["oracle"]) < -0.7
        )
    ),
    "true_gm_age_correlation": lambda v: True,  # the toy data have no true GM maps
}


@pytest.mark.parametrize("protocol", ["seen", "unseen"])
def test_sanity_garbage_scores_worst_on_every_metric(sanity, protocol):
    df = sanity[sanity.protocol == protocol]
    assert set(SANITY_RULES) >= set(df.metric), (
        f"add a sanity rule for {sorted(set(df.metric) - set(SANITY_RULES))}"
    )
    get = df.set_index(["method", "metric"])["value"]
    garbage = df[df.method.isin(["collapse", "noise"]) & (df.metric != "true_gm_age_correlation")]
    assert garbage["value"].notna().all(), garbage[garbage["value"].isna()]  # never n/a
    chance = get["none", "site_chance_level"]
    null = get["none", "brain_age_null_error"]
    for metric, rule in SANITY_RULES.items():
        if metric not in set(df.metric):
            continue
        values = {m: get[m, metric] for m in ("none", "oracle", "collapse", "noise")}
        assert rule({**values, "chance": chance, "null": null}), (metric, values)


def test_sanity_harmonizers_follow_the_contract():
    from harmonix.benchmark.sanity import MeanImageHarmonizer, NoiseHarmonizer

    ds = _toy(n_subjects=3, scales=(1.0, 2.0))
    collapse = MeanImageHarmonizer().fit(ds.imgs, ds.sites)
    out = collapse.transform(ds.imgs)
    mean = ds.imgs.mean(axis=0)
    np.testing.assert_allclose(
        out[:, ds.mask], np.broadcast_to(mean[ds.mask], out[:, ds.mask].shape), rtol=1e-6
    )
    assert (out[:, ~ds.mask] == 0).all()
    noise = NoiseHarmonizer(random_state=3).fit(ds.imgs, ds.sites)
    a, b = noise.transform(ds.imgs), noise.transform(ds.imgs[::-1])
    np.testing.assert_array_equal(a, b[::-1])  # deterministic per image, not per call
    lo, hi = noise.value_range_
    assert lo >= 0 and hi <= ds.imgs.max() and (a[:, ds.mask] >= lo).all()
    assert abs(np.corrcoef(a[0][ds.mask], a[1][ds.mask])[0, 1]) < 0.1  # independent
    with pytest.raises(ValueError, match="random_state"):
        NoiseHarmonizer(random_state=1.5).fit(ds.imgs, ds.sites)


# ----------------------------------------------------------------------------------------
# Cases of "a benchmark that cannot be fooled"
# ----------------------------------------------------------------------------------------
def test_ssim_of_unrelated_images_is_about_zero(tiny):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    m = tiny.mask
    a, b = (np.where(m, rng.random(m.shape), 0.0) for _ in range(2))
    assert abs(masked_ssim(a, b, m)) <= 0.05  # windows with background gave 0.23
    assert masked_ssim(a, a, m) == pytest.approx(1.0)
    from harmonix.benchmark.metrics.similarity import _ssim_map

    # where a window lies in the mask, the map is skimage's SSIM exactly
    x, y = rng.random((2, 20, 20, 20))
    y = 0.5 * x + 0.5 * y
    _, expected = structural_similarity(x, y, data_range=1.0, win_size=7, full=True)
    full = np.ones(x.shape, bool)
    core = (slice(3, 17),) * 3
    got = _ssim_map(x, y, full, data_range=1.0, win_size=7)
    np.testing.assert_allclose(got[core], expected[core], rtol=1e-9, atol=1e-12)
    # a mask voxel's window holds only mask voxels: what lies outside does not count
    half = np.zeros(x.shape, bool)
    half[:, :10] = True
    changed = np.where(half, x, rng.random(x.shape))
    assert masked_ssim(x, y, half) == masked_ssim(changed, np.where(half, y, 0.0), half)
    for bad in (4, 0, 7.0):
        with pytest.raises(ValueError, match="odd"):
            masked_ssim(x, y, full, win_size=bad)


def _one_value_run(values, seed, dataset, method="m"):
    """A run_benchmark-like frame: the mean of per-subject values, its bootstrap interval."""
    import pandas as pd

    lo, hi = bootstrap_ci(lambda i: values[i].mean(), np.arange(len(values)), random_state=seed)
    return pd.DataFrame(
        [
            {
                "method": method,
                "protocol": "seen",
                "metric": "truth_ssim_score",
                "value": float(values.mean()),
                "ci_low": lo,
                "ci_high": hi,
                "reason": "",
                "held_out": "",
                "dataset": dataset,
            }
        ]
    )


def test_summarize_keeps_the_interval_of_runs_on_one_data_set():
    rng = np.random.default_rng(0)
    one_run = 2 * 1.96 * 2.0 / np.sqrt(100)  # 100 subjects, sd 2: width of a mean's 95 % CI
    data = rng.normal(0.0, 2.0, 100)
    # four seeds of a method on one data set: the subjects are the same, no narrowing
    same = summarize([_one_value_run(data, seed, "A") for seed in range(4)]).iloc[0]
    assert same["ci_high"] - same["ci_low"] == pytest.approx(one_run, rel=0.15)
    assert same["n"] == 4 and same["n_datasets"] == 1
    # four data sets (400 subjects in all): the interval of the mean halves
    sets = [rng.normal(0.0, 2.0, 100) for _ in range(4)]
    apart = summarize([_one_value_run(d, 0, f"D{k}") for k, d in enumerate(sets)]).iloc[0]
    assert apart["ci_high"] - apart["ci_low"] == pytest.approx(one_run / 2, rel=0.15)
    assert apart["n_datasets"] == 4
    # coverage over repeated experiments (normal-theory intervals, for speed): four seeds
    # on one data set cover the truth (0) at about the nominal rate; combining them as
    # independent (what summarize did) covers it far less often
    covered = np.zeros(2)
    for rep in range(400):
        d = np.random.default_rng(rep).normal(0.0, 2.0, 100)
        half = 1.96 * d.std(ddof=1) / 10
        values = d.mean() + 0.05 * np.random.default_rng([rep, 1]).normal(size=4)
        for k, datasets in enumerate((["A"] * 4, ["A", "B", "C", "D"])):
            lo, hi = combine_intervals(values, values - half, values + half, datasets=datasets)
            covered[k] += lo <= 0.0 <= hi
    assert covered[0] / 400 > 0.9 and covered[1] / 400 < 0.7
    # older results without the dataset column: one data set is assumed, with a warning
    from harmonix.exceptions import BenchmarkWarning

    legacy = [_one_value_run(data, s, "A").drop(columns="dataset") for s in range(2)]
    with pytest.warns(BenchmarkWarning, match="dataset"):
        old = summarize(legacy).iloc[0]
    assert old["ci_high"] - old["ci_low"] == pytest.approx(one_run, rel=0.15)
    with pytest.raises(ValueError, match="one entry per run"):
        combine_intervals([1.0, 2.0], [0.0, 1.0], [2.0, 3.0], datasets=["a"])


def test_run_benchmark_results_name_their_data_set(tiny):
    a = run_benchmark(
        {"none": IdentityHarmonizer()}, tiny, metrics=["fit_seconds"], random_state=0
    )
    b = run_benchmark(
        {"none": IdentityHarmonizer()}, tiny, metrics=["fit_seconds"], random_state=1
    )
    assert a["dataset"].nunique() == 1 and set(a["dataset"]) == set(b["dataset"])
    other = SimpleNamespace(**{**vars(tiny), "imgs": tiny.imgs * 1.01})
    c = run_benchmark(
        {"none": IdentityHarmonizer()}, other, metrics=["fit_seconds"], random_state=0
    )
    assert set(c["dataset"]) != set(a["dataset"])
    assert summarize([a, b, c])["n_datasets"].iloc[0] == 2


def test_metrics_warn_without_subject_groups():
    from harmonix.exceptions import BenchmarkWarning

    def brain_age_correlation_score(*args, **kwargs):
        from harmonix.benchmark import brain_age_correlation_score as score

        return score(*args, **kwargs)

    ds = _toy(n_subjects=10, scales=(1.0, 1.4, 2.0), gm_levels=(0.5, 0.6, 0.7), atrophy_rate=0.008)
    calls = {
        "site_predictability_error": lambda g: site_predictability_error(
            ds.imgs, ds.sites, ds.mask, g, random_state=0
        ),
        "site_histogram_error": lambda g: site_histogram_error(
            ds.imgs, ds.sites, ds.mask, g, random_state=0
        ),
        "brain_age_error": lambda g: brain_age_error(ds.imgs, ds.ages, ds.mask, g, random_state=0),
        "brain_age_correlation_score": lambda g: brain_age_correlation_score(
            ds.imgs, ds.ages, ds.mask, g, random_state=0
        ),
        "brain_age_null_error": lambda g: brain_age_null_error(ds.ages, g, random_state=0),
    }
    for name, call in calls.items():
        with pytest.warns(BenchmarkWarning, match=f"{name} got no groups"):
            call(None)
        with warnings.catch_warnings():
            warnings.simplefilter("error", BenchmarkWarning)
            call(ds.subjects)
    # the leak the warning is about: one subject's scans in training and test folds
    with pytest.warns(BenchmarkWarning):
        leaky = brain_age_error(ds.imgs, ds.ages, ds.mask, random_state=0)
    assert leaky < 0.8 * brain_age_error(ds.imgs, ds.ages, ds.mask, ds.subjects, random_state=0)


def test_held_out_site_is_seeded_independent_of_image_order_and_reported(tiny):
    order = np.random.default_rng(0).permutation(len(tiny.imgs))
    shuffled = SimpleNamespace(
        imgs=tiny.imgs[order],
        sites=tiny.sites[order],
        subjects=tiny.subjects[order],
        ages=tiny.ages[order],
        mask=tiny.mask,
        reference_site=tiny.reference_site,
    )
    kw = dict(metrics=["fit_seconds"], n_boot=0)
    for seed in range(4):
        a = run_benchmark({"none": IdentityHarmonizer()}, tiny, random_state=seed, **kw)
        b = run_benchmark({"none": IdentityHarmonizer()}, shuffled, random_state=seed, **kw)
        assert a.attrs["held_out"]["sites"] == b.attrs["held_out"]["sites"]
        assert set(a["held_out"]) == {a.attrs["held_out"]["sites"][0]}
    drawn = {
        run_benchmark({"none": IdentityHarmonizer()}, tiny, random_state=s, **kw).attrs[
            "held_out"
        ]["sites"][0]
        for s in range(12)
    }
    assert drawn == set(tiny.site_names) - {tiny.reference_site}
    assert "random_state=3" in a.attrs["held_out"]["rule"]
    given = run_benchmark({"none": IdentityHarmonizer()}, tiny, test_sites="site1", **kw)
    assert given.attrs["held_out"] == {"sites": ["site1"], "rule": "given (test_sites)"}
    assert "(held out of fit: site1)" in to_markdown(given)


def test_site_local_subject_ids_are_flagged(tiny):
    from harmonix.benchmark import check_subjects
    from harmonix.exceptions import BenchmarkWarning

    # site1 numbers its own subjects: its "sub-00" is another person (another age)
    subjects = tiny.subjects.copy()
    at1 = np.flatnonzero(tiny.sites == "site1")
    subjects[at1] = np.roll(subjects[at1], 1)
    local = SimpleNamespace(**{**vars(tiny), "subjects": subjects})
    with pytest.warns(BenchmarkWarning, match="site-local"):
        run_benchmark({"none": IdentityHarmonizer()}, local, metrics=["fit_seconds"], n_boot=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BenchmarkWarning)
        run_benchmark({"none": IdentityHarmonizer()}, tiny, metrics=["fit_seconds"], n_boot=0)
        check_subjects(tiny.subjects, tiny.sites, tiny.ages + 1.5 * (tiny.sites == "site1"))
    with pytest.warns(BenchmarkWarning, match="sex F \\(a\\), M \\(b\\)"):
        check_subjects(["s1", "s1"], ["a", "b"], [30.0, 30.0], ["F", "M"])
    covariates = SimpleNamespace(**{**vars(tiny), "covariates": {"Sex": ["F", "M", "F"] * 4}})
    with pytest.warns(BenchmarkWarning, match="sex"):
        run_benchmark({"none": IdentityHarmonizer()}, covariates, metrics=["fit_seconds"])


# -- disease metrics ------------------------------------------------------------------------
def test_disease_effect_recovers_a_known_effect_and_auc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    from harmonix.benchmark import disease_effect
    from harmonix.benchmark.metrics.disease import auc

    rng = np.random.default_rng(0)
    n = 4000
    age, sex = rng.uniform(20, 80, n), rng.choice(["F", "M"], n)
    dx = np.where(rng.random(n) < 0.4, "AD", "CN")
    y = 10 + 0.05 * age + 0.8 * (sex == "M") - 1.5 * (dx == "AD") + rng.normal(0, 1, n)
    cov = {"age": age, "sex": sex}
    assert disease_effect(y, dx, cov) == pytest.approx(-1.5, abs=0.05)
    # unadjusted, the age and sex variance dilutes the effect
    assert abs(disease_effect(y, dx)) < 1.45
    with pytest.raises(ValueError, match="control level 'CN'"):
        disease_effect(y, np.where(dx == "AD", "AD", "HC"))
    scores = np.round(rng.normal(size=300), 1)  # ties
    labels = rng.random(300) < 0.3
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


@pytest.fixture(scope="module")
def confounded():
    from _helpers import make_own_subjects

    return make_own_subjects(n_subjects=8, random_state=1, diagnosis_prevalence=(0.25, 0.75, 0.5))


def test_run_benchmark_disease_metrics_and_covariates_per_method(confounded):
    from harmonix import ComBatHarmonizer

    combat = ComBatHarmonizer(reference_site="site0")
    metrics = ["disease_effect_error", "true_disease_effect", "disease_auc_score"]
    df, outputs = run_benchmark(
        {"ComBat": combat, "ComBat+dx": combat},
        confounded,
        test_sites=[],
        oracle=True,
        metrics=metrics,
        covariates={"ComBat": ["age", "sex"], "ComBat+dx": ["age", "sex", "diagnosis"]},
        random_state=0,
        n_boot=50,
        return_outputs=True,
        raise_errors=True,
    )
    assert set(df.metric) == set(metrics) and df["value"].notna().all()
    true = df[df.metric == "true_disease_effect"]["value"]
    assert true.nunique() == 1 and true.iloc[0] < -1  # the same truth for every row
    # the oracle's images are each subject's reference-site scan
    np.testing.assert_array_equal(outputs["oracle"], confounded.reference_imgs)
    # the two ComBats were fitted with different covariates
    assert not np.allclose(outputs["ComBat"], outputs["ComBat+dx"])
    by_hand = combat.fit(confounded.imgs, confounded.sites, covariates=confounded.covariates)
    np.testing.assert_allclose(
        outputs["ComBat+dx"],
        by_hand.transform(confounded.imgs, confounded.sites, covariates=confounded.covariates),
        rtol=1e-6,
        atol=1e-3,
    )
    for bad, match in (
        ({"nobody": ["age"]}, "not harmonizers"),
        ({"ComBat": ["age", "bmi"]}, r"names \['bmi'\], not columns"),
    ):
        with pytest.raises(ValueError, match=match):
            run_benchmark({"ComBat": combat}, confounded, test_sites=[], covariates=bad)


def test_traveling_metrics_say_why_without_traveling_subjects(confounded):
    cross_site = ["traveling_subject_ssim_score", "subject_specificity_score"]
    df = run_benchmark({"none": IdentityHarmonizer()}, confounded, metrics=cross_site, n_boot=20)
    reasons = df.set_index(["protocol", "metric"])["reason"]
    assert df["value"].isna().all() and df[["ci_low", "ci_high"]].isna().all(axis=None)
    for protocol in ("seen", "unseen"):
        assert reasons[protocol, cross_site[0]] == "no subject has images at two sites"
        assert reasons[protocol, cross_site[1]] == (
            "needs subjects with images at two sites and other subjects there"
        )


def test_feature_metrics_take_tables():
    from _helpers import make_feature_study

    from harmonix import ComBatHarmonizer
    from harmonix.benchmark import brain_age_error, brain_age_null_error
    from harmonix.benchmark import site_predictability_error as site_error

    X, sites, cov = make_feature_study(n_per=(40, 40, 40), n_features=12, seed=5)
    harmonized = ComBatHarmonizer().fit_transform(X, sites, covariates=cov)
    before = site_error(pd.DataFrame(X), sites, None, random_state=0)
    after = site_error(harmonized, sites, None, random_state=0)
    assert before > 0.75 and after < 0.5  # chance 1/3
    mae = brain_age_error(harmonized, cov["age"], None, random_state=0)
    assert mae < 0.8 * brain_age_null_error(cov["age"], random_state=0)
