"""Tests of harmonix.benchmark: metrics with known answers, the runner and the reports."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage
from sklearn.base import BaseEstimator, TransformerMixin

from harmonix import IdentityHarmonizer
from harmonix.base import BaseHarmonizer
from harmonix.benchmark import (
    METRICS,
    brain_age_error,
    distance_correlation_score,
    gm_age_correlation,
    gm_volumes,
    masked_ssim,
    measure_cost,
    plot_metrics,
    plot_slices,
    robust_range,
    robust_scale,
    run_benchmark,
    site_predictability,
    summarize,
    to_markdown,
    traveling_subject_ssim_score,
    truth_ssim_score,
)

SHAPE = (14, 14, 14)


# ----------------------------------------------------------------------------------------
# Hand-made data with known structure
# ----------------------------------------------------------------------------------------
def _sphere(shape=SHAPE, radius=6.0):
    grid = np.indices(shape) - (np.array(shape)[:, None, None, None] - 1) / 2
    return np.sqrt((grid**2).sum(0)) <= radius


def _subject(rng, mask, atrophy=0.0):
    """A 3-tissue 'brain': CSF 0.3, GM 0.6, WM 1.0; a fraction ``atrophy`` of GM -> CSF."""
    field = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.5)
    lo, hi = np.quantile(field[mask], [0.25, 0.6])
    tissue = np.where(field < lo, 0.3, np.where(field < hi, 0.6, 1.0))
    gm = tissue == 0.6
    tissue[gm & (rng.random(mask.shape) < atrophy)] = 0.3
    return np.where(mask, tissue, 0.0)


def _toy(n_subjects=10, scales=(1.0, 1.0, 1.0), noise=0.02, atrophy_rate=0.0, seed=0):
    """Traveling subjects: subject j at site s = scales[s] * (anatomy_j + noise)."""
    rng = np.random.default_rng(seed)
    mask = _sphere()
    ages = rng.uniform(20, 80, n_subjects)
    anat = [_subject(rng, mask, atrophy_rate * (a - 20)) for a in ages]
    imgs, sites, subjects, img_ages = [], [], [], []
    for s, c in enumerate(scales):
        for j in range(n_subjects):
            img = c * (anat[j] + noise * rng.standard_normal(SHAPE))
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

    def _fit(self, imgs, sites, ages):
        meds = np.array([np.median(d[b]) for d, b in self._iter_brains(imgs)])
        self.scale_ = {str(s): float(meds[sites == s].mean()) for s in np.unique(sites)}

    def _transform_one(self, data, brain, site, age):
        if str(site) not in self.scale_:
            raise ValueError(f"Site {site!r} was not seen in fit (unseen site).")
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


def test_site_predictability_pure_site_shift():
    ds = _toy(n_subjects=12, scales=(1.0, 1.4, 2.0), seed=3)
    before = site_predictability(ds.imgs, ds.sites, ds.mask, ds.subjects, random_state=0)
    assert before > 0.9
    harmonized = SiteScaler().fit_transform(ds.imgs, ds.sites)
    after = site_predictability(harmonized, ds.sites, ds.mask, ds.subjects, random_state=0)
    assert after < 0.6  # chance = 1/3
    assert after < before - 0.3


def test_brain_age_error_small_with_planted_signal():
    rng = np.random.default_rng(0)
    mask = _sphere()
    n = 40
    ages = rng.uniform(20, 80, n)
    subjects = np.arange(n)
    base = np.where(mask, 1.0, 0.0)
    region = mask & (np.indices(SHAPE)[0] < 7)
    imgs = []
    for a in ages:
        img = base + 0.05 * rng.standard_normal(SHAPE)
        img[region] -= 0.006 * (a - 20)  # intensity declines with age in one half
        imgs.append(np.where(mask, img, 0.0))
    imgs = np.asarray(imgs, np.float32)
    mae = brain_age_error(imgs, ages, mask, subjects, random_state=0)
    chance = brain_age_error(imgs, rng.permutation(ages), mask, subjects, random_state=0)
    assert mae < 4.0
    assert mae < chance / 2
    # train on the first half, test on the second (the "unseen" protocol)
    train = np.arange(n) < n // 2
    groups = np.r_[np.arange(n // 2), np.arange(n // 2)]
    assert brain_age_error(imgs, ages, mask, groups, train=train, random_state=0) < 6.0
    with pytest.raises(ValueError, match="ages"):
        brain_age_error(imgs, ages[:-1], mask)


def test_gm_age_correlation_detects_planted_atrophy():
    ds = _toy(n_subjects=15, scales=(1.0,), atrophy_rate=0.006, seed=2)
    vols = gm_volumes(ds.imgs, ds.mask)
    truth_vols = [(np.isclose(t, 0.6) & ds.mask).sum() for t in ds.truth]
    assert np.corrcoef(vols, truth_vols)[0, 1] > 0.95
    assert gm_age_correlation(ds.imgs, ds.ages, ds.mask) < -0.8
    # units do not matter (per-image segmentation)
    assert gm_age_correlation(10 * ds.imgs + 1, ds.ages, ds.mask) == pytest.approx(
        gm_age_correlation(ds.imgs, ds.ages, ds.mask)
    )
    flat = _toy(n_subjects=15, scales=(1.0,), atrophy_rate=0.0, seed=2)
    r_flat = gm_age_correlation(flat.imgs, flat.ages, flat.mask)
    assert np.isnan(r_flat) or abs(r_flat) < 0.6  # no atrophy: no (or constant) decline


def test_measure_cost_records_time_and_memory():
    def allocate():
        a = np.ones(50_000_000 // 8)
        return float(a.sum())

    result, seconds, peak_mb = measure_cost(allocate)
    assert result == 50_000_000 // 8
    assert seconds >= 0
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


@pytest.fixture(scope="module")
def results(tiny):
    harmonizers = {
        "none": IdentityHarmonizer(),
        "scaler": SiteScaler(),
        "plain": PlainScaler(),
    }
    return run_benchmark(harmonizers, tiny, random_state=0, return_outputs=True)


def test_run_benchmark_tidy_frame(results, tiny):
    df, outputs = results
    assert list(df.columns) == ["method", "protocol", "metric", "value", "reason"]
    assert set(df["protocol"]) == {"seen", "unseen"}
    assert set(df["metric"]) == set(METRICS)
    assert len(df) == 3 * 2 * len(METRICS)
    seen = df[(df.protocol == "seen")]
    assert seen["value"].notna().all(), seen[seen["value"].isna()]
    none = df[(df.method == "none") & (df.protocol == "seen")].set_index("metric")["value"]
    assert none["distance_correlation_score"] == pytest.approx(1.0)
    assert 0 < none["traveling_ssim_score"] < 1
    # an affine map of the identity output scores the same image metrics
    plain = df[(df.method == "plain") & (df.protocol == "seen")].set_index("metric")["value"]
    for m in ("traveling_ssim_score", "truth_ssim_score", "distance_correlation_score"):
        assert plain[m] == pytest.approx(none[m], abs=1e-4)
    assert set(outputs) == {"none", "scaler", "plain"}
    np.testing.assert_allclose(outputs["none"], tiny.imgs)


def test_run_benchmark_unseen_refusal_gives_nan_with_reason(results):
    df, outputs = results
    unseen = df[(df.method == "scaler") & (df.protocol == "unseen")]
    costs = {"fit_seconds", "fit_peak_mb"}
    refused = unseen[~unseen.metric.isin(costs)]
    assert refused["value"].isna().all()
    assert refused["reason"].str.contains("cannot harmonize unseen sites").all()
    assert unseen[unseen.metric.isin(costs)]["value"].notna().all()
    assert np.isnan(outputs["scaler"][-1]).all()  # last site is the held-out one
    ok = df[(df.method == "none") & (df.protocol == "unseen")]
    assert ok["value"].notna().all()
    assert (ok["reason"] == "").all()


def test_run_benchmark_other_errors_are_recorded_or_raised(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="harmonix.benchmark"):
        df = run_benchmark(
            {"broken": BrokenHarmonizer()},
            tiny,
            metrics=["traveling_ssim_score", "fit_seconds"],
            test_sites=[],
        )
    assert set(df["protocol"]) == {"seen"}
    row = df[df.metric == "traveling_ssim_score"].iloc[0]
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
    df2 = run_benchmark(
        {"none": IdentityHarmonizer(), "scaler": SiteScaler()},
        tiny,
        random_state=1,
        metrics=["fit_seconds", "site_predictability"],
    )
    summary = summarize([df, df2])
    assert list(summary.columns) == ["method", "protocol", "metric", "mean", "sd", "n",
                                     "reason"]
    row = summary[(summary.method == "none") & (summary.metric == "fit_seconds")
                  & (summary.protocol == "seen")].iloc[0]
    assert row["n"] == 2 and np.isfinite(row["sd"])
    plain = summary[(summary.method == "plain") & (summary.metric == "fit_seconds")
                    & (summary.protocol == "seen")].iloc[0]
    assert plain["n"] == 1 and np.isnan(plain["sd"])
    md = to_markdown(summary)
    assert "### Seen sites" in md and "### Unseen sites" in md
    assert "traveling_ssim_score ↑" in md and "brain_age_error ↓" in md
    assert " ± " in md
    assert "n/a [1]" in md and "cannot harmonize unseen sites" in md
    md_single = to_markdown(df, metrics=["traveling_ssim_score"], legend=False)
    assert " ± " not in md_single and md_single.count("| none |") == 2
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_plots_write_png(results, tiny, tmp_path):
    df, outputs = results
    png = b"\x89PNG"
    p1 = plot_metrics(df, tmp_path / "metrics.png")
    p2 = plot_metrics(summarize([df, df]), tmp_path / "sub" / "summary.png")
    p3 = plot_slices(outputs, tiny, tiny.subjects[0], tmp_path / "slices.png",
                     test_sites=[tiny.sites[-1]])
    for p in (p1, p2, p3):
        assert p.read_bytes()[:4] == png and p.stat().st_size > 1000
    with pytest.raises(ValueError, match="not in the dataset"):
        plot_slices(outputs, tiny, "nobody", tmp_path / "x.png")


def test_metrics_registry_directions():
    assert all(d in ("higher", "lower") for d, _ in METRICS.values())
    for name, (direction, _) in METRICS.items():
        if name.endswith("_score"):
            assert direction == "higher"
        if name.endswith("_error"):
            assert direction == "lower"


def test_dataset_from_manifest(tiny, tmp_path):
    from harmonix.benchmark import dataset_from_manifest
    from harmonix.datasets import write_nifti_dataset

    manifest = write_nifti_dataset(tiny, tmp_path / "data", compress=False)
    ds = dataset_from_manifest(manifest)
    assert len(ds) == len(tiny.imgs) and ds.truth is None
    np.testing.assert_array_equal(ds.imgs, tiny.imgs)
    np.testing.assert_array_equal(ds.mask, tiny.mask)
    np.testing.assert_array_equal(ds.subjects, tiny.subjects)
    df = run_benchmark({"none": IdentityHarmonizer()}, ds,
                       metrics=["traveling_ssim_score", "truth_ssim_score"])
    truth = df[df.metric == "truth_ssim_score"]
    assert truth["value"].isna().all() and (truth["reason"] == "dataset has no truth").all()
    assert df[df.metric == "traveling_ssim_score"]["value"].notna().all()
