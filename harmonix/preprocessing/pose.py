"""Head pose search: the start of the rigid registration, whatever the head's orientation.

A gradient-based rigid registration started from the centres of mass alone converges to
the wrong pose when the head is tilted by more than about 20°: on the Colin27 brain
tilted 30° the fine registration ended 19 mm (mean) away from the truth. FSL FLIRT, used
by the original IGUANe chain, first searches rotations of ±90°. :func:`initial_pose` does
the same on low-resolution images, with the normalized cross-correlation (NCC) of the
two brains on the template's grid as score:

1. every rotation of a grid (by default -90° to 90° in 30° steps about each axis, 343
   rotations) about the centres of mass, scored on 8 mm images;
2. the best rotations that differ by more than a grid step are refined (rotation and
   shift, Powell's method) on the 8 mm images, and the best of them on 4 mm images.

Everything is plain NumPy/SciPy on one thread: the result does not depend on the
machine's thread count.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage, optimize

from harmonix.preprocessing.simulate import rigid_matrix

__all__ = ["ROTATION_GRID_DEG", "brain_centre", "initial_pose", "pose_matrix"]

#: Angles (degrees) tried about each axis by the coarse search.
ROTATION_GRID_DEG = (-90.0, -60.0, -30.0, 0.0, 30.0, 60.0, 90.0)
#: Resolutions (mm) of the coarse search and of the refinement's two levels.
_COARSE_MM, _FINE_MM = 8.0, 4.0
#: Gaussian smoothing (sigma, as a fraction of the sampling step) before sampling.
_SMOOTH = 0.4


def pose_matrix(
    params: Sequence[float], fixed_center: np.ndarray, moving_center: np.ndarray
) -> np.ndarray:
    """The rigid map of a pose: fixed world -> moving world (4x4, RAS mm).

    Parameters
    ----------
    params : sequence of 6 float
        Rotations about x, y, z (degrees, as :func:`~harmonix.preprocessing.rigid_matrix`)
        about ``fixed_center``, then a shift (mm) added to ``moving_center``.
    fixed_center, moving_center : ndarray of shape (3,)
        World points mapped onto each other by the zero pose (the centres of mass).

    Returns
    -------
    ndarray of shape (4, 4)
    """
    rotation = rigid_matrix(params[:3], (0.0, 0.0, 0.0))[:3, :3]
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = moving_center + np.asarray(params[3:6], dtype=np.float64)
    out[:3, 3] -= rotation @ fixed_center
    return out


def _zooms(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


def _low_resolution(
    data: np.ndarray, affine: np.ndarray, mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Block means of about ``mm / 2`` per voxel, then Gaussian smoothing (sigma 0.4 ``mm``).

    Returns the image and its voxel-to-world affine.
    """
    factor = np.maximum(1, np.floor(mm / 2.0 / _zooms(affine))).astype(int)
    keep = tuple(slice(0, n - n % f) for n, f in zip(data.shape, factor))
    small = np.asarray(data, dtype=np.float32)[keep]
    shape = [n // f for n, f in zip(small.shape, factor)]
    small = small.reshape(shape[0], factor[0], shape[1], factor[1], shape[2], factor[2])
    small = small.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factor)
    scale[:3, 3] = (factor - 1) / 2.0
    small_affine = np.asarray(affine, dtype=np.float64) @ scale
    return ndimage.gaussian_filter(small, _SMOOTH * mm / _zooms(small_affine)), small_affine


class _Scorer:
    """NCC of the moving image sampled through a pose with the fixed image at ``mm``."""

    def __init__(
        self,
        moving: np.ndarray,
        moving_affine: np.ndarray,
        fixed: np.ndarray,
        fixed_affine: np.ndarray,
        mm: float,
    ) -> None:
        small, small_affine = _low_resolution(fixed, fixed_affine, mm)
        step = np.maximum(1, np.round(mm / _zooms(small_affine))).astype(int)
        index = np.stack(
            np.meshgrid(
                *(np.arange(s // 2, n, s) for s, n in zip(step, small.shape)), indexing="ij"
            ),
            axis=-1,
        ).reshape(-1, 3)
        values = small[tuple(index.T)].astype(np.float64)
        self.fixed = values - values.mean()
        self.fixed_norm = float(np.sqrt((self.fixed**2).sum()))
        self.points = small_affine[:3, :3] @ index.T + small_affine[:3, 3:4]
        self.moving, moving_small_affine = _low_resolution(moving, moving_affine, mm)
        self.to_voxel = np.linalg.inv(moving_small_affine)

    def __call__(self, matrix: np.ndarray) -> float:
        world = matrix[:3, :3] @ self.points + matrix[:3, 3:4]
        voxel = self.to_voxel[:3, :3] @ world + self.to_voxel[:3, 3:4]
        sampled = ndimage.map_coordinates(self.moving, voxel, order=1, mode="constant", cval=0.0)
        sampled = sampled.astype(np.float64) - sampled.mean()
        norm = float(np.sqrt((sampled**2).sum()))
        if norm == 0 or self.fixed_norm == 0:
            return -1.0
        return float((sampled * self.fixed).sum() / (norm * self.fixed_norm))


def brain_centre(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the centre of mass of the voxels above 0.

    Parameters
    ----------
    data : ndarray of shape (i, j, k)
    affine : ndarray of shape (4, 4)

    Returns
    -------
    ndarray of shape (3,)
    """
    inside = np.asarray(data) > 0
    total = int(np.count_nonzero(inside))
    if total == 0:
        raise ValueError("The image has no voxel above 0; cannot find its centre.")
    voxel = [
        float(np.dot(inside.sum(axis=tuple(a for a in range(3) if a != axis)), np.arange(n)))
        / total
        for axis, n in enumerate(inside.shape)
    ]
    return (np.asarray(affine) @ np.r_[voxel, 1.0])[:3]


def _angle_between(a: Sequence[float], b: Sequence[float]) -> float:
    """Angle (degrees) of the rotation between two rotation triplets."""
    ra = rigid_matrix(a, (0, 0, 0))[:3, :3]
    rb = rigid_matrix(b, (0, 0, 0))[:3, :3]
    cos = (np.trace(ra.T @ rb) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def initial_pose(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    *,
    angles: Sequence[float] = ROTATION_GRID_DEG,
    n_candidates: int = 3,
) -> np.ndarray:
    """Search the rigid pose of a brain against a template, for any head orientation.

    Both images should be skull-stripped (background 0), with the same contrast (the
    score is a correlation).

    Parameters
    ----------
    moving, fixed : ndarray of shape (i, j, k)
        The subject's brain and the template brain.
    moving_affine, fixed_affine : ndarray of shape (4, 4)
        Their voxel-to-world affines (RAS mm).
    angles : sequence of float, default=ROTATION_GRID_DEG
        Angles (degrees) tried about each axis (every combination).
    n_candidates : int, default=3
        Best grid rotations (more than a grid step apart) refined at 8 mm.

    Returns
    -------
    ndarray of shape (4, 4)
        Maps template (fixed) world points to subject (moving) world points, RAS mm.
    """
    fixed_center = brain_centre(fixed, fixed_affine)
    moving_center = brain_centre(moving, moving_affine)
    coarse = _Scorer(moving, moving_affine, fixed, fixed_affine, _COARSE_MM)
    grid = sorted(
        (
            (coarse(pose_matrix((*rot, 0.0, 0.0, 0.0), fixed_center, moving_center)), rot)
            for rot in itertools.product(*(tuple(float(a) for a in angles),) * 3)
        ),
        key=lambda item: -item[0],
    )
    spacing = float(np.min(np.diff(sorted(set(angles))))) if len(set(angles)) > 1 else 90.0
    starts: list[tuple[float, ...]] = []
    for _, rot in grid:
        if all(_angle_between(rot, s) > spacing for s in starts):
            starts.append(rot)
        if len(starts) == n_candidates:
            break

    def refine(scorer: _Scorer, start: np.ndarray, tol: float) -> optimize.OptimizeResult:
        return optimize.minimize(
            lambda p: -scorer(pose_matrix(p, fixed_center, moving_center)),
            start,
            method="Powell",
            options={"xtol": 0.2, "ftol": tol},
        )

    refined = [refine(coarse, np.r_[rot, 0.0, 0.0, 0.0], 1e-4) for rot in starts]
    best = min(refined, key=lambda r: r.fun)
    fine = _Scorer(moving, moving_affine, fixed, fixed_affine, _FINE_MM)
    return pose_matrix(refine(fine, best.x, 1e-5).x, fixed_center, moving_center)
