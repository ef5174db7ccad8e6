"""The grid of a model's training images, and the check of new images against it.

Every fitted harmonizer records in ``grid_`` the grid its training images shared: voxel
size (mm), shape, affine and orientation (axis codes such as ``"LAS"``), and for IGUANe
the typical number of brain voxels. NIfTI images tell all of it; arrays tell their shape
only, and their voxel size where the estimator has a ``voxel_size`` parameter. What is not
known is ``None``.

What a model does with its grid depends on the method:

- histogram matching and WhiteStripe map each image's intensity distribution; they do not
  depend on the voxel size or orientation, so they record the grid and never check it
  (class attribute ``_grid_check = "none"``);
- a network (IGUANe, ``_grid_check = "voxel"``) is specific to the voxel size and
  orientation it was trained at: images whose voxel size differs by more than
  :data:`VOXEL_SIZE_RTOL` or whose axis codes differ are a mismatch (shapes may differ).
  For images whose voxel size is not known (arrays), the number of brain voxels stands in
  for it: a brain with more than :data:`BRAIN_VOXELS_RATIO` times more (or fewer) voxels
  than the training images' median is taken for another voxel size (8 times for half the
  voxel size). Such a mismatch raises a :class:`ValueError`, or warns with
  :class:`~harmonix.exceptions.GridMismatchWarning`, or is ignored, as the estimator's
  ``grid_mismatch`` parameter says (:data:`GRID_ACTIONS`);
- voxel-wise methods (ComBat, or any method given a ``mask``) need the training grid
  itself: the same shape, and for NIfTI images the same affine (``affine_``; every entry
  within :data:`AFFINE_ATOL` of a voxel, :func:`same_affine`), always refused otherwise:
  in fit between the training images and with a NIfTI mask (:func:`training_grid`), in
  transform for each new image (:func:`check_affine`, called by
  :meth:`harmonix.BaseHarmonizer.check_grid` and while images are read).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from harmonix.exceptions import GridMismatchWarning
from harmonix.io import ImageCollection

__all__ = [
    "AFFINE_ATOL",
    "BRAIN_VOXELS_RATIO",
    "GRID_ACTIONS",
    "GRID_CHECKS",
    "VOXEL_SIZE_RTOL",
    "brain_voxels_problem",
    "check_affine",
    "check_grid_action",
    "check_voxel_size",
    "describe_affine",
    "describe_grid",
    "describe_voxel_size",
    "grid_problems",
    "image_grid",
    "report_mismatches",
    "same_affine",
    "training_grid",
]

#: What ``grid_mismatch`` may say: refuse, warn, or go on silently.
GRID_ACTIONS = ("error", "warn", "ignore")
#: What a method compares with its training grid besides affines (module docstring).
GRID_CHECKS = ("none", "voxel")
#: Voxel sizes differing by more than this fraction (along any axis) differ.
VOXEL_SIZE_RTOL = 0.05
#: Two affines are the same grid when every entry agrees within this fraction of a voxel.
AFFINE_ATOL = 0.01
#: A brain with this many times more (or fewer) voxels than the training images' median
#: is taken for another voxel size (a factor 2 in voxel size is a factor 8 in count).
BRAIN_VOXELS_RATIO = 2.5
#: Mismatching images named in one message.
_SHOWN = 5


def check_grid_action(value: Any) -> str:
    """``value`` if it is one of :data:`GRID_ACTIONS`, else a ValueError naming them."""
    if not isinstance(value, str) or value not in GRID_ACTIONS:
        raise ValueError(f"grid_mismatch must be one of {list(GRID_ACTIONS)}; got {value!r}.")
    return value


def check_voxel_size(value: Any) -> tuple[float, float, float] | None:
    """A ``voxel_size`` parameter as 3 positive floats (mm), or None.

    Parameters
    ----------
    value : None, float or sequence of 3 float

    Returns
    -------
    tuple of 3 float or None

    Raises
    ------
    ValueError
        If the value is not None, one positive number or 3 positive numbers.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        sizes: tuple[float, ...] = ()
    elif isinstance(value, int | float | np.integer | np.floating):
        sizes = (float(value),) * 3
    else:
        try:
            sizes = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            sizes = ()
    if len(sizes) != 3 or not all(np.isfinite(v) and v > 0 for v in sizes):
        raise ValueError(
            f"voxel_size must be None, a positive number or 3 positive numbers (mm); "
            f"got {value!r}."
        )
    return sizes  # type: ignore[return-value]


def describe_voxel_size(sizes: Sequence[float] | None) -> str:
    """``"4 mm"`` for an isotropic voxel, ``"1x1x3 mm"`` otherwise, ``"unknown"`` for None."""
    if sizes is None:
        return "unknown"
    sizes = [float(v) for v in sizes]
    if max(sizes) - min(sizes) <= 1e-6 * max(sizes):
        return f"{sizes[0]:g} mm"
    return "x".join(f"{v:g}" for v in sizes) + " mm"


def _orientation(affine: np.ndarray | None) -> str | None:
    if affine is None:
        return None
    try:
        return "".join(str(c) for c in nib.aff2axcodes(affine))
    except Exception:  # a degenerate affine has no axis codes
        return None


def image_grid(imgs: ImageCollection, index: int, voxel_size: Any = None) -> dict[str, Any]:
    """The grid of image ``index`` of a collection, read from its header only.

    Parameters
    ----------
    imgs : ImageCollection
    index : int
    voxel_size : tuple of 3 float, optional
        The voxel size of array images (they have no header).

    Returns
    -------
    dict
        ``voxel_size`` (tuple of 3 float or None), ``shape`` (tuple of int), ``affine``
        (ndarray of shape (4, 4) or None) and ``orientation`` (axis codes or None).
    """
    if imgs.kind == "nifti":
        img = imgs.nifti(index)
        affine = np.asarray(img.affine, dtype=np.float64)
        sizes = tuple(float(z) for z in img.header.get_zooms()[:3])
        return {
            "voxel_size": sizes,
            "shape": tuple(int(s) for s in img.shape[:3]),
            "affine": affine,
            "orientation": _orientation(affine),
        }
    return {
        "voxel_size": voxel_size,
        "shape": tuple(int(s) for s in imgs.shape(index)),
        "affine": None,
        "orientation": None,
    }


def _same_voxel_size(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    if a is None or b is None:
        return True
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.all(np.abs(a - b) <= VOXEL_SIZE_RTOL * np.minimum(a, b)))


def same_affine(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two voxel-to-world affines describe the same grid.

    Parameters
    ----------
    a, b : ndarray of shape (4, 4)

    Returns
    -------
    bool
        True when every entry agrees within :data:`AFFINE_ATOL` of the smaller voxel size.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    voxel = float(
        min(np.linalg.norm(a[:3, :3], axis=0).min(), np.linalg.norm(b[:3, :3], axis=0).min())
    )
    return bool(np.all(np.abs(a - b) <= AFFINE_ATOL * voxel))


def describe_affine(affine: np.ndarray) -> str:
    """``"orientation LAS, voxels 2x2x2 mm"`` for an affine."""
    affine = np.asarray(affine, dtype=np.float64)
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    codes = _orientation(affine) or "?"
    return f"orientation {codes}, voxels {'x'.join(f'{v:g}' for v in sizes)} mm"


def _known_same_affine(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is None or b is None or same_affine(a, b)


def _differences(fitted: dict[str, Any], grid: dict[str, Any], check: str) -> list[str]:
    """How ``grid`` (one image's) differs from ``fitted`` under ``check``."""
    out = []
    if check == "voxel":
        if not _same_voxel_size(fitted.get("voxel_size"), grid["voxel_size"]):
            out.append(
                f"has voxels of {describe_voxel_size(grid['voxel_size'])}, not "
                f"{describe_voxel_size(fitted['voxel_size'])}"
            )
        mine, theirs = grid["orientation"], fitted.get("orientation")
        if mine is not None and theirs is not None and mine != theirs:
            out.append(f"has orientation {mine}, not {theirs}")
    return out


def _fixes(fitted: dict[str, Any]) -> str:
    size = fitted.get("voxel_size")
    target = f"{describe_voxel_size(size)} voxels" if size is not None else "the training grid"
    fix = (
        f"Resample them to {target} (e.g. nibabel.processing.resample_to_output(img, "
        "voxel_sizes, order=1), which keeps the background at 0)"
    )
    if fitted.get("orientation"):
        fix += f", stored in {fitted['orientation']} orientation (nibabel: img.as_reoriented)"
    return fix


def report_mismatches(
    problems: Sequence[tuple[str, str]],
    *,
    what: str,
    owner: str,
    fitted: dict[str, Any],
    action: str,
    stacklevel: int = 3,
) -> None:
    """Raise, warn about or ignore voxel size and orientation mismatches, as ``action``
    says.

    Parameters
    ----------
    problems : sequence of (str, str)
        Each image (as :meth:`~harmonix.io.ImageCollection.describe` names it) and how its
        grid differs.
    what : str
        Whose grid the images differ from, e.g. ``"the grid IGUANeHarmonizer was fitted
        on"``.
    owner : str
        The estimator's class name.
    fitted : dict
        The training grid (``grid_``), for the advice.
    action : {"error", "warn", "ignore"}
    stacklevel : int, default=3
        Of the warning.
    """
    if not problems or action == "ignore":
        return
    shown = "; ".join(f"{name} {reason}" for name, reason in problems[:_SHOWN])
    more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
    message = (
        f"{len(problems)} image(s) do not match {what} ({describe_grid(fitted)}): "
        f"{shown}{more}. {owner} (a network) is specific to the voxel size and orientation "
        f"it was trained at. {_fixes(fitted)}"
    )
    if action == "error":
        raise ValueError(
            f"{message}; or pass grid_mismatch='warn' (harmonix transform --grid-mismatch "
            "warn) to go on anyway."
        )
    warnings.warn(
        f"{message}. Results on them may be wrong.", GridMismatchWarning, stacklevel=stacklevel
    )


def describe_grid(grid: dict[str, Any]) -> str:
    """A short description of a recorded grid, e.g. ``"4 mm, 46x55x46, LAS"``."""
    parts = [f"voxels {describe_voxel_size(grid.get('voxel_size'))}"]
    if grid.get("shape") is not None:
        parts.append("shape " + "x".join(str(int(s)) for s in grid["shape"]))
    if grid.get("orientation"):
        parts.append(f"orientation {grid['orientation']}")
    return ", ".join(parts)


def _voxelwise_affine(
    imgs: ImageCollection,
    grids: Sequence[dict[str, Any]],
    mask_shape: tuple[int, ...] | None,
    mask_affine: np.ndarray | None,
) -> np.ndarray | None:
    """Check that the training images of a voxel-wise model (and its mask) share one grid.

    Returns
    -------
    ndarray of shape (4, 4) or None
        The affine the NIfTI images (or the NIfTI mask) share; None for arrays without a
        NIfTI mask.

    Raises
    ------
    ValueError
        If an image's shape differs from the first image's (or the mask's), or two
        images, or the mask and the images, have different affines.
    """
    expected = tuple(mask_shape) if mask_shape is not None else grids[0]["shape"]
    for i, grid in enumerate(grids):
        if grid["shape"] != expected:
            raise ValueError(
                f"Image {i} has shape {grid['shape']} but {expected} was expected: "
                "resample all images (and the mask) to one grid."
            )
    affine = grids[0]["affine"]
    for i in range(1, len(grids) if affine is not None else 0):
        other = grids[i]["affine"]
        if not same_affine(other, affine):
            raise ValueError(
                f"{imgs.describe(i)} has another affine than {imgs.describe(0)} "
                f"({describe_affine(other)}, not {describe_affine(affine)}) although "
                "their shapes agree: a voxel-wise model needs every image on one grid, the "
                "same voxel at the same place. Resample them onto one grid (e.g. "
                "nilearn.image.resample_to_img) or fix their headers."
            )
    if mask_affine is not None and affine is not None and not same_affine(mask_affine, affine):
        raise ValueError(
            f"The mask's affine ({describe_affine(mask_affine)}) differs from the images' "
            f"({describe_affine(affine)}): resample the mask onto the images' grid."
        )
    return affine if affine is not None else mask_affine


def check_affine(fitted: np.ndarray | None, imgs: ImageCollection, index: int, owner: str) -> None:
    """Refuse an image whose affine differs from a voxel-wise model's (``affine_``).

    Parameters
    ----------
    fitted : ndarray of shape (4, 4) or None
        The model's ``affine_``; None (arrays, or a method that is not voxel-wise) checks
        nothing.
    imgs : ImageCollection
    index : int
        The image checked; arrays have no affine and pass.
    owner : str
        The estimator's class name, for the message.

    Raises
    ------
    ValueError
        If the image is NIfTI and its affine is not :func:`same_affine` as ``fitted``.
    """
    affine = imgs.affine(index) if fitted is not None else None
    if affine is not None and not same_affine(affine, fitted):
        raise ValueError(
            f"{imgs.describe(index)} has another affine (voxel-to-world matrix) than "
            f"the training images: {describe_affine(affine)}, not "
            f"{describe_affine(np.asarray(fitted))}. {owner} models each "
            "voxel of the training grid, so the same voxel must be the same place: "
            "resample the image onto the training grid (e.g. "
            "nilearn.image.resample_to_img) or fix its header."
        )


def training_grid(
    imgs: ImageCollection,
    *,
    check: str,
    action: str,
    owner: str,
    voxel_size: tuple[float, float, float] | None = None,
    voxelwise: bool = False,
    mask_shape: tuple[int, ...] | None = None,
    mask_affine: np.ndarray | None = None,
) -> dict[str, Any]:
    """Read the grid the training images share (headers only) and check they share one.

    Parameters
    ----------
    imgs : ImageCollection
        The training images.
    check : {"none", "voxel"}
        What the method compares (see the module docstring); training images that differ
        in it are reported as ``action`` says.
    action : {"error", "warn", "ignore"}
    owner : str
        The estimator's class name, for messages.
    voxel_size : tuple of 3 float, optional
        The ``voxel_size`` parameter: the voxel size of array images. NIfTI images take
        theirs from their headers, and a different ``voxel_size`` raises a ValueError.
    voxelwise : bool, default=False
        A voxel-wise model (ComBat, or a method given a mask): every image must have the
        shape of the first (or of the mask) and, for NIfTI images, its affine (and the
        mask's, when it is a NIfTI file); any difference raises a ValueError.
    mask_shape : tuple of int, optional
        The shape of the ``mask`` parameter.
    mask_affine : ndarray of shape (4, 4), optional
        The affine of the ``mask`` parameter, when it is a NIfTI file or image.

    Returns
    -------
    dict
        The fitted ``grid_``: ``voxel_size`` (list of 3 float), ``shape`` (list of 3
        int), ``affine`` (4x4 nested list) and ``orientation`` (str), each None when not
        known or not shared by every training image, and ``brain_voxels`` (None; methods
        that check it fill it in). A voxel-wise model's ``affine`` is that of its NIfTI
        images, or of its NIfTI mask when the images are arrays.
    """
    grids = [image_grid(imgs, i, voxel_size) for i in range(len(imgs))]
    first = grids[0]
    shared = None
    if voxelwise:
        shared = _voxelwise_affine(imgs, grids, mask_shape, mask_affine)
    if imgs.kind == "nifti" and voxel_size is not None:
        wrong = [
            i for i, g in enumerate(grids) if not _same_voxel_size(voxel_size, g["voxel_size"])
        ]
        if wrong:
            raise ValueError(
                f"voxel_size={describe_voxel_size(voxel_size)} but the header of training "
                f"image {wrong[0]} says {describe_voxel_size(grids[wrong[0]]['voxel_size'])}: "
                "NIfTI images take their voxel size from their headers. Leave voxel_size=None "
                "for NIfTI images, or fix their headers."
            )
    fitted = {
        "voxel_size": first["voxel_size"],
        "shape": first["shape"],
        "affine": first["affine"],
        "orientation": first["orientation"],
    }
    problems = []
    for i, grid in enumerate(grids[1:], start=1):
        if check != "none":
            problems += [(imgs.describe(i), why) for why in _differences(first, grid, check)]
        if not _same_voxel_size(fitted["voxel_size"], grid["voxel_size"]):
            fitted["voxel_size"] = None
        if fitted["shape"] is not None and grid["shape"] != fitted["shape"]:
            fitted["shape"] = None
        if not _known_same_affine(fitted["affine"], grid["affine"]):
            fitted["affine"] = None
        if fitted["orientation"] != grid["orientation"]:
            fitted["orientation"] = None
    if shared is not None:
        fitted["affine"] = shared
    report_mismatches(
        problems,
        what=f"the first training image ({imgs.describe(0)})",
        owner=owner,
        fitted={**first, "shape": None},
        action=action,
        stacklevel=4,
    )
    return {
        "voxel_size": None if fitted["voxel_size"] is None else list(fitted["voxel_size"]),
        "shape": None if fitted["shape"] is None else list(fitted["shape"]),
        "affine": None if fitted["affine"] is None else np.asarray(fitted["affine"]).tolist(),
        "orientation": fitted["orientation"],
        "brain_voxels": None,
    }


def grid_problems(
    fitted: dict[str, Any], imgs: ImageCollection, check: str
) -> list[tuple[str, str]]:
    """How the images' headers differ from the training grid (``(image, reason)``).

    Parameters
    ----------
    fitted : dict
        The training grid (``grid_``).
    imgs : ImageCollection
    check : {"none", "voxel"}

    Returns
    -------
    list of (str, str)
        The image, as :meth:`~harmonix.io.ImageCollection.describe` names it, and how it
        differs.
    """
    if check == "none":
        return []
    return [
        (imgs.describe(i), why)
        for i in range(len(imgs))
        for why in _differences(fitted, image_grid(imgs, i), check)
    ]


def brain_voxels_problem(fitted: dict[str, Any], n_brain: int) -> str | None:
    """Why a brain of ``n_brain`` voxels looks like another voxel size, or None.

    Parameters
    ----------
    fitted : dict
        The training grid; its ``brain_voxels`` is the training images' median.
    n_brain : int
        Brain voxels of an image whose voxel size is not known (an array).

    Returns
    -------
    str or None
    """
    typical = fitted.get("brain_voxels")
    if not typical or n_brain <= 0:
        return None
    ratio = n_brain / float(typical)
    if 1.0 / BRAIN_VOXELS_RATIO <= ratio <= BRAIN_VOXELS_RATIO:
        return None
    size = fitted.get("voxel_size")
    guess = "another voxel size"
    if size is not None:
        guess = "voxels of about " + describe_voxel_size(
            [float(f"{float(v) * ratio ** (-1 / 3):.2g}") for v in size]
        )
    return (
        f"has {n_brain} brain voxels, {ratio:.2g} times the training images' median "
        f"{typical:.0f}, as if it had {guess}"
    )
