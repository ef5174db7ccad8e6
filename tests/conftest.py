"""Shared fixtures: tiny multi-site image sets that every test can afford."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

# Tiny test volumes run faster on one thread (and CI machines have only two cores).
torch.set_num_threads(1)

N_SITES = 3
N_SUBJECTS = 3
SHAPE = (12, 14, 12)


def make_tiny_images(
    shape=SHAPE, n_subjects=N_SUBJECTS, n_sites=N_SITES, seed=0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Blob-shaped 'brains' with per-site gain/offset; background exactly 0.

    Returns imgs (n, i, j, k) float32, sites, ages, subjects (site-major order).
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    brain = radius < 0.8
    anat = [
        (1.0 + 0.5 * np.cos(3 * radius + s) + 0.1 * rng.standard_normal(shape)) * brain
        for s in range(n_subjects)
    ]
    imgs, sites, ages, subjects = [], [], [], []
    for k in range(n_sites):
        gain, offset = 1.0 + 0.3 * k, 0.2 * k
        for s in range(n_subjects):
            img = (gain * anat[s] + offset) * brain + 0.02 * rng.standard_normal(shape) * brain
            imgs.append(np.where(brain, np.abs(img) + 0.05, 0.0))
            sites.append(f"site{k}")
            ages.append(30.0 + 10 * s)
            subjects.append(f"sub{s}")
    return (
        np.stack(imgs).astype(np.float32),
        np.array(sites),
        np.array(ages),
        np.array(subjects),
    )


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
