"""harmonix.preprocessing: median normalization and exact grid changes."""

from __future__ import annotations

import numpy as np
import pytest

from harmonix.preprocessing import (
    crop_or_pad,
    median_normalize,
    pad_to_multiple,
    restore_grid,
)


def test_median_normalize():
    img = np.zeros((4, 4, 4), np.float32)
    img[1:3, 1:3, 1:3] = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    out = median_normalize(img)
    assert np.median(out[img != 0]) == pytest.approx(500.0)
    assert (out[img == 0] == 0).all()
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="no brain"):
        median_normalize(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="positive"):
        median_normalize(-img)


def _blob(shape, lo, hi):
    img = np.zeros(shape, np.float32)
    img[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1.0 + np.arange(
        np.prod([b - a for a, b in zip(lo, hi)])
    ).reshape([b - a for a, b in zip(lo, hi)])
    return img


def test_crop_keeps_brain_and_inverts_exactly():
    img = _blob((182, 218, 182), (5, 20, 10), (160, 200, 170))  # off-centre brain
    out, change = crop_or_pad(img)
    assert out.shape == (160, 192, 160)
    assert np.count_nonzero(out) == np.count_nonzero(img)  # no brain voxel lost
    np.testing.assert_array_equal(restore_grid(out, change), img)


def test_crop_falls_back_to_larger_shape_then_errors():
    img = _blob((182, 218, 182), (5, 5, 5), (175, 205, 170))
    out, _ = crop_or_pad(img)
    assert out.shape == (176, 208, 176)
    with pytest.raises(ValueError, match="does not fit"):
        crop_or_pad(_blob((190, 218, 182), (1, 5, 5), (189, 205, 170)))


def test_pad_small_image():
    img = _blob((91, 109, 91), (10, 10, 10), (80, 100, 80))
    out, change = crop_or_pad(img)
    assert out.shape == (160, 192, 160)
    np.testing.assert_array_equal(restore_grid(out, change), img)


def test_pad_to_multiple_roundtrip():
    img = np.random.default_rng(0).random((2, 13, 17, 32)).astype(np.float32)
    out, change = pad_to_multiple(img, 16)
    assert out.shape == (2, 16, 32, 32)
    np.testing.assert_array_equal(restore_grid(out, change), img)
    with pytest.raises(ValueError, match="Expected shape"):
        restore_grid(img, change)
