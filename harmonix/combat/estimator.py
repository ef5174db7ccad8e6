"""ComBat with covariates, on voxels or on tables of features: :class:`ComBatHarmonizer`.

ComBat (Johnson et al. 2007; Fortin et al. 2018) models every voxel (or feature) as a
linear function of the covariates plus an additive (``gamma``) and a multiplicative
(``delta``) site effect, shrinks the site effects with empirical Bayes priors pooled over
voxels, and removes them. The numbers equal neuroHarmonize 2.5.2's
``harmonizationLearn`` / ``harmonizationApply`` with covariates ``SITE``, age, sex,
diagnosis... (see :mod:`harmonix.combat._math`), with a fraction of its memory and a
model file of float32 arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from harmonix._docs import fill_doc
from harmonix.base import BaseHarmonizer
from harmonix.combat import _math as cm
from harmonix.combat._fit import ComBatFit
from harmonix.combat._site_check import ComBatSiteCheck
from harmonix.combat._transform import ComBatTransform
from harmonix.combat._unseen import UNSEEN_POLICIES
from harmonix.combat._voxels import FlatIndex
from harmonix.inputs.covariates import (
    CovariateLevels,
    check_covariates,
    column_design,
    match_covariates,
)
from harmonix.inputs.labels import as_labels, check_sites
from harmonix.inputs.site_check import agreement_frame, check_policy
from harmonix.inputs.tables import FeatureTable
from harmonix.io import ImageCollection

__all__ = ["ComBatHarmonizer"]

_DEFAULT_SPLINE_DF = 4


@fill_doc
class ComBatHarmonizer(ComBatFit, ComBatTransform, ComBatSiteCheck, BaseHarmonizer):
    """ComBat harmonization of voxels (inside the common brain mask) or of table features.

    Every voxel that is non-zero in all training images (and inside ``mask``) -- or every
    column of a table of features -- gets its own location/scale model; site effects are
    shrunk by parametric empirical Bayes and removed, while the covariate effects (age,
    sex, diagnosis...: linear, indicators of categories, or smooth splines) are kept.
    Data are harmonized towards the pooled grand mean, or, with ``reference_site``,
    towards that site (whose data stay unchanged).

    Parameters
    ----------
    reference_site : hashable, default=None
        ``None``: standard ComBat without a reference batch; images are mapped to the
        pooled grand mean and variance (neuroHarmonize's ``ref_batch=None``), and
        ``reference_site_`` is ``None``. A site label: neuroHarmonize's ``ref_batch``
        semantics; that site's images are left unchanged and the others are mapped to
        its mean and variance. Unlike the other harmonizers, ``None`` does **not** pick
        the largest site.
    empirical_bayes : bool, default=True
        Shrink the per-voxel site effects with parametric empirical Bayes (priors pooled
        over voxels). ``False`` uses the least-squares estimates.
    smooth_age : bool or int, default=False
        Model age with a natural cubic spline instead of a straight line: ``True`` gives
        4 degrees of freedom, an int ``k >= 1`` gives ``k`` (1 is linear). The short
        form of ``smooth={"age": k}``.
    unseen_site : {"error", "fit", "keep"}, default="error"
        What :meth:`transform` does with a site label not seen in :meth:`fit`:
        ``"error"`` raises :class:`~harmonix.exceptions.UnseenSiteError` (a ValueError)
        naming the unseen and the known labels;
        ``"keep"`` returns those images unchanged (background still set to 0);
        ``"fit"`` estimates the new site's ``gamma``/``delta`` from the images of that
        site passed in the same call, under the learned covariate model, grand mean and
        pooled variance (with empirical Bayes priors estimated from the new site's own
        voxels when ``empirical_bayes=True``, as ComBat does for any site). ``"fit"``
        needs at least 2 images of each new site (a ValueError otherwise; more is much
        better, since per-voxel estimates from few images absorb individual anatomy);
        nothing is stored, so each call estimates afresh.
    site_check : {"refit", "warn", "error"}, default="refit"
        What :meth:`transform` does with a group of images whose label names a training
        site but whose voxels disagree with that site's stored effects
        (:meth:`site_agreement`; another scanner with the same label): "refit" handles
        the group as a site unseen in fit, by ``unseen_site`` (with the default
        ``unseen_site="error"`` an :class:`~harmonix.exceptions.UnseenSiteError` that
        names the site and the size of the mismatch; "fit" estimates its effects from
        these images, "keep" leaves them unchanged; both with a
        :class:`~harmonix.exceptions.SiteMismatchWarning`); "warn" warns and applies the
        stored effects; "error" raises :class:`~harmonix.exceptions.SiteMismatchError`.
        Groups that agree get the stored effects, as without the check.
    %(mask)s
    chunk_size : int, default=None
        Voxels processed at once by the fit. ``None`` picks about 64 MiB of float64 work
        arrays. The result does not depend on it (bit for bit).
    smooth : sequence of str or dict, default=()
        Continuous covariates with a nonlinear effect, each modelled by a natural cubic
        spline: names (4 degrees of freedom each) or ``{name: degrees_of_freedom}``. One
        basis per covariate is shared by all voxels (knots at equally spaced quantiles of
        the training values), so it only adds design-matrix columns. Natural splines are
        linear beyond the smallest and largest training value, so values outside the
        training range extrapolate linearly instead of failing.

    Attributes
    ----------
    sites_ : ndarray of str, shape (n_sites,)
        Sorted training site labels, as text (the row order of
        ``gamma_star_``/``delta_star_``).
    reference_site_ : str or None
        The reference site, or ``None`` (pooled grand mean).
    site_counts_ : ndarray of int, shape (n_sites,)
        Training images per site.
    covariate_levels_ : dict
        The covariates of the fit: name -> category levels (the first one is the
        reference level, without a design column) or None for a continuous covariate.
    voxel_mask_ : ndarray of bool, shape (i, j, k) or None
        The modelled voxels: non-zero in every training image and inside ``mask``. None
        for a table.
    affine_ : ndarray of shape (4, 4) or None
        Voxel-to-world affine of the training images (NIfTI inputs) or of a NIfTI
        ``mask``; NIfTI images with another affine are refused. None for arrays and
        tables.
    n_features_in_ : int
        Number of features of a training table (absent for images).
    feature_names_in_ : ndarray of str
        Column names of a training DataFrame (absent otherwise).
    covariates_ : list of str
        Names of the covariate columns of the design: ``"age"`` for a linear covariate,
        ``"age_ns1", ...`` for a spline basis, ``"sex[M]"`` for the indicator of a level.
    covariate_means_ : ndarray of shape (k,)
        Training means of the covariate columns (the model is stored centred on them).
    spline_knots_ : dict
        Knots of every smooth covariate (name -> ndarray of shape (df + 1,)).
    grand_mean_ : ndarray of shape (n_voxels,)
        Harmonized mean of each voxel at the mean covariates: the site-size weighted mean
        of the site intercepts (or the reference site's) plus ``covariate_means_ @ coef_``.
    coef_ : ndarray of shape (k, n_voxels)
        Covariate coefficients of each voxel.
    var_pooled_ : ndarray of shape (n_voxels,)
        Pooled residual variance (0 marks a constant voxel, which is left unchanged).
    gamma_star_, delta_star_ : ndarray of shape (n_sites, n_voxels)
        Additive and multiplicative site effects in standardized units (the reference
        site has 0 and 1).
    gamma_bar_, tau2_, a_prior_, b_prior_ : ndarray of shape (n_sites,)
        Empirical Bayes hyper-parameters of each site (NaN where not used).
    n_iter_ : ndarray of int, shape (n_sites,)
        EB iterations per site (0 where not run).
    n_degenerate_ : int
        Voxels of ``voxel_mask_`` with zero pooled variance (left unchanged).
    empirical_bayes_ : bool
        ``empirical_bayes`` at fit; ``unseen_site="fit"`` uses it at transform time.
    %(grid_)s

    The per-voxel arrays are float32 for images and float64 for tables ("voxels" are the
    features of a table).

    See Also
    --------
    harmonix.base.BaseHarmonizer : the shared ``fit``/``transform`` contract.
    harmonix.inputs.covariates : how covariates are checked and coded.

    Notes
    -----
    **Covariates.** ``fit(imgs, sites, ages, covariates)`` models every covariate given:
    continuous ones linearly (or as splines, ``smooth``), categorical ones by indicators
    of every level but the first (the reference level: sorted order, or a pandas
    categorical's order). Their effects are kept in the harmonized data exactly as
    neuroHarmonize keeps them (the covariate-model mean ``x . beta`` is added back), and
    :meth:`transform` needs the same covariates (a level unseen in fit is refused). A
    covariate that differs between sites but is left out is partly removed as a site
    effect: give every biological variable that is unbalanced across sites.

    **Tables.** ``fit(X, sites, ...)`` with ``X`` a 2-D array or a DataFrame of features
    (e.g. ROI volumes, one row per scan) harmonizes each column; :meth:`transform` returns
    a float64 array, or a DataFrame with the same index and columns (given columns are
    matched by name). Zeros are ordinary values there; every value must be finite.

    **Numbers.** With linear covariates the results equal neuroHarmonize 2.5.2's
    ``harmonizationLearn(data, covars, eb=..., ref_batch=...)`` followed by
    ``harmonizationApply`` (on the flattened voxels, or on the table), with ``covars``
    holding ``SITE`` and the covariates (categorical ones coded 0/1 there), to about
    1e-6 relative (image parameters are stored as float32).

    **Memory.** Images are loaded one at a time and only the common-mask voxels are kept
    (``n_images x n_voxels`` float32). The regressions run over chunks of voxels; the EB
    priors are means and variances over voxels, so they are computed from small
    per-voxel summaries after that pass and the iterations run on per-voxel vectors.
    Tables are regressed with matrix products (:func:`harmonix.combat._math.table_regression`).

    **Degenerate cases** (never NaN): a voxel whose pooled variance is 0 (constant) is
    left unchanged and excluded from the EB priors; a site with a single training image
    has no variance estimate, so it is harmonized for location only (``delta = 1``,
    ``gamma`` shrunk with EB), with a warning; a voxel with zero within-site variance
    keeps ``delta = 1`` when ``empirical_bayes=False``. A reference site needs at least
    2 images.

    **The rim.** Only voxels that are brain in every training image (``voxel_mask_``)
    have a model; the other brain voxels of an image (the brain's rim, where the
    training brains differ in extent: about 10 % of the brain in ``make_multisite`` data)
    are mapped with the straight line that best fits, by least squares, ComBat's map of
    the same image's ``voxel_mask_`` voxels (outputs against inputs): the image's overall
    scale and offset after ComBat. So the whole brain ends on one scale, and a rim voxel
    never stays at its site's scale. Among the rules measured on synthetic traveling
    subjects (``benchmarks/results/combat.md``, "Brain rim"), this one had the lowest
    mean error on the rim (tied with a pure ratio, which cannot carry an additive
    effect), ahead of each rim voxel taking the map of its nearest ``voxel_mask_`` voxel
    (boundary voxels have the least reliable maps). Voxels of ``voxel_mask_`` keep
    neuroHarmonize's numbers.

    **Parameters read by transform.** ``unseen_site`` and ``site_check`` are policies of
    :meth:`transform` (like scikit-learn's ``handle_unknown``): changing them with
    ``set_params`` after fit applies at once. Every other parameter acts through fit.

    Transforming is per image and needs the site labels (and the covariates of the fit;
    covariates the fit did not have are ignored), so any subset of the training sites,
    or a single image, gives the same result as the full batch. With
    ``unseen_site="fit"`` a new site's parameters come from all its images (rows) of the
    call (or from :meth:`site_statistics` given to :meth:`transform`).

    **Site labels.** To a fitted model a site label names stored per-voxel effects
    (``gamma_star_``, ``delta_star_``). Before applying them, :meth:`transform` checks
    that each labelled group agrees with them (:meth:`site_agreement`: the group's
    standardized voxel residuals against the site's effects, with the site's variance
    as the yardstick); a group that disagrees is handled by ``site_check``. The check
    needs at least 4 training images of the site (fewer give no usable variance) and
    reads each image of a training label once more before transforming. Unlike
    IGUANe's intensity maps (11 landmarks, estimated well from a few images), ComBat's
    effects of a new site are estimated voxel by voxel, which needs many images: so a
    disagreeing group follows ``unseen_site``, like any site unseen in fit. Rows of a
    table of features are trusted to their label (no check: with tens of features the
    empirical-Bayes effects differ from a site's own means by design).

    References
    ----------
    Johnson, Li & Rabinovic (2007), Biostatistics 8(1):118-127.
    Fortin et al. (2018), NeuroImage 167:104-120.
    Pomponio et al. (2020), NeuroImage 208:116450 (neuroHarmonize).

    Examples
    --------
    >>> import numpy as np
    >>> from harmonix import ComBatHarmonizer
    >>> rng = np.random.default_rng(0)
    >>> imgs = (100 + rng.normal(size=(8, 4, 4, 4))).astype(np.float32)
    >>> sites = ["a"] * 4 + ["b"] * 4
    >>> imgs[4:] = 1.5 * imgs[4:] + 20
    >>> imgs[:, 0] = 0  # background
    >>> out = ComBatHarmonizer().fit_transform(imgs, sites)
    >>> out.shape
    (8, 4, 4, 4)
    >>> X = rng.normal(1000, 50, size=(8, 3))  # a table: 8 scans x 3 ROI volumes
    >>> ComBatHarmonizer().fit_transform(X, sites, covariates={"sex": list("FMFMFMFM")}).shape
    (8, 3)
    """

    _fixed_shape: ClassVar[bool] = True
    _transform_params: ClassVar[tuple[str, ...]] = ("unseen_site", "site_check")
    _needs_sites: ClassVar[bool] = True
    # None means "no reference batch" (pooled grand mean), not the largest site.
    _none_is_largest_site: ClassVar[bool] = False
    _needs_covariates: ClassVar[bool] = True
    _accepts_tables: ClassVar[bool] = True
    _checks_table_finite: ClassVar[bool] = True

    _checked_params = {"empirical_bayes_": ("empirical_bayes", bool)}

    def __init__(
        self,
        reference_site: Any = None,
        empirical_bayes: bool = True,
        smooth_age: bool | int = False,
        unseen_site: str = "error",
        site_check: str = "refit",
        mask: Any = None,
        chunk_size: int | None = None,
        smooth: Any = (),
    ):
        self.reference_site = reference_site
        self.empirical_bayes = empirical_bayes
        self.smooth_age = smooth_age
        self.unseen_site = unseen_site
        self.site_check = site_check
        self.mask = mask
        self.chunk_size = chunk_size
        self.smooth = smooth

    # -- validation ----------------------------------------------------------------------
    def _smooth_terms(self) -> dict[str, int]:
        """Smooth covariates and their degrees of freedom (``smooth`` and ``smooth_age``)."""
        value = self.smooth_age
        if isinstance(value, (bool, np.bool_)):
            age_df = _DEFAULT_SPLINE_DF if value else 0
        elif isinstance(value, Integral) and value >= 1:
            age_df = int(value)
        else:
            raise ValueError(
                f"smooth_age must be True, False or an int >= 1 (spline degrees of freedom); "
                f"got {value!r}."
            )
        smooth = self.smooth
        if smooth is None or isinstance(smooth, str):
            raise ValueError(
                f"smooth must be a sequence of covariate names or a dict name -> degrees of "
                f"freedom; got {smooth!r} (for one name write smooth=({smooth!r},))."
            )
        items = smooth.items() if isinstance(smooth, Mapping) else [(n, None) for n in smooth]
        terms: dict[str, int] = {}
        for name, df in items:
            df = _DEFAULT_SPLINE_DF if df is None else df
            if not isinstance(name, str) or isinstance(df, bool) or not isinstance(df, Integral):
                raise ValueError(
                    f"smooth names covariates (str) with an int number of degrees of "
                    f"freedom; got {name!r}: {df!r}."
                )
            if df < 1:
                raise ValueError(f"smooth[{name!r}] must be >= 1 degrees of freedom; got {df}.")
            terms[name] = int(df)
        if age_df and "age" in terms:
            raise ValueError("age is smooth twice: give smooth_age or smooth=('age',), not both.")
        if age_df:
            terms = {"age": age_df, **terms}
        return {name: df for name, df in terms.items() if df > 1}

    def _check_params(self) -> None:
        if self.unseen_site not in UNSEEN_POLICIES:
            raise ValueError(
                f"unseen_site must be one of {list(UNSEEN_POLICIES)}; got {self.unseen_site!r}."
            )
        if not isinstance(self.empirical_bayes, (bool, np.bool_)):
            raise ValueError(
                f"empirical_bayes must be True or False; got {self.empirical_bayes!r}."
            )
        check_policy(self.site_check)
        cs = self.chunk_size
        if cs is not None and (isinstance(cs, bool) or not isinstance(cs, Integral) or cs < 1):
            raise ValueError(f"chunk_size must be None or an int >= 1; got {cs!r}.")
        self._smooth_terms()

    # -- covariates ----------------------------------------------------------------------
    def _fitted_covariate_levels(self) -> CovariateLevels:
        levels = getattr(self, "covariate_levels_", None)
        if levels is None:  # a model saved before covariates: age alone, or nothing
            return {"age": None} if self.covariates_ else {}
        return levels

    def _fitted_knots(self) -> dict[str, np.ndarray]:
        knots = getattr(self, "spline_knots_", None)
        if knots is None:  # a model saved before covariates
            age = getattr(self, "age_knots_", None)
            return {} if age is None else {"age": age}
        return knots

    def _covariate_columns(
        self, cov: pd.DataFrame | None, n: int, knots: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, list[str]]:
        """The covariate part of the design (n, k) and its column names."""
        blocks, names = [np.empty((n, 0))], []
        for name, lev in self._fitted_covariate_levels().items():
            if name in knots:
                basis = cm.natural_spline_basis(cov[name].to_numpy(np.float64), knots[name])
                blocks.append(basis)
                names.extend(f"{name}_ns{j + 1}" for j in range(basis.shape[1]))
            else:
                blocks.append(column_design(cov[name], lev))
                names.extend([name] if lev is None else [f"{name}[{v}]" for v in lev[1:]])
        return np.hstack(blocks), names

    # -- loaded and pickled models -------------------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # a copy: the live object keeps its cache
        state.pop("_voxel_index_cache", None)
        return state

    # -- the fitted model, read by transform and the site check --------------------------
    def _voxel_index(self) -> FlatIndex:
        """Flat indices of ``voxel_mask_`` (cached, never saved or pickled)."""
        cache = self.__dict__.get("_voxel_index_cache")
        if cache is None or cache[0] is not self.voxel_mask_:
            index = FlatIndex(np.flatnonzero(self.voxel_mask_), self.voxel_mask_.shape)
            cache = (self.voxel_mask_, index)
            self._voxel_index_cache = cache
        return cache[1]

    def _model_mean(self, cov: np.ndarray, out: np.ndarray, work: np.ndarray) -> np.ndarray:
        """Covariate-model mean (n_voxels, the parameters' dtype) of one image, written
        into ``out``."""
        np.copyto(out, self.grand_mean_)
        scalar = self.coef_.dtype.type
        for j, value in enumerate(cov - self.covariate_means_):
            np.multiply(self.coef_[j], scalar(value), out=work)
            out += work
        return out

    def _known_sites(self) -> dict[str, int]:
        """Row of ``gamma_star_``/``delta_star_`` of each training site, by label text."""
        return {label: j for j, label in enumerate(as_labels(self.sites_).tolist())}

    def _standardized(
        self, data: ImageCollection | FeatureTable, idx: Sequence[int], cov: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(s, present)`` per image (or table row) of ``idx``: its standardized
        residuals ``(y - model mean) / sqrt(var_pooled_)`` (float64) on ``voxel_mask_`` (or
        the table's features) and where they are defined (brain, non-constant)."""
        var = self.var_pooled_.astype(np.float64)
        valid = var > 0
        sd = np.where(valid, np.sqrt(var), 1.0)
        mean_buf, work = (np.empty(var.size, dtype=self.grand_mean_.dtype) for _ in range(2))
        table = isinstance(data, FeatureTable)
        voxels = None if table else self._voxel_index()
        for i in idx:
            if table:
                y, present = data.values[i], valid
            else:
                self._check_affine(data, i)
                image = data[i]
                self._brain(image, i)  # shape check
                y = voxels.take(image).astype(np.float64)
                present = (y != 0) & valid
            model = self._model_mean(cov[i], mean_buf, work).astype(np.float64)
            yield (y - model) / sd, present

    def site_agreement(
        self, imgs: Any, sites: Any, ages: Any = None, covariates: Any = None
    ) -> pd.DataFrame:
        """How each labelled group of a training site agrees with the site's stored effects.

        The check :meth:`transform` runs before applying stored effects (see
        ``site_check``; no warning here). For the ``n`` images of a group labelled with
        training site ``b`` (``n_b`` training images), the statistic is the mean over
        the images and the voxels of ``(s - gamma_star_[b])**2 / delta_star_[b]``, where
        ``s`` is an image's standardized residual ``(y - model mean) /
        sqrt(var_pooled_)``, divided by its expected value for a new scan of the site,
        ``(1 + 1 / n_b) * (n_b - 1) / (n_b - 3)`` (the site effects are estimated from
        ``n_b`` images). New scans of the site score about 1, whatever ``n``; another
        scanner scores more by its difference in mean and in variance; above
        ``SITE_CHECK_THRESHOLD`` (10) the group disagrees. Sites with fewer than 4
        training images are not checked (NaN).

        Parameters
        ----------
        imgs : 4-D ndarray, list of 3-D arrays, or list of paths/images
            Images as for :meth:`transform` (a model fitted on a table of features runs
            no site check: with a few features the empirical-Bayes effects differ from a
            site's own means by design, and the rows are trusted to their label).
        sites : array-like of shape (n_images,)
            Their site labels.
        ages : array-like of shape (n_images,), default=None
            Their ages (needed when fitted with ages).
        covariates : pandas.DataFrame or mapping, default=None
            Their covariates (those of the fit are needed).

        Returns
        -------
        pandas.DataFrame
            One row per label of a training site among ``sites``: ``site``,
            ``n_images``, ``statistic``, ``threshold``, ``agrees`` and ``mismatch`` (in
            words).
        """
        check_is_fitted(self)
        coll = self._transformable(imgs)
        if isinstance(coll, FeatureTable):
            raise ValueError(
                "The site check compares images with the stored per-voxel site effects; a "
                "model fitted on a table of features trusts each row's site label (its "
                "transform runs no check): give images, or no site_agreement call."
            )
        sites = check_sites(sites, len(coll))
        frame = match_covariates(
            check_covariates(covariates, len(coll), ages),
            self._fitted_covariate_levels(),
            required=True,
        )
        cov, _ = self._covariate_columns(frame, len(coll), self._fitted_knots())
        return agreement_frame(self._site_agreements(coll, sites.tolist(), cov))
