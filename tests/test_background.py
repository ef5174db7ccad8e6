"""The background rule: voxels equal to 0 (or outside ``mask``) are background, and every
harmonizer warns when the "brain" fills nearly the whole volume (a background that is not
exactly 0)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _helpers import HARMONIZERS, make, make_tiny_images, transform_kwargs

from harmonix import HistogramMatchingHarmonizer
from harmonix.exceptions import BackgroundWarning
from harmonix.inputs.background import BRAIN_FILL_LIMIT


def _with_background(imgs: np.ndarray, kind: str) -> np.ndarray:
    out = imgs.copy()
    background = imgs == 0
    if kind == "noise":
        rng = np.random.default_rng(0)
        out[background] = rng.normal(0.0, 1e-3, int(background.sum())).astype(np.float32)
    else:
        out[background] = np.float32(kind)
    return out


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_images()


@pytest.mark.parametrize("kind", ["1e-6", "-1e-3", "noise"])
@pytest.mark.parametrize("cls", HARMONIZERS, ids=lambda c: c.__name__)
def test_every_harmonizer_warns_when_the_background_is_not_zero(cls, kind, tiny):
    imgs, sites, ages, _ = tiny
    bad = _with_background(imgs, kind)
    # every image, or the first when the method refuses it (IGUANe: a negative median)
    with pytest.warns(BackgroundWarning, match=r"(9|1) image\(s\).*more than 90% .*exactly 0"):
        try:
            make(cls).fit(bad, sites, ages)
        except ValueError as exc:  # or a refusal that names the background
            assert "background 0" in str(exc)
    clean = make(cls).fit(imgs, sites, ages)
    with pytest.warns(BackgroundWarning, match=r"indices \[1\]"):
        try:
            clean.transform(
                np.stack([imgs[0], bad[1]]), **transform_kwargs(cls, sites[:2], ages[:2])
            )
        except ValueError as exc:
            assert "background 0" in str(exc)


@pytest.mark.parametrize("cls", HARMONIZERS, ids=lambda c: c.__name__)
def test_a_zero_background_or_a_mask_gives_no_warning(cls, tiny):
    imgs, sites, ages, _ = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackgroundWarning)
        est = make(cls).fit(imgs, sites, ages)
        est.transform(imgs, **transform_kwargs(cls, sites, ages))
        if "mask" in est.get_params():  # with a mask, the mask says where the brain is
            bad = _with_background(imgs, "1e-6")
            masked = make(cls, mask=imgs[0] != 0).fit(bad, sites, ages)
            masked.transform(bad, **transform_kwargs(cls, sites, ages))


def test_what_a_non_zero_background_does_to_histogram_matching(tiny):
    """The numbers behind the warning: a 1e-6 background is brain for HM, so the output
    background is no longer 0 and the brain's landmarks move."""
    imgs, sites, _, _ = tiny
    hm = HistogramMatchingHarmonizer().fit(imgs, sites)
    clean = hm.transform(imgs)
    with pytest.warns(BackgroundWarning):
        shifted = hm.transform(_with_background(imgs, "1e-6"))
    background = imgs == 0
    assert np.abs(shifted[background]).min() > 0.1 * np.median(clean[~background])
    assert np.abs(shifted - clean)[~background].max() > 0.05 * np.median(clean[~background])


def test_real_brains_even_cropped_to_their_bounding_box_give_no_warning():
    """A skull-stripped brain fills about a quarter of an MNI volume, and about half of
    its own bounding box: far below the limit."""
    from harmonix import make_multisite

    ds = make_multisite(n_subjects=2, n_sites=2, resolution=4, random_state=0)
    box = tuple(slice(w.min(), w.max() + 1) for w in np.nonzero(ds.imgs.any(axis=0)))
    cropped = ds.imgs[(slice(None), *box)]
    fill = (cropped != 0).mean(axis=(1, 2, 3))
    assert (ds.imgs != 0).mean() < 0.35 and fill.max() < 0.7 < BRAIN_FILL_LIMIT
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackgroundWarning)
        HistogramMatchingHarmonizer().fit(cropped, ds.sites).transform(cropped)
