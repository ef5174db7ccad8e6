"""How a harmonizer reads its inputs (a mixin of :class:`~harmonix.base.BaseHarmonizer`):
images or a table, checked against what fit saw; the grid and mask that fit records; and,
image by image, its brain (non-zero voxels inside the mask), its affine against the training
grid and the background warnings (:mod:`harmonix.inputs.background`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from harmonix.inputs import grids
from harmonix.inputs.background import BRAIN_FILL_LIMIT, as_mask, check_background
from harmonix.inputs.labels import distinct_sites
from harmonix.inputs.tables import FeatureTable, is_table
from harmonix.io import ImageCollection, as_collection


@dataclass(frozen=True)
class Inputs:
    """One call's checked inputs, as ``fit``, ``transform`` and ``site_statistics`` hand
    them to a method's ``_fit``, ``_transform`` and ``_site_statistics``.

    Attributes
    ----------
    imgs : ImageCollection or FeatureTable
        The images (or table).
    sites : ndarray of str or None
        Their site labels as text (:func:`harmonix.inputs.labels.check_sites`).
    ages : ndarray or None
        The ``age`` covariate, when the method models one and it is given.
    covariates : pandas.DataFrame or None
        The checked covariates (one row per image).
    """

    imgs: ImageCollection | FeatureTable
    sites: np.ndarray | None
    ages: np.ndarray | None = None
    covariates: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.imgs)

    @cached_property
    def site_groups(self) -> tuple[list[str], np.ndarray]:
        """The distinct labels in order of first appearance and each image's index into
        them (:func:`harmonix.inputs.labels.distinct_sites`, computed once per call)."""
        return distinct_sites(self.sites)

    def subset(self, rows: Sequence[int]) -> Inputs:
        """The inputs of the images at positions ``rows``."""
        cov = self.covariates
        return Inputs(
            self.imgs.subset(rows),
            None if self.sites is None else self.sites[rows],
            None if self.ages is None else self.ages[rows],
            None if cov is None else cov.iloc[rows].reset_index(drop=True),
        )


class InputReading:
    """The inputs as a harmonizer takes them; mixed into
    :class:`~harmonix.base.BaseHarmonizer`, whose ``fit`` and ``transform`` read images
    through ``_iter_brains``."""

    def _as_input(self, imgs: Any, *, check_finite: bool = True) -> ImageCollection | FeatureTable:
        """The checked images (or, for methods that take them, feature table; with
        ``check_finite=False`` its values are not checked yet: see
        :class:`~harmonix.inputs.tables.FeatureTable`)."""
        if is_table(imgs):
            if self._accepts_tables:
                return FeatureTable(imgs, check_finite=check_finite)
            raise ValueError(
                f"Got a 2-D table of shape {np.shape(imgs)}; {type(self).__name__} harmonizes "
                "images, given as a 4-D array (n_images, i, j, k) or a list of 3-D images. "
                "Tables of features (e.g. ROI volumes) are harmonized by ComBatHarmonizer."
            )
        return as_collection(imgs)

    def _transformable(
        self, imgs: Any, *, check_finite: bool = True
    ) -> ImageCollection | FeatureTable:
        """The images (or table) to transform, checked against what fit saw (see
        :meth:`_as_input` for ``check_finite``)."""
        coll = self._as_input(imgs, check_finite=check_finite)
        fitted_table = hasattr(self, "n_features_in_")
        if isinstance(coll, FeatureTable) != fitted_table:
            raise ValueError(
                f"This {type(self).__name__} was fitted on "
                + (
                    f"a table of {self.n_features_in_} features; transform needs a table too."
                    if fitted_table
                    else "images; transform needs images too, not a table."
                )
            )
        if fitted_table:
            coll = coll.matched(self.n_features_in_, getattr(self, "feature_names_in_", None))
        return coll

    def _training_grid(
        self, coll: ImageCollection | FeatureTable
    ) -> tuple[np.ndarray | None, tuple | None, dict | None, np.ndarray | None]:
        """What fit records of its images' grid: the mask (``mask`` read, see
        :func:`~harmonix.inputs.background.as_mask`), the image shape, the grid
        (:func:`harmonix.inputs.grids.training_grid`) and, for voxel-wise methods, the affine; a
        table has only a mask, which it refuses."""
        mask, mask_affine = as_mask(getattr(self, "mask", None))
        if isinstance(coll, FeatureTable):
            if mask is not None:
                raise ValueError(
                    "mask applies to images; a feature table has no voxels: leave mask=None."
                )
            return mask, None, None, None
        shape = coll.shape(0)
        voxelwise = self._fixed_shape or mask is not None
        grid = grids.training_grid(
            coll,
            check=self._grid_check,
            action=self._grid_action(),
            owner=type(self).__name__,
            voxel_size=grids.check_voxel_size(getattr(self, "voxel_size", None)),
            voxelwise=voxelwise,
            mask_shape=None if mask is None else mask.shape,
            mask_affine=mask_affine,
        )
        affine = (
            np.asarray(grid["affine"])
            if voxelwise and grid is not None and grid["affine"] is not None
            else None
        )
        return mask, shape, grid, affine

    def _grid_action(self) -> str:
        """``grid_mismatch`` checked ("error" for methods without the parameter)."""
        return grids.check_grid_action(getattr(self, "grid_mismatch", "error"))

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

    def _check_affine(self, imgs: ImageCollection, index: int) -> None:
        """Refuse an image whose affine differs from the training grid's (``affine_``)."""
        grids.check_affine(getattr(self, "affine_", None), imgs, index, type(self).__name__)

    def _iter_brains(self, imgs: ImageCollection) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(data, brain)`` for each image, loading files one at a time.

        Images whose brain fills nearly the whole volume are reported
        (:func:`check_background`): the first at once (the method may fail on it), all of
        them together after the last image; with a ``"voxel"`` grid check, images of
        unknown voxel size whose brain has far more or fewer voxels than the training
        images' are grid mismatches (:func:`harmonix.inputs.grids.brain_voxels_problem`), unless
        their background is the problem.
        """
        mask = getattr(self, "mask_", None)
        fitted = getattr(self, "grid_", None)
        extent = None
        if self._grid_check == "voxel" and fitted is not None and fitted.get("brain_voxels"):
            known = fitted.get("voxel_size") is not None and imgs.kind == "nifti"
            extent = None if known else fitted
        filled, problems = [], []
        mask_advice = "mask" in self.get_params(deep=False)
        for i in range(len(imgs)):
            self._check_affine(imgs, i)
            data = imgs[i]
            brain = self._brain(data, i)
            n_brain = np.count_nonzero(brain)
            fill = n_brain / brain.size if mask is None else 0.0
            if fill > BRAIN_FILL_LIMIT:
                if not filled:
                    check_background([(i, fill)], mask_advice=mask_advice, stacklevel=4)
                filled.append((i, fill))
            # a background that is not 0 makes the brain's size meaningless: say that instead
            check_size = extent is not None and fill <= BRAIN_FILL_LIMIT
            why = grids.brain_voxels_problem(extent, n_brain) if check_size else None
            if why is not None:
                problems.append((imgs.describe(i), why))
                if self._grid_action() == "error":
                    self._report_extent(problems, fitted)
            yield data, brain
        if len(filled) > 1:
            check_background(filled, mask_advice=mask_advice, stacklevel=4)
        self._report_extent(problems, fitted)

    def _report_extent(self, problems: list[tuple[str, str]], fitted: dict | None) -> None:
        grids.report_mismatches(
            problems,
            what=f"the grid {type(self).__name__} was fitted on",
            owner=type(self).__name__,
            fitted=fitted or {},
            action=self._grid_action(),
            stacklevel=5,
        )

    def _reference_values(self, imgs: ImageCollection, sites: np.ndarray) -> Iterator[np.ndarray]:
        """Yield the brain voxel values of each ``reference_site_`` image; every image of
        ``imgs`` is read and validated on the way."""
        reference = sites == self.reference_site_
        for i, (data, brain) in enumerate(self._iter_brains(imgs)):
            if reference[i]:
                yield data[brain]
