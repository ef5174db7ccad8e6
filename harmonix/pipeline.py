"""Adapter that lets a harmonizer sit in a scikit-learn ``Pipeline``.

scikit-learn passes extra per-sample data (here ``sites``, ``ages`` and ``covariates``) to
pipeline steps through *metadata routing*. :class:`HarmonizerStep` requests them by
default, so::

    sklearn.set_config(enable_metadata_routing=True)
    pipe = make_pipeline(HarmonizerStep(HistogramMatchingHarmonizer(), flatten=True), Ridge())
    cross_validate(pipe, X, y, params={"sites": sites, "ages": ages, "groups": subjects})

works without any ``set_fit_request`` call. Give ``covariates`` as a DataFrame (one row
per sample): scikit-learn splits it into folds like ``sites``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

__all__ = ["HarmonizerStep"]


class HarmonizerStep(TransformerMixin, BaseEstimator):
    """Wrap a harmonizer as a scikit-learn transformer with ``fit(X, y, *, sites, ages,
    covariates)``.

    Parameters
    ----------
    harmonizer : BaseHarmonizer
        The harmonizer to use; it is cloned at fit.
    flatten : bool, default=False
        Return a 2-D float32 array ``(n_images, n_voxels)`` (for downstream estimators)
        instead of the harmonizer's image output.

    Attributes
    ----------
    harmonizer_ : BaseHarmonizer
        The fitted clone.

    Notes
    -----
    ``sites``, ``ages`` and ``covariates`` are requested for ``fit`` and ``transform`` by
    default (a DataFrame of covariates is split into folds like the other metadata). In
    ``cross_validate``, scorers call ``predict`` without metadata, so the test fold is
    transformed without sites: use a method that needs none (IGUANe, HM, WS) there.
    """

    __metadata_request__fit = {"sites": True, "ages": True, "covariates": True}
    __metadata_request__transform = {"sites": True, "ages": True, "covariates": True}

    def __init__(self, harmonizer: Any, flatten: bool = False):
        self.harmonizer = harmonizer
        self.flatten = flatten

    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        sites: Any = None,
        ages: Any = None,
        covariates: Any = None,
    ) -> HarmonizerStep:
        """Fit the wrapped harmonizer on images ``X`` from ``sites``.

        Parameters
        ----------
        X : ndarray of shape (n_images, i, j, k) or list of images
        y : ignored
        sites : array-like of shape (n_images,)
            Required.
        ages : array-like of shape (n_images,), default=None
        covariates : pandas.DataFrame, default=None
            Per-image covariates (see :meth:`harmonix.base.BaseHarmonizer.fit`).

        Returns
        -------
        self : HarmonizerStep
        """
        if sites is None:
            raise ValueError(
                "HarmonizerStep.fit needs sites. In a Pipeline pass them as "
                "pipe.fit(X, y, <step>__sites=sites), or enable metadata routing "
                "(sklearn.set_config(enable_metadata_routing=True)) and pass sites=sites."
            )
        self.harmonizer_ = clone(self.harmonizer).fit(X, sites, ages, covariates)
        return self

    def transform(
        self, X: Any, *, sites: Any = None, ages: Any = None, covariates: Any = None
    ) -> Any:
        """Harmonize ``X`` with the fitted harmonizer.

        Parameters
        ----------
        X : ndarray of shape (n_images, i, j, k) or list of images
        sites, ages : array-like of shape (n_images,), default=None
            Passed on to the harmonizer's ``transform``.
        covariates : pandas.DataFrame, default=None
            Passed on to the harmonizer's ``transform``.

        Returns
        -------
        ndarray or list
            2-D ``(n_images, n_voxels)`` when ``flatten``; else the harmonizer's output.
        """
        check_is_fitted(self)
        return self._format(self.harmonizer_.transform(X, sites, ages, covariates))

    def fit_transform(self, X: Any, y: Any = None, **metadata: Any) -> Any:
        """Fit, then transform ``X`` with the same ``sites``, ``ages`` and ``covariates``;
        see :meth:`fit` and :meth:`transform`."""
        return self.fit(X, y, **metadata).transform(X, **metadata)

    def _format(self, out: Any) -> Any:
        if isinstance(out, pd.DataFrame) or (isinstance(out, np.ndarray) and out.ndim == 2):
            return np.asarray(out, dtype=np.float64) if self.flatten else out  # a table
        if not self.flatten:
            return out
        arrays = [np.asarray(o.dataobj if hasattr(o, "dataobj") else o) for o in out]
        return np.stack([a.reshape(-1) for a in arrays]).astype(np.float32, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags
