"""Site labels: one rule (text, stripped) for every method, at fit and at transform.

Missing labels of every kind are refused in the bad-input table (tests/test_bad_inputs.py);
here: labels of other types name the same site, so the same images give the same output.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _helpers import HARMONIZERS, make, make_tiny_images

from harmonix import ComBatHarmonizer, IGUANeHarmonizer
from harmonix.inputs import labels as _labels
from harmonix.inputs.labels import as_label, check_sites, distinct_sites, site_codes


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1"),
        (np.int64(1), "1"),
        (np.uint8(1), "1"),
        ("1", "1"),
        (" 1 ", "1"),
        (1.0, "1"),
        (np.float32(2.0), "2"),
        (1.5, "1.5"),
        (b"site0", "site0"),
        (np.str_(" A\t"), "A"),
        (True, "True"),
        (None, None),
        (float("nan"), None),
        (pd.NA, None),
        (pd.NaT, None),
        (np.datetime64("NaT"), None),
        ("", None),
        ("  ", None),
        ("nan", None),
        ("<NA>", None),
    ],
)
def test_label_rule(value, text):
    assert as_label(value) == text


def test_check_sites_accepts_pandas_columns_and_returns_text():
    ints = pd.Series([3, 1, 2], dtype="Int64")
    assert check_sites(ints, 3).tolist() == ["3", "1", "2"]
    cats = pd.Series(["b", "a", "b"], dtype="category")
    assert check_sites(cats, 3).tolist() == ["b", "a", "b"]
    with_gap = pd.Series([1, None, 2]).fillna(7)  # ints become floats through a gap
    assert check_sites(with_gap, 3).tolist() == ["1", "7", "2"]
    with pytest.raises(ValueError, match="1-D"):
        check_sites(np.zeros((3, 2)), 3)


@pytest.fixture(scope="module")
def numbered():
    """Tiny images whose sites are numbers 0, 1, 2, given as text (as a CSV gives them)."""
    imgs, sites, ages, _ = make_tiny_images()
    text = np.array([s[-1] for s in sites])  # "0", "1", "2"
    return imgs, text, ages


def _kwargs(cls: type, sites, ages) -> dict:
    return {"sites": sites, "ages": ages} if cls._needs_sites else {"sites": sites}


@pytest.mark.parametrize("cls", HARMONIZERS, ids=lambda c: c.__name__)
def test_labels_of_other_types_name_the_same_site(cls, numbered):
    imgs, text, ages = numbered
    params = {"reference_site": 1} if "reference_site" in cls().get_params() else {}
    est = make(cls, **params).fit(imgs, text, ages)  # fitted with text, reference as int
    if params:
        assert est.reference_site_ == "1"
    assert est.sites_.tolist() == ["0", "1", "2"]
    expected = est.transform(imgs, **_kwargs(cls, text, ages))
    as_ints = text.astype(np.int64)
    for other in (as_ints, [int(s) for s in text], [f" {s} " for s in text], as_ints + 0.0):
        np.testing.assert_array_equal(est.transform(imgs, **_kwargs(cls, other, ages)), expected)


@pytest.mark.parametrize("policy", ["error", "keep", "fit"])
def test_combat_fitted_with_text_serves_integer_labels(numbered, policy):
    imgs, text, ages = numbered
    h = ComBatHarmonizer(unseen_site=policy).fit(imgs, text, ages)
    expected = h.transform(imgs, text, ages)
    one = text == "1"
    changed = ~np.isclose(expected[one], imgs[one])
    assert changed[imgs[one] != 0].mean() > 0.5  # site 1 is really harmonized
    np.testing.assert_array_equal(h.transform(imgs, text.astype(int), ages), expected)


def test_combat_fitted_with_integers_serves_text_labels(numbered):
    imgs, text, ages = numbered
    h = ComBatHarmonizer(reference_site=np.int64(0)).fit(imgs, text.astype(int), ages)
    expected = h.transform(imgs, text.astype(int), ages)
    np.testing.assert_array_equal(h.transform(imgs, text, ages), expected)
    # a model saved before labels were text holds numbers: still the same sites
    h.sites_ = np.array([0, 1, 2])
    np.testing.assert_array_equal(h.transform(imgs, list(text), ages), expected)


def test_iguane_site_landmarks_found_whatever_the_label_type(numbered):
    imgs, text, ages = numbered
    est = make(IGUANeHarmonizer, input_normalization="histogram").fit(imgs, text.astype(int))
    stored = est.input_normalization_["sites"]
    assert stored == ["0", "1", "2"]
    expected = est.transform(imgs, sites=text)
    np.testing.assert_array_equal(est.transform(imgs, sites=text.astype(np.int64)), expected)
    # site 1's stored landmarks, not the pooled ones of the images of this call
    one = np.flatnonzero(text == "1")[:1]
    np.testing.assert_array_equal(est.transform(imgs[one], sites=[1]), expected[one])


@pytest.mark.parametrize(
    "values",
    [
        np.array(["a", " a ", "b", "10"]),
        ["x", "y ", " x"],
        np.array([3, 1, 3, 2]),
        np.array([True, False, True]),
        pd.Series(["s1", "s2", "s1"], dtype="category"),
        pd.Series(["s1", "s2", "s1"]),
    ],
)
def test_labels_converted_once_per_value_equal_one_by_one(values):
    """check_sites converts each distinct value once (10,000 labels of a few sites); the
    result is the per-label rule's."""
    items = values.tolist() if hasattr(values, "tolist") else list(values)
    expected = [as_label(v) for v in items]
    np.testing.assert_array_equal(check_sites(values, len(items)), np.asarray(expected, dtype=str))


@pytest.mark.parametrize("bad", [np.array(["a", "", "b"]), ["a", "nan"], np.array(["a", " "])])
def test_missing_labels_found_by_the_fast_path_too(bad):
    with pytest.raises(ValueError, match=r"missing label\(s\) at position\(s\) \[1\]"):
        check_sites(bad, 3 if len(bad) == 3 else 2)


def test_site_codes_equal_numpy_unique_and_distinct_sites_keep_first_appearance():
    rng = np.random.default_rng(0)
    sites = check_sites(rng.choice(["b", "a10", "a2", "Z", "é"], 500), 500)
    labels, codes, counts = site_codes(sites)
    expected = np.unique(sites, return_inverse=True, return_counts=True)
    for ours, theirs in zip((labels, codes, counts), expected):
        np.testing.assert_array_equal(ours, theirs)
    assert labels.dtype.kind == "U"
    first, idx = distinct_sites(sites)
    assert first == list(dict.fromkeys(sites.tolist()))
    np.testing.assert_array_equal(np.asarray(first)[idx], sites)


@pytest.mark.parametrize("seed", [0, 1])
def test_text_factorization_equals_pandas(seed):
    """The hashed factorization of ``<U`` labels gives pandas' codes and uniques, for
    texts of mixed lengths and non-ASCII characters."""
    rng = np.random.default_rng(seed)
    pool = ["a", "aa", "site 1", "Zürich", "東京", "x" * 40, "b", "site 10"]
    values = rng.choice(pool, 2000)
    codes, uniques = _labels._factorize(values)
    ref_codes, ref_uniques = pd.factorize(values)
    np.testing.assert_array_equal(codes, ref_codes)
    assert uniques.tolist() == ref_uniques.tolist()


def test_text_factorization_falls_back_on_a_hash_collision(monkeypatch):
    """Texts with the same hash (forced: every key 0) are still told apart."""
    monkeypatch.setattr(_labels, "_text_keys", lambda v: np.zeros(len(v), dtype=np.uint64))
    codes, uniques = _labels._factorize(np.array(["A", "B", "A", "C", "B"]))
    assert codes.tolist() == [0, 1, 0, 2, 1]
    assert uniques.tolist() == ["A", "B", "C"]


def test_checked_labels_are_grouped_once_and_changes_are_seen():
    """check_sites remembers the groups of the labels it returns; distinct_sites reuses
    them only while the array still holds those labels, and their codes are read-only."""
    raw = np.array(["b", "a", "b", "c", "a"])
    labels = check_sites(raw, 5)
    first, codes = distinct_sites(labels)
    assert first == ["b", "a", "c"]
    np.testing.assert_array_equal(codes, [0, 1, 0, 2, 1])
    assert distinct_sites(labels)[1] is codes  # remembered: not factorized again
    with pytest.raises(ValueError, match="read-only"):
        codes[0] = 5
    labels[0] = "z"  # changed in place after the check: grouped afresh
    first, codes = distinct_sites(labels)
    assert first == ["z", "a", "b", "c"]
    np.testing.assert_array_equal(codes, [0, 1, 2, 3, 1])
    copy = labels.copy()  # another array with equal content: its own groups, equal
    assert distinct_sites(copy)[0] == first


def test_short_latin1_labels_factorize_by_exact_keys(monkeypatch):
    """Texts of at most 6 characters below U+0100 are told apart by exact integer keys
    (the hash is not used: a forced collision changes nothing), and agree with pandas."""
    monkeypatch.setattr(_labels, "_text_keys", lambda v: np.zeros(len(v), dtype=np.uint64))
    rng = np.random.default_rng(0)
    pool = ["a", "ab", "ba", "é", "ÿÿÿÿÿÿ", "ÿÿÿÿÿ", "\x01", "\x01\x01", "site10", "s 1"]
    values = rng.choice(pool, 500)
    assert _labels._latin1_keys(values) is not None
    codes, uniques = _labels._factorize(values)
    ref_codes, ref_uniques = pd.factorize(values)
    np.testing.assert_array_equal(codes, ref_codes)
    assert uniques.tolist() == ref_uniques.tolist()
    # longer or wider texts take the hashed path
    assert _labels._latin1_keys(np.array(["site100"])) is None
    assert _labels._latin1_keys(np.array(["東京"])) is None


def test_checked_labels_are_a_copy_of_a_text_array():
    """Labels that are already their texts come back as a copy: changing the caller's
    array afterwards changes nothing."""
    given = np.array(["site0", "site1", "site0"])
    labels = check_sites(given, 3)
    given[0] = "other"
    assert labels.tolist() == ["site0", "site1", "site0"]
