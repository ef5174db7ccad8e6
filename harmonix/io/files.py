"""Reading and writing NIfTI images: loading with clear errors, atomic saving (never a
half-written file), display ranges."""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
PathLike = str | os.PathLike


def _is_pathlike(obj: Any) -> bool:
    return isinstance(obj, (str, os.PathLike))


def load_img(img: PathLike | nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    """Load one 3-D NIfTI image, checking that it is readable and 3-D.

    Parameters
    ----------
    img : str, path-like or nibabel image
        A ``.nii`` / ``.nii.gz`` file or an image already in memory.

    Returns
    -------
    nibabel.Nifti1Image
        The image (its data is read lazily by nibabel).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a readable NIfTI image, or the image is not 3-D.
    """
    if _is_pathlike(img):
        path = Path(img)
        if not path.is_file():
            raise FileNotFoundError(f"Image file not found: '{path}'. Check the path.")
        try:
            out = nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise ValueError(
                f"Could not read '{path}' as a NIfTI image ({_reason(exc)}). "
                "Check that the file is a complete .nii or .nii.gz file."
            ) from exc
        source = str(path)
    elif isinstance(img, nib.spatialimages.SpatialImage):
        out, source = img, "the given image"
    else:
        raise TypeError(f"Expected a path or a nibabel image, got {type(img).__name__}.")
    if not isinstance(out, nib.Nifti1Image):
        out = nib.Nifti1Image(np.asanyarray(out.dataobj), out.affine)
    shape = out.shape
    if len(shape) == 4 and shape[3] == 1:
        out = nib.Nifti1Image(np.asanyarray(out.dataobj)[..., 0], out.affine, out.header)
    elif len(shape) < 3:
        raise ValueError(
            f"{source} has shape {shape}: a {len(shape)}-D image (a single slice?); "
            "harmonix needs 3-D volumes. Use the full 3-D scan."
        )
    elif len(shape) != 3:
        raise ValueError(
            f"{source} has shape {shape}; harmonix needs 3-D volumes. "
            "Split 4-D files into 3-D volumes first (e.g. nibabel.funcs.four_to_three)."
        )
    return out


def _reason(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split())


def _read_data(img: nib.Nifti1Image, source: str) -> np.ndarray:
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # truncated gzip streams, bad headers...
        raise ValueError(
            f"Could not read the voxels of {source} ({_reason(exc)}). The file may be truncated "
            "or corrupt: re-export it."
        ) from exc
    return data


def load_imgs(imgs: Sequence[PathLike | nib.spatialimages.SpatialImage]) -> list[nib.Nifti1Image]:
    """Load several 3-D NIfTI images (see :func:`load_img`).

    Parameters
    ----------
    imgs : sequence of str, path-like or nibabel images

    Returns
    -------
    list of nibabel.Nifti1Image
    """
    if _is_pathlike(imgs):
        raise ValueError("load_imgs expects a list of paths; use load_img for one file.")
    return [load_img(img) for img in imgs]


def _full_suffix(name: str) -> str:
    """The suffixes a writer may look at: ``.nii.gz`` for ``a.nii.gz``, ``.npz`` for ``a.npz``."""
    suffixes = Path(name).suffixes
    if len(suffixes) >= 2 and suffixes[-1] in (".gz", ".bz2", ".xz"):
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def _new_temporary(path: Path, suffix: str) -> Path:
    """Create an empty file beside ``path`` with the mode a new file gets (0666 & ~umask).

    :func:`tempfile.mkstemp` creates its files with mode 0600, and the rename would keep
    that mode, so a lab group could not read the outputs; a file opened with mode 0666
    gets the permissions the user's umask allows, like any file a program writes.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"Could not create a temporary file beside '{path}'.")


@contextmanager
def atomic_write(
    path: PathLike, *, suffix: str | None = None, fsync: bool = False
) -> Iterator[Path]:
    """Write a file under a temporary name in its folder, then rename it to ``path``.

    The ``with`` body writes to the yielded temporary path (with any writer: nibabel,
    numpy, torch, :func:`open`); on success the temporary file replaces ``path`` in one
    :func:`os.replace`, so readers never see a half-written file. If the body raises, the
    temporary file is removed and an existing ``path`` is left untouched. The file gets
    the permissions of any new file (``0666`` less the umask: ``rw-r--r--`` with the
    usual umask 022).

    Parameters
    ----------
    path : str or path-like
        Final destination. Its folder is created if needed.
    suffix : str, optional
        Suffix of the temporary name. By default the final suffix of ``path``
        (``.nii.gz``, ``.npz``...), so writers that choose a format from the name, or
        append one, write the right file.
    fsync : bool, default=False
        Flush the temporary file to disk before the rename (for files, like training
        checkpoints, that must survive a power loss).

    Yields
    ------
    pathlib.Path
        The temporary path to write to.

    Examples
    --------
    >>> import numpy as np
    >>> from harmonix.io import atomic_write
    >>> with atomic_write("/tmp/harmonix-example.npz") as tmp:  # doctest: +SKIP
    ...     np.savez(tmp, x=np.arange(3))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = _full_suffix(path.name)
    tmp = _new_temporary(path, suffix)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_img(
    img: nib.Nifti1Image | np.ndarray,
    path: PathLike,
    *,
    affine: np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one image atomically (temporary name, then rename).

    Parameters
    ----------
    img : nibabel.Nifti1Image or ndarray
        The image; a bare array needs ``affine``.
    path : str or path-like
        Destination ending in ``.nii`` or ``.nii.gz``.
    affine : ndarray of shape (4, 4), optional
        Affine for a bare array (default: identity, with a warning).
    overwrite : bool, default=False
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The written path.

    Warns
    -----
    UserWarning
        When a bare array is written without ``affine``.
    """
    path = Path(path)
    if not path.name.endswith(_NIFTI_SUFFIXES):
        raise ValueError(f"'{path}' must end with .nii or .nii.gz.")
    _warn_identity_affine([img], affine)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"'{path}' exists; pass overwrite=True to replace it or choose another name."
        )
    return _write_img(img, path, affine)


def _warn_identity_affine(imgs: Sequence[Any], affine: np.ndarray | None) -> None:
    """Warn (at the caller of the public function) if bare arrays get an identity affine."""
    if affine is None and any(isinstance(img, np.ndarray) for img in imgs):
        warnings.warn(
            "Writing bare arrays with an identity affine (1 mm voxels, origin at the "
            "corner): viewers and other tools will place them wrongly. Pass affine= (e.g. "
            "the input image's .affine), or save the Nifti1Images that transform returns "
            "for NIfTI inputs.",
            UserWarning,
            stacklevel=3,
        )


def _write_img(img: nib.Nifti1Image | np.ndarray, path: Path, affine: np.ndarray | None) -> Path:
    if isinstance(img, np.ndarray):
        img = nib.Nifti1Image(img, np.eye(4) if affine is None else affine)
        set_display_range(img.header, np.asanyarray(img.dataobj))
    with atomic_write(path) as tmp:
        nib.save(img, tmp)
    return path


def save_imgs(
    imgs: Sequence[nib.Nifti1Image | np.ndarray],
    paths: Sequence[PathLike],
    *,
    affine: np.ndarray | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write several images atomically; see :func:`save_img`.

    All destinations are checked before anything is written, so a name clash never
    leaves a partial set of outputs.

    Parameters
    ----------
    imgs : sequence of nibabel.Nifti1Image or ndarray
    paths : sequence of str or path-like
        One destination per image.
    affine : ndarray of shape (4, 4), optional
        Affine for bare arrays (default: identity, with a warning).
    overwrite : bool, default=False
        Replace existing files.

    Returns
    -------
    list of pathlib.Path
    """
    paths = [Path(p) for p in paths]
    if len(paths) != len(imgs):
        raise ValueError(f"Got {len(imgs)} images but {len(paths)} paths; give one path each.")
    if len(set(paths)) != len(paths):
        raise ValueError("Output paths must be distinct.")
    for p in paths:
        if not p.name.endswith(_NIFTI_SUFFIXES):
            raise ValueError(f"'{p}' must end with .nii or .nii.gz.")
        if p.exists() and not overwrite:
            raise FileExistsError(f"'{p}' exists; pass overwrite=True to replace it.")
    _warn_identity_affine(imgs, affine)
    return [_write_img(img, p, affine) for img, p in zip(imgs, paths)]


def set_display_range(header: nib.Nifti1Header, data: np.ndarray) -> None:
    """Set ``cal_min``/``cal_max`` (the range viewers display) to the data's range.

    A header copied from the input keeps the input's range (``cal_max=255`` of an 8-bit
    scan, while harmonized data reach 1000): viewers would saturate.

    Parameters
    ----------
    header : nibabel.Nifti1Header
        Modified in place.
    data : ndarray
        The image data the header goes with.
    """
    if data.size:
        header["cal_min"] = float(np.min(data))
        header["cal_max"] = float(np.max(data))
