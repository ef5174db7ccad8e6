"""What the chain gives for a scan, and the way back to the scan's own space.

:class:`TemplateTransform` maps images between the template grid and the scan's grid
(:func:`to_native`); :class:`PreprocessResult` holds the IGUANe-ready image, its masks,
the transform and the QC numbers, and writes them (:func:`output_paths` names the files).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from harmonix.io import atomic_write, load_img
from harmonix.preprocessing import qc as _qc
from harmonix.preprocessing.template import resample

__all__ = ["PreprocessResult", "TemplateTransform", "output_paths", "to_native"]


def _matrix(value: Any) -> np.ndarray:
    out = np.array(value, dtype=np.float64)
    out.flags.writeable = False
    return out


def _onto(
    img: Any, affine: np.ndarray, shape: tuple[int, ...], world: np.ndarray, order: int
) -> np.ndarray:
    """``img`` (a path or an image) resampled onto the grid ``(affine, shape)``, ``world``
    mapping that grid's world points to ``img``'s (float32)."""
    img = load_img(img)
    data = img.get_fdata(dtype=np.float32)
    return resample(data, img.affine, affine, shape, world=world, order=order)


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
        data = _onto(img, self.template_affine, self.template_shape, self.matrix, order)
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
        world = np.linalg.inv(self.matrix)
        data = _onto(img, self.native_affine, self.native_shape, world, order)
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
