"""From a raw T1 scan to an IGUANe-ready image, one scan at a time (:class:`T1Preprocessor`).

The chain follows the original IGUANe preprocessing (``all_in_one.py``) with pip-only
tools: reorientation to the standard orientation, brain extraction (deepbet), N4 bias
correction inside that mask (SimpleITK), 6-dof rigid registration to the ICBM152 2009a T1
on the FSL 1 mm grid (SimpleITK), brain median → 500, crop to 160×192×160 centred on the
brain (176×208×176 if the brain does not fit). What it returns, and the way back to the
scan's own space, are in :mod:`harmonix.preprocessing.outputs`.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import nibabel as nib
import numpy as np

from harmonix.io import load_img
from harmonix.preprocessing import qc as _qc
from harmonix.preprocessing.grid import IGUANE_FALLBACK_SHAPE, IGUANE_SHAPE, crop_or_pad
from harmonix.preprocessing.outputs import PreprocessResult, TemplateTransform
from harmonix.preprocessing.steps import (
    extract_brain,
    n4_correct,
    register_rigid,
    reorient_to_standard,
    within_field_of_view,
)
from harmonix.preprocessing.template import load_template, resample

__all__ = ["T1Preprocessor"]

logger = logging.getLogger(__name__)

#: Smallest image side accepted, in voxels.
MIN_SIDE = 16
#: Voxels added on each side of FSL's 182x218x182 grid before the crop, so that a brain
#: larger than FSL's field of view (or placed low in it) loses no voxel.
GRID_MARGIN = 16


_AXIS_PAIRS = ({"R", "L"}, {"A", "P"}, {"S", "I"})


def _has_orientation(img: Any) -> bool:
    """Whether a nibabel image says where its voxel axes point (NIfTI sform/qform code)."""
    if isinstance(img, nib.Nifti1Image):  # Nifti2Image too
        header = img.header
        return int(header["sform_code"]) > 0 or int(header["qform_code"]) > 0
    return not isinstance(img, nib.analyze.AnalyzeImage)  # ANALYZE: no orientation


def orientation_codes(axcodes: str) -> tuple[str, str, str]:
    """Check and normalize voxel axis directions such as ``"LAS"`` (``assume_orientation``).

    Parameters
    ----------
    axcodes : str
        Three letters, one of R/L, one of A/P and one of S/I, in any order and case.

    Returns
    -------
    tuple of 3 str
        The upper-case letters.
    """
    codes = tuple(str(axcodes).upper())
    if len(codes) != 3 or sorted(
        i for c in codes for i, pair in enumerate(_AXIS_PAIRS) if c in pair
    ) != [0, 1, 2]:
        raise ValueError(
            f"assume_orientation must name one direction per axis, like 'RAS' or 'LPI' "
            f"(one of R/L, one of A/P, one of S/I), got {axcodes!r}."
        )
    return codes  # type: ignore[return-value]


def _assumed_affine(img: nib.Nifti1Image, axcodes: str) -> np.ndarray:
    """Affine of a scan whose voxel axes point to ``axcodes``, centred on world 0."""
    codes = orientation_codes(axcodes)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    axes = np.zeros((3, 3))
    for voxel_axis, (world_axis, sign) in enumerate(nib.orientations.axcodes2ornt(codes)):
        axes[int(world_axis), voxel_axis] = sign * zooms[voxel_axis]
    affine = np.eye(4)
    affine[:3, :3] = axes
    affine[:3, 3] = -axes @ ((np.asarray(img.shape[:3]) - 1) / 2.0)
    return affine


def _check_scan(img: Any, assume_orientation: str | None) -> tuple[nib.Nifti1Image, float]:
    """Load a scan and refuse what the chain cannot process, saying why.

    Returns the scan (negative voxels set to 0; the assumed affine for a scan without
    orientation) and the fraction of negative voxels.
    """
    scan = load_img(img)  # paths or images; 2-D and 4-D (n > 1) are refused there
    is_path = isinstance(img, (str, os.PathLike))
    source = f"'{img}'" if is_path else "The scan"
    original = nib.load(os.fspath(img)) if is_path else img
    affine = scan.affine
    if not _has_orientation(original):
        if assume_orientation is None:
            raise ValueError(
                f"{source} has no orientation (NIfTI sform_code = qform_code = 0): its "
                "left and right cannot be told apart (nibabel would read it as LAS, maybe "
                "mirrored). Convert the scanner's files again (e.g. dcm2niix) or, if you "
                "know the voxel axes' directions, pass assume_orientation (e.g. 'LAS'; "
                "harmonix preprocess --assume-orientation LAS)."
            )
        affine = _assumed_affine(scan, assume_orientation)
    elif assume_orientation is not None:
        _assumed_affine(scan, assume_orientation)  # validate it all the same
    data = scan.get_fdata(dtype=np.float32)
    if min(data.shape) < MIN_SIDE:
        raise ValueError(
            f"The scan has shape {data.shape}; a head image needs at least {MIN_SIDE} voxels "
            "per side. Is it a single slice or a thumbnail?"
        )
    if not np.all(np.isfinite(data)):
        raise ValueError("The scan has NaN or infinite voxels; fix or re-export it.")
    low, high = float(data.min()), float(data.max())
    if high <= 0:
        raise ValueError("The scan is empty (no positive voxel); check the file.")
    if high == low:
        raise ValueError(f"The scan is constant (every voxel {high:g}); check the file.")
    negative = float(np.count_nonzero(data < 0)) / data.size
    if negative > 0:
        warnings.warn(
            f"{source} has {negative:.3%} negative voxels (min {low:g}); the chain sets them "
            "to 0 (it expects magnitude images). QC: negative_fraction.",
            UserWarning,
            stacklevel=3,
        )
    return nib.Nifti1Image(np.maximum(data, 0.0), affine), negative


def _grid_name(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(n)) for n in shape)


class T1Preprocessor:
    """The raw T1 → IGUANe-ready chain, applied one scan at a time.

    Parameters
    ----------
    brain_extractor : "deepbet" or callable, default="deepbet"
        ``"deepbet"`` runs deepbet on the CPU; a callable ``f(data, affine) -> mask``
        (bool array of ``data``'s shape) replaces it, e.g. with an existing mask. Either
        mask loses its voxels more than 2 mm from any voxel with signal (beyond the
        scan's field of view: ``harmonix.preprocessing.steps.within_field_of_view``).
    n4 : bool, default=True
        Run N4 bias correction inside the brain mask.
    target_shape : tuple of 3 int, default=(160, 192, 160)
        Output grid, centred on the brain.
    fallback_shape : tuple of 3 int or None, default=(176, 208, 176)
        Used when the brain does not fit in ``target_shape`` (a warning, and the QC flag
        ``fallback_grid``).
    median : float, default=500
        Brain median after normalization.
    n_threads : int or None, default=1
        Threads for deepbet (torch) and SimpleITK. With one thread every run gives the
        same bytes, on any machine and with any ``n_jobs``; with more, a single scan
        finishes sooner but SimpleITK's and torch's sums depend on how the work is split
        (outputs differ slightly between runs). None: the libraries' defaults.
    random_state : int, default=0
        Seed of the registration metric's voxel sampling (fixed, not the clock: the same
        scan gives the same result).
    assume_orientation : str, optional
        Voxel axis directions (e.g. ``"LAS"``) of scans that have none (NIfTI
        ``sform_code = qform_code = 0``, or ANALYZE files); such scans are refused
        without it. Scans with an orientation keep theirs.
    qc_fail_limits : dict, optional
        ``name -> (low, high)`` replacing entries of the hard QC limits
        (:data:`~harmonix.preprocessing.qc.QC_FAIL_LIMITS`), e.g. for a cohort the
        calibration did not cover.

    Examples
    --------
    >>> from harmonix.preprocessing import T1Preprocessor
    >>> result = T1Preprocessor().run("sub-01_T1w.nii.gz")  # doctest: +SKIP
    >>> result.image.shape, result.qc["flags"]  # doctest: +SKIP
    ((160, 192, 160), [])
    """

    def __init__(
        self,
        *,
        brain_extractor: str | Callable[[np.ndarray, np.ndarray], np.ndarray] = "deepbet",
        n4: bool = True,
        target_shape: tuple[int, int, int] = IGUANE_SHAPE,
        fallback_shape: tuple[int, int, int] | None = IGUANE_FALLBACK_SHAPE,
        median: float = 500.0,
        n_threads: int | None = 1,
        random_state: int = 0,
        assume_orientation: str | None = None,
        qc_fail_limits: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        self.brain_extractor = brain_extractor
        self.n4 = n4
        self.target_shape = target_shape
        self.fallback_shape = fallback_shape
        self.median = median
        self.n_threads = n_threads
        self.random_state = random_state
        self.assume_orientation = assume_orientation
        self.qc_fail_limits = qc_fail_limits

    def __repr__(self) -> str:
        extractor = self.brain_extractor
        name = extractor if isinstance(extractor, str) else getattr(extractor, "__name__", "f")
        return f"T1Preprocessor(brain_extractor={name!r}, n4={self.n4})"

    def _extract(self, data: np.ndarray, affine: np.ndarray) -> np.ndarray:
        if callable(self.brain_extractor):
            mask = np.asarray(self.brain_extractor(data, affine))
            if mask.shape != data.shape:
                raise ValueError(
                    f"brain_extractor returned shape {mask.shape} for an image of shape "
                    f"{data.shape}; it must return a mask of the image's shape."
                )
            return mask.astype(bool)
        if self.brain_extractor != "deepbet":
            raise ValueError(
                f"brain_extractor must be 'deepbet' or a callable, got {self.brain_extractor!r}."
            )
        from harmonix._threads import intraop_threads

        with intraop_threads(self.n_threads):
            return extract_brain(data, affine)

    def run(self, img: Any) -> PreprocessResult:
        """Preprocess one scan.

        Parameters
        ----------
        img : str, path-like or nibabel image
            A full-head (or skull-stripped) 3-D T1-weighted scan, any orientation and
            voxel size.

        Returns
        -------
        PreprocessResult

        Raises
        ------
        ValueError
            If the scan is 2-D, 4-D with several volumes, smaller than 16 voxels a side,
            empty, constant or non-finite, has no orientation (and no
            ``assume_orientation``), or no brain is found in it (mask too large to fit
            the output grid after registration).
        harmonix.preprocessing.qc.QCFailedError
            (a ValueError) If a QC number lies beyond its hard limit
            (:data:`~harmonix.preprocessing.qc.QC_FAIL_LIMITS`: noise, phantoms, other
            contrasts, failed registrations); its ``qc`` attribute holds the numbers.
        ImportError
            If deepbet or SimpleITK is missing (``pip install "harmonix[preprocess]"``).
        """
        times: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            times[name] = round(now - clock, 3)
            clock = now

        scan, negative = _check_scan(img, self.assume_orientation)
        std = reorient_to_standard(scan)
        data, affine = std.get_fdata(dtype=np.float32), std.affine
        lap("reorient")
        # brain beyond the field of view (zeros of a resliced tilted scan) is made up
        mask = within_field_of_view(self._extract(data, affine), data, affine)
        voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
        volume = float(mask.sum()) * voxel_ml
        numbers: dict[str, Any] = {"mask_volume_ml": round(volume, 1)}
        limits = {**_qc.QC_FAIL_LIMITS, **(self.qc_fail_limits or {})}
        if _qc.failures(numbers, limits):
            low, high = limits["mask_volume_ml"]
            raise _qc.QCFailedError(
                f"No brain found in the scan (brain mask {volume:.0f} ml, expected "
                f"{low:.0f}-{high:.0f} ml): is it a T1-weighted head image?",
                numbers,
            )
        lap("brain_extraction")
        if self.n4:
            data = n4_correct(data, affine, mask, n_threads=self.n_threads)
        brain = np.where(mask, data, 0.0).astype(np.float32)
        lap("n4")
        template = load_template()
        matrix = register_rigid(
            brain,
            affine,
            template.data,
            template.affine,
            random_state=self.random_state,
            n_threads=self.n_threads,
        )
        lap("registration")
        grid = load_template(GRID_MARGIN)  # the FSL grid with margins, template inside
        moved = resample(brain, affine, grid.affine, grid.data.shape, world=matrix)
        moved_mask = (
            resample(mask.astype(np.float32), affine, grid.affine, grid.data.shape, world=matrix)
            > 0.5
        )
        if not moved_mask.any():
            raise ValueError(
                "The brain left the template grid after registration; check "
                "the scan's affine (voxel sizes and orientation)."
            )
        moved = np.where(moved_mask, np.maximum(moved, 0.0), 0.0).astype(np.float32)
        brain_median = float(np.median(moved[moved_mask]))
        if brain_median <= 0:
            raise ValueError("The brain's median intensity is 0; is the scan a T1 image?")
        scale = float(self.median) / brain_median
        moved *= np.float32(scale)
        numbers = _qc.qc_numbers(moved, moved_mask, grid, volume)
        numbers["negative_fraction"] = round(negative, 6)
        failed = _qc.failures(numbers, limits)
        if failed:
            raise _qc.QCFailedError(
                f"QC failed ({', '.join(failed)}; hard limits, QC_FAIL_LIMITS): the "
                "registered image is not a T1-weighted brain in the template's pose (noise, "
                "a phantom, another contrast or a failed registration?). Check the scan.",
                numbers,
            )
        edge = [np.take(moved_mask, i, axis=a).any() for a in range(3) for i in (0, -1)]
        if any(edge):
            raise ValueError(
                f"The registered brain reaches the edge of the template grid ({GRID_MARGIN} "
                f"voxels beyond FSL's field of view; QC: {numbers}): brain extraction or "
                "registration failed. Check the scan."
            )
        try:
            cropped, change = crop_or_pad(
                moved,
                self.target_shape,
                brain=moved_mask,
                fallback_shape=self.fallback_shape,
                center="brain",
            )
        except ValueError as exc:
            raise ValueError(
                f"The registered brain mask does not fit the output grid ({exc}); brain "
                f"extraction or registration failed (QC: {numbers}). Check the scan."
            ) from exc
        shift = np.eye(4)
        shift[:3, 3] = change.offsets
        out_affine = grid.affine @ shift
        lap("resample")
        transform = TemplateTransform(
            matrix, scan.shape, scan.affine, cropped.shape, out_affine, scale
        )
        back = nib.orientations.ornt_transform(
            nib.io_orientation(affine), nib.io_orientation(scan.affine)
        )
        native_mask = nib.orientations.apply_orientation(mask, back).astype(np.uint8)
        numbers["brain_median"] = round(brain_median, 3)
        numbers["output_shape"] = _grid_name(cropped.shape)
        numbers["flags"] = _qc.flags(numbers)
        if tuple(cropped.shape) != tuple(self.target_shape):
            numbers["flags"].append("fallback_grid")
            logger.warning(
                "The brain does not fit %s; the image is %s (the fallback grid).",
                _grid_name(self.target_shape),
                numbers["output_shape"],
            )
        if numbers["flags"]:
            logger.warning("QC flags: %s", ", ".join(numbers["flags"]))
        header = nib.Nifti1Header()
        header.set_data_dtype(np.float32)
        return PreprocessResult(
            image=nib.Nifti1Image(cropped, out_affine, header),
            mask=nib.Nifti1Image(change.apply(moved_mask.astype(np.uint8)), out_affine),
            native_mask=nib.Nifti1Image(native_mask, scan.affine),
            transform=transform,
            qc=numbers,
            timings=times,
        )

    __call__ = run
