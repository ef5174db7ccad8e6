"""The template anatomy on the FSL MNI152 grids: tissue maps, mask and texture.

The ICBM152 2009a maps bundled with nilearn, smoothed and resampled once per grid and
cached in memory (read-only arrays), and the voxel <-> world (MNI, mm) conversions.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# FSL MNI152 grids: shape and voxel size, all sharing the origin (90, -126, -72) mm and a
# left-right flipped first axis (radiological voxel order, like FSL's MNI152_T1_*mm).
_GRIDS = {
    1: (182, 218, 182),
    2: (91, 109, 91),
    4: (46, 55, 46),
}
_ORIGIN = (90.0, -126.0, -72.0)


def _fsl_affine(resolution: int) -> np.ndarray:
    affine = np.diag([-float(resolution), float(resolution), float(resolution), 1.0])
    affine[:3, 3] = _ORIGIN
    return affine


@dataclass(frozen=True)
class _Anatomy:
    """Template tissue maps on one grid (read-only arrays)."""

    gm: np.ndarray  # float32 (i, j, k)
    wm: np.ndarray
    csf: np.ndarray
    texture: np.ndarray
    mask: np.ndarray  # bool
    maskf: np.ndarray  # float32 copy of ``mask``
    coords: np.ndarray  # float32 (3, n_voxels) voxel coordinates of the grid, C order
    distance: np.ndarray  # float32, distance to the mask in voxels (0 inside)
    center: np.ndarray  # (3,) centre of mass of the mask (voxels)
    radius: float  # largest distance of a mask voxel to ``center`` (voxels)
    affine: np.ndarray
    resolution: int


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@functools.lru_cache(maxsize=3)
def _load_anatomy(resolution: int) -> _Anatomy:
    """Load the nilearn ICBM152 2009a maps and resample them once to an FSL grid."""
    from nilearn import datasets as nl_datasets

    imgs = {
        "t1": nl_datasets.load_mni152_template(resolution=1),
        "gm": nl_datasets.load_mni152_gm_template(resolution=1),
        "wm": nl_datasets.load_mni152_wm_template(resolution=1),
        "mask": nl_datasets.load_mni152_brain_mask(resolution=1),
    }
    shape = _GRIDS[resolution]
    affine = _fsl_affine(resolution)
    # Anti-aliasing before down-sampling: Gaussian whose FWHM brings 1 mm voxels to the
    # target voxel size.
    fwhm = math.sqrt(max(resolution**2 - 1.0, 0.0))
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    maps = {}
    for name, img in imgs.items():
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.max() > 1.5:  # uint8 stored without scaling
            data /= 255.0
        if sigma > 0:
            data = ndimage.gaussian_filter(data, sigma, mode="constant")
        vox = np.linalg.solve(img.affine, affine)  # target voxel -> source voxel
        maps[name] = ndimage.affine_transform(
            data,
            vox[:3, :3],
            offset=vox[:3, 3],
            output_shape=shape,
            order=1,
            mode="constant",
            cval=0.0,
            prefilter=False,
        ).astype(np.float32, copy=False)

    mask = maps["mask"] > 0.5
    mask = ndimage.binary_fill_holes(mask)
    gm = np.clip(maps["gm"], 0.0, 1.0) * mask
    wm = np.clip(maps["wm"], 0.0, 1.0) * mask
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(mask - gm - wm, 0.0, 1.0).astype(np.float32)

    # Texture: T1 minus its least-squares tissue model, in WM units.
    t1 = maps["t1"]
    design = np.stack([wm[mask], gm[mask], csf[mask]], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, t1[mask].astype(np.float64), rcond=None)
    texture = np.zeros(shape, np.float32)
    resid = (t1[mask] - design @ coef) / coef[0]
    texture[mask] = np.clip(resid, -0.4, 0.4)

    distance = ndimage.distance_transform_edt(~mask).astype(np.float32)
    idx = np.argwhere(mask)
    center = idx.mean(axis=0)
    radius = float(np.sqrt(((idx - center) ** 2).sum(axis=1)).max())
    return _Anatomy(
        gm=_readonly(gm.astype(np.float32)),
        wm=_readonly(wm.astype(np.float32)),
        csf=_readonly(csf),
        texture=_readonly(texture),
        mask=_readonly(mask),
        maskf=_readonly(mask.astype(np.float32)),
        coords=_readonly(np.indices(shape, dtype=np.float32).reshape(3, -1)),
        distance=_readonly(distance),
        center=_readonly(center),
        radius=radius,
        affine=_readonly(affine),
        resolution=resolution,
    )


def _check_resolution(resolution: float) -> int:
    value = float("nan")
    if isinstance(resolution, int | float | np.integer | np.floating) and not isinstance(
        resolution, bool
    ):
        value = float(resolution)
    if value not in (1.0, 2.0, 4.0):
        raise ValueError(
            f"resolution must be 1, 2 or 4 (mm), got {resolution!r}; pass one of these "
            "voxel sizes."
        )
    return int(value)


def _grid_mm(anat: _Anatomy, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World (MNI, mm) coordinates of voxel coordinates ``coords`` (3, n)."""
    res = np.float32(anat.resolution)
    return (
        np.float32(_ORIGIN[0]) - res * coords[0],  # the first axis is flipped
        np.float32(_ORIGIN[1]) + res * coords[1],
        np.float32(_ORIGIN[2]) + res * coords[2],
    )
