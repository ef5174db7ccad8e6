"""From a raw T1 scan to an IGUANe-ready image, and back to the scan's own space.

The chain follows the original IGUANe preprocessing (``all_in_one.py``) with pip-only
tools: reorientation to the standard orientation, brain extraction (deepbet), N4 bias
correction inside that mask (SimpleITK), 6-dof rigid registration to the ICBM152 2009a T1
on the FSL 1 mm grid (SimpleITK), brain median → 500, crop to 160×192×160 centred on the
brain (176×208×176 if the brain does not fit).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from harmonix.io import atomic_write, load_img
from harmonix.preprocessing import qc as _qc
from harmonix.preprocessing.grid import IGUANE_FALLBACK_SHAPE, IGUANE_SHAPE, crop_or_pad
from harmonix.preprocessing.steps import (
    extract_brain,
    n4_correct,
    register_rigid,
    reorient_to_standard,
    within_field_of_view,
)
from harmonix.preprocessing.template import load_template, resample

__all__ = ["PreprocessResult", "T1Preprocessor", "TemplateTransform", "to_native"]

logger = logging.getLogger(__name__)

#: Smallest image side accepted, in voxels.
MIN_SIDE = 16
#: Voxels added on each side of FSL's 182x218x182 grid before the crop, so that a brain
#: larger than FSL's field of view (or placed low in it) loses no voxel.
GRID_MARGIN = 16


def _matrix(value: Any) -> np.ndarray:
    out = np.array(value, dtype=np.float64)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class TemplateTransform:
    """Where a preprocessed image came from: enough to map images both ways.

    Attributes
    ----------
    matrix : ndarray of shape (4, 4)
        Rigid map from template world points to the scan's world points (RAS, mm).
    native_shape : tuple of int
        Shape of the input scan.
    native_affine : ndarray of shape (4, 4)
        Voxel-to-world affine of the input scan.
    template_shape : tuple of int
        Shape of the preprocessed image (160×192×160, or 176×208×176).
    template_affine : ndarray of shape (4, 4)
        Its voxel-to-world (MNI, mm) affine.
    scale : float
        Intensity factor applied by the median normalization (brain median → 500).
    """

    matrix: np.ndarray
    native_shape: tuple[int, ...]
    native_affine: np.ndarray
    template_shape: tuple[int, ...]
    template_affine: np.ndarray
    scale: float

    def __post_init__(self) -> None:
        for name in ("matrix", "native_affine", "template_affine"):
            object.__setattr__(self, name, _matrix(getattr(self, name)))
        for name in ("native_shape", "template_shape"):
            object.__setattr__(self, name, tuple(int(n) for n in getattr(self, name)))
        object.__setattr__(self, "scale", float(self.scale))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TemplateTransform):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def to_template(self, img: Any, *, order: int = 1) -> nib.Nifti1Image:
        """Resample an image on the scan's grid (or any grid) onto the template grid.

        Parameters
        ----------
        img : str, path-like or nibabel image
            An image in the scan's world space.
        order : int, default=1
            Interpolation order (0 for labels and masks).

        Returns
        -------
        nibabel.Nifti1Image
        """
        img = load_img(img)
        data = resample(
            img.get_fdata(dtype=np.float32),
            img.affine,
            self.template_affine,
            self.template_shape,
            world=self.matrix,
            order=order,
        )
        return nib.Nifti1Image(data, self.template_affine)

    def to_native(
        self, img: Any, *, order: int = 1, mask: Any = None, rescale: bool = False
    ) -> nib.Nifti1Image:
        """Map an image in template space (e.g. a harmonized one) back onto the scan's grid.

        Parameters
        ----------
        img : str, path-like or nibabel image
            An image in template (MNI) space, on any grid; its affine places it.
        order : int, default=1
            Interpolation order (0 for labels and masks).
        mask : str, path-like or nibabel image, optional
            A brain mask on the scan's grid (the chain's ``native_mask``): voxels outside
            it are set to 0.
        rescale : bool, default=False
            Undo the median normalization (divide by :attr:`scale`), so intensities are
            on the bias-corrected scan's scale, which keeps the raw scan's brain median
            (N4's field is normalized to median 1 inside the brain).

        Returns
        -------
        nibabel.Nifti1Image
            On the scan's grid, with its affine.
        """
        img = load_img(img)
        data = resample(
            img.get_fdata(dtype=np.float32),
            img.affine,
            self.native_affine,
            self.native_shape,
            world=np.linalg.inv(self.matrix),
            order=order,
        )
        if mask is not None:
            mask_img = load_img(mask)
            if tuple(mask_img.shape) != self.native_shape:
                raise ValueError(
                    f"The mask has shape {mask_img.shape} but the scan {self.native_shape}; "
                    "pass the native_mask written with this transform."
                )
            data[np.asarray(mask_img.dataobj) == 0] = 0.0
        if rescale:
            data /= np.float32(self.scale)
        return nib.Nifti1Image(data, self.native_affine)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (see :meth:`from_dict`)."""
        return {
            "matrix": self.matrix.tolist(),
            "native_shape": list(self.native_shape),
            "native_affine": self.native_affine.tolist(),
            "template_shape": list(self.template_shape),
            "template_affine": self.template_affine.tolist(),
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TemplateTransform:
        """Rebuild a transform from :meth:`to_dict`'s output (or a ``*_prep.json`` file's
        ``"transform"`` entry)."""
        names = (
            "matrix",
            "native_shape",
            "native_affine",
            "template_shape",
            "template_affine",
            "scale",
        )
        missing = [n for n in names if n not in values]
        if missing:
            raise ValueError(f"Not a harmonix transform: keys {missing} are missing.")
        return cls(**{n: values[n] for n in names})

    @classmethod
    def load(cls, path: str | Path) -> TemplateTransform:
        """Read the transform from a ``*_prep.json`` file written by the chain."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Transform file not found: '{path}'.")
        expected = "pass the NAME_prep.json that harmonix preprocess wrote beside NAME_prep.nii.gz"
        if path.name.endswith((".nii", ".nii.gz")):
            raise ValueError(f"'{path}' is an image, not a transform file: {expected}.")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            reason = " ".join(str(exc).split())
            raise ValueError(
                f"'{path}' is not a JSON transform file ({reason}): {expected}."
            ) from exc
        if not isinstance(values, dict):
            raise ValueError(f"'{path}' is not a harmonix transform file: {expected}.")
        return cls.from_dict(values.get("transform", values))


def to_native(
    img: Any,
    transform: TemplateTransform | str | Path,
    *,
    mask: Any = None,
    rescale: bool = False,
    order: int = 1,
) -> nib.Nifti1Image:
    """Map a harmonized (template-space) image back to the subject's native space.

    Parameters
    ----------
    img : str, path-like or nibabel image
        E.g. an output of ``IGUANeHarmonizer.transform`` on a preprocessed image.
    transform : TemplateTransform or path to a ``*_prep.json`` file
        The chain's transform for that subject.
    mask : str, path-like or nibabel image, optional
        The native brain mask (``*_native_mask.nii.gz``); voxels outside it become 0.
    rescale : bool, default=False
        Undo the median normalization.
    order : int, default=1
        Interpolation order.

    Returns
    -------
    nibabel.Nifti1Image
        On the input scan's grid.
    """
    if not isinstance(transform, TemplateTransform):
        transform = TemplateTransform.load(transform)
    return transform.to_native(img, order=order, mask=mask, rescale=rescale)


@dataclass(frozen=True)
class PreprocessResult:
    """What the chain returns for one scan.

    Attributes
    ----------
    image : nibabel.Nifti1Image
        The IGUANe-ready image: skull-stripped, bias-corrected, rigidly registered to MNI
        1 mm, brain median 500, background 0, cropped to 160×192×160.
    mask : nibabel.Nifti1Image
        Its brain mask (uint8), same grid.
    native_mask : nibabel.Nifti1Image
        The brain mask on the input scan's grid (uint8).
    transform : TemplateTransform
        Template ↔ native mapping (see :func:`to_native`).
    qc : dict
        QC numbers: ``mask_volume_ml``, ``template_scale`` (the brain's size relative to
        the template's), ``template_ncc`` (normalized cross-correlation with the template
        inside its brain mask) and ``template_dice`` (brain mask vs template mask), both
        with the template at the brain's size (see
        :func:`~harmonix.preprocessing.qc.qc_numbers`), ``negative_fraction`` (voxels
        below 0 in the scan, set to 0), ``brain_median`` (before scaling),
        ``output_shape``; ``flags`` lists the soft checks failed (beyond a hard limit the
        chain raises :class:`~harmonix.preprocessing.qc.QCFailedError` instead).
    timings : dict
        Seconds per stage.
    """

    image: nib.Nifti1Image
    mask: nib.Nifti1Image
    native_mask: nib.Nifti1Image
    transform: TemplateTransform
    qc: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    def save(self, out_dir: str | Path, stem: str, *, qc_png: bool = True) -> dict[str, Path]:
        """Write the outputs under ``out_dir``, each file atomically.

        Files: ``{stem}_native_mask.nii.gz``, ``{stem}_prep.json`` (transform, QC
        numbers), ``{stem}_qc.png`` and, last, ``{stem}_prep.nii.gz``: when the image
        exists, every other file does. The same result gives the same bytes (the
        seconds per stage, which vary, stay in :attr:`timings`).

        Parameters
        ----------
        out_dir : str or path-like
        stem : str
            File name stem (e.g. the input's name without ``.nii.gz``).
        qc_png : bool, default=True
            Also draw the QC figure.

        Returns
        -------
        dict of str to pathlib.Path
            ``image``, ``native_mask``, ``json`` and (if drawn) ``png``.
        """
        return self.save_to(output_paths(out_dir, stem), qc_png=qc_png, title=stem)

    def save_to(
        self,
        paths: Mapping[str, str | Path],
        *,
        qc_png: bool = True,
        metadata: Mapping[str, Mapping[str, Any]] | None = None,
        title: str = "",
    ) -> dict[str, Path]:
        """Write the outputs to the given paths (see :meth:`save`), the image last.

        Parameters
        ----------
        paths : mapping
            ``image``, ``native_mask``, ``json``, ``png`` (see :func:`output_paths`), and
            the destinations of any extra JSON file of ``metadata``.
        qc_png : bool, default=True
            Also draw the QC figure.
        metadata : mapping, optional
            Extra JSON content by key of ``paths``: the ``json`` entry's fields are added
            to the transform file (e.g. BIDS sidecar fields); any other key is written as
            a JSON file of its own at ``paths[key]``, before the image.
        title : str, default=""
            Title of the QC figure.

        Returns
        -------
        dict of str to pathlib.Path
            The written files by key.
        """
        paths = {key: Path(path) for key, path in paths.items()}
        metadata = dict(metadata or {})
        for key, values in metadata.items():
            if key not in ("json", "image", "native_mask", "png"):
                _write_json(paths[key], values)
        with atomic_write(paths["native_mask"]) as tmp:
            nib.save(self.native_mask, tmp)
        _write_json(
            paths["json"],
            {
                **metadata.get("json", {}),
                "transform": self.transform.to_dict(),
                "qc": self.qc,
            },
        )
        if qc_png:
            _qc.save_qc_png(self.image, self.mask, paths["png"], title=title)
        else:
            paths.pop("png", None)
        with atomic_write(paths["image"]) as tmp:
            nib.save(self.image, tmp)
        return paths


def _write_json(path: Path, values: Mapping[str, Any]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(values, indent=1))


def output_paths(out_dir: str | Path, stem: str) -> dict[str, Path]:
    """The files :meth:`PreprocessResult.save` writes for ``stem``."""
    out_dir = Path(out_dir)
    return {
        "native_mask": out_dir / f"{stem}_native_mask.nii.gz",
        "json": out_dir / f"{stem}_prep.json",
        "png": out_dir / f"{stem}_qc.png",
        "image": out_dir / f"{stem}_prep.nii.gz",
    }


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
