"""Augmentation and patches of IGUANe training volumes (torch, on the training device).

Augmentation
    :func:`augment`: with probability 0.5 a rotation by an angle drawn in U(-10°, 10°) in
    one of the three axis planes, then an integer shift in [-5, 5] voxels along every axis;
    uncovered voxels get the background value -1. Interpolation is trilinear and
    *normalized* (the rotated image is divided by the rotated mask), so the brain border
    does not darken; the mask is rotated too and re-thresholded at 0.5, and every voxel
    outside it is set back to exactly -1.

Patches
    :func:`crop_patch` crops (and pads with background) a patch around a voxel, e.g. one
    drawn by :func:`random_brain_voxel`.

All randomness comes from a :class:`numpy.random.Generator` passed by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harmonix._docs import docdict, fill_doc

__all__ = [
    "ROTATION_PLANES",
    "augment",
    "crop_patch",
    "patch_slices",
    "random_brain_voxel",
    "rotate_volume",
    "shift_volume",
]


# --------------------------------------------------------------------------------------
# Augmentation (torch, on the training device)
# --------------------------------------------------------------------------------------
#: Axis planes a rotation may happen in (pairs of spatial axes).
ROTATION_PLANES = ((0, 1), (0, 2), (1, 2))

docdict["network_volume"] = """\
x : torch.Tensor of shape (D, H, W)
    Network-scale volume, background -1.
mask : torch.Tensor of bool, shape (D, H, W)
    Its brain mask."""


@fill_doc
def rotate_volume(
    x: torch.Tensor, mask: torch.Tensor, angle: float, plane: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate a network-scale volume and its mask about the volume centre.

    Parameters
    ----------
    %(network_volume)s
    angle : float
        Angle in degrees.
    plane : tuple of 2 int
        The two spatial axes spanning the rotation plane.

    Returns
    -------
    x, mask : torch.Tensor
        Rotated volume (exactly -1 outside the new mask) and mask (rotated, thresholded at
        0.5). Intensities are interpolated trilinearly and normalized by the rotated mask.
    """
    a, b = plane
    theta = math.radians(angle)
    rot = torch.eye(3, dtype=torch.float64)
    rot[a, a], rot[a, b] = math.cos(theta), -math.sin(theta)
    rot[b, a], rot[b, b] = math.sin(theta), math.cos(theta)
    half = torch.tensor([s / 2.0 for s in x.shape], dtype=torch.float64)
    # voxel offsets from the centre are normalized coordinates times size / 2
    mat = rot * half[None, :] / half[:, None]
    mat = torch.flip(mat, dims=(0, 1))  # (D, H, W) order -> grid (x=W, y=H, z=D) order
    affine = torch.zeros(1, 3, 4, dtype=torch.float64)
    affine[0, :, :3] = mat
    affine = affine.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(affine, (1, 2, *x.shape), align_corners=False)
    stacked = torch.stack([(x + 1.0) * mask, mask.to(x.dtype)])[None]
    out = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    weight = out[0, 1]
    new_mask = weight > 0.5
    value = out[0, 0] / weight.clamp_min(1e-6) - 1.0
    return torch.where(new_mask, value.clamp_min(-1.0), -torch.ones_like(value)), new_mask


@fill_doc
def shift_volume(
    x: torch.Tensor, mask: torch.Tensor, shifts: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift a volume and its mask by whole voxels; uncovered voxels become -1 / False.

    Parameters
    ----------
    %(network_volume)s
    shifts : sequence of 3 int
        Shift along each axis (positive moves content to higher indices).

    Returns
    -------
    x, mask : torch.Tensor
    """
    out_x = torch.full_like(x, -1.0)
    out_m = torch.zeros_like(mask)
    src, dst = [], []
    for n, s in zip(x.shape, shifts):
        s = int(s)
        if abs(s) >= n:
            return out_x, out_m
        src.append(slice(max(0, -s), n - max(0, s)))
        dst.append(slice(max(0, s), n - max(0, -s)))
    out_x[tuple(dst)] = x[tuple(src)]
    out_m[tuple(dst)] = mask[tuple(src)]
    return out_x, out_m


@fill_doc
def augment(
    x: torch.Tensor,
    mask: torch.Tensor,
    rng: np.random.Generator,
    *,
    rotation_probability: float = 0.5,
    max_angle: float = 10.0,
    max_shift: int | Sequence[int] = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IGUANe's augmentation: a random rotation (p=0.5), then a random integer shift.

    Parameters
    ----------
    %(network_volume)s
    rng : numpy.random.Generator
        Source of all random draws.
    rotation_probability : float, default=0.5
    max_angle : float, default=10
        The angle is drawn uniformly in ``[-max_angle, max_angle]`` degrees, the plane
        uniformly among the three axis planes.
    max_shift : int or sequence of 3 int, default=5
        Each axis is shifted by an integer drawn uniformly in ``[-max_shift, max_shift]``
        (one bound for all axes, or one per axis; 0 for no shift).

    Returns
    -------
    x, mask : torch.Tensor
        Augmented volume (background exactly -1) and mask.
    """
    if rng.random() < rotation_probability:
        angle = float(rng.uniform(-max_angle, max_angle))
        plane = ROTATION_PLANES[int(rng.integers(len(ROTATION_PLANES)))]
        x, mask = rotate_volume(x, mask, angle, plane)
    bounds = np.broadcast_to(np.asarray(max_shift, dtype=np.int64), (3,))
    if not bounds.any():
        return x, mask
    if (bounds == bounds[0]).all():
        shifts = rng.integers(-bounds[0], bounds[0] + 1, size=3)
    else:
        shifts = rng.integers(-bounds, bounds + 1)
    return shift_volume(x, mask, shifts.tolist())


# --------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------
def patch_slices(
    shape: Sequence[int], patch_size: Sequence[int], center: Sequence[int]
) -> tuple[slice, ...]:
    """Window of ``patch_size`` around ``center``, moved inside a volume of ``shape``.

    Parameters
    ----------
    shape : sequence of 3 int
        Volume shape (each at least the patch size; see :func:`crop_patch`).
    patch_size : sequence of 3 int
    center : sequence of 3 int
        Voxel the patch should contain.

    Returns
    -------
    tuple of 3 slice
    """
    out = []
    for n, p, c in zip(shape, patch_size, center):
        start = int(np.clip(int(c) - p // 2, 0, max(0, n - p)))
        out.append(slice(start, start + p))
    return tuple(out)


def crop_patch(
    x: torch.Tensor, mask: torch.Tensor, patch_size: Sequence[int], center: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop a patch around ``center`` (padding with background first if the volume is small).

    Parameters
    ----------
    x : torch.Tensor of shape (D, H, W)
    mask : torch.Tensor of bool, shape (D, H, W)
    patch_size : sequence of 3 int
    center : sequence of 3 int
        Voxel (in the coordinates of ``x``) the patch should contain.

    Returns
    -------
    x, mask : torch.Tensor of shape patch_size
    """
    pad = [max(0, p - n) for n, p in zip(x.shape, patch_size)]
    if any(pad):
        before = [q // 2 for q in pad]
        widths = []
        for q, b in zip(reversed(pad), reversed(before)):
            widths += [b, q - b]
        x = F.pad(x, widths, value=-1.0)
        mask = F.pad(mask, widths, value=False)
        center = [c + b for c, b in zip(center, before)]
    sl = patch_slices(x.shape, patch_size, center)
    return x[sl], mask[sl]


def random_brain_voxel(mask: torch.Tensor, rng: np.random.Generator) -> tuple[int, int, int]:
    """A brain voxel drawn uniformly (the volume centre if the mask is empty)."""
    idx = torch.nonzero(mask.reshape(-1)).reshape(-1)
    if idx.numel() == 0:
        return tuple(int(n) // 2 for n in mask.shape)  # type: ignore[return-value]
    flat = int(idx[int(rng.integers(idx.numel()))])
    return tuple(int(v) for v in np.unravel_index(flat, tuple(mask.shape)))  # type: ignore
