"""The estimator contract shared by every harmonizer.

:class:`BaseHarmonizer` validates what users pass to ``fit(imgs, sites, ages,
covariates)`` and ``transform(imgs, sites, ages, covariates)`` (covariates through
:mod:`harmonix.inputs.covariates`) and hands clean, lazy inputs to the private ``_fit`` and
``_transform_one`` hooks that each method implements. It also keeps the background at 0
and returns results in the form the input had.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from os import PathLike
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from harmonix._docs import fill_doc
from harmonix.inputs import grids
from harmonix.inputs._reading import InputReading, Inputs
from harmonix.inputs.covariates import (
    CovariateLevels,
    age_column,
    check_covariates,
    fit_covariate_levels,
    match_covariates,
)
from harmonix.inputs.labels import check_label, check_sites, site_codes
from harmonix.inputs.tables import FeatureTable
from harmonix.io import as_collection
from harmonix.persistence import load_estimator, register_class, save_estimator

__all__ = ["BaseHarmonizer", "IdentityHarmonizer"]


def _given_statistics(value: Any) -> dict[str, Any]:
    """``site_statistics`` given to transform, keyed by label text ({} for None)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"site_statistics must be the dict site_statistics() returned, got "
            f"{type(value).__name__}."
        )
    return {check_label(k, "a site_statistics key"): v for k, v in value.items()}


class BaseHarmonizer(InputReading, TransformerMixin, BaseEstimator):
    """Base class of all harmonizers: validation, background and output handling.

    Subclasses implement ``_fit(imgs, sites, ages, covariates)`` and
    ``_transform_one(data, brain, site, age)``; they may override
    ``_transform(imgs, sites, ages, covariates, stats)`` to process a whole collection at
    once. ``ages`` is the continuous ``age`` covariate (or None) and ``covariates`` the
    checked covariate frame (or None), ``age`` included. Methods that pool the images of
    a site at transform time compute what they pool in
    ``_site_statistics(imgs, sites, ages, covariates)`` (one streaming pass, a small value
    per site) and read it from ``stats`` in ``_transform``; the public
    :meth:`site_statistics` and ``transform(..., site_statistics=...)`` then let callers
    harmonize a site's images a few at a time with the statistics of all of them.

    Notes
    -----
    Background voxels (``== 0``, or outside ``mask`` when the estimator has one) stay 0
    in every output; images whose non-zero voxels fill nearly the whole volume get a
    :class:`~harmonix.exceptions.BackgroundWarning`
    (:func:`~harmonix.inputs.background.check_background`). Inputs are never modified in place.

    Every fit records the training images' grid in ``grid_`` (:mod:`harmonix.inputs.grids`);
    :meth:`check_grid` compares new images with it.

    ``transform`` uses fitted attributes only, except the parameters named in
    ``_transform_params`` (policies and computing options, such as ComBat's
    ``unseen_site``): ``set_params`` after ``fit`` changes nothing else until the next
    ``fit``.
    """

    #: transform needs images on the grid seen in fit (e.g. voxel-wise ComBat).
    _fixed_shape: ClassVar[bool] = False
    #: what transform compares with the training grid besides the affine of voxel-wise
    #: methods: "none" or "voxel" (voxel size and orientation; see :mod:`harmonix.inputs.grids`).
    _grid_check: ClassVar[str] = "none"
    #: parameters that transform reads (policies and computing options); every other
    #: parameter acts through fit only.
    _transform_params: ClassVar[tuple[str, ...]] = ()
    #: transform needs ``sites``.
    _needs_sites: ClassVar[bool] = False
    #: ``reference_site=None`` picks the site with the most training images; when False
    #: it means no reference site at all (ComBat's pooled grand mean).
    _none_is_largest_site: ClassVar[bool] = True
    #: transform needs every covariate the fit had (methods that model them: ComBat).
    _needs_covariates: ClassVar[bool] = False
    #: fit and transform also take tables of features (n_samples, n_features).
    _accepts_tables: ClassVar[bool] = False
    #: ``_fit`` and ``_transform`` check that a table's values are finite themselves, from
    #: their pass over it (:meth:`harmonix.inputs.tables.FeatureTable.check_finite`),
    #: instead of a pass of its own before them.
    _checks_table_finite: ClassVar[bool] = False
    #: fitted attributes a file saved by an older harmonix may lack, each computed at
    #: load from the stored parameter it checks: ``{"percentiles_": ("percentiles",
    #: check)}`` (see :meth:`_complete_loaded`).
    _checked_params: ClassVar[dict[str, tuple[str, Callable[[Any], Any]]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_class(cls)  # model files find it by name even after a module moved

    # -- public API ---------------------------------------------------------------------
    @fill_doc
    def fit(
        self, imgs: Any, sites: Any, ages: Any = None, covariates: Any = None
    ) -> BaseHarmonizer:
        """Learn the harmonization from images of several sites.

        Parameters
        ----------
        %(fit_params)s

        Returns
        -------
        self : object
            The fitted harmonizer.
        """
        self._forget_fit()
        coll = self._as_input(imgs, check_finite=not self._checks_table_finite)
        sites = check_sites(sites, len(coll))
        cov = check_covariates(covariates, len(coll), ages)
        labels, _, counts = site_codes(sites)
        if len(labels) < 2:
            raise ValueError(
                f"Harmonization needs images from at least 2 sites; got only {labels.tolist()}."
            )
        levels = fit_covariate_levels(cov, sites)
        mask, shape, grid, affine = self._training_grid(coll)
        reference = self._check_reference(labels, counts)
        self.grid_ = grid
        self.mask_ = mask
        self.affine_ = affine
        self.sites_ = labels
        self.n_images_ = len(coll)
        self.image_shape_ = shape if self._fixed_shape else None
        self.covariate_levels_ = levels
        if isinstance(coll, FeatureTable):
            self.n_features_in_ = coll.n_features
            if coll.columns is not None:
                self.feature_names_in_ = np.asarray(coll.columns, dtype=object)
        if reference is not None:
            self.reference_site_ = reference
        try:
            self._fit(Inputs(coll, sites, age_column(cov, levels), cov))
        except BaseException:
            self._forget_fit()  # a failed fit must not leave a half-fitted estimator
            raise
        return self

    @fill_doc
    def transform(
        self,
        imgs: Any,
        sites: Any = None,
        ages: Any = None,
        covariates: Any = None,
        *,
        site_statistics: Mapping[Any, Any] | None = None,
    ) -> Any:
        """Harmonize images.

        Parameters
        ----------
        imgs : 4-D ndarray (n_images, i, j, k), list of 3-D arrays, or list of paths/images
            Images to harmonize.
        sites : array-like of shape (n_images,), default=None
            Site labels (compared as text, see the user guide); needed by methods that
            model sites explicitly (ComBat). Methods that pool a site's images (ComBat's
            ``unseen_site="fit"``, IGUANe's per-site histogram map of a new site) pool the
            images of each site passed in this call.
        ages : array-like of shape (n_images,), default=None
            Ages; needed only by methods fitted with an age covariate (ComBat).
        %(covariates_transform)s
        site_statistics : mapping, default=None
            What :meth:`site_statistics` returned for all the images of some sites: those
            sites are harmonized with these statistics instead of the ones of the images
            passed here, so that images can be harmonized a few at a time with the result
            of one call on all of them.

        Returns
        -------
        ndarray, list of ndarray or list of nibabel.Nifti1Image
            Harmonized images in the form of the input: a float32 ndarray of the same
            shape, a list of float32 arrays, or NIfTI images with each input's affine and
            header.
        """
        check_is_fitted(self)
        coll = self._transformable(imgs, check_finite=not self._checks_table_finite)
        given = _given_statistics(site_statistics)
        sites, ages, cov = self.check_transform_metadata(
            len(coll), sites, ages, covariates, site_statistics=given
        )
        if not isinstance(coll, FeatureTable):
            self.check_grid(coll)
        data = Inputs(coll, sites, ages, cov)
        return coll.wrap(self._transform(data, self._statistics_for(data, given)))

    def check_grid(self, imgs: Any) -> None:
        """Compare the images' headers with the training grid, before any work.

        :meth:`transform` calls it first, and :func:`harmonix.batch.transform_files` before
        writing anything. Only headers are read:

        - voxel-wise methods (ComBat, or any method given a ``mask``) record the affine of
          their NIfTI training images (or of a NIfTI mask) in ``affine_``; a NIfTI image
          with another affine is refused even when its shape agrees (the same scan stored
          with its axes swapped, for instance). Arrays carry no affine and are checked by
          their shape only;
        - methods specific to a voxel size (IGUANe, ``_grid_check = "voxel"``) compare
          voxel sizes and orientations with ``grid_``, as ``grid_mismatch`` says; arrays
          are checked while they are harmonized, by their number of brain voxels (see
          :mod:`harmonix.inputs.grids`);
        - histogram matching and WhiteStripe accept any grid.

        Parameters
        ----------
        imgs : images accepted by :meth:`transform`

        Raises
        ------
        ValueError
            If an image's affine differs from ``affine_``, or its voxel size or
            orientation from ``grid_`` while ``grid_mismatch`` is ``"error"``.

        Warns
        -----
        GridMismatchWarning
            On a voxel size or orientation mismatch, when ``grid_mismatch`` is ``"warn"``.
        """
        check_is_fitted(self)
        coll = as_collection(imgs)
        if getattr(self, "affine_", None) is not None:
            for i in range(len(coll)):
                self._check_affine(coll, i)
        fitted = getattr(self, "grid_", None)
        if fitted is None:  # a model saved before grids were recorded
            return
        grids.report_mismatches(
            grids.grid_problems(fitted, coll, self._grid_check),
            what=f"the grid {type(self).__name__} was fitted on",
            owner=type(self).__name__,
            fitted=fitted,
            action=self._grid_action(),
            stacklevel=4,
        )

    def site_statistics(
        self, imgs: Any, sites: Any, ages: Any = None, covariates: Any = None
    ) -> dict[str, Any]:
        """The per-site statistics :meth:`transform` derives from all the images of a site.

        Most methods harmonize each image on its own and return ``{}``. Methods that pool
        the images of a site at transform time return one entry per such site: ComBat
        with ``unseen_site="fit"`` (the new sites' ``gamma``/``delta``) and IGUANe with
        ``input_normalization="histogram"`` (the new sites' mean landmarks). Methods that
        store per-site parameters also return the outcome of their site check for each
        training label (``site_check``: None when the stored parameters apply, the
        group's own statistics when it is treated as a new site), so the check sees the
        whole group once. Passing the result to :meth:`transform` (``site_statistics=``)
        harmonizes any subset of these images exactly as one call on all of them, holding
        one image at a time: :func:`harmonix.batch.transform_files` and ``harmonix
        transform`` work that way.

        Parameters
        ----------
        imgs : 4-D ndarray, list of 3-D arrays, or list of paths/images
            All the images of the sites (files are read one at a time).
        sites : array-like of shape (n_images,)
            Their site labels.
        ages : array-like of shape (n_images,), default=None
            Their ages (ComBat fitted with ages).
        covariates : pandas.DataFrame or mapping, default=None
            Their covariates (ComBat fitted with covariates).

        Returns
        -------
        dict
            Site label (text) -> statistics; small and picklable.
        """
        check_is_fitted(self)
        coll = self._transformable(imgs)
        sites, ages, cov = self.check_transform_metadata(len(coll), sites, ages, covariates)
        if sites is None:
            return {}
        return self._site_statistics(Inputs(coll, sites, ages, cov))

    def _statistics_for(self, data: Inputs, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` statistics, completed from ``data`` for the sites it lacks."""
        stats = dict(given)
        if data.sites is None:
            return stats
        labels, codes = data.site_groups
        missing = np.asarray([label not in stats for label in labels], dtype=bool)
        todo = np.flatnonzero(missing[codes]).tolist()
        if len(todo) == len(data):  # no statistics given: every image, no copy
            stats.update(self._site_statistics(data))
        elif todo:
            stats.update(self._site_statistics(data.subset(todo)))
        return stats

    def _site_statistics(self, data: Inputs) -> dict[str, Any]:
        """Per-site statistics of the images of ``data`` (none for per-image methods)."""
        return {}

    def check_transform_metadata(
        self,
        n_images: int,
        sites: Any = None,
        ages: Any = None,
        covariates: Any = None,
        *,
        site_statistics: Mapping[Any, Any] | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray | None, pd.DataFrame | None]:
        """Check the sites, ages and covariates of ``n_images`` images, before any work.

        :meth:`transform` calls it first; :func:`harmonix.batch.transform_files` calls it
        before writing anything, so that a bad label fails the whole call, not the n-th
        file.

        Parameters
        ----------
        n_images : int
        sites, ages : array-like of shape (n_images,) or None
        covariates : pandas.DataFrame, mapping or None
        site_statistics : mapping, default=None
            Statistics given for some sites (see :meth:`transform`): their images need
            not all be among these.

        Returns
        -------
        sites : ndarray of str or None
            The validated labels, as text.
        ages : ndarray or None
            The ``age`` covariate when the fit had a continuous one and it is given.
        covariates : pandas.DataFrame or None
            The fitted covariates given (:func:`harmonix.inputs.covariates.match_covariates`).

        Raises
        ------
        ValueError
            If sites are needed but missing, a label is missing (None, NaN, empty...), a
            length differs from ``n_images``, a value is missing or not finite, a category
            was not seen in fit, or the fitted model cannot transform these sites or
            covariates (e.g. ComBat and a site unseen in fit, or without a covariate it
            was fitted with).
        """
        check_is_fitted(self)
        if sites is None and self._needs_sites:
            raise ValueError(
                f"{type(self).__name__}.transform needs the site of each image: pass sites=[...]."
            )
        sites = None if sites is None else check_sites(sites, n_images)
        levels = self._fitted_covariate_levels()
        cov = match_covariates(
            check_covariates(covariates, n_images, ages),
            levels,
            required=self._needs_covariates,
        )
        self._check_metadata(sites, frozenset(_given_statistics(site_statistics)))
        return sites, age_column(cov, levels), cov

    def _fitted_covariate_levels(self) -> CovariateLevels:
        """The fit's covariates (:func:`harmonix.inputs.covariates.fit_covariate_levels`).

        Models saved before covariates existed have none recorded; subclasses that
        modelled ages then override this."""
        return getattr(self, "covariate_levels_", {})

    def _check_metadata(self, sites: np.ndarray | None, prepared: frozenset) -> None:
        """Method-specific checks of validated transform sites, before any work (none
        by default; the covariates are checked here); ``prepared``: sites whose
        statistics the caller gives."""

    @fill_doc
    def fit_transform(
        self, imgs: Any, sites: Any, ages: Any = None, covariates: Any = None
    ) -> Any:
        """Fit, then harmonize the same images; see :meth:`fit` and :meth:`transform`.

        Parameters
        ----------
        %(fit_params)s

        Returns
        -------
        ndarray, list of ndarray or list of nibabel.Nifti1Image
            As :meth:`transform` returns.
        """
        return self.fit(imgs, sites, ages, covariates).transform(imgs, sites, ages, covariates)

    def save(self, path: str | PathLike) -> None:
        """Save the fitted harmonizer to an ``.npz`` file (no pickle involved).

        Parameters
        ----------
        path : str or path-like
            Destination file; written atomically.
        """
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
        return load_estimator(path, expected=cls)

    # -- helpers for subclasses ------------------------------------------------------------
    def _complete_loaded(self) -> None:
        """Fill in the fitted attributes that a file saved by an older harmonix lacks.

        Called by the loaders after setting the stored attributes. The attributes of
        ``_checked_params`` are computed from the stored parameters (those of the fit).
        A model without a recorded grid cannot check new images against it: methods
        that check grids say so once, here.
        """
        for attr, (param, check) in self._checked_params.items():
            if not hasattr(self, attr):
                setattr(self, attr, check(getattr(self, param)))
        checks = self._grid_check != "none" or self._fixed_shape
        if not hasattr(self, "grid_") and checks:
            warnings.warn(
                f"This {type(self).__name__} was saved by harmonix "
                f"{getattr(self, '_saved_version', 'unknown')}, before models recorded the "
                "grid (voxel size, orientation, affine) of their training images: transform "
                "cannot check that new images match it. Refit it, or make sure they do.",
                UserWarning,
                stacklevel=3,
            )

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "sites_" in state:  # a fitted model, maybe pickled by an older harmonix
            self._complete_loaded()

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
        ref = check_label(ref, "reference_site")
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

    def _transform(self, data: Inputs, stats: Mapping[str, Any]) -> list[np.ndarray]:
        """The harmonized images of ``data``, one :meth:`_transform_one` per image."""
        out = []
        for i, (image, brain) in enumerate(self._iter_brains(data.imgs)):
            site = None if data.sites is None else data.sites[i]
            age = None if data.ages is None else float(data.ages[i])
            result = np.asarray(self._transform_one(image, brain, site, age), dtype=np.float32)
            if np.may_share_memory(result, image):  # never write into the caller's array
                result = result.copy()
            result[~brain] = 0.0
            out.append(result)
        return out

    def _fit(self, data: Inputs) -> None:
        """Learn from the checked inputs of :meth:`fit` (each method's own work)."""
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
    %(affine_)s
    %(grid_)s

    Notes
    -----
    %(ignores_covariates)s

    Examples
    --------
    >>> import numpy as np
    >>> from harmonix import IdentityHarmonizer
    >>> imgs = np.zeros((2, 4, 4, 4), dtype=np.float32)  # background 0
    >>> imgs[:, 1:3, 1:3, 1:3] = 1.0  # the "brains"
    >>> IdentityHarmonizer().fit(imgs, ["a", "b"]).transform(imgs).shape
    (2, 4, 4, 4)
    """

    def __init__(self, mask: Any = None):
        self.mask = mask

    def _fit(self, data: Inputs) -> None:
        for _ in self._iter_brains(data.imgs):  # validates every image
            pass

    def _transform_one(
        self, data: np.ndarray, brain: np.ndarray, site: Any, age: float | None
    ) -> np.ndarray:
        return data
