"""Shared fixtures: tiny multi-site image sets that every test can afford."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from _helpers import make_tiny_images

# Tiny test volumes run faster on one thread (and CI machines have only two cores).
torch.set_num_threads(1)


@pytest.fixture
def tiny():
    """(imgs, sites, ages, subjects) for 3 subjects × 3 sites of 12×14×12 voxels."""
    return make_tiny_images()


@pytest.fixture
def tiny_nifti(tmp_path, tiny):
    """The tiny images written as .nii.gz files; returns (paths, sites, ages, affine)."""
    imgs, sites, ages, _ = tiny
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, -12, -8]
    paths = []
    for i, img in enumerate(imgs):
        path = tmp_path / f"img{i}.nii.gz"
        nib.save(nib.Nifti1Image(img, affine), path)
        paths.append(str(path))
    return paths, sites, ages, affine


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions are fastest (and least disturbed by other jobs) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
