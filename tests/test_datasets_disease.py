"""Diagnosis, sex and subjects of their own per site in the synthetic data (make_multisite)."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import make_own_subjects

from harmonix.benchmark.metrics.disease import disease_effect
from harmonix.datasets import disease_region, make_multisite, write_nifti_dataset
from harmonix.io import read_manifest


@pytest.fixture(scope="module")
def plain():
    return make_multisite(n_subjects=6, n_sites=3, resolution=4, random_state=7)


@pytest.fixture(scope="module")
def sick():
    return make_multisite(
        n_subjects=6, n_sites=3, resolution=4, random_state=7, diagnosis_prevalence=0.5
    )


@pytest.fixture(scope="module")
def confounded():
    return make_own_subjects(n_subjects=10, random_state=7)


def test_without_options_the_dataset_has_age_only(plain):
    assert list(plain.covariates.columns) == ["age"]
    np.testing.assert_array_equal(plain.covariates["age"], plain.ages)
    assert plain.disease_severity is None and plain.reference_imgs is None and plain.traveling
    expected = plain.gm[:, plain.disease_region].sum(axis=1) * 4**3 / 1000
    np.testing.assert_allclose(plain.pattern_gm_volume, expected)


def test_diagnosis_and_sex_change_only_whom_they_touch(plain, sick):
    cov = sick.covariates
    assert list(cov.columns) == ["age", "sex", "diagnosis"]
    np.testing.assert_array_equal(sick.ages, plain.ages)  # same subjects, same ages
    dx, sex = cov["diagnosis"].to_numpy(), cov["sex"].to_numpy()
    assert (dx[:6] == "AD").sum() == 3  # round(0.5 * 6) patients, the same at every site
    np.testing.assert_array_equal(dx[:6], dx[6:12])
    healthy_women = (dx == "CN") & (sex == "F")
    assert healthy_women.any() and (~healthy_women).any()
    # controls without the sex effect are the subjects of the plain data set, bit for bit
    np.testing.assert_array_equal(sick.imgs[healthy_women], plain.imgs[healthy_women])
    for i in np.flatnonzero(~healthy_women):  # the others lost GM (and only GM moved)
        assert sick.gm[i].sum() < plain.gm[i].sum()
    assert (sick.disease_severity[dx == "CN"] == 0).all()
    assert (
        (sick.disease_severity[dx == "AD"] >= 0.5) & (sick.disease_severity[dx == "AD"] <= 1.5)
    ).all()
    params = sick.subject_params[0]
    assert params["sex"] == sex[0] and params["disease_severity"] == sick.disease_severity[0]


def test_disease_pattern_is_medial_temporal_and_distinct_from_sex(confounded):
    region = disease_region(4)
    np.testing.assert_array_equal(region, confounded.disease_region)
    ijk = np.argwhere(region)
    world = (confounded.affine @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T
    left, right = world[world[:, 0] < 0], world[world[:, 0] > 0]
    for side, sign in ((left, -1), (right, 1)):  # a blob per hemisphere at (+-25, -18, -18)
        np.testing.assert_allclose(side.mean(axis=0), [sign * 25, -18, -18], atol=6)
    # the same subjects without diagnosis and sex: patients lost GM in the region, men
    # elsewhere (the sex effect lies in the superior brain)
    plain = make_own_subjects(n_subjects=10, random_state=7, diagnosis_prevalence=None)
    np.testing.assert_array_equal(plain.ages, confounded.ages)
    dx = confounded.covariates["diagnosis"].to_numpy()
    men = confounded.covariates["sex"].to_numpy() == "M"
    loss = plain.pattern_gm_volume - confounded.pattern_gm_volume
    whole = plain.gm_volume - confounded.gm_volume
    assert (loss[dx == "AD"] > 0.1).all()  # mL
    male_controls = men & (dx == "CN")
    assert male_controls.sum() >= 3 and (whole[male_controls] > 5).all()
    assert (loss[male_controls] < 0.05 * whole[male_controls]).all()
    np.testing.assert_array_equal(loss[~men & (dx == "CN")], 0.0)


def test_site_confounded_subjects_of_their_own(confounded, sick):
    ds = confounded
    cov = ds.covariates
    assert not ds.traveling and len(set(ds.subjects.tolist())) == len(ds)
    counts = cov.groupby(ds.sites)["diagnosis"].apply(lambda d: int((d == "AD").sum()))
    assert counts.to_dict() == {"site0": 1, "site1": 7, "site2": 4}
    # site 0 scans the traveling subjects (with site 0's prevalence): the same images
    traveling = make_multisite(
        n_subjects=10, n_sites=3, resolution=4, random_state=7, diagnosis_prevalence=0.1
    )
    np.testing.assert_array_equal(ds.imgs[:10], traveling.imgs[:10])
    np.testing.assert_array_equal(cov[:10], traveling.covariates[:10])
    # every image's subject scanned at the reference site: the oracle's images
    assert ds.reference_imgs.shape == ds.imgs.shape
    np.testing.assert_array_equal(ds.reference_imgs[:10], ds.imgs[:10])
    for i in (10, 25):
        other = ds.reference_imgs[i]
        assert not np.array_equal(other, ds.imgs[i])
        np.testing.assert_array_equal(other > 0, ds.masks[i])  # the same subject
    # the effect of diagnosis on the true regional volumes, adjusted for age and sex
    d = disease_effect(ds.pattern_gm_volume, cov["diagnosis"], cov[["age", "sex"]])
    assert d < -1.5


def test_reproducible_and_written_with_the_covariates(confounded, tmp_path):
    again = make_own_subjects(n_subjects=10, random_state=7)
    np.testing.assert_array_equal(again.imgs, confounded.imgs)
    man = read_manifest(write_nifti_dataset(confounded, tmp_path, compress=False))
    assert list(man.extra.columns) == ["sex", "diagnosis"]
    np.testing.assert_array_equal(man.extra["diagnosis"], confounded.covariates["diagnosis"])
    np.testing.assert_array_equal(man.subjects, confounded.subjects)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"diagnosis_prevalence": 1.5}, r"must lie in \[0, 1\]"),
        ({"diagnosis_prevalence": "often"}, r"must lie in \[0, 1\]"),
        ({"diagnosis_prevalence": (0.1, 0.2)}, "one per site"),
        ({"diagnosis_prevalence": (0.1, 0.5, 0.5)}, "need traveling=False"),
        ({"traveling": "no"}, "traveling must be True or False"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_multisite(n_subjects=2, n_sites=3, resolution=4, **kwargs)
