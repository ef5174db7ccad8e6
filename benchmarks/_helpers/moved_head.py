"""The moved real head of the preprocessing benchmarks (``bench_preprocess.py``,
``bench_preprocess_qc.py``, ``bench_registration_tools.py``): the move, the scan grid, a
scaled head and the distance between two registrations."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from harmonix.preprocessing import move_scan, rigid_matrix
from harmonix.preprocessing.template import FSL_AFFINE

MOVE = rigid_matrix((10.0, -7.0, 12.0), (15.0, -12.0, 8.0))


GRID = {"zooms": (1.2, 1.0, 1.1), "axcodes": ("P", "I", "R")}


def scaled_head(img: nib.Nifti1Image, factor: float) -> nib.Nifti1Image:
    """The head ``factor`` times larger about its centre, same voxel size."""
    centre = img.affine @ np.r_[(np.array(img.shape) - 1) / 2, 1.0]
    zoom = np.diag([factor, factor, factor, 1.0])
    zoom[:3, 3] = centre[:3] * (1 - factor)
    return move_scan(img, zoom)


def spread_mm(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    pts = np.argwhere(mask)[::25]
    pts = FSL_AFFINE @ np.c_[pts, np.ones(len(pts))].T
    d = np.linalg.norm((a @ pts - b @ pts)[:3], axis=0)
    return float(d.mean()), float(d.max())
