"""HarmonizerStep: harmonizers inside scikit-learn pipelines and cross-validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold, cross_validate
from sklearn.pipeline import make_pipeline

from harmonix import ComBatHarmonizer, HarmonizerStep, IdentityHarmonizer
from harmonix.base import BaseHarmonizer


class SiteMeanHarmonizer(BaseHarmonizer):
    """Test helper: divides each image by its brain mean (removes a per-site gain)."""

    def __init__(self, mask=None):
        self.mask = mask

    def _fit(self, data):
        self.seen_ages_ = data.ages is not None
        cov = data.covariates
        self.seen_covariates_ = None if cov is None else cov.to_dict("list")

    def _transform_one(self, data, brain, site, age):
        return data / data[brain].mean()


@pytest.fixture
def routing():
    sklearn.set_config(enable_metadata_routing=True)
    yield
    sklearn.set_config(enable_metadata_routing=False)


def _cross_validate(tiny, metadata: dict, **kwargs) -> dict:
    """Ages predicted by Ridge from SiteMeanHarmonizer's images, 3 folds grouped by
    subject, with ``metadata`` routed (``cross_validate(..., params=...)``)."""
    imgs, _, ages, subjects = tiny
    pipe = make_pipeline(HarmonizerStep(SiteMeanHarmonizer(), flatten=True), Ridge(alpha=1.0))
    return cross_validate(
        pipe,
        imgs,
        ages,
        params={**metadata, "groups": subjects},
        cv=GroupKFold(n_splits=3),
        return_estimator=True,
        **kwargs,
    )


def test_cross_validate_with_metadata_routing(routing, tiny):
    _, sites, ages, _ = tiny
    res = _cross_validate(tiny, {"sites": sites, "ages": ages})
    assert len(res["test_score"]) == 3 and np.isfinite(res["test_score"]).all()
    step = res["estimator"][0][0]
    assert step.harmonizer_.seen_ages_  # ages reached the harmonizer
    assert set(step.harmonizer_.sites_) == set(sites)


def test_covariates_are_routed_and_split_into_folds(routing, tiny):
    sites = tiny[1]
    cov = pd.DataFrame({"bmi": np.tile([20.0, 25.0, 31.0], 3) + np.repeat([0, 0.1, 0.2], 3)})
    res = _cross_validate(tiny, {"sites": sites, "covariates": cov}, return_indices=True)
    for est, train in zip(res["estimator"], res["indices"]["train"]):
        seen = est[0].harmonizer_.seen_covariates_
        assert seen["bmi"] == cov["bmi"][train].tolist()  # the training fold's rows


def test_step_harmonizes_a_table_with_combat():
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(100, 10, (40, 5)), columns=list("abcde"))
    sites = np.repeat(["s", "t"], 20)
    cov = pd.DataFrame({"sex": np.tile(["F", "M"], 20)})
    step = HarmonizerStep(ComBatHarmonizer())
    out = step.fit_transform(X, sites=sites, covariates=cov)
    expected = ComBatHarmonizer().fit_transform(X, sites, covariates=cov)
    pd.testing.assert_frame_equal(out, expected)
    flat = HarmonizerStep(ComBatHarmonizer(), flatten=True).fit(X, sites=sites, covariates=cov)
    np.testing.assert_array_equal(flat.transform(X, sites=sites, covariates=cov), expected)


def test_pipeline_without_routing(tiny):
    imgs, sites, ages, _ = tiny
    pipe = make_pipeline(HarmonizerStep(IdentityHarmonizer(), flatten=True), Ridge())
    pipe.fit(imgs, ages, harmonizerstep__sites=sites)
    assert pipe.predict(imgs).shape == (len(imgs),)
    with pytest.raises(ValueError, match="needs sites"):
        make_pipeline(HarmonizerStep(IdentityHarmonizer()), Ridge()).fit(imgs, ages)


def test_step_outputs(tiny):
    imgs, sites, _, _ = tiny
    step = HarmonizerStep(SiteMeanHarmonizer())
    out = step.fit_transform(imgs, sites=sites)
    assert out.shape == imgs.shape
    flat = HarmonizerStep(SiteMeanHarmonizer(), flatten=True).fit(imgs, sites=sites)
    assert flat.transform(imgs).shape == (len(imgs), int(np.prod(imgs.shape[1:])))
    # the harmonized images no longer carry the per-site gain
    means = [out[i][imgs[i] > 0].mean() for i in range(len(imgs))]
    np.testing.assert_allclose(means, 1.0, rtol=1e-5)
    with pytest.raises(TypeError, match="'site'"):  # a misspelt metadata name
        HarmonizerStep(SiteMeanHarmonizer()).fit_transform(imgs, site=sites)
