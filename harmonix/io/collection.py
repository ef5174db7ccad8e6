"""The lazy, validated view of the images a user passes (arrays, lists, paths, NIfTI
images), turned back into the same kind on output."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import nibabel as nib
import numpy as np

from harmonix.io.files import _is_pathlike, _read_data, load_img, set_display_range


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
