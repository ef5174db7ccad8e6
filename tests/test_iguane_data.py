"""IGUANe data handling (harmonix.iguane.inputs.volumes): intensity scale, loading, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harmonix.iguane.inputs import volumes as D
from harmonix.iguane.training import sampling as S
from harmonix.iguane.training.sampling import Pair, SitePairSampler, age_bin_probabilities

pytestmark = pytest.mark.usefixtures("one_thread")


# -- intensity scale -----------------------------------------------------------------------
def test_prepare_volume_scale_grid_and_inverse():
    rng = np.random.default_rng(0)
    data = np.zeros((12, 14, 12), np.float32)
    data[2:10, 3:11, 2:10] = rng.uniform(50, 150, (8, 8, 8))
    original = data.copy()
    p = D.prepare_volume(data)
    np.testing.assert_array_equal(data, original)
    assert p.x.shape == (16, 16, 16) and p.x.dtype == np.float32
    assert (p.x[~p.mask] == -1).all() and p.mask.sum() == (data != 0).sum()
    assert np.median(p.x[p.mask]) == pytest.approx(0.0, abs=1e-6)
    back = p.change.invert(D.from_network_scale(p.x, p.mask))
    median = np.median(data[data != 0])
    np.testing.assert_allclose(back, data * 500 / median, rtol=1e-5, atol=1e-3)
    fixed = D.prepare_volume(data, input_shape=(32, 16, 16))
    assert fixed.x.shape == (32, 16, 16)


def test_negative_median_is_refused():
    with pytest.raises(ValueError, match="positive intensities"):
        D.brain_median(-np.ones((4, 4, 4)))


def test_network_input_zeroes_background():
    x = torch.tensor([-1.0, 0.5, -0.25])
    m = torch.tensor([False, True, True])
    assert D.network_input(x, m).tolist() == [0.0, 0.5, -0.25]


def test_volume_loader_caches_lru():
    calls = []
    images = [np.full((4, 4, 4), float(i + 1), np.float32) for i in range(3)]

    def get(i):
        calls.append(i)
        return images[i]

    loader = D.VolumeLoader(get, [1.0, 2.0, 3.0], cache_size=2)
    assert len(loader) == 3
    loader[0], loader[1], loader[0], loader[2], loader[1]
    assert calls == [0, 1, 2, 1]  # 1 was evicted when 2 came in (0 was used more recently)
    x, mask = loader[0]
    assert x.shape == (16, 16, 16) and mask.sum() == 64


# -- age-balanced sampling -----------------------------------------------------------------
def test_age_bin_probabilities_common_distribution():
    src = [20, 21, 22, 31, 41, 42, 70]
    ref = [25, 26, 27, 28, 35, 36, 44]
    edges, probs = age_bin_probabilities(src, ref, bin_width=10)
    np.testing.assert_allclose(edges, [25, 35, 45])  # shared range 25..44
    # src: [25,35) 1/7, [35,45] 2/7 ; ref: 4/7, 3/7 -> min 1/7, 2/7
    np.testing.assert_allclose(probs, [1 / 3, 2 / 3])
    _, none = age_bin_probabilities([10, 12], [50, 60])
    assert none.size == 0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0, 100), min_size=1, max_size=30),
    st.lists(st.floats(0, 100), min_size=1, max_size=30),
    st.floats(0.5, 20),
)
def test_age_bin_probabilities_properties(src, ref, width):
    edges, probs = age_bin_probabilities(src, ref, width)
    if probs.size == 0:
        return
    assert probs.sum() == pytest.approx(1.0) and (probs >= 0).all()
    src_bins = S._bin_of(np.asarray(src), edges)
    ref_bins = S._bin_of(np.asarray(ref), edges)
    for b in range(len(probs)):  # a bin missing on either side gets 0
        if not ((src_bins == b).any() and (ref_bins == b).any()):
            assert probs[b] == 0


def test_sampler_balances_ages_and_orders_pairs():
    rng = np.random.default_rng(0)
    ref_ages = np.concatenate([rng.uniform(20, 40, 30), rng.uniform(40, 80, 10)])
    src_ages = np.concatenate([rng.uniform(20, 40, 8), rng.uniform(40, 80, 32)])
    sites = np.array(["ref"] * 40 + ["s"] * 40)
    ages = np.concatenate([ref_ages, src_ages])
    sampler = SitePairSampler(sites, "ref", ages, age_bin_width=10)
    assert sampler.source_sites == ["s"] and sampler.balanced == {"s": True}
    pairs = [sampler.sample("s", rng) for _ in range(4000)]
    assert all(isinstance(p, Pair) for p in pairs)
    assert all(sites[p.source] == "s" and sites[p.reference] == "ref" for p in pairs)
    src_drawn = ages[[p.source for p in pairs]]
    ref_drawn = ages[[p.reference for p in pairs]]
    edges, probs = age_bin_probabilities(src_ages, ref_ages, 10)
    src_bins, ref_bins = S._bin_of(src_drawn, edges), S._bin_of(ref_drawn, edges)
    np.testing.assert_array_equal(src_bins, ref_bins)  # both images of a pair share a bin
    freq = np.bincount(src_bins, minlength=len(probs))[: len(probs)] / len(pairs)
    np.testing.assert_allclose(freq, probs, atol=0.03)
    # unbalanced sampling draws 80 % of the sources above 40; the common distribution
    # (bin-wise minimum: 0.1, 0.1 below 40 and 4 x 0.0625 above) about 56 %
    assert 0.45 < (src_drawn > 40).mean() < 0.67


def test_sampler_without_ages_respects_indices():
    sites = np.array(["r", "r", "r", "a", "a", "b"])
    sampler = SitePairSampler(sites, "r", indices=[0, 1, 3, 5])
    rng = np.random.default_rng(1)
    seen = {sampler.sample(s, rng) for s in ("a", "b") for _ in range(50)}
    assert {p.source for p in seen} == {3, 5} and {p.reference for p in seen} == {0, 1}
    with pytest.raises(ValueError, match="no training image"):
        SitePairSampler(sites, "r", indices=[0, 3])


def test_sampler_falls_back_when_ages_do_not_overlap():
    sites = np.array(["r", "r", "a", "a"])
    sampler = SitePairSampler(sites, "r", [20, 25, 70, 75])
    assert sampler.balanced == {"a": False}
    assert sampler.sample("a", np.random.default_rng(0)).source in (2, 3)


def test_sampler_balances_strata_with_ages():
    rng = np.random.default_rng(0)
    sites = np.array(["ref"] * 60 + ["s"] * 60)
    ages = rng.uniform(20, 80, 120)
    # 10 % patients at the reference, 70 % at the source site: a pair never mixes them
    dx = np.array(["AD"] * 6 + ["CN"] * 54 + ["AD"] * 42 + ["CN"] * 18)
    sampler = SitePairSampler(sites, "ref", ages, age_bin_width=20, strata=dx)
    assert sampler.balanced == {"s": True}
    pairs = [sampler.sample("s", rng) for _ in range(3000)]
    src, ref = np.array([p.source for p in pairs]), np.array([p.reference for p in pairs])
    np.testing.assert_array_equal(dx[src], dx[ref])
    edges, _ = age_bin_probabilities(ages[60:], ages[:60], 20)
    np.testing.assert_array_equal(S._bin_of(ages[src], edges), S._bin_of(ages[ref], edges))
    # the common distribution: min(10 %, 70 %) patients and min(90 %, 30 %) controls, so
    # 0.1 / 0.4 = 25 % of the pairs are patients (70 % unbalanced)
    assert 0.17 < (dx[src] == "AD").mean() < 0.33
    # strata alone balance too; strata without a common level fall back to uniform
    only = SitePairSampler(sites, "ref", strata=dx)
    drawn = [only.sample("s", rng) for _ in range(500)]
    assert all(dx[p.source] == dx[p.reference] for p in drawn)
    apart = SitePairSampler(sites, "ref", strata=np.repeat(["x", "y"], 60))
    assert apart.balanced == {"s": False}


def test_sampler_with_one_stratum_draws_as_without():
    rng_ages = np.random.default_rng(3)
    sites = np.array(["ref"] * 30 + ["s"] * 30 + ["t"] * 20)
    ages = rng_ages.uniform(20, 80, 80)
    plain = SitePairSampler(sites, "ref", ages)
    single = SitePairSampler(sites, "ref", ages, strata=["all"] * 80)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    for site in ["s", "t"] * 50:
        assert plain.sample(site, a) == single.sample(site, b)
