"""The registration target: ICBM152 2009a T1 (bundled with nilearn) on the FSL 1 mm grid."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["FSL_SHAPE", "FSL_AFFINE", "TEMPLATE_SPACE", "Template", "load_template", "resample"]

#: The template's BIDS / TemplateFlow identifier, the ``space-`` label of preprocessed
#: images: nilearn's file is ``mni_icbm152_t1_tal_nlin_sym_09a`` (ICBM152 2009a, nonlinear,
#: symmetric).
TEMPLATE_SPACE = "MNI152NLin2009aSym"

#: FSL's MNI152 1 mm grid (``MNI152_T1_1mm.nii.gz``), the grid the original IGUANe crops.
FSL_SHAPE = (182, 218, 182)
#: Its voxel-to-world affine: x axis flipped (radiological storage), origin (90, -126, -72).
FSL_AFFINE = np.array(
    [[-1.0, 0, 0, 90.0], [0, 1.0, 0, -126.0], [0, 0, 1.0, -72.0], [0, 0, 0, 1.0]]
)
FSL_AFFINE.flags.writeable = False


@dataclass(frozen=True)
class Template:
    """A template image and its brain mask on one grid (read-only arrays).

    Attributes
    ----------
    data : ndarray of float32, shape (182, 218, 182) (plus margins)
        ICBM152 2009a T1 (skull-stripped), scaled so that its brain median is 500.
    mask : ndarray of bool, same shape
        Its brain mask.
    affine : ndarray of shape (4, 4)
        :data:`FSL_AFFINE` (shifted by the margin, see :func:`load_template`).
    """

    data: np.ndarray
    mask: np.ndarray
    affine: np.ndarray


def resample(
    data: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, ...],
    *,
    world: np.ndarray | None = None,
    order: int = 1,
) -> np.ndarray:
    """Resample an image onto another grid through an optional world-space transform.

    Parameters
    ----------
    data : ndarray of shape (i, j, k)
        The image to sample.
    affine : ndarray of shape (4, 4)
        Its voxel-to-world affine.
    target_affine : ndarray of shape (4, 4)
        Voxel-to-world affine of the output grid.
    target_shape : tuple of 3 int
        Output shape.
    world : ndarray of shape (4, 4), optional
        Maps output-grid world points to ``data``'s world points (default identity).
    order : int, default=1
        Spline order (0 nearest, 1 linear).

    Returns
    -------
    ndarray of float32 of shape ``target_shape``; points outside ``data`` are 0.
    """
    world = np.eye(4) if world is None else np.asarray(world, dtype=np.float64)
    vox = np.linalg.solve(np.asarray(affine, dtype=np.float64), world @ target_affine)
    return ndimage.affine_transform(
        np.asarray(data, dtype=np.float32),
        vox[:3, :3],
        offset=vox[:3, 3],
        output_shape=tuple(target_shape),
        order=order,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )


@functools.lru_cache(maxsize=2)
def load_template(margin: int = 0) -> Template:
    """The ICBM152 2009a T1 and brain mask resampled once onto the FSL 1 mm grid.

    The images come from nilearn's bundled data (no download).

    Parameters
    ----------
    margin : int, default=0
        Voxels of zeros added on every side of the FSL grid (the chain resamples brains
        onto the larger grid, so that no brain voxel falls outside FSL's field of view).

    Returns
    -------
    Template
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}.")
    if margin:
        base = load_template()
        data, mask = (np.pad(a, int(margin)) for a in (base.data, base.mask))
        shift = np.eye(4)
        shift[:3, 3] = -int(margin)
        affine = FSL_AFFINE @ shift
    else:
        from nilearn import datasets as nl_datasets

        t1 = nl_datasets.load_mni152_template(resolution=1)
        brain = nl_datasets.load_mni152_brain_mask(resolution=1)
        data = resample(np.asarray(t1.dataobj, dtype=np.float32), t1.affine, FSL_AFFINE, FSL_SHAPE)
        mask = (
            resample(
                np.asarray(brain.dataobj, dtype=np.float32), brain.affine, FSL_AFFINE, FSL_SHAPE
            )
            > 0.5
        )
        mask = ndimage.binary_fill_holes(mask)
        data[~mask] = 0.0
        data *= np.float32(500.0 / np.median(data[mask]))
        affine = FSL_AFFINE
    for a in (data, mask, affine):
        a.flags.writeable = False
    return Template(data, mask, affine)
