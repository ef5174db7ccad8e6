"""Move a scan to a new head position and voxel grid (to test registration and back)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from harmonix.io import load_img
from harmonix.preprocessing.template import resample

__all__ = ["move_scan", "rigid_matrix"]


def rigid_matrix(rotation_deg: Sequence[float], shift_mm: Sequence[float]) -> np.ndarray:
    """A 4x4 rigid world transform: rotations about x, then y, then z (degrees), then a shift.

    Parameters
    ----------
    rotation_deg : sequence of 3 float
    shift_mm : sequence of 3 float

    Returns
    -------
    ndarray of shape (4, 4)
    """
    ax, ay, az = np.deg2rad(np.asarray(rotation_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rz @ ry @ rx
    out[:3, 3] = shift_mm
    return out


def move_scan(
    img: Any,
    matrix: np.ndarray,
    *,
    zooms: Sequence[float] = (1.0, 1.0, 1.0),
    axcodes: Sequence[str] = ("R", "A", "S"),
    order: int = 1,
) -> nib.Nifti1Image:
    """Rigidly move the content of a scan in world space and resample it on a new grid.

    The output shows the same head moved by ``matrix`` (a point ``p`` of the input is at
    ``matrix @ p`` in the output), stored with voxel sizes ``zooms`` along voxel axes
    pointing to ``axcodes`` (e.g. ``("P", "I", "R")``: permuted and flipped axes). The
    grid covers the moved input's field of view.

    Parameters
    ----------
    img : str, path-like or nibabel image
    matrix : ndarray of shape (4, 4)
        Rigid world transform (see :func:`rigid_matrix`).
    zooms : sequence of 3 float, default=(1, 1, 1)
        Voxel sizes (mm) of the new grid.
    axcodes : sequence of 3 str, default=("R", "A", "S")
        Direction of each new voxel axis.
    order : int, default=1
        Interpolation order (0 for masks and labels).

    Returns
    -------
    nibabel.Nifti1Image
    """
    img = load_img(img)
    ornt = nib.orientations.axcodes2ornt(tuple(axcodes))
    axes = np.zeros((3, 3))
    for voxel_axis, (world_axis, sign) in enumerate(ornt):
        axes[int(world_axis), voxel_axis] = sign * float(zooms[voxel_axis])
    corners = np.array(
        [
            [i, j, k, 1.0]
            for i in (0, img.shape[0] - 1)
            for j in (0, img.shape[1] - 1)
            for k in (0, img.shape[2] - 1)
        ]
    )
    world = (matrix @ img.affine @ corners.T)[:3]
    in_axes = np.linalg.solve(axes, world)  # corner coordinates in new voxel units
    low, high = np.floor(in_axes.min(axis=1)), np.ceil(in_axes.max(axis=1))
    affine = np.eye(4)
    affine[:3, :3] = axes
    affine[:3, 3] = axes @ low
    shape = tuple(int(n) for n in high - low + 1)
    data = resample(
        img.get_fdata(dtype=np.float32),
        img.affine,
        affine,
        shape,
        world=np.linalg.inv(matrix),
        order=order,
    )
    return nib.Nifti1Image(data, affine)
