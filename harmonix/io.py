"""Image input/output: loading, lazy image collections, atomic saving and manifests.

Every harmonizer accepts the same kinds of image collections (see
:class:`ImageCollection`); this module turns them into one lazy, validated view and
turns results back into the same kind the user passed in.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from harmonix._bids_entities import ENTITIES

__all__ = [
    "ImageCollection",
    "Manifest",
    "as_collection",
    "atomic_write",
    "load_img",
    "load_imgs",
    "read_manifest",
    "save_img",
    "save_imgs",
    "set_display_range",
]

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


def _entity_columns() -> set[str]:
    """Manifest columns that are BIDS entities (``subject``, ``session``, ``run``...)."""
    return {name for name, _ in ENTITIES}


@dataclass(frozen=True)
class Manifest:
    """Contents of a manifest CSV (see :func:`read_manifest`).

    ``extra`` holds the columns other than ``path, site, age`` and the BIDS entities
    (``subject``, ``session``, ``run``...), e.g.
    ``sex``, ``diagnosis``, in the CSV's order, or None when there are none. Entities
    name images, never covariates.
    """

    paths: list[Path]
    sites: np.ndarray
    ages: np.ndarray | None
    subjects: np.ndarray | None
    extra: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def covariates(self, names: Sequence[str]) -> pd.DataFrame | None:
        """The columns ``names`` of the manifest, as covariates (one row per image).

        ``age`` is left out (it is :attr:`ages`, the short form of the ``age``
        covariate); names are matched case-insensitively, like every manifest column.

        Parameters
        ----------
        names : sequence of str

        Returns
        -------
        pandas.DataFrame or None
            None when no column is asked for (besides ``age``).

        Raises
        ------
        ValueError
            If a column is absent, naming the columns there are.
        """
        wanted = [str(n).strip().lower() for n in names]
        wanted = [n for n in dict.fromkeys(wanted) if n != "age"]
        if not wanted:
            return None
        entities = [n for n in wanted if n in _entity_columns()]
        if entities:
            raise ValueError(
                f"{entities} name BIDS entities of the images (which scan), not covariates; "
                "give a participant or session property (e.g. sex, diagnosis) instead."
            )
        have = [] if self.extra is None else list(self.extra.columns)
        missing = [n for n in wanted if n not in have]
        if missing:
            raise ValueError(
                f"The manifest has no column(s) {missing} for the covariates; its other "
                f"columns are {have} (besides path, site, age and the BIDS entities)."
            )
        return self.extra[wanted].reset_index(drop=True)


def read_manifest(csv: PathLike, *, check_files: bool = True) -> Manifest:
    """Read a manifest CSV with columns ``path, site[, age, subject, ...]``.

    Further columns (e.g. ``sex``, ``diagnosis``) are kept in ``Manifest.extra``, for
    covariates (:meth:`Manifest.covariates`); BIDS entity columns (``session``, ``run``...,
    as :func:`harmonix.bids.bids_manifest` writes them) are not. Column names are read
    case-insensitively (lower-cased).

    Parameters
    ----------
    csv : str or path-like
        The CSV file. Relative paths in it are relative to the CSV's folder.
    check_files : bool, default=True
        Raise if a listed file does not exist.

    Returns
    -------
    Manifest
        ``paths`` (absolute), ``sites`` (str), ``ages`` (float or None),
        ``subjects`` (str or None) and the other columns (``extra``), in the CSV's row
        order. Values of ``path``, ``site`` and ``subject`` are stripped of surrounding
        spaces, like the column names; an empty ``path`` or ``site`` cell is an error
        naming its line.
    """
    csv = Path(csv)
    if not csv.is_file():
        raise FileNotFoundError(f"Manifest not found: '{csv}'.")
    try:
        df = pd.read_csv(csv, dtype={"site": str, "subject": str, "path": str})
    except Exception as exc:
        raise ValueError(f"Could not parse manifest '{csv}' as CSV ({exc}).") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = {"path", "site"} - set(df.columns)
    if missing:
        raise ValueError(
            f"Manifest '{csv}' lacks column(s) {sorted(missing)}; it needs 'path' and 'site' "
            f"(optional 'age', 'subject'); found {list(df.columns)}."
        )
    if len(df) == 0:
        raise ValueError(f"Manifest '{csv}' lists no images.")
    for column in ("path", "site", "subject"):  # values stripped like the headers
        if column in df.columns:
            df[column] = df[column].map(lambda v: v.strip() if isinstance(v, str) else v)
            df.loc[df[column] == "", column] = np.nan
    if df["path"].isna().any() or df["site"].isna().any():
        rows = sorted(set(df.index[df["path"].isna() | df["site"].isna()] + 2))
        raise ValueError(f"Manifest '{csv}' has empty path or site cells on line(s) {rows}.")
    base = csv.resolve().parent
    paths = [Path(p) if Path(p).is_absolute() else base / p for p in df["path"]]
    if check_files:
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            more = f" (and {len(absent) - 3} more)" if len(absent) > 3 else ""
            raise FileNotFoundError(f"Manifest '{csv}' lists missing file(s): {absent[:3]}{more}.")
    ages = None
    if "age" in df.columns:
        ages = pd.to_numeric(df["age"], errors="coerce").to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(ages)):
            rows = (np.flatnonzero(~np.isfinite(ages)) + 2).tolist()
            raise ValueError(f"Manifest {csv} has missing or non-numeric ages on line(s) {rows}.")
    subjects = df["subject"].astype(str).to_numpy() if "subject" in df.columns else None
    taken = {"path", "site", "age", *_entity_columns()}
    rest = [c for c in df.columns if c not in taken]
    extra = df[rest].reset_index(drop=True) if rest else None
    return Manifest(paths, df["site"].astype(str).to_numpy(), ages, subjects, extra)


class ImageCollection(Sequence):
    """A validated, lazy view of the images a user passed.

    Items are float32 3-D arrays, loaded one at a time for files; the collection
    remembers how the input looked so results can be returned in the same form
    (:meth:`wrap`).

    Parameters
    ----------
    imgs : ndarray of shape (n, i, j, k), list of 3-D arrays, or list of paths / nibabel images
        The images. See :func:`as_collection`.
    """

    def __init__(self, imgs: Any):
        if isinstance(imgs, ImageCollection):
            self._items, self.kind = imgs._items, imgs.kind
            return
        if _is_pathlike(imgs) or isinstance(imgs, nib.spatialimages.SpatialImage):
            raise ValueError(
                "Expected a collection of images but got a single image; wrap it in a list: [img]."
            )
        if isinstance(imgs, np.ndarray):
            if imgs.ndim == 3:
                raise ValueError(
                    f"Expected a collection of images but got one 3-D array of shape "
                    f"{imgs.shape}; pass imgs[None] or [img]."
                )
            if imgs.ndim != 4:
                raise ValueError(
                    f"An image array must be 4-D (n_images, i, j, k); got shape {imgs.shape}."
                )
            self._items, self.kind = imgs, "array"
            return
        if not isinstance(imgs, (list, tuple)):
            raise TypeError(
                f"Unsupported image container {type(imgs).__name__}: pass a 4-D ndarray, a "
                "list of 3-D arrays, or a list of NIfTI paths / nibabel images."
            )
        if len(imgs) == 0:
            raise ValueError("No images given: pass at least one image.")
        if all(isinstance(x, np.ndarray) for x in imgs):
            self._items, self.kind = list(imgs), "list"
        elif all(_is_pathlike(x) or isinstance(x, nib.spatialimages.SpatialImage) for x in imgs):
            self._items, self.kind = list(imgs), "nifti"
        else:
            kinds = sorted({type(x).__name__ for x in imgs})
            raise TypeError(
                f"Images must all be arrays or all be paths / nibabel images; got {kinds}."
            )
        if len(self._items) == 0:
            raise ValueError("No images given: pass at least one image.")

    def __len__(self) -> int:
        return len(self._items)

    def describe(self, index: int) -> str:
        """How messages name item ``index``: its path in quotes, or ``Image <index>``."""
        return self._source(index)

    def _source(self, index: int) -> str:
        item = self._items[index]
        return f"'{item}'" if _is_pathlike(item) else f"Image {index}"

    def nifti(self, index: int) -> nib.Nifti1Image:
        """The nibabel image of item ``index`` (NIfTI collections only)."""
        if self.kind != "nifti":
            raise TypeError("This collection holds arrays, not NIfTI images.")
        return load_img(self._items[index])

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        """Item ``index`` as a validated float32 3-D array (a fresh copy for files)."""
        if isinstance(index, slice):
            raise TypeError("ImageCollection does not support slicing.")
        if self.kind == "nifti":
            data = _read_data(self.nifti(index), self._source(index))
        else:
            data = np.asarray(self._items[index])
            if data.ndim != 3:
                raise ValueError(f"Image {index} has shape {data.shape}; every image must be 3-D.")
            if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
                raise TypeError(f"Image {index} has non-real dtype {data.dtype}.")
            data = data.astype(np.float32, copy=False)
        if not np.isfinite(data).all():
            raise ValueError(
                f"{self._source(index)} has {int((~np.isfinite(data)).sum())} NaN or infinite "
                "voxels; replace them (e.g. with 0 for background) before harmonizing."
            )
        return data

    def subset(self, indices: Sequence[int]) -> ImageCollection:
        """A collection of items ``indices`` of this one, without loading or copying them."""
        items = self._items
        out = ImageCollection.__new__(ImageCollection)
        out._items = [items[int(i)] for i in indices]
        out.kind = self.kind
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def shape(self, index: int) -> tuple[int, ...]:
        """Shape of item ``index`` without loading its voxels."""
        item = self._items[index]
        if self.kind == "nifti":
            return tuple(self.nifti(index).shape)
        return tuple(np.shape(item))

    def affine(self, index: int) -> np.ndarray | None:
        """Voxel-to-world affine of item ``index`` (header only), or None for arrays."""
        if self.kind != "nifti":
            return None
        return np.asarray(self.nifti(index).affine, dtype=np.float64)

    def wrap(self, outputs: Sequence[np.ndarray] | np.ndarray) -> Any:
        """Return ``outputs`` in the form the input had.

        ndarray in → float32 ndarray; list of arrays → list of float32 arrays;
        paths / nibabel images → list of :class:`nibabel.Nifti1Image` with each input's
        affine and header (data type float32).
        """
        if self.kind == "array":
            if isinstance(outputs, np.ndarray):
                return outputs.astype(np.float32, copy=False)
            return np.stack(outputs).astype(np.float32, copy=False)
        if self.kind == "list":
            return [np.asarray(o, dtype=np.float32) for o in outputs]
        return [self.wrap_one(i, o) for i, o in enumerate(outputs)]

    def wrap_one(self, index: int, output: np.ndarray) -> Any:
        """Wrap one output like item ``index`` (see :meth:`wrap`)."""
        output = np.asarray(output, dtype=np.float32)
        if self.kind != "nifti":
            return output
        ref = self.nifti(index)
        header = ref.header.copy()
        header.set_data_dtype(np.float32)
        header.set_slope_inter(None, None)
        set_display_range(header, output)
        return nib.Nifti1Image(output, ref.affine, header)


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


def as_collection(imgs: Any) -> ImageCollection:
    """Coerce ``imgs`` into an :class:`ImageCollection` (idempotent).

    Parameters
    ----------
    imgs : ndarray of shape (n, i, j, k), list of 3-D arrays, list of paths / nibabel images
        A single 3-D image is refused with a ValueError (wrap it in a list).

    Returns
    -------
    ImageCollection
    """
    return imgs if isinstance(imgs, ImageCollection) else ImageCollection(imgs)
