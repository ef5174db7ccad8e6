"""ComBat with a full design (age, sex, diagnosis...) and on tables of features.

Numbers are checked against neuroHarmonize 2.5.2, which takes categorical covariates coded
0/1 by the caller while harmonix takes the strings.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from _helpers import make_feature_study as make_study
from _helpers import rel_diff

from harmonix.combat import ComBatHarmonizer
from harmonix.combat import _math as cm
from harmonix.inputs.tables import FeatureTable

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


def numeric_covars(sites, cov):
    """neuroHarmonize's covariates: SITE and the categorical columns coded 0/1."""
    return pd.DataFrame(
        {
            "SITE": sites,
            "age": cov["age"],
            "sex": (cov["sex"] == "M").astype(float),
            "diagnosis": (cov["diagnosis"] == "CN").astype(float),
        }
    )


@pytest.fixture(scope="module")
def study():
    return make_study()


# -- parity with neuroHarmonize --------------------------------------------------------------
@pytest.mark.parametrize("reference", [None, "s1"], ids=["no-ref", "ref"])
@pytest.mark.parametrize("eb", [True, False], ids=["eb", "ls"])
def test_table_parity_with_neuroharmonize(study, eb, reference):
    nh = pytest.importorskip("neuroHarmonize")
    X, sites, cov = study
    covars = numeric_covars(sites, cov)
    model, learned = nh.harmonizationLearn(X, covars, eb=eb, ref_batch=reference)
    applied = nh.harmonizationApply(X, covars, model)
    h = ComBatHarmonizer(reference_site=reference, empirical_bayes=eb).fit(X, sites, None, cov)
    assert h.covariates_ == ["age", "sex[M]", "diagnosis[CN]"]
    out = h.transform(X, sites, covariates=cov)
    assert out.dtype == np.float64 and out.shape == X.shape
    # neuroHarmonize rounds the covariates to float32 in its design (neuroCombat's
    # make_design_matrix), harmonix keeps float64: equal to about 1e-7 relative
    assert rel_diff(out, applied) < 1e-6
    assert rel_diff(out, learned) < 1e-6
    np.testing.assert_allclose(h.var_pooled_, model["var_pooled"].ravel(), rtol=1e-6)


def test_voxel_parity_with_categorical_covariates(study):
    nh = pytest.importorskip("neuroHarmonize")
    X, sites, cov = study
    imgs = X.reshape(len(X), 4, 5, 2).astype(np.float32)
    covars = numeric_covars(sites, cov)
    flat = imgs.reshape(len(imgs), -1).astype(np.float64)
    model, _ = nh.harmonizationLearn(flat, covars)
    expected = nh.harmonizationApply(flat, covars, model)
    for chunk in (7, None):
        h = ComBatHarmonizer(chunk_size=chunk).fit(imgs, sites, covariates=cov)
        out = h.transform(imgs, sites, covariates=cov)
        assert out.dtype == np.float32
        assert rel_diff(out.reshape(len(imgs), -1), expected) < 1e-6


def test_table_and_voxel_regressions_agree(study):
    X, sites, cov = study
    labels, codes = np.unique(sites, return_inverse=True)
    columns = np.column_stack([cov["age"], cov["sex"] == "M"]).astype(float)
    for ref in (None, 1):
        design = cm.design_matrix(codes, len(labels), columns, ref)
        a = cm.voxel_regression(X, design, codes, len(labels), ref, chunk_size=13)
        b = cm.table_regression(X, columns, codes, len(labels), ref)
        for name in ("coef", "grand_mean", "var_pooled", "site_mean", "site_ss"):
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", ["large_offset", "exact_fit", "constant"])
def test_table_regression_keeps_its_digits_on_hard_features(study, case):
    """Features whose sums of squares would cancel digits: a mean 1e8 times the spread
    (against the same feature without the offset: the voxel regression's own sums lose
    digits there), a feature the covariates explain to 1e-7 of its variance (explicit
    residuals), a constant feature."""
    X, sites, cov = study
    rng = np.random.default_rng(3)
    labels, codes = np.unique(sites, return_inverse=True)
    columns = np.column_stack([cov["age"], cov["sex"] == "M"]).astype(float)
    design = cm.design_matrix(codes, len(labels), columns, None)
    hard, offset = X.copy(), np.zeros(X.shape[1])
    if case == "large_offset":
        hard[:, 0] = rng.normal(0, 1, len(X)) + codes
        offset[0] = 1e8
    elif case == "exact_fit":
        hard[:, 0] = 3.0 * columns[:, 0] + 5.0 * codes + 1e-5 * rng.normal(0, 1, len(X))
    else:
        hard[:, 0] = 42.0
    a = cm.voxel_regression(hard, design, codes, len(labels), None, chunk_size=13)
    b = cm.table_regression(hard + offset, columns, codes, len(labels), None)
    b.coef[: len(labels)] -= offset  # the site intercepts carry the offset
    b.grand_mean -= offset
    grain = 1e-9 + 2 * np.spacing(offset.max())  # what 1e8 + intercept can hold
    for name in ("coef", "grand_mean", "var_pooled", "site_mean", "site_ss"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-8, atol=grain)
    assert b.degenerate[0] == (case == "constant")


def test_string_and_numeric_codings_give_the_same_model(study):
    X, sites, cov = study
    strings = ComBatHarmonizer().fit(X, sites, covariates=cov)
    coded = cov.assign(sex=(cov["sex"] == "M").astype(int), diagnosis=cov["diagnosis"] == "AD")
    numbers = ComBatHarmonizer().fit(X, sites, covariates=coded)
    assert numbers.covariate_levels_["sex"] is None  # integers: continuous (0/1)
    assert numbers.covariate_levels_["diagnosis"] == ["False", "True"]
    np.testing.assert_allclose(
        numbers.transform(X, sites, covariates=coded),
        strings.transform(X, sites, covariates=cov),
        rtol=1e-10,
    )
    # a pandas categorical sets the reference level; the harmonized data do not depend on it
    ordered = cov.assign(diagnosis=pd.Categorical(cov["diagnosis"], categories=["CN", "AD"]))
    h = ComBatHarmonizer().fit(X, sites, covariates=ordered)
    assert h.covariates_ == ["age", "sex[M]", "diagnosis[AD]"]
    np.testing.assert_allclose(
        h.transform(X, sites, covariates=cov), strings.transform(X, sites, covariates=cov)
    )


# -- covariate effects are kept; leaving one out removes it --------------------------------
def test_diagnosis_effect_survives_only_when_modelled():
    X, sites, cov = make_study(n_per=(60, 60, 60), seed=3)
    ad = (cov["diagnosis"] == "AD").to_numpy()

    def effect(Y):  # mean AD - CN difference over features, within each site
        return np.mean(
            [
                Y[(sites == s) & ad].mean() - Y[(sites == s) & ~ad].mean()
                for s in "s0 s1 s2".split()
            ]
        )

    def pooled(Y):
        return Y[ad].mean() - Y[~ad].mean()

    with_dx = ComBatHarmonizer().fit_transform(X, sites, covariates=cov)
    without = ComBatHarmonizer().fit_transform(X, sites, covariates=cov.drop(columns="diagnosis"))
    true = -60.0  # the simulated mean effect
    assert abs(pooled(with_dx) - true) < 8
    assert abs(pooled(without)) < abs(true) - 15  # part of the effect was removed with sites
    assert abs(effect(with_dx) - true) < 8


# -- transform semantics with covariates ------------------------------------------------------
def test_columns_matched_by_name_and_rows_independent(study):
    X, sites, cov = study
    h = ComBatHarmonizer().fit(X, sites, covariates=cov)
    full = h.transform(X, sites, covariates=cov)
    shuffled = cov[["diagnosis", "age", "sex"]].assign(extra=1.0)  # order, extra column
    np.testing.assert_array_equal(h.transform(X, sites, covariates=shuffled), full)
    idx = [3, 77, 100]
    np.testing.assert_allclose(
        h.transform(X[idx], sites[idx], covariates=cov.iloc[idx]), full[idx], rtol=1e-12
    )
    with pytest.raises(ValueError, match=r"column\(s\) \['diagnosis'\]"):
        h.transform(X, sites, covariates=cov.drop(columns="diagnosis"))
    # ages= is the short form of the age column
    np.testing.assert_array_equal(h.transform(X, sites, cov["age"], cov.drop(columns="age")), full)


def test_reference_site_rows_unchanged_with_covariates(study):
    X, sites, cov = study
    h = ComBatHarmonizer(reference_site="s0").fit(X, sites, covariates=cov)
    out = h.transform(X, sites, covariates=cov)
    np.testing.assert_allclose(out[sites == "s0"], X[sites == "s0"], rtol=1e-12)


def test_unseen_site_fit_and_keep_with_covariates(study):
    X, sites, cov = study
    train = sites != "s2"
    h = ComBatHarmonizer(unseen_site="fit").fit(X[train], sites[train], covariates=cov[train])
    new = ~train
    shifted = 1.5 * X[new] + 200.0
    out = h.transform(shifted, sites[new], covariates=cov[new])
    ref = h.transform(X[train], sites[train], covariates=cov[train])
    before = np.abs(shifted.mean(0) - ref.mean(0)).mean()
    assert np.abs(out.mean(0) - ref.mean(0)).mean() < 0.25 * before
    keep = ComBatHarmonizer(unseen_site="keep").fit(X[train], sites[train], covariates=cov[train])
    with pytest.warns(UserWarning, match="returned unchanged"):
        kept = keep.transform(shifted, sites[new], covariates=cov[new])
    np.testing.assert_array_equal(kept, shifted)


def test_site_check_uses_the_covariate_model_and_skips_tables(study):
    """The site check of images standardizes with the full covariate model: the training
    images agree with their sites, a relabelled site does not; its covariates are needed.
    A table's rows are trusted to their label (the check is refused on tables)."""
    X, sites, cov = study
    imgs = X.reshape(len(X), 4, 5, 2).astype(np.float32)
    h = ComBatHarmonizer().fit(imgs, sites, covariates=cov)
    table = h.site_agreement(imgs, sites, covariates=cov)
    assert table["site"].tolist() == ["s0", "s1", "s2"] and table["agrees"].all()
    swapped = np.where(sites == "s0", "s2", np.where(sites == "s2", "s0", sites))
    assert not h.site_agreement(imgs, swapped, covariates=cov)["agrees"].all()
    with pytest.raises(ValueError, match=r"column\(s\) \['age', 'sex', 'diagnosis'\]"):
        h.site_agreement(imgs, sites)
    fitted = ComBatHarmonizer().fit(X[:, :5], sites, covariates=cov)
    np.testing.assert_array_equal(  # no check: the rows keep their sites' effects
        fitted.transform(X[:, :5], sites, covariates=cov),
        ComBatHarmonizer(site_check="warn")
        .fit(X[:, :5], sites, covariates=cov)
        .transform(X[:, :5], sites, covariates=cov),
    )
    with pytest.raises(ValueError, match="trusts each row's site label"):
        fitted.site_agreement(X[:, :5], sites, covariates=cov)


# -- smooth covariates -------------------------------------------------------------------------
def test_smooth_by_name(study):
    X, sites, cov = study
    cov = cov.assign(bmi=np.random.default_rng(1).uniform(18, 35, len(X)))
    h = ComBatHarmonizer(smooth={"age": 3, "bmi": 2}).fit(X, sites, covariates=cov)
    assert h.covariates_ == ["age_ns1", "age_ns2", "age_ns3", "sex[M]", "diagnosis[CN]"] + [
        "bmi_ns1",
        "bmi_ns2",
    ]
    assert set(h.spline_knots_) == {"age", "bmi"}
    same = ComBatHarmonizer(smooth_age=3, smooth={"bmi": 2}).fit(X, sites, covariates=cov)
    np.testing.assert_array_equal(
        same.transform(X, sites, covariates=cov), h.transform(X, sites, covariates=cov)
    )
    assert ComBatHarmonizer(smooth=("age",)).fit(X, sites, covariates=cov).covariates_[:4] == [
        "age_ns1",
        "age_ns2",
        "age_ns3",
        "age_ns4",
    ]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"smooth": ("sex",)}, r"smooth names 'sex', which is categorical"),
        ({"smooth": ("weight",)}, r"smooth names 'weight', which is not among"),
        ({"smooth": "age"}, r"smooth=\('age',\)"),
        ({"smooth": {"age": 0}}, r"must be >= 1 degrees of freedom"),
        ({"smooth": ("age",), "smooth_age": True}, r"age is smooth twice"),
        ({"smooth": {"age": 7}}, r"'age' with 7 degrees of freedom needs 8 distinct"),
    ],
)
def test_smooth_refusals(study, params, match):
    X, sites, cov = study
    cov = cov.assign(age=np.round(cov["age"], -1))  # 7 distinct ages, heavy ties
    with pytest.raises(ValueError, match=match):
        ComBatHarmonizer(**params).fit(X, sites, covariates=cov)


# -- tables -------------------------------------------------------------------------------------
def test_dataframe_in_dataframe_out(study):
    X, sites, cov = study
    df = pd.DataFrame(X[:, :5], columns=[f"roi{j}" for j in range(5)], index=range(100, 220))
    h = ComBatHarmonizer().fit(df, sites, covariates=cov)
    assert h.n_features_in_ == 5 and h.feature_names_in_.tolist() == list(df.columns)
    assert h.voxel_mask_ is None and h.image_shape_ is None
    out = h.transform(df, sites, covariates=cov)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(df.columns) and list(out.index) == list(df.index)
    np.testing.assert_array_equal(out.to_numpy(), h.transform(X[:, :5], sites, covariates=cov))
    # zeros are values in a table (not background)
    zeros = df.copy()
    zeros.iloc[0, 0] = 0.0
    assert h.transform(zeros, sites, covariates=cov).iloc[0, 0] != 0.0


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (lambda df: df.assign(roi0=["x"] * len(df)), TypeError, r"\['roi0'\] are not numeric"),
        (
            lambda df: df.assign(roi1=np.where(df.index == 3, np.nan, df["roi1"])),
            ValueError,
            r"NaN or infinite.*\['roi1'\], rows \[3\]",
        ),
        (lambda df: df.iloc[:, :0], ValueError, "non-empty"),
        (lambda df: df.set_axis(["a", "a", "b"], axis=1), ValueError, r"duplicated column"),
    ],
)
def test_bad_tables(study, bad, error, match):
    X, sites, cov = study
    df = pd.DataFrame(X[:, :3], columns=["roi0", "roi1", "roi2"])
    with pytest.raises(error, match=match):
        ComBatHarmonizer().fit(bad(df), sites, covariates=cov)


def _eager_message(X):
    with pytest.raises(ValueError) as info:
        FeatureTable(X)
    return str(info.value)


# row 30 is the first row of site s1 (ComBat's pass shifts that site's rows by it)
@pytest.mark.parametrize("row", [30, 31, 119], ids=["site-first-row", "row", "last-row"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("reference", [None, "s0"], ids=["no-ref", "ref"])
def test_non_finite_table_refused_from_the_pass(study, row, value, reference):
    """ComBat checks a table's finiteness from its one pass over it (no pass of its own):
    a NaN or inf anywhere gets the eager check's message, at fit (leaving no fit) and at
    transform, with any reference, site policy or site left unchanged."""
    X, sites, cov = study
    bad = X.copy()
    bad[row, 7] = value
    message = _eager_message(bad)
    assert "column 7" in message and f"rows [{row}]" in message
    h = ComBatHarmonizer(reference_site=reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing else is said first (e.g. EB not converging)
        with pytest.raises(ValueError) as info:
            h.fit(bad, sites, covariates=cov)
    assert str(info.value) == message and not hasattr(h, "sites_")
    h.fit(X, sites, covariates=cov)
    with pytest.raises(ValueError) as info:
        h.transform(bad, sites, covariates=cov)
    assert str(info.value) == message
    # the bad row at a site unseen in fit, estimated from its rows or left unchanged
    new = np.where(sites == "s2", "new", sites)
    for policy in ("fit", "keep"):
        h.set_params(unseen_site=policy)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "keep" warns that "new" stays unchanged
            with pytest.raises(ValueError) as info:
                h.transform(bad, new, covariates=cov)
        assert str(info.value) == message


def test_transform_table_must_match_fit(study):
    X, sites, cov = study
    df = pd.DataFrame(X[:, :3], columns=["roi0", "roi1", "roi2"])
    h = ComBatHarmonizer().fit(df, sites, covariates=cov)
    out = h.transform(df[["roi2", "roi0", "roi1"]], sites, covariates=cov)
    pd.testing.assert_frame_equal(out[list(df.columns)], h.transform(df, sites, covariates=cov))
    with pytest.raises(ValueError, match=r"lacks feature\(s\) \['roi2'\]"):
        h.transform(df[["roi0", "roi1"]], sites, covariates=cov)
    with pytest.raises(ValueError, match="3 features; got 4"):
        h.transform(np.c_[X[:, :3], X[:, :1]], sites, covariates=cov)
    with pytest.raises(ValueError, match="fitted on a table"):
        h.transform(X[:, :3].reshape(-1, 3, 1, 1), sites, covariates=cov)


@pytest.mark.parametrize("table", [True, False], ids=["table", "images"])
def test_save_load_with_covariates(study, tmp_path, table):
    X, sites, cov = study
    data = pd.DataFrame(X[:, :6], columns=list("abcdef")) if table else X.reshape(-1, 4, 5, 2)
    h = ComBatHarmonizer(smooth=("age",), reference_site="s1").fit(data, sites, covariates=cov)
    h.save(tmp_path / "m.npz")
    loaded = ComBatHarmonizer.load(tmp_path / "m.npz")
    assert loaded.covariate_levels_ == h.covariate_levels_
    expected = h.transform(data, sites, covariates=cov)
    got = loaded.transform(data, sites, covariates=cov)
    if table:
        pd.testing.assert_frame_equal(got, expected)
        assert loaded.grand_mean_.dtype == np.float64
    else:
        np.testing.assert_array_equal(got, expected)


def test_model_saved_before_covariates_still_loads(tmp_path):
    """A model file written before covariates (no covariate_levels_, age_knots_) works."""
    from harmonix.persistence import load_estimator, save_estimator

    X, sites, cov = make_study(n_features=8)
    imgs = X.reshape(len(X), 2, 2, 2).astype(np.float32)
    h = ComBatHarmonizer(smooth_age=3).fit(imgs, sites, cov["age"])
    expected = h.transform(imgs, sites, cov["age"])
    h.age_knots_ = h.spline_knots_.pop("age")
    del h.covariate_levels_, h.spline_knots_
    save_estimator(h, tmp_path / "old.npz")
    old = load_estimator(tmp_path / "old.npz")
    np.testing.assert_array_equal(old.transform(imgs, sites, cov["age"]), expected)
    with pytest.raises(ValueError, match="fitted with ages"):
        old.transform(imgs, sites)


def test_one_row_site_table_warns_and_stays_finite():
    X, sites, cov = make_study(n_per=(20, 20, 1), n_features=6, confounded=False, seed=4)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = ComBatHarmonizer().fit_transform(X, sites, cov["age"])
    assert np.isfinite(out).all()


def test_site_gram_and_column_means_match_their_definitions():
    from harmonix.inputs.covariates import site_gram

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, 50)
    columns = rng.normal(3.0, 2.0, (50, 3))
    design = cm.design_matrix(codes, 4, columns, None)
    np.testing.assert_allclose(site_gram(codes, 4, columns), design.T @ design, rtol=1e-12)
    np.testing.assert_allclose(cm.column_means(columns), columns.mean(axis=0), rtol=1e-12)
    assert cm.column_means(np.empty((5, 0))).shape == (0,)


def test_overflowing_table_warns(study):
    """Finite values so large that ComBat's sums overflow: a warning, not a silent result
    (nor the NaN/inf message)."""
    X, sites, cov = study
    with pytest.warns(RuntimeWarning, match="overflowed"):
        ComBatHarmonizer().fit(X * 1e160, sites, covariates=cov)


def test_design_needs_more_images_than_columns():
    """As many images as design columns (2 sites + 2 covariates for 4 images): refused,
    although the covariates are separable from the sites (no residual to estimate the
    variance from)."""
    rng = np.random.default_rng(0)
    X, sites = rng.normal(100, 5, (4, 3)), np.array(["a", "a", "b", "b"])
    cov = {"x": [1.0, 2.0, 4.0, 3.0], "y": [5.0, 1.0, 2.0, 2.0]}
    with pytest.raises(ValueError, match="has 4 columns but is rank deficient for 4 images"):
        ComBatHarmonizer().fit(X, sites, covariates=cov)
