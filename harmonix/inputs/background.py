"""The one background rule of harmonix: voxels equal to 0 are background (and, for methods
given a ``mask``, those outside it); a "brain" filling nearly its whole volume means that the
background is not 0, which :func:`check_background` warns about."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np

from harmonix.exceptions import BackgroundWarning
from harmonix.io import load_img

__all__ = ["BRAIN_FILL_LIMIT", "as_mask", "check_background"]

#: A "brain" (non-zero voxels) filling more than this fraction of its volume means that
#: the background is not 0 (a skull-stripped brain fills 20-30 % of a 1 mm MNI volume,
#: about half of its own bounding box).
BRAIN_FILL_LIMIT = 0.9


def check_background(
    fractions: Sequence[tuple[int, float]],
    *,
    mask_advice: bool = False,
    stacklevel: int = 3,
) -> None:
    """Warn about images whose brain fills more than :data:`BRAIN_FILL_LIMIT` of the volume.

    The one background rule of harmonix: the background is the voxels equal to 0 (and,
    for methods with a ``mask``, those outside it). A background of small non-zero values
    (1e-6, -1e-3, noise left by interpolation or by an unmasked scan) is then brain:
    harmonized like tissue, it shifts every intensity statistic the methods learn
    (landmarks, white-matter stripe, voxel means) and comes out as non-zero intensities.
    Nothing can tell such a background from tissue in general, so harmonix warns
    (:class:`~harmonix.exceptions.BackgroundWarning`) when the brain fills nearly the whole
    volume, which a skull-stripped brain never does.

    Parameters
    ----------
    fractions : sequence of (int, float)
        Image index and the fraction of its voxels that are brain; only those above
        :data:`BRAIN_FILL_LIMIT` are reported.
    mask_advice : bool, default=False
        Also suggest the estimator's ``mask`` parameter.
    stacklevel : int, default=3
        Of the warning.
    """
    flagged = [(i, f) for i, f in fractions if f > BRAIN_FILL_LIMIT]
    if not flagged:
        return
    which = f"In {len(flagged)} image(s) (indices {[i for i, _ in flagged[:20]]})"
    most = max(f for _, f in flagged)
    warnings.warn(
        f"{which}, the non-zero voxels fill more than {BRAIN_FILL_LIMIT:.0%} of the volume "
        f"(up to {most:.0%}): harmonix takes the voxels equal to 0 as background, so a "
        "background that is not exactly 0 (1e-6, -1e-3, noise) is harmonized as brain and "
        "shifts every intensity statistic. Set the background to exactly 0 (e.g. "
        "img[np.abs(img) < threshold] = 0, or img * brain_mask)"
        + (", or pass mask=<brain mask>" if mask_advice else "")
        + ".",
        BackgroundWarning,
        stacklevel=stacklevel,
    )


def as_mask(mask: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Read a ``mask`` parameter: non-zero voxels are brain, the others background.

    Parameters
    ----------
    mask : ndarray, path or nibabel image, or None
        A 3-D brain mask (as the harmonizers' ``mask`` parameter takes it).

    Returns
    -------
    mask : ndarray of bool of shape (i, j, k) or None
        The brain voxels (None for no mask).
    affine : ndarray of shape (4, 4) or None
        The mask's voxel-to-world affine when it is a NIfTI file or image.

    Raises
    ------
    ValueError
        If the mask is not 3-D or has no non-zero voxel.
    """
    if mask is None:
        return None, None
    affine = None
    if isinstance(mask, (str, PathLike)) or hasattr(mask, "dataobj"):
        img = load_img(mask)
        affine = np.asarray(img.affine, dtype=np.float64)
        mask = np.asanyarray(img.dataobj)
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"mask must be a 3-D array or image; got shape {arr.shape}.")
    arr = arr != 0
    if not arr.any():
        raise ValueError("mask is empty (no non-zero voxel); pass a brain mask.")
    return arr, affine
