"""Augmentation and patches of IGUANe training volumes (harmonix.iguane.training.augmentation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harmonix.iguane.training import augmentation as A

pytestmark = pytest.mark.usefixtures("one_thread")


# -- augmentation and patches --------------------------------------------------------------
def _blob():
    x = -torch.ones(16, 20, 24)
    m = torch.zeros(16, 20, 24, dtype=torch.bool)
    m[4:12, 5:15, 6:18] = True
    x[m] = torch.linspace(-0.5, 1.5, int(m.sum()))
    return x, m


def test_rotation_keeps_background_and_rethresholds_mask():
    x, m = _blob()
    same_x, same_m = A.rotate_volume(x, m, 0.0, (0, 2))
    assert torch.equal(same_m, m) and torch.allclose(same_x, x, atol=1e-5)
    for plane in A.ROTATION_PLANES:
        rx, rm = A.rotate_volume(x, m, 9.0, plane)
        assert rm.dtype == torch.bool
        assert (rx[~rm] == -1).all()
        assert (rx[rm] >= -1).all() and rx[rm].max() <= x.max() + 1e-5
        assert abs(int(rm.sum()) - int(m.sum())) < 0.1 * int(m.sum())


def test_shift_moves_content_and_fills_background():
    x, m = _blob()
    sx, sm = A.shift_volume(x, m, (2, -3, 0))
    assert torch.equal(sx[2:, :-3], x[:-2, 3:]) and torch.equal(sm[2:, :-3], m[:-2, 3:])
    assert (sx[:2] == -1).all() and not sm[:2].any() and (sx[:, -3:] == -1).all()


def test_augment_is_reproducible_and_clean():
    x, m = _blob()
    a = A.augment(x, m, np.random.default_rng(3))
    b = A.augment(x, m, np.random.default_rng(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for seed in range(10):
        ax, am = A.augment(x, m, np.random.default_rng(seed))
        assert (ax[~am] == -1).all() and am.any()
        assert (ax >= -1).all()


def test_crop_patch_contains_center_and_pads():
    x, m = _blob()
    px, pm = A.crop_patch(x, m, (16, 16, 16), (10, 1, 23))
    assert px.shape == (16, 16, 16)
    px, pm = A.crop_patch(x, m, (32, 16, 16), (8, 10, 12))  # padded along axis 0
    assert px.shape == (32, 16, 16) and pm.sum() == m[:, 2:18, 4:20].sum()
    assert (px[~pm] == -1).all()
    center = A.random_brain_voxel(m, np.random.default_rng(0))
    assert m[center]
