"""harmonix._docs: shared parameter documentation filled into docstrings."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import harmonix
from harmonix import (
    ComBatHarmonizer,
    HistogramMatchingHarmonizer,
    IdentityHarmonizer,
    WhiteStripeHarmonizer,
)
from harmonix._docs import docdict, fill_doc
from harmonix.intensity._voxelstats import brain_values
from harmonix.intensity.landmarks import compute_landmarks
from harmonix.intensity.whitestripe import whitestripe_stats


def _documented_objects():
    """Every module of harmonix and the classes, functions and methods defined in it."""
    for info in pkgutil.walk_packages(harmonix.__path__, "harmonix."):
        if info.name.endswith("__main__") or info.name == "harmonix._docs":
            continue  # _docs shows the placeholder syntax in its own docstrings
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra is missing
            continue
        yield info.name, module
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if inspect.isfunction(member) or isinstance(member, property):
                        yield f"{info.name}.{name}.{attr}", member


def test_no_docstring_keeps_a_placeholder():
    left = [name for name, obj in _documented_objects() if "%(" in (obj.__doc__ or "")]
    assert left == []


@pytest.mark.parametrize(
    "cls",
    [HistogramMatchingHarmonizer, WhiteStripeHarmonizer, ComBatHarmonizer, IdentityHarmonizer],
)
def test_the_shared_mask_text_is_in_every_harmonizer(cls):
    mask_doc = "\n".join("    " + line for line in docdict["mask"].splitlines())
    assert mask_doc in cls.__doc__
    assert inspect.signature(cls).parameters["mask"].default is None  # as documented


@pytest.mark.parametrize("cls", [HistogramMatchingHarmonizer, WhiteStripeHarmonizer])
def test_reference_site_and_fitted_attributes_are_shared(cls):
    for key in ("reference_site", "reference_site_", "sites_", "n_images_", "mask_"):
        assert docdict[key].splitlines()[1].strip() in cls.__doc__, key


@pytest.mark.parametrize("func", [brain_values, compute_landmarks, whitestripe_stats])
def test_the_shared_brain_text_is_in_every_data_brain_function(func):
    assert "\n".join("    " + line for line in docdict["brain"].splitlines()) in func.__doc__
    assert inspect.signature(func).parameters["brain"].default is None  # as documented


def test_fill_doc_indents_like_the_placeholder_and_names_unknown_entries():
    docdict["_test_entry"] = "x : int\n    The x.\n\n    More."
    try:

        def method():
            """Do.

            Parameters
            ----------
            %(_test_entry)s
            y : int, inline %(_test_entry)s
            """

        fill_doc(method)
        lines = method.__doc__.splitlines()
        assert lines[4:8] == [
            "            x : int",
            "                The x.",
            "",
            "                More.",
        ]
        assert "inline x : int" in method.__doc__

        def broken():
            """%(no_such_entry)s"""

        with pytest.raises(KeyError, match="no_such_entry"):
            fill_doc(broken)
    finally:
        del docdict["_test_entry"]


@pytest.mark.parametrize(
    "module",
    [
        "harmonix.base",
        "harmonix.intensity.histogram_matching",
        "harmonix.intensity.whitestripe",
        "harmonix.combat.estimator",
    ],
)
def test_docstring_examples_run_and_have_a_background(module):
    """The examples users copy run as shown, on images whose background is 0."""
    import doctest
    import warnings

    from harmonix.exceptions import BackgroundWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", BackgroundWarning)
        result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
