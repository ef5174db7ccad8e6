"""The estimator contract shared by every harmonizer.

:class:`BaseHarmonizer` validates what users pass to ``fit(imgs, sites, ages)`` and
``transform(imgs, sites)`` and hands clean, lazy inputs to the private ``_fit`` and
``_transform_one`` hooks that each method implements. It also keeps the background at 0
and returns results in the form the input had.
"""

from __future__ import annotations

from collections.abc import Iterator
from os import PathLike
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from harmonix._docs import fill_doc
from harmonix.io import ImageCollection, as_collection, load_img

__all__ = ["BaseHarmonizer", "IdentityHarmonizer", "check_sites", "check_ages"]


def check_sites(sites: Any, n_images: int, *, name: str = "sites") -> np.ndarray:
    """Validate site labels.

    Parameters
    ----------
    sites : array-like of shape (n_images,)
        Hashable labels, one per image.
    n_images : int
        Number of images they label.
    name : str, default="sites"
        Argument name used in error messages.

    Returns
    -------
    ndarray of shape (n_images,)
    """
    if isinstance(sites, (str, bytes)) or np.ndim(sites) == 0:
        raise ValueError(
            f"{name} must be a sequence with one label per image, got {sites!r}; "
            f"for one image pass [{sites!r}]."
        )
    arr = np.asarray(list(sites))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, one label per image; got shape {arr.shape}.")
    if len(arr) != n_images:
        raise ValueError(
            f"Got {n_images} images but {len(arr)} {name}; give exactly one label per image."
        )
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(f"{name} contain NaN; every image needs a site label.")
    if arr.dtype == object and any(s is None for s in arr):
        raise ValueError(f"{name} contain None; every image needs a site label.")
    return arr


def check_ages(ages: Any, n_images: int) -> np.ndarray | None:
    """Validate ages (``None`` or one finite number per image).

    Parameters
    ----------
    ages : array-like of shape (n_images,) or None
    n_images : int

    Returns
    -------
    ndarray of float64 or None
    """
    if ages is None:
        return None
    try:
        arr = np.asarray(ages, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ages must be numbers, one per image ({exc}).") from exc
    if arr.ndim != 1 or len(arr) != n_images:
        raise ValueError(
            f"Got {n_images} images but ages of shape {arr.shape}; give one age per image."
        )
    if not np.isfinite(arr).all():
        raise ValueError("ages contain NaN or infinite values; give every image a finite age.")
    return arr


@fill_doc
def brain_values(
    data: np.ndarray, brain: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The brain voxels of one image, for the functions that take ``(data, brain)``.

    Parameters
    ----------
    data : ndarray of shape (i, j, k)
        The image; float64 stays float64, any other type becomes float32.
    %(brain)s

    Returns
    -------
    values : ndarray of shape (n_brain_voxels,)
        ``data[brain]``.
    brain : ndarray of bool of shape (i, j, k)
        The brain mask used.

    Raises
    ------
    ValueError
        If the shapes differ or the image has no brain voxel.
    """
    data = np.asarray(data)
    if data.dtype != np.float64:
        data = data.astype(np.float32, copy=False)
    brain = data != 0 if brain is None else np.asarray(brain, dtype=bool)
    if brain.shape != data.shape:
        raise ValueError(f"brain mask shape {brain.shape} differs from image shape {data.shape}.")
    values = data[brain]
    if values.size == 0:
        raise ValueError("The image has no brain voxels (all zero or outside the mask).")
    return values, brain


def _as_mask(mask: Any) -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, (str, PathLike)) or hasattr(mask, "dataobj"):
        mask = np.asanyarray(load_img(mask).dataobj)
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"mask must be a 3-D array or image; got shape {arr.shape}.")
    arr = arr != 0
    if not arr.any():
        raise ValueError("mask is empty (no non-zero voxel); pass a brain mask.")
    return arr


class BaseHarmonizer(TransformerMixin, BaseEstimator):
    """Base class of all harmonizers: validation, background and output handling.

    Subclasses implement ``_fit(imgs, sites, ages)`` and
    ``_transform_one(data, brain, site, age)``; they may override ``_transform`` to
    process a whole collection at once.

    Notes
    -----
    Background voxels (``== 0``, or outside ``mask`` when the estimator has one) stay 0
    in every output. Inputs are never modified in place.
    """

    #: transform needs images on the grid seen in fit (e.g. voxel-wise ComBat).
    _fixed_shape: ClassVar[bool] = False
    #: transform needs ``sites``.
    _needs_sites: ClassVar[bool] = False
    #: ``reference_site=None`` picks the site with the most training images; when False
    #: it means no reference site at all (ComBat's pooled grand mean).
    _none_is_largest_site: ClassVar[bool] = True

    # -- public API ---------------------------------------------------------------------
    def fit(self, imgs: Any, sites: Any, ages: Any = None) -> BaseHarmonizer:
        """Learn the harmonization from images of several sites.

        Parameters
        ----------
        imgs : 4-D ndarray (n_images, i, j, k), list of 3-D arrays, or list of paths/images
            Skull-stripped images (background 0). Paths are loaded one at a time.
        sites : array-like of shape (n_images,)
            Site (scanner) label of each image; at least two distinct sites.
        ages : array-like of shape (n_images,), default=None
            Age of each subject, used by methods that keep age effects.

        Returns
        -------
        self : object
            The fitted harmonizer.
        """
        self._forget_fit()
        coll = as_collection(imgs)
        sites = check_sites(sites, len(coll))
        ages = check_ages(ages, len(coll))
        labels, counts = np.unique(sites, return_counts=True)
        if len(labels) < 2:
            raise ValueError(
                f"Harmonization needs images from at least 2 sites; got only {labels.tolist()}."
            )
        mask = _as_mask(getattr(self, "mask", None))
        shape = coll.shape(0)
        if self._fixed_shape or mask is not None:
            expected = mask.shape if mask is not None else shape
            for i in range(len(coll)):
                if coll.shape(i) != expected:
                    raise ValueError(
                        f"Image {i} has shape {coll.shape(i)} but {expected} was expected: "
                        "resample all images (and the mask) to one grid."
                    )
        reference = self._check_reference(labels, counts)
        self.mask_ = mask
        self.sites_ = labels
        self.n_images_ = len(coll)
        self.image_shape_ = shape if self._fixed_shape else None
        if reference is not None:
            self.reference_site_ = reference
        try:
            self._fit(coll, sites, ages)
        except BaseException:
            self._forget_fit()  # a failed fit must not leave a half-fitted estimator
            raise
        return self

    def transform(self, imgs: Any, sites: Any = None, ages: Any = None) -> Any:
        """Harmonize images.

        Parameters
        ----------
        imgs : 4-D ndarray (n_images, i, j, k), list of 3-D arrays, or list of paths/images
            Images to harmonize.
        sites : array-like of shape (n_images,), default=None
            Site labels; needed only by methods that model sites explicitly (ComBat).
        ages : array-like of shape (n_images,), default=None
            Ages; needed only by methods fitted with an age covariate (ComBat).

        Returns
        -------
        ndarray, list of ndarray or list of nibabel.Nifti1Image
            Harmonized images in the form of the input: a float32 ndarray of the same
            shape, a list of float32 arrays, or NIfTI images with each input's affine and
            header.
        """
        check_is_fitted(self)
        coll = as_collection(imgs)
        sites, ages = self.check_transform_metadata(len(coll), sites, ages)
        return coll.wrap(self._transform(coll, sites, ages))

    def check_transform_metadata(
        self, n_images: int, sites: Any = None, ages: Any = None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Check the sites and ages of ``n_images`` images to transform, before any work.

        :meth:`transform` calls it first; :func:`harmonix.batch.transform_files` calls it
        before writing anything, so that a bad label fails the whole call, not the n-th
        file.

        Parameters
        ----------
        n_images : int
        sites, ages : array-like of shape (n_images,) or None

        Returns
        -------
        sites, ages : ndarray or None
            The validated labels and ages.

        Raises
        ------
        ValueError
            If sites are needed but missing, a length differs from ``n_images``, an age is
            not finite, or the fitted model cannot transform these sites or ages (e.g.
            ComBat and a site unseen in fit).
        """
        check_is_fitted(self)
        if sites is None and self._needs_sites:
            raise ValueError(
                f"{type(self).__name__}.transform needs the site of each image: pass sites=[...]."
            )
        sites = None if sites is None else check_sites(sites, n_images)
        ages = check_ages(ages, n_images)
        self._check_metadata(sites, ages)
        return sites, ages

    def _check_metadata(self, sites: np.ndarray | None, ages: np.ndarray | None) -> None:
        """Method-specific checks of validated transform sites and ages (none by default)."""

    def fit_transform(self, imgs: Any, sites: Any, ages: Any = None) -> Any:
        """Fit, then harmonize the same images; see :meth:`fit` and :meth:`transform`."""
        return self.fit(imgs, sites, ages).transform(imgs, sites, ages)

    def save(self, path: str | PathLike) -> None:
        """Save the fitted harmonizer to an ``.npz`` file (no pickle involved).

        Parameters
        ----------
        path : str or path-like
            Destination file; written atomically.
        """
        from harmonix.persistence import save_estimator

        check_is_fitted(self)
        save_estimator(self, path)

    @classmethod
    def load(cls, path: str | PathLike) -> BaseHarmonizer:
        """Load a harmonizer saved by :meth:`save`.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        BaseHarmonizer
            The fitted harmonizer, of the class that saved it.
        """
        from harmonix.persistence import load_estimator

        return load_estimator(path, expected=cls)

    # -- helpers for subclasses ------------------------------------------------------------
    def _forget_fit(self) -> None:
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("_")]:
            delattr(self, attr)

    def _check_reference(self, labels: np.ndarray, counts: np.ndarray) -> Any:
        """The training label ``reference_site`` names (see ``_none_is_largest_site``)."""
        if "reference_site" not in self.get_params(deep=False):
            return None
        ref = self.reference_site
        if ref is None:
            return labels[int(np.argmax(counts))] if self._none_is_largest_site else None
        if ref not in labels.tolist():
            fix = (
                "pick one of them or None (the largest site)"
                if self._none_is_largest_site
                else "pick one of them, or None to harmonize to the pooled grand mean"
            )
            raise ValueError(
                f"reference_site={ref!r} is not among the training sites {labels.tolist()}; {fix}."
            )
        return labels[labels.tolist().index(ref)]

    def _brain(self, data: np.ndarray, index: int | None = None) -> np.ndarray:
        """Boolean brain mask of one image: non-zero voxels, inside ``mask_`` if set."""
        where = "" if index is None else f"Image {index} "
        mask = getattr(self, "mask_", None)
        expected = mask.shape if mask is not None else getattr(self, "image_shape_", None)
        if expected is not None and data.shape != tuple(expected):
            raise ValueError(
                f"{where}has shape {data.shape} but this harmonizer was fitted on "
                f"{tuple(expected)}: resample it to the training grid."
            )
        brain = data != 0
        if mask is not None:
            brain &= mask
        if not brain.any():
            raise ValueError(
                f"{where or 'An image '}has no brain voxels (all zero"
                f"{' inside the mask' if mask is not None else ''}); remove it or check it."
            )
        return brain

    def _iter_brains(self, imgs: ImageCollection) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(data, brain)`` for each image, loading files one at a time."""
        for i in range(len(imgs)):
            data = imgs[i]
            yield data, self._brain(data, i)

    def _reference_values(self, imgs: ImageCollection, sites: np.ndarray) -> Iterator[np.ndarray]:
        """Yield the brain voxel values of each ``reference_site_`` image; every image of
        ``imgs`` is read and validated on the way."""
        reference = sites == self.reference_site_
        for i, (data, brain) in enumerate(self._iter_brains(imgs)):
            if reference[i]:
                yield data[brain]

    def _transform(
        self, imgs: ImageCollection, sites: np.ndarray | None, ages: np.ndarray | None
    ) -> list[np.ndarray]:
        out = []
        for i, (data, brain) in enumerate(self._iter_brains(imgs)):
            site = None if sites is None else sites[i]
            age = None if ages is None else float(ages[i])
            result = np.asarray(self._transform_one(data, brain, site, age), dtype=np.float32)
            if np.may_share_memory(result, data):  # never write into the caller's array
                result = result.copy()
            result[~brain] = 0.0
            out.append(result)
        return out

    def _fit(self, imgs: ImageCollection, sites: np.ndarray, ages: np.ndarray | None) -> None:
        raise NotImplementedError

    def _transform_one(
        self, data: np.ndarray, brain: np.ndarray, site: Any, age: float | None
    ) -> np.ndarray:
        raise NotImplementedError

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.required = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


@fill_doc
class IdentityHarmonizer(BaseHarmonizer):
    """A harmonizer that changes nothing (the "no harmonization" baseline).

    It validates inputs like every harmonizer, so benchmarks treat it alike, and returns
    the images unchanged (as float32, background 0).

    Parameters
    ----------
    %(mask)s

    Attributes
    ----------
    %(sites_)s
    %(n_images_)s

    Examples
    --------
    >>> import numpy as np
    >>> from harmonix import IdentityHarmonizer
    >>> imgs = np.ones((2, 4, 4, 4), dtype=np.float32)
    >>> IdentityHarmonizer().fit(imgs, ["a", "b"]).transform(imgs).shape
    (2, 4, 4, 4)
    """

    def __init__(self, mask: Any = None):
        self.mask = mask

    def _fit(self, imgs: ImageCollection, sites: np.ndarray, ages: np.ndarray | None) -> None:
        for _ in self._iter_brains(imgs):  # validates every image
            pass

    def _transform_one(
        self, data: np.ndarray, brain: np.ndarray, site: Any, age: float | None
    ) -> np.ndarray:
        return data
