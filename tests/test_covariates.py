"""Tests of the covariate checks shared by every harmonizer (harmonix.inputs.covariates)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harmonix.inputs.covariates import (
    categorical_strata,
    check_covariates,
    covariate_design,
    fit_covariate_levels,
    match_covariates,
)

SITES = np.array(["a"] * 4 + ["b"] * 4)


def frame(**columns):
    return pd.DataFrame(columns)


# -- check_covariates: the form ---------------------------------------------------------------
def test_dataframe_and_mapping_give_the_same_frame():
    sex = ["F", "M"] * 4
    ages = np.linspace(20, 80, 8)
    a = check_covariates(pd.DataFrame({"sex": sex}, index=range(10, 18)), 8, ages)
    b = check_covariates({"sex": np.array(sex)}, 8, ages)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["age", "sex"] and list(a.index) == list(range(8))
    assert a["age"].dtype == np.float64 and a["sex"].tolist() == sex
    assert check_covariates(None, 8) is None
    assert check_covariates({}, 8) is None


def test_kinds_of_columns():
    cov = check_covariates(
        {
            "n": np.arange(8),  # integers: continuous
            "flag": np.array([True, False] * 4),  # booleans: categorical
            "cat": pd.Categorical(["x", "y"] * 4, categories=["y", "x", "unused"]),
            "obj": np.array([1.5, 2, 3, 4, 5, 6, 7, 8], dtype=object),  # numbers as objects
        },
        8,
    )
    assert cov["n"].dtype == np.float64 and cov["obj"].dtype == np.float64
    assert cov["flag"].tolist() == ["True", "False"] * 4
    assert list(cov["cat"].cat.categories) == ["y", "x"]  # the user's order, present levels


@pytest.mark.parametrize(
    ("covariates", "ages", "error", "match"),
    [
        ({"sex": ["F"] * 7}, None, ValueError, r"8 images but 7 values of covariate 'sex'"),
        ({"sex": ["F", None] * 4}, None, ValueError, r"'sex' has missing values .* \[1, 3, 5"),
        ({"bmi": [20.0, np.nan] * 4}, None, ValueError, r"'bmi' has missing values"),
        ({"bmi": [20.0, np.inf] * 4}, None, ValueError, r"'bmi' has infinite values"),
        ({"mix": ["F", 1] * 4}, None, TypeError, r"'mix' mixes value types"),
        ({"age": np.ones(8)}, np.ones(8), ValueError, r"both as ages=\.\.\. and as the 'age'"),
        ({"sex": "F"}, None, ValueError, r"'sex' must hold one value per image"),
        ({"x": np.ones((8, 2))}, None, ValueError, r"'x' must be 1-D"),
        ({3: np.ones(8)}, None, ValueError, r"names must be non-empty strings"),
        (np.ones((8, 2)), None, TypeError, r"DataFrame or a mapping"),
        (None, np.r_[np.nan, np.ones(7)], ValueError, r"finite age"),
        (None, np.ones(7), ValueError, r"one age per image"),
    ],
)
def test_bad_forms(covariates, ages, error, match):
    with pytest.raises(error, match=match):
        check_covariates(covariates, 8, ages)


def test_duplicated_dataframe_columns():
    df = pd.DataFrame(np.ones((8, 2)), columns=["x", "x"])
    with pytest.raises(ValueError, match=r"duplicated column\(s\) \['x'\]"):
        check_covariates(df, 8)


# -- fit_covariate_levels: what a fit can learn from ----------------------------------------
def test_levels_and_design():
    cov = check_covariates(
        {"sex": list("FMMFMFFM"), "dx": ["CN", "AD", "MCI", "CN"] * 2}, 8, np.arange(8.0)
    )
    levels = fit_covariate_levels(cov, SITES)
    assert levels == {"age": None, "sex": ["F", "M"], "dx": ["AD", "CN", "MCI"]}
    design, names = covariate_design(cov, levels)
    assert names == ["age", "sex[M]", "dx[CN]", "dx[MCI]"]
    np.testing.assert_array_equal(design[:, 0], np.arange(8.0))
    np.testing.assert_array_equal(design[:, 1], [0, 1, 1, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(design[:, 2], [1, 0, 0, 1] * 2)
    np.testing.assert_array_equal(design[:, 3], [0, 0, 1, 0] * 2)
    assert fit_covariate_levels(None, SITES) == {}


@pytest.mark.parametrize(
    ("columns", "match"),
    [
        ({"sex": ["F"] * 8}, r"'sex' is constant \('F' for every image\)"),
        ({"bmi": [22.0] * 8}, r"'bmi' is constant \(22 for every image\)"),
        ({"scanner": ["x"] * 4 + ["y"] * 4}, r"'scanner' is collinear with site"),
        ({"field": [1.5] * 4 + [3.0] * 4}, r"'field' is collinear with site .*constant within"),
        (
            {"dx": ["CN", "AD"] * 4, "ctl": ["yes", "no"] * 4},
            r"'ctl' is collinear with site and the covariates \['dx'\]",
        ),
        (
            {"x": np.arange(8.0), "y": 2 * np.arange(8.0) + 1},
            r"'y' is collinear with site and the covariates \['x'\]",
        ),
    ],
)
def test_unlearnable_covariates(columns, match):
    with pytest.raises(ValueError, match=match):
        fit_covariate_levels(check_covariates(columns, 8), SITES)


def test_a_level_found_only_at_every_image_of_one_site_is_collinear():
    dx = ["CN", "AD", "CN", "AD", "MCI", "MCI", "MCI", "MCI"]
    with pytest.raises(ValueError, match="'dx' is collinear with site"):
        fit_covariate_levels(check_covariates({"dx": dx}, 8), SITES)
    dx[4] = "CN"  # MCI no longer fills site b
    assert fit_covariate_levels(check_covariates({"dx": dx}, 8), SITES)["dx"] == [
        "AD",
        "CN",
        "MCI",
    ]


def test_too_few_images_for_the_columns():
    cov = check_covariates({"dx": ["a", "b", "c", "d"]}, 4)
    with pytest.raises(ValueError, match="only 4 images for 5 design columns"):
        fit_covariate_levels(cov, np.array(["s", "s", "t", "t"]))


# -- match_covariates: transform-time checks -----------------------------------------------
LEVELS = {"age": None, "sex": ["F", "M"], "flag": ["False", "True"]}


def test_match_orders_drops_extras_and_normalizes_levels():
    cov = check_covariates(
        {"flag": [True, False], "extra": [1.0, 2.0], "sex": pd.Categorical(["M", "F"])},
        2,
        [30.0, 40.0],
    )
    out = match_covariates(cov, LEVELS, required=True)
    assert list(out.columns) == ["age", "sex", "flag"]
    assert out["flag"].tolist() == ["True", "False"] and out["sex"].tolist() == ["M", "F"]
    # integer codes of a level read as the level's text
    coded = match_covariates(check_covariates({"g": [1, 0]}, 2), {"g": ["0", "1"]}, required=True)
    assert coded["g"].tolist() == ["1", "0"]


def test_match_returns_the_checked_frame_when_nothing_changes():
    """The fitted columns in the fitted order, already as levels: the checked frame
    itself (no copy); otherwise a new frame, and the given one is left as it was."""
    cov = check_covariates({"sex": ["M", "F"], "flag": [True, False]}, 2, [30.0, 40.0])
    assert match_covariates(cov, LEVELS, required=True) is cov
    reordered = check_covariates({"flag": [True, False], "sex": ["M", "F"]}, 2, [30.0, 40.0])
    out = match_covariates(reordered, LEVELS, required=True)
    assert out is not reordered and list(out.columns) == ["age", "sex", "flag"]
    assert list(reordered.columns) == ["age", "flag", "sex"]
    coded = check_covariates({"age": [30.0, 40.0], "sex": ["M", "F"], "flag": [1.0, 0.0]}, 2)
    matched = match_covariates(coded, LEVELS | {"flag": ["0", "1"]}, required=True)
    assert matched is not coded and matched["flag"].tolist() == ["1", "0"]
    assert coded["flag"].tolist() == [1.0, 0.0]


def test_match_refusals():
    with pytest.raises(ValueError, match=r"'sex' has level\(s\) \['X'\] not seen in fit"):
        match_covariates(check_covariates({"sex": ["F", "X"]}, 2), LEVELS, required=False)
    with pytest.raises(ValueError, match=r"'age' was continuous in fit but holds text"):
        match_covariates(check_covariates({"age": ["old", "young"]}, 2), LEVELS, required=False)
    with pytest.raises(
        ValueError, match=r"fitted with covariates .*column\(s\) \['sex', 'flag'\]"
    ):
        match_covariates(check_covariates(None, 2, [1.0, 2.0]), LEVELS, required=True)
    with pytest.raises(ValueError, match=r"fitted with ages; pass ages"):
        match_covariates(None, {"age": None}, required=True)
    assert match_covariates(None, LEVELS, required=False) is None
    partial = match_covariates(check_covariates({"sex": ["F"]}, 1), LEVELS, required=False)
    assert list(partial.columns) == ["sex"]


def test_categorical_strata():
    cov = check_covariates({"sex": ["F", "M"], "dx": ["AD", "CN"]}, 2, [1.0, 2.0])
    levels = {"age": None, "sex": ["F", "M"], "dx": ["AD", "CN"]}
    assert categorical_strata(cov, levels).tolist() == ["F|AD", "M|CN"]
    assert categorical_strata(cov, {"age": None}) is None
    assert categorical_strata(None, levels) is None


def test_checked_covariates_never_share_the_callers_arrays():
    """The checked frame holds its own copies: changing the user's arrays (or ages)
    afterwards changes nothing that a fit or transform read."""
    age = np.array([30.0, 40.0, 50.0, 60.0])
    icv = np.array([1.0, 2.0, 3.0, 4.0])
    df = pd.DataFrame({"icv": icv.copy()})
    by_dict = check_covariates({"icv": icv}, 4, ages=age)
    by_frame = check_covariates(df, 4)
    age_series = pd.Series(age.copy())  # np.asarray of a Series is a view of its data
    by_series = check_covariates(None, 4, ages=age_series)
    age_series[:] = 0.0
    np.testing.assert_array_equal(by_series["age"], [30.0, 40.0, 50.0, 60.0])
    age[:] = 0.0
    icv[:] = 0.0
    df["icv"] = 0.0
    np.testing.assert_array_equal(by_dict["age"], [30.0, 40.0, 50.0, 60.0])
    np.testing.assert_array_equal(by_dict["icv"], [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(by_frame["icv"], [1.0, 2.0, 3.0, 4.0])
