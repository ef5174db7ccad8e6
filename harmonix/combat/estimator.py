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

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from harmonix._docs import fill_doc
from harmonix._labels import as_labels, distinct_sites, site_codes
from harmonix.base import BaseHarmonizer, check_sites
from harmonix.combat import _math as cm
from harmonix.covariates import (
    CovariateLevels,
    check_covariates,
    column_design,
    match_covariates,
)
from harmonix.exceptions import UnseenSiteError
from harmonix.io import ImageCollection
from harmonix.site_check import (
    SiteAgreement,
    act_on_agreements,
    agreement_frame,
    check_policy,
    describe_mismatches,
)
from harmonix.tables import FeatureTable

__all__ = ["ComBatHarmonizer"]

logger = logging.getLogger(__name__)

_UNSEEN_POLICIES = ("error", "fit", "keep")
_DEFAULT_SPLINE_DF = 4
#: A labelled group disagrees with its training site when its statistic (see
#: :meth:`ComBatHarmonizer.site_agreement`) exceeds this.
SITE_CHECK_THRESHOLD = 10.0
#: Training images a site needs for its variance to be a yardstick (the statistic's
#: expected value (n - 1) / (n - 3) needs n > 3).
SITE_CHECK_MIN_IMAGES = 4


def _c_to_f_index(flat_c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Fortran-order flat indices of the voxels with C-order flat indices ``flat_c``."""
    rest = flat_c.astype(np.int64)
    out = np.zeros_like(rest)
    f_stride = int(np.prod(shape[:-1]))
    for axis in range(len(shape) - 1, -1, -1):  # last axis first (C's fastest)
        rest, coord = np.divmod(rest, shape[axis])
        out += coord * f_stride
        f_stride //= shape[axis - 1] if axis else 1
    return out


class _FlatIndex:
    """Voxels given by C-order flat indices, read from C- or F-ordered volumes without
    copying them (NIfTI data is usually F-ordered)."""

    def __init__(self, flat_c: np.ndarray, shape: tuple[int, ...]):
        self.c = flat_c
        self.shape = shape
        self._f: np.ndarray | None = None

    def view(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A 1-D view of ``arr`` (a copy if it is neither C- nor F-contiguous) and the
        matching indices."""
        if arr.flags.c_contiguous:
            return arr.reshape(-1), self.c
        if arr.flags.f_contiguous:
            if self._f is None:
                self._f = _c_to_f_index(self.c, self.shape)
            return arr.ravel(order="F"), self._f
        return np.ascontiguousarray(arr).reshape(-1), self.c

    def take(self, arr: np.ndarray, select: np.ndarray | None = None) -> np.ndarray:
        flat, idx = self.view(arr)
        return flat[idx if select is None else idx[select]]


#: Values converted to float64 at a time by :func:`_line_fit` (a small reused buffer).
_LINE_FIT_CHUNK = 1 << 16


def _line_fit(y: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``z`` on ``y`` over the voxels where
    ``y != 0`` (``z`` is 0 where ``y`` is); slope 1 and a mean shift when ``y`` is constant
    there. Sums in float64, over all voxels (the absent ones add 0), chunk by chunk."""
    n = 0
    sy = sz = syy = syz = 0.0
    a, b = np.empty(_LINE_FIT_CHUNK), np.empty(_LINE_FIT_CHUNK)
    for start in range(0, y.size, _LINE_FIT_CHUNK):
        stop = min(start + _LINE_FIT_CHUNK, y.size)
        ya, za = a[: stop - start], b[: stop - start]
        ya[...] = y[start:stop]
        za[...] = z[start:stop]
        n += int(np.count_nonzero(ya))
        sy += float(ya.sum())
        sz += float(za.sum())
        syy += float(np.dot(ya, ya))
        syz += float(np.dot(ya, za))
    if n == 0:
        return 1.0, 0.0
    var = syy - sy * sy / n
    if not var > 1e-12 * syy:
        return 1.0, (sz - sy) / n
    slope = (syz - sy * sz / n) / var
    return slope, (sz - slope * sy) / n


def _empty_stack(n: int, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
    """Uninitialized float32 ``(n, *shape)`` array whose items are C- or F-contiguous."""
    if not fortran:
        return np.empty((n, *shape), dtype=np.float32)
    return np.empty((n, *shape[::-1]), dtype=np.float32).transpose(0, *range(len(shape), 0, -1))


@fill_doc
class ComBatHarmonizer(BaseHarmonizer):
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
    harmonix.covariates : how covariates are checked and coded.

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
        if self.unseen_site not in _UNSEEN_POLICIES:
            raise ValueError(
                f"unseen_site must be one of {list(_UNSEEN_POLICIES)}; got {self.unseen_site!r}."
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

    # -- fit -----------------------------------------------------------------------------
    def _complete_loaded(self) -> None:
        super()._complete_loaded()
        if not hasattr(self, "empirical_bayes_"):  # an older file
            self.empirical_bayes_ = bool(self.empirical_bayes)

    def _fit(
        self,
        imgs: ImageCollection | FeatureTable,
        sites: np.ndarray,
        ages: np.ndarray | None,
        covariates: pd.DataFrame | None,
    ) -> None:
        self._check_params()
        smooth = self._smooth_terms()
        levels = self.covariate_levels_
        for name in smooth:
            if name == "age" and "age" not in levels:
                raise ValueError(
                    "smooth_age (or smooth=('age',)) needs ages: pass ages=[...] to fit, or "
                    "no smooth age."
                )
            if name not in levels or levels[name] is not None:
                what = "categorical" if name in levels else f"not among {list(levels)}"
                raise ValueError(
                    f"smooth names {name!r}, which is {what}: only continuous covariates of "
                    "the fit can have a smooth effect."
                )
        labels = self.sites_
        n_sites = len(labels)
        codes = site_codes(sites)[1]  # labels are the sorted distinct sites
        counts = np.bincount(codes, minlength=n_sites)
        ref = getattr(self, "reference_site_", None)
        self.reference_site_ = ref
        ref_level = None if ref is None else int(labels.tolist().index(ref))
        if ref_level is not None and counts[ref_level] < 2:
            raise ValueError(
                f"reference_site={ref!r} has {counts[ref_level]} image; ComBat needs at least "
                "2 images of the reference site to estimate its variance. Choose another "
                "reference or None."
            )
        self.spline_knots_ = {
            name: cm.spline_knots(covariates[name].to_numpy(np.float64), df, name)
            for name, df in smooth.items()
        }
        columns, self.covariates_ = self._covariate_columns(
            covariates, len(sites), self.spline_knots_
        )
        design = cm.design_matrix(codes, n_sites, columns, ref_level)
        p = design.shape[1]
        gram = design.T @ design
        if len(sites) <= p or np.linalg.matrix_rank(gram, hermitian=True) < p:
            shown = self.covariates_[:8] + (["..."] if len(self.covariates_) > 8 else [])
            raise ValueError(
                f"The ComBat design (sites {labels.tolist()} and covariate columns "
                f"{shown}) has {p} columns but is rank deficient for "
                f"{len(sites)} images: there must be more images than columns, and the "
                "spline terms must vary within sites. Fit with fewer covariates or spline "
                "degrees of freedom, or with more images."
            )
        one = labels[(counts == 1)].tolist()
        if one:
            warnings.warn(
                f"Site(s) {one} have a single training image: their variance cannot be "
                "estimated, so they are harmonized for location only (delta = 1). Use at "
                "least 2 (better many) images per site.",
                UserWarning,
                stacklevel=3,
            )

        table = isinstance(imgs, FeatureTable)
        if table:
            self.voxel_mask_ = None
            logger.info("ComBat: %d rows, %d features", len(sites), imgs.n_features)
            stats = cm.table_regression(imgs.values, design, codes, n_sites, ref_level)
        else:
            data = self._load_voxels(imgs)
            chunk = self.chunk_size or cm.auto_chunk_size(len(sites), p)
            logger.info(
                "ComBat: %d images, %d voxels, chunks of %d", len(sites), data.shape[1], chunk
            )
            stats = cm.voxel_regression(data, design, codes, n_sites, ref_level, chunk)
            del data

        gamma, delta, priors, n_iter = self._site_effects(stats, counts, ref_level)
        valid = ~stats.degenerate
        beta = stats.coef[n_sites:]
        self.covariate_means_ = columns.mean(axis=0)
        centred_mean = stats.grand_mean + self.covariate_means_ @ beta
        var_pooled = np.where(valid, stats.var_pooled, 0.0)
        dtype = np.float64 if table else np.float32
        self.site_counts_ = counts
        self.grand_mean_ = centred_mean.astype(dtype)
        self.coef_ = beta.astype(dtype)
        self.var_pooled_ = var_pooled.astype(dtype)
        self.gamma_star_ = gamma.astype(dtype)
        self.delta_star_ = delta.astype(dtype)
        self.gamma_bar_, self.tau2_, self.a_prior_, self.b_prior_ = (
            np.asarray(x, dtype=np.float64) for x in zip(*priors)
        )
        self.n_iter_ = np.asarray(n_iter, dtype=np.int64)
        self.n_degenerate_ = int(stats.degenerate.sum())
        self.empirical_bayes_ = bool(self.empirical_bayes)

    def _load_voxels(self, imgs: ImageCollection) -> np.ndarray:
        """Stack the common-mask voxels of all images, loading each image once.

        The common mask shrinks as images are read; each row is stored on the mask known
        at its time and compacted at the end, so no full volume is kept.
        """
        n = len(imgs)
        for i, (data, brain) in enumerate(self._iter_brains(imgs)):
            if i == 0:
                shape = brain.shape
                first = _FlatIndex(np.flatnonzero(brain), shape)
                n_first = first.c.size
                death = np.full(n_first, n, dtype=np.int32)  # index of the image dropping it
                buf = np.empty((n, n_first), dtype=np.float32)
                alive_first = np.ones(n_first, dtype=bool)
            else:
                still = first.take(brain)
                dropped = alive_first & ~still
                death[dropped] = i
                alive_first &= still
            vals = first.take(data, alive_first)
            buf[i, : vals.size] = vals
        if not alive_first.any():
            raise ValueError(
                "No voxel is non-zero in every training image (inside the mask): the images "
                "do not overlap. Register them to one space, or check the mask."
            )
        for i in range(n):
            kept = death[death > i] == n
            width = kept.size
            buf[i, : int(kept.sum())] = buf[i, :width][kept]
        n_vox = int(alive_first.sum())
        mask = np.zeros(int(np.prod(shape)), dtype=bool)
        mask[first.c[alive_first]] = True
        self.voxel_mask_ = mask.reshape(shape)
        return buf[:, :n_vox]

    def _site_effects(
        self, stats: cm.VoxelStats, counts: np.ndarray, ref_level: int | None
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[float, ...]], list[int]]:
        n_sites, n_vox = stats.site_mean.shape
        valid = ~stats.degenerate
        gamma = np.zeros((n_sites, n_vox))
        delta = np.ones((n_sites, n_vox))
        nan4 = (np.nan, np.nan, np.nan, np.nan)
        priors: list[tuple[float, ...]] = [nan4] * n_sites
        n_iter = [0] * n_sites
        n_valid = int(valid.sum())
        eb = bool(self.empirical_bayes)
        if eb and n_valid < 2:
            warnings.warn(
                f"Only {n_valid} non-constant voxel(s): empirical Bayes needs several, so the "
                "least-squares site effects are used.",
                UserWarning,
                stacklevel=4,
            )
            eb = False
        ref_mean = stats.site_mean[ref_level, valid] if ref_level is not None else 0.0
        means = stats.site_mean[:, valid]
        gamma_hat = means - ref_mean  # least squares, as neuroHarmonize's batch regression
        others = [b for b in range(n_sites) if b != ref_level]
        for b in (b for b in others if counts[b] == 1):
            if eb:
                g_bar, tau2 = float(np.mean(gamma_hat[b])), float(np.var(gamma_hat[b], ddof=1))
                priors[b] = (g_bar, tau2, np.nan, np.nan)
                # neuroCombat's mean-only posterior: n = 1, delta = 1
                gamma[b, valid] = (tau2 * gamma_hat[b] + g_bar) / (tau2 + 1.0)
            else:
                gamma[b, valid] = means[b]
        rows = np.asarray([b for b in others if counts[b] >= 2], dtype=np.intp)
        if not rows.size:
            return gamma, delta, priors, n_iter
        n_rows = counts[rows].astype(np.float64)
        ss = stats.site_ss[rows][:, valid]
        delta_hat = ss / (n_rows - 1)[:, None]
        g_star, d_star = means[rows], np.where(delta_hat > 0, delta_hat, 1.0)  # least squares
        if eb:
            pri = np.column_stack(cm.eb_priors(gamma_hat[rows], delta_hat))
            usable = np.isfinite(pri).all(axis=1) & (pri[:, 1] >= 0) & (pri[:, 3] > 0)
            for b in rows[~usable]:
                warnings.warn(
                    f"Empirical Bayes priors of site {self.sites_[b]!r} are undefined "
                    "(site effects identical over voxels); using least-squares estimates.",
                    UserWarning,
                    stacklevel=4,
                )
            # the sites at once where their rows are small (a table), one by one otherwise
            use = np.flatnonzero(usable)
            groups = [use] if use.size * n_valid <= 2**18 else [[i] for i in use]
            for group in groups:
                g_eb, d_eb, its = cm.empirical_bayes(
                    gamma_hat[rows[group]],
                    means[rows[group]],
                    ss[group],
                    n_rows[group],
                    tuple(pri[group].T),
                )
                g_star[group], d_star[group] = g_eb, d_eb
                for b, k, count in zip(rows[group], group, its):
                    priors[b], n_iter[b] = tuple(pri[k]), int(count)
        # never NaN: fall back to location-only least squares there
        bad = ~(np.isfinite(g_star) & np.isfinite(d_star) & (d_star > 0))
        g_star = np.where(bad, means[rows], g_star)
        d_star = np.where(bad, 1.0, d_star)
        gamma[np.ix_(rows, valid)] = g_star
        delta[np.ix_(rows, valid)] = d_star
        return gamma, delta, priors, n_iter

    # -- transform -----------------------------------------------------------------------
    def _voxel_index(self) -> _FlatIndex:
        """Flat indices of ``voxel_mask_`` (cached, never saved or pickled)."""
        cache = self.__dict__.get("_voxel_index_cache")
        if cache is None or cache[0] is not self.voxel_mask_:
            index = _FlatIndex(np.flatnonzero(self.voxel_mask_), self.voxel_mask_.shape)
            cache = (self.voxel_mask_, index)
            self._voxel_index_cache = cache
        return cache[1]

    def _harmonize_rim(
        self, data: np.ndarray, brain: np.ndarray, result: np.ndarray, y: np.ndarray, z: np.ndarray
    ) -> None:
        """Map the image's brain voxels outside ``voxel_mask_`` (the rim) into ``result``
        with the straight line that best fits (least squares) ComBat's map of the image's
        own ``voxel_mask_`` voxels: inputs ``y``, outputs ``z`` (0 outside its brain)."""
        rim = np.greater(brain, self.voxel_mask_)  # brain and not voxel_mask_
        if not rim.any():
            return
        slope, intercept = _line_fit(y, z)
        values = data[rim]
        values *= values.dtype.type(slope)  # a copy: the caller's data is not changed
        values += values.dtype.type(intercept)
        result[rim] = values

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # a copy: the live object keeps its cache
        state.pop("_voxel_index_cache", None)
        return state

    def _model_mean(self, cov: np.ndarray, out: np.ndarray, work: np.ndarray) -> np.ndarray:
        """Covariate-model mean (n_voxels, the parameters' dtype) of one image, written
        into ``out``."""
        np.copyto(out, self.grand_mean_)
        scalar = self.coef_.dtype.type
        for j, value in enumerate(cov - self.covariate_means_):
            np.multiply(self.coef_[j], scalar(value), out=work)
            out += work
        return out

    def _affine(self, gamma: np.ndarray, delta: np.ndarray, sd: np.ndarray) -> tuple:
        """Per-voxel ``(a, 1 - a, o)`` with ``out = a * y + (1 - a) * mean - o``.

        ``a = 1 / sqrt(delta)`` and ``o = gamma * sqrt(var_pooled) * a`` (in the dtype of
        ``sd``); a constant voxel (``gamma = 0``, ``delta = 1``) gives ``out = y`` exactly.
        """
        a = np.sqrt(np.asarray(delta, dtype=sd.dtype))
        np.reciprocal(a, out=a)
        o = np.asarray(gamma, dtype=sd.dtype) * sd
        o *= a
        return a, sd.dtype.type(1.0) - a, o

    def _known_sites(self) -> dict[str, int]:
        """Row of ``gamma_star_``/``delta_star_`` of each training site, by label text."""
        return {label: j for j, label in enumerate(as_labels(self.sites_).tolist())}

    def _check_metadata(
        self,
        sites: np.ndarray | None,
        covariates: pd.DataFrame | None,
        prepared: frozenset = frozenset(),
    ) -> None:
        """Refuse unseen sites (``unseen_site="error"``) and unseen sites with one image
        (``"fit"``), before any work; warn about sites kept unchanged. (The base class
        checks the covariates.)"""
        check_policy(self.site_check)
        known = self._known_sites()
        labels, codes = distinct_sites(sites)
        unseen = sorted(s for s in labels if s not in known)
        policy = self.unseen_site
        if unseen and policy not in _UNSEEN_POLICIES:
            raise ValueError(
                f"unseen_site must be one of {list(_UNSEEN_POLICIES)}; got {policy!r}."
            )
        if unseen and policy == "error":
            raise UnseenSiteError(
                f"Site(s) {unseen} were not seen in fit (known sites: "
                f"{list(known)}); ComBat has no parameters for them. Pass "
                "unseen_site='fit' to estimate them from these images, unseen_site='keep' "
                "to leave them unchanged, or refit including them."
            )
        if unseen and policy == "keep":
            warnings.warn(
                f"Site(s) {unseen} were not seen in fit (known sites: {list(known)}): "
                "their images are returned unchanged (unseen_site='keep').",
                UserWarning,
                stacklevel=5,
            )
        if policy == "fit":
            counts = dict(zip(labels, np.bincount(codes, minlength=len(labels)).tolist()))
            few = [s for s in unseen if s not in prepared and counts[s] < 2]
            if few:
                raise ValueError(
                    f"unseen_site='fit' needs at least 2 images of each unseen site in the "
                    f"same transform call to estimate its scale; site(s) {few} have 1. Pass "
                    "all images of a site together (harmonix transform and "
                    "harmonix.batch.transform_files group a manifest's images by site), use "
                    "unseen_site='keep', or refit with them."
                )

    def _site_statistics(
        self,
        imgs: ImageCollection | FeatureTable,
        sites: np.ndarray,
        ages: np.ndarray | None,
        covariates: pd.DataFrame | None,
    ) -> dict[str, Any]:
        """Per site of ``sites``: for a training site, None (its stored effects) once its
        images (rows) passed the site check (:meth:`site_agreement`), or, when they
        disagree and ``site_check="refit"``, what ``unseen_site`` gives a site unseen in
        fit; for an unseen site with ``unseen_site="fit"``, its ``(gamma, delta)``
        estimated from its images (rows); ``"keep"``: returned unchanged."""
        known = self._known_sites()
        labels, codes = distinct_sites(sites)
        cov, _ = self._covariate_columns(covariates, len(sites), self._fitted_knots())
        # tables: rows are trusted to their label (see site_agreement)
        table = isinstance(imgs, FeatureTable)
        new = set() if table else self._act_on_site_check(self._site_agreements(imgs, sites, cov))
        dtype = self.grand_mean_.dtype
        stats: dict[str, Any] = {}
        for k, label in enumerate(labels):
            if label in known and label not in new:
                stats[label] = None
            elif self.unseen_site == "keep":
                stats[label] = "keep"
            elif self.unseen_site == "fit":
                idx = np.flatnonzero(codes == k).tolist()
                if len(idx) < 2:
                    raise ValueError(
                        f"Site {label!r} is handled as a site unseen in fit (its images do "
                        "not look like the training site of that name) and unseen_site='fit' "
                        "needs at least 2 of its images in the same transform call to "
                        "estimate its effects; got 1. Pass all images of the site together, "
                        "use unseen_site='keep', or site_check='warn'."
                    )
                gamma, delta = self._fit_unseen(imgs, idx, cov, label)
                stats[label] = (gamma.astype(dtype), delta.astype(dtype))
        return stats

    def _site_params(self, labels: list[Any], stats: Mapping[str, Any]) -> dict[Any, tuple | None]:
        """``(a, 1 - a, o)`` of each distinct site of ``labels`` (None: left unchanged)."""
        known = self._known_sites()
        sd = np.sqrt(self.var_pooled_)
        params: dict[Any, tuple | None] = {}
        for label in labels:
            entry = stats.get(label)
            if isinstance(entry, tuple):  # estimated from its images
                params[label] = self._affine(*entry, sd)
            elif label in known and entry is None:  # the stored effects
                j = known[label]
                params[label] = self._affine(self.gamma_star_[j], self.delta_star_[j], sd)
            else:  # keep
                params[label] = None
        return params

    def _transform(
        self,
        imgs: ImageCollection | FeatureTable,
        sites: np.ndarray,
        ages: np.ndarray | None,
        covariates: pd.DataFrame | None,
        stats: Mapping[str, Any],
    ) -> list[np.ndarray] | np.ndarray:
        n = len(imgs)
        cov, _ = self._covariate_columns(covariates, n, self._fitted_knots())
        distinct, codes = distinct_sites(sites)
        params = self._site_params(distinct, stats)
        if isinstance(imgs, FeatureTable):
            return self._transform_table(imgs.values, codes, cov, [params[s] for s in distinct])
        labels = sites.tolist()
        shape = tuple(self.image_shape_)
        voxels = self._voxel_index()
        y, z, mean, work = (np.empty(voxels.c.size, dtype=np.float32) for _ in range(4))
        stacked = None
        out = []
        for i, (data, brain) in enumerate(self._iter_brains(imgs)):
            # keep the memory order of the input (F for NIfTI data): no transposing copy
            fortran = data.flags.f_contiguous and not data.flags.c_contiguous
            if imgs.kind == "array":
                if stacked is None:
                    stacked = _empty_stack(n, shape, fortran)
                result = stacked[i]
            else:
                result = np.empty(shape, dtype=np.float32, order="F" if fortran else "C")
            # a new array (never the caller's); background (and outside mask_) -> 0
            np.multiply(data, brain, out=result, casting="unsafe")
            par = params[labels[i]]
            if par is not None:
                a, one_minus_a, o = par
                view, flat = voxels.view(data)
                np.take(view, flat, out=y)
                np.multiply(a, y, out=z)
                np.multiply(one_minus_a, self._model_mean(cov[i], mean, work), out=mean)
                z += mean
                z -= o
                np.multiply(z, y != 0, out=z)  # voxels outside this image's brain stay 0
                view, flat = voxels.view(result)
                view[flat] = z
                self._harmonize_rim(data, brain, result, y, z)
            out.append(result)
        return stacked if stacked is not None else out

    def _transform_table(
        self, X: np.ndarray, codes: np.ndarray, cov: np.ndarray, params: list[tuple | None]
    ) -> np.ndarray:
        """Harmonized table: ``a * y + (1 - a) * model_mean - o``, row ``i`` with the
        ``(a, 1 - a, o)`` of ``params[codes[i]]`` (None: left unchanged, ``1, 0, 0``)."""
        unchanged = (np.ones(X.shape[1]), np.zeros(X.shape[1]), np.zeros(X.shape[1]))
        one_minus_a = np.stack([(p or unchanged)[1] for p in params])
        o = np.stack([(p or unchanged)[2] for p in params])
        # a * y + (1 - a) * (grand_mean + effects) - o = y + (1 - a) * (m - y) + shift,
        # with m = effects = centred covariates . coef and shift = (1 - a) * grand_mean - o:
        # exactly y where a = 1 and o = 0 (a site or a constant feature left unchanged)
        shift = one_minus_a * self.grand_mean_ - o
        centred = cov - self.covariate_means_
        out = np.empty_like(X, dtype=np.float64)
        step = cm.row_block(X.shape[1])
        # two work blocks, reused: no allocation (nor page faults) per block
        mean_buf, site_buf = np.empty((2, min(step, len(X)), X.shape[1]))
        for start in range(0, len(X), step):  # blocks of rows that fit in the cache
            rows = slice(start, start + step)
            c = codes[rows]
            mean, per_site = mean_buf[: len(c)], site_buf[: len(c)]
            np.matmul(centred[rows], self.coef_, out=mean)
            block = np.subtract(mean, X[rows], out=out[rows])
            block *= np.take(one_minus_a, c, axis=0, out=per_site, mode="clip")
            block += np.take(shift, c, axis=0, out=per_site, mode="clip")
            block += X[rows]
        return out

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

    def _site_agreements(
        self, imgs: ImageCollection | FeatureTable, labels: Sequence[str], cov: np.ndarray
    ) -> list[SiteAgreement]:
        """The site check of every labelled group of a training site (see
        :meth:`site_agreement`)."""
        out = []
        given = np.asarray(labels, dtype=str)
        for site, j in self._known_sites().items():
            idx = np.flatnonzero(given == site).tolist()
            if not idx:
                continue
            n_b = int(self.site_counts_[j])
            if n_b < SITE_CHECK_MIN_IMAGES:
                note = f"not checked: {n_b} training image(s) of the site, fewer than 4"
                out.append(SiteAgreement(site, len(idx), np.nan, SITE_CHECK_THRESHOLD, note))
                continue
            gamma = self.gamma_star_[j].astype(np.float64)
            delta = self.delta_star_[j].astype(np.float64)
            total, count = 0.0, 0
            for s, present in self._standardized(imgs, idx, cov):
                total += float(np.sum(((s - gamma) ** 2 / delta)[present]))
                count += int(present.sum())
            # a new scan's squared residual over delta: (1 + 1/n_b) times a t statistic
            # with n_b - 1 degrees of freedom, whose square has mean (n_b - 1) / (n_b - 3)
            expected = (1.0 + 1.0 / n_b) * (n_b - 1) / (n_b - 3)
            stat = total / max(count, 1) / expected if count else np.nan
            out.append(
                SiteAgreement(
                    site,
                    len(idx),
                    stat,
                    SITE_CHECK_THRESHOLD,
                    f"their voxels deviate from the stored site's effects {stat:.3g} times as "
                    "much (in squared standardized residual) as new scans of that site would "
                    "(or their covariates are far from the training ones)",
                )
            )
        return out

    def _act_on_site_check(self, agreements: list[SiteAgreement]) -> set:
        """Warn or raise by ``site_check`` about the groups that disagree; the labels to
        handle as sites unseen in fit."""
        policy = check_policy(self.site_check)
        bad = [a for a in agreements if not a.agrees]
        if bad and policy == "refit" and self.unseen_site == "error":
            raise UnseenSiteError(
                f"{describe_mismatches(bad, 'site effects')} ComBat treats them as sites "
                "unseen in fit (site_check='refit'), and has no parameters for those "
                "(unseen_site='error'). Give them a new label and pass unseen_site='fit' to "
                "estimate their effects from these images (or 'keep' to leave them "
                "unchanged), or pass site_check='warn' to apply the stored effects anyway."
            )
        as_new = {
            "fit": "its effects are estimated from these images (unseen_site='fit')",
            "keep": "its images are returned unchanged (unseen_site='keep')",
        }.get(self.unseen_site, "")
        return act_on_agreements(agreements, policy, what="site effects", as_new=as_new)

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

    def _fit_unseen(
        self, imgs: ImageCollection | FeatureTable, idx: list[int], cov: np.ndarray, label: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Estimate an unseen site's gamma/delta from its images or rows
        (``unseen_site='fit'``)."""
        n_vox = self.var_pooled_.size
        count = np.zeros(n_vox, dtype=np.int64)
        mean = np.zeros(n_vox)
        m2 = np.zeros(n_vox)
        for s, present in self._standardized(imgs, idx, cov):
            count += present
            step = np.where(present, s - mean, 0.0)
            mean += step / np.maximum(count, 1)
            m2 += step * np.where(present, s - mean, 0.0)
        gamma = np.zeros(n_vox)
        delta = np.ones(n_vox)
        ok = count >= 2
        if ok.any():
            n_ok = count[ok]
            g_hat, ss = mean[ok], m2[ok]
            d_hat = ss / (n_ok - 1)
            g_star, d_star = g_hat, np.where(d_hat > 0, d_hat, 1.0)
            if self.empirical_bayes_ and ok.sum() >= 2:
                pri = cm.eb_priors(g_hat, d_hat)
                if all(np.isfinite(pri)) and pri[1] >= 0 and pri[3] > 0:
                    g_star, d_star, _ = cm.empirical_bayes(g_hat, g_hat, ss, n_ok, pri)
            bad = ~(np.isfinite(g_star) & np.isfinite(d_star) & (d_star > 0))
            gamma[ok] = np.where(bad, g_hat, g_star)
            delta[ok] = np.where(bad, 1.0, d_star)
        logger.info("ComBat: estimated unseen site %r from %d images", label, len(idx))
        return gamma, delta
