"""The numerical core of voxel-wise ComBat (no estimator logic, no I/O).

The model of every voxel ``v`` of image ``i`` acquired at site ``b`` is (Johnson et al.
2007; Fortin et al. 2018)::

    y_iv = alpha_v + x_i . beta_v + gamma_bv + delta_bv * eps_iv

The functions here follow neuroHarmonize 2.5.2 (``harmonizationLearn``) step by step, so
that the numbers agree with it:

1. ordinary least squares of every voxel on the design ``[site one-hot | covariates]``
   with the explicit projection ``inv(D'D) D'``; with a reference site its column is all
   ones (an intercept) and the other site columns are indicators;
2. grand mean: the site-size weighted mean of the site intercepts (or, with a reference
   site, the reference intercept); pooled variance: mean squared residual over all images
   (or over the reference site's images), dividing by the number of images;
3. standardized data ``s = (y - grand_mean - x . beta) / sqrt(var_pooled)``; per site its
   mean (``gamma_hat``) and ``ddof=1`` variance (``delta_hat``);
4. parametric empirical Bayes (``it_sol``): priors over voxels (normal for ``gamma``,
   inverse gamma for ``delta``, method of moments), then fixed-point iterations until the
   largest relative change over *all* voxels of the site is at most ``1e-4`` (the same,
   sign-quirky, criterion as neuroHarmonize and the R ``sva`` package).

:func:`voxel_regression` is the pass for images (many voxels, few images);
:func:`table_regression` computes the same numbers with matrix products for tables of
features (many subjects, few features), where per-image loops would dominate.

Two departures make the voxel computation memory-lean without changing its numbers:

* the voxel regressions run over chunks of voxels and reduce over images with explicit
  loops of element-wise operations, so every voxel's result is bit-for-bit independent
  of the chunk size;
* the EB iteration only needs each voxel's site mean, sum of squared deviations and
  ``gamma_hat`` (``sum((s - g)**2) = ss + n * (mean - g)**2``), so it runs on per-voxel
  vectors without keeping the standardized data.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "VoxelStats",
    "auto_chunk_size",
    "centred_columns",
    "design_matrix",
    "eb_priors",
    "empirical_bayes",
    "natural_spline_basis",
    "row_block",
    "spline_knots",
    "table_regression",
    "voxel_regression",
]

logger = logging.getLogger(__name__)

#: Convergence threshold of the EB iterations (neuroHarmonize's ``it_sol`` default).
EB_CONV = 1e-4
#: Safety cap on EB iterations (neuroHarmonize has none); usually 5-50 are needed.
EB_MAX_ITER = 1000
#: Relative change under which a voxel's EB estimates are at their fixed point (frozen).
EB_FREEZE = 1e-12
#: A voxel whose pooled standard deviation is below this fraction of its largest absolute
#: value is "degenerate" (constant up to rounding): ComBat leaves it unchanged.
DEGENERATE_RTOL = 1e-9


# -- covariates ---------------------------------------------------------------------------
def spline_knots(values: np.ndarray, df: int, name: str = "age") -> np.ndarray:
    """Knots of a natural cubic spline with ``df`` degrees of freedom.

    Parameters
    ----------
    values : ndarray of shape (n,)
        Training values of the covariate (e.g. ages).
    df : int
        Degrees of freedom (number of basis columns, >= 1); ``df + 1`` knots are placed at
        equally spaced quantiles, the outer two at the smallest and largest value.
    name : str, default="age"
        The covariate's name, for the error message.

    Returns
    -------
    ndarray of shape (df + 1,)
        Increasing knots.
    """
    knots = np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0.0, 1.0, df + 1))
    if np.unique(knots).size != knots.size:
        n_unique = np.unique(values).size
        raise ValueError(
            f"A smooth {name!r} with {df} degrees of freedom needs {df + 1} distinct "
            f"quantiles, but the training values have only {n_unique} distinct values (or "
            f"heavy ties); give it fewer degrees of freedom (e.g. smooth={{{name!r}: "
            f"{max(df - 1, 1)}}}, or smooth_age={max(df - 1, 1)} for age) or no smooth term."
        )
    return knots


def natural_spline_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Natural cubic spline basis (truncated power form), linear beyond the outer knots.

    With ``K`` knots the basis has ``K - 1`` columns: ``u`` and
    ``d_k(u) - d_{K-1}(u)`` for ``k = 1..K-2`` (Hastie, Tibshirani & Friedman, *Elements
    of Statistical Learning*, eq. 5.4-5.5), where ``u`` rescales ``x`` so that the outer
    knots are 0 and 1 (for conditioning). Every column is linear outside the outer knots,
    so ages outside the training range extrapolate linearly.

    Parameters
    ----------
    x : ndarray of shape (n,)
        Ages.
    knots : ndarray of shape (K,)
        Increasing knots, ``K >= 2``.

    Returns
    -------
    ndarray of shape (n, K - 1)
    """
    x = np.asarray(x, dtype=np.float64)
    knots = np.asarray(knots, dtype=np.float64)
    lo, hi = knots[0], knots[-1]
    u = (x - lo) / (hi - lo)
    ku = (knots - lo) / (hi - lo)

    def d(j: int) -> np.ndarray:
        return (np.maximum(u - ku[j], 0.0) ** 3 - np.maximum(u - ku[-1], 0.0) ** 3) / (
            ku[-1] - ku[j]
        )

    last = d(len(knots) - 2) if len(knots) > 2 else None
    cols = [u] + [d(j) - last for j in range(len(knots) - 2)]
    return np.column_stack(cols)


def design_matrix(
    codes: np.ndarray, n_sites: int, covariates: np.ndarray, ref_level: int | None
) -> np.ndarray:
    """ComBat design matrix ``[site one-hot | covariates]`` (neuroHarmonize's layout).

    Parameters
    ----------
    codes : ndarray of int, shape (n,)
        Site index of each image (position in the sorted site labels).
    n_sites : int
    covariates : ndarray of shape (n, k)
    ref_level : int or None
        Reference site index; its column is set to all ones (an intercept).

    Returns
    -------
    ndarray of shape (n, n_sites + k), float64
    """
    onehot = np.zeros((len(codes), n_sites))
    onehot[np.arange(len(codes)), codes] = 1.0
    if ref_level is not None:
        onehot[:, ref_level] = 1.0
    return np.hstack([onehot, np.asarray(covariates, dtype=np.float64).reshape(len(codes), -1)])


# -- pass 1: voxel-wise regressions -----------------------------------------------------------
@dataclass
class VoxelStats:
    """Per-voxel results of :func:`voxel_regression` (float64)."""

    coef: np.ndarray  #: (n_sites + k, V) least-squares coefficients
    grand_mean: np.ndarray  #: (V,)
    var_pooled: np.ndarray  #: (V,)
    site_mean: np.ndarray  #: (n_sites, V) mean of the standardized data per site
    site_ss: np.ndarray  #: (n_sites, V) sum of squared deviations from site_mean
    degenerate: np.ndarray  #: (V,) bool, pooled variance ~ 0


def auto_chunk_size(n_images: int, n_columns: int, budget_bytes: int = 64 * 2**20) -> int:
    """Voxels per chunk so that the float64 work arrays take about ``budget_bytes``."""
    return max(1024, int(budget_bytes // (8 * (n_images + 3 * n_columns + 8))))


def voxel_regression(
    data: np.ndarray,
    design: np.ndarray,
    codes: np.ndarray,
    n_sites: int,
    ref_level: int | None,
    chunk_size: int,
) -> VoxelStats:
    """Fit the location model of every voxel and summarize its standardized data.

    Parameters
    ----------
    data : ndarray of shape (n_images, V)
        Voxel values (any float dtype; each row must be contiguous for speed). Not modified.
    design : ndarray of shape (n_images, n_sites + k)
        From :func:`design_matrix`.
    codes : ndarray of int, shape (n_images,)
        Site index of each image.
    n_sites : int
    ref_level : int or None
    chunk_size : int
        Voxels processed at once; results do not depend on it (bit for bit).

    Returns
    -------
    VoxelStats
    """
    n, n_vox = data.shape
    p = design.shape[1]
    proj = np.linalg.inv(design.T @ design) @ design.T  # (p, n), as neuroHarmonize
    counts = np.bincount(codes, minlength=n_sites)
    weights = counts / float(n)
    var_rows = np.flatnonzero(codes == ref_level) if ref_level is not None else np.arange(n)
    nz_design = [np.flatnonzero(design[i]) for i in range(n)]
    cov_cols = np.arange(n_sites, p)

    out = VoxelStats(
        coef=np.empty((p, n_vox)),
        grand_mean=np.empty(n_vox),
        var_pooled=np.empty(n_vox),
        site_mean=np.empty((n_sites, n_vox)),
        site_ss=np.empty((n_sites, n_vox)),
        degenerate=np.empty(n_vox, dtype=bool),
    )
    for start in range(0, n_vox, chunk_size):
        sl = slice(start, min(start + chunk_size, n_vox))
        rows = [np.asarray(data[i, sl], dtype=np.float64) for i in range(n)]
        width = rows[0].size
        # least squares: coef = inv(D'D) D' y, accumulated image by image
        coef = np.zeros((p, width))
        scale = np.zeros(width)
        for i, y in enumerate(rows):
            coef += proj[:, i : i + 1] * y
            np.maximum(scale, np.abs(y), out=scale)
        # pooled variance of the residuals (all images, or the reference site's)
        acc = np.zeros(width)
        for i in var_rows:
            fit = design[i, nz_design[i][0]] * coef[nz_design[i][0]]
            for j in nz_design[i][1:]:
                fit += design[i, j] * coef[j]
            resid = rows[i] - fit
            acc += resid * resid
        var_pooled = acc / float(len(var_rows))
        if ref_level is None:
            grand_mean = np.zeros(width)
            for b in range(n_sites):
                grand_mean += weights[b] * coef[b]
        else:
            grand_mean = coef[ref_level].copy()
        sd = np.sqrt(var_pooled)
        degenerate = ~(sd > DEGENERATE_RTOL * scale)
        sd[degenerate] = 1.0
        # standardized data, overwriting the chunk's rows, and per-site means
        site_sum = np.zeros((n_sites, width))
        for i in range(n):
            s = rows[i] - grand_mean
            for j in cov_cols:
                if design[i, j] != 0.0:
                    s -= design[i, j] * coef[j]
            s /= sd
            rows[i] = s
            site_sum[codes[i]] += s
        site_mean = site_sum / np.maximum(counts, 1)[:, None]
        site_ss = np.zeros((n_sites, width))
        for i in range(n):
            dev = rows[i] - site_mean[codes[i]]
            site_ss[codes[i]] += dev * dev
        out.coef[:, sl] = coef
        out.grand_mean[sl] = grand_mean
        out.var_pooled[sl] = var_pooled
        out.site_mean[:, sl] = site_mean
        out.site_ss[:, sl] = site_ss
        out.degenerate[sl] = degenerate
    return out


def column_means(columns: np.ndarray) -> np.ndarray:
    """The mean of each column of a tall, narrow ``(n, k)`` array: one matrix-vector
    product, where ``mean(axis=0)`` walks ``k`` strided columns (10x slower for 10,000 x 5)."""
    return np.ones(len(columns)) @ columns / max(len(columns), 1)


def centred_columns(columns: np.ndarray, means: np.ndarray) -> np.ndarray:
    """The columns of a tall, narrow ``(n, k)`` array minus their ``means``, as the rows of
    a ``(k, n)`` array: column by column, where ``columns - means`` walks ``n`` rows of
    ``k`` values (7x slower for 10,000 x 4)."""
    out = np.empty((columns.shape[1], len(columns)))
    for j in range(columns.shape[1]):
        np.subtract(columns[:, j], means[j], out=out[j])
    return out


def row_block(n_columns: int, budget_bytes: int = 1024 * 1024) -> int:
    """Rows of a float64 table of ``n_columns`` columns that fit in ``budget_bytes`` (a
    CPU cache's share): tables are processed in such blocks so that their temporaries
    never leave the cache."""
    return max(16, budget_bytes // (8 * max(n_columns, 1)))


def _site_moments(
    y: np.ndarray, cov_t: np.ndarray, codes: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, ...]:
    """One pass over a table, site by site: per site ``b`` its first row ``shift[b]`` and,
    of the rows shifted by it, the sums ``s1[b]``, sums of squares ``s2[b]`` and the
    cross products ``cy[b] = C_b' (Y_b - shift[b])`` with the covariate columns (given as
    the rows of ``cov_t``); and the Gram matrix ``gram[b]`` of ``[1 | C_b]``.

    The rows of a site are gathered in blocks that fit in the cache (the table is read
    once, in any row order); shifting by a row of the same site keeps the sums of squares
    near the site's spread, so that ``s2 - s1**2 / n`` loses no precision to a large
    mean.
    """
    n_sites, n_feat, q = len(counts), y.shape[1], len(cov_t)
    small = np.int16 if n_sites < 2**15 else np.intp  # numpy radix-sorts 16-bit integers
    order = np.argsort(codes.astype(small), kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    # [1 | covariates]' in site order (one row per column: a column is gathered at once,
    # where gathering rows of q + 1 values is 10x slower): sums and cross products at once
    design_t = np.empty((q + 1, len(y)))
    design_t[0] = 1.0
    for j in range(q):
        np.take(cov_t[j], order, out=design_t[j + 1], mode="clip")
    shift, s2 = np.zeros((n_sites, n_feat)), np.zeros((n_sites, n_feat))
    sums = np.zeros((n_sites, q + 1, n_feat))
    gram = np.zeros((n_sites, q + 1, q + 1))
    step = row_block(n_feat, budget_bytes=1024 * 1024)
    buffer = np.empty((min(step, len(y)), n_feat))  # one work block, reused
    for b in range(n_sites):
        rows_b = order[bounds[b] : bounds[b + 1]]
        if not len(rows_b):
            continue
        shift[b] = y[rows_b[0]]
        design_b = design_t[:, bounds[b] : bounds[b + 1]]
        gram[b] = design_b @ design_b.T
        for start in range(0, len(rows_b), step):
            rows = rows_b[start : start + step]
            # mode="clip": the rows are valid, and the default mode buffers any `out`
            block = np.take(y, rows, axis=0, out=buffer[: len(rows)], mode="clip")
            block -= shift[b]
            sums[b] += design_b[:, start : start + step] @ block
            s2[b] += np.einsum("ij,ij->j", block, block)
    return shift, sums[:, 0], s2, sums[:, 1:], gram


def table_regression(
    data: np.ndarray,
    covariates: np.ndarray,
    codes: np.ndarray,
    n_sites: int,
    ref_level: int | None,
) -> VoxelStats:
    """:func:`voxel_regression` for a table of features, from per-site sums.

    The same model and formulas, computed from sufficient statistics gathered in one
    pass over the table (:func:`_site_moments`): the site columns of the design span the
    site indicators, so the covariate effects ``beta`` are the pooled within-site
    regression (``(sum_b C_b'C_b)^-1 sum_b C_b'y_b``, covariates and data centred per
    site), each site's intercept is its mean of ``y - covariates . beta`` and its residual
    sum of squares ``S_yy - 2 beta'S_cy + beta'S_cc beta`` (within-site sums). The numbers
    agree with :func:`voxel_regression` to rounding (about 1e-12 relative), not bit for
    bit; a feature whose covariates explain more than ``1 - 1e-4`` of a site's variance
    (where that difference would cancel digits) gets its residuals computed explicitly.
    A feature is constant (left unchanged) when its pooled standard deviation is below
    ``DEGENERATE_RTOL`` times its magnitude (the largest site mean plus three standard
    deviations, instead of the images' largest absolute value).

    The standardized data of a site differ from its residuals by a constant: the site
    mean of the standardized data is ``(intercept - grand_mean) / sd`` and its sum of
    squares the site's residual sum of squares over ``sd**2``.

    Parameters
    ----------
    data : ndarray of shape (n_samples, n_features)
        Not modified.
    covariates : ndarray of shape (n_samples, k)
        The covariate columns of the design (:func:`design_matrix` without its site
        one-hot part).
    codes, n_sites, ref_level
        As in :func:`voxel_regression`.

    Returns
    -------
    VoxelStats
    """
    y = np.asarray(data, dtype=np.float64)
    n = len(y)
    counts = np.bincount(codes, minlength=n_sites)
    size = np.maximum(counts, 1).astype(np.float64)
    covariates = np.asarray(covariates, dtype=np.float64).reshape(n, -1)
    offset = column_means(covariates)
    cov_t = centred_columns(covariates, offset)  # the per-site sums below lose no digits
    shift, s1, s2, cy, gram = _site_moments(y, cov_t, codes, counts)
    # within-site centred moments of the covariates
    c_sum = gram[:, 0, 1:]
    c_mean = c_sum / size[:, None]
    scc = gram[:, 1:, 1:] - c_sum[:, :, None] * c_mean[:, None, :]
    # and of the data: S_yy and S_cy per site
    mean_b = s1 / size[:, None]  # of the shifted rows
    syy = s2 - s1 * mean_b
    scy = cy - c_sum[:, :, None] * mean_b[:, None, :]
    beta = np.linalg.solve(scc.sum(axis=0), scy.sum(axis=0))  # (q, n_feat)
    centred_intercepts = shift + mean_b - c_mean @ beta  # (n_sites, n_feat)
    rss = syy - 2.0 * np.einsum("bjf,jf->bf", scy, beta)
    rss += np.einsum("jf,bjl,lf->bf", beta, scc, beta)
    cancelled = np.flatnonzero((rss < 1e-4 * syy).any(axis=0))
    if cancelled.size:  # explicit residuals where the difference lost digits
        fit = centred_intercepts[:, cancelled][codes] + cov_t.T @ beta[:, cancelled]
        resid = y[:, cancelled] - fit
        for b in range(n_sites):
            r_b = resid[codes == b]
            rss[b, cancelled] = np.einsum("ij,ij->j", r_b, r_b)
    intercepts = centred_intercepts - offset @ beta  # of the design's covariates
    site_ss = np.maximum(rss, 0.0)
    site_ss[counts == 0] = 0.0
    # the design's coefficients: the site part gives each site its intercept
    site_rows = np.eye(n_sites)  # the site part of each site's design row
    if ref_level is not None:  # the reference site's column is all ones (an intercept)
        site_rows[:, ref_level] = 1.0
    present = counts > 0
    site_coef = np.zeros((n_sites, y.shape[1]))
    site_coef[present] = np.linalg.solve(site_rows[np.ix_(present, present)], intercepts[present])
    coef = np.vstack([site_coef, beta])
    if ref_level is None:
        var_pooled = site_ss.sum(axis=0) / float(n)
        grand_mean = (counts / float(n)) @ intercepts
    else:
        var_pooled = site_ss[ref_level] / float(counts[ref_level])
        grand_mean = intercepts[ref_level].copy()
    # the features' magnitude, for the constant-feature test: the largest site mean of y
    # plus three sds
    site_y = shift + mean_b
    scale = np.abs(site_y[present]).max(axis=0) + 3.0 * np.sqrt(site_ss.max(axis=0) / n)
    sd = np.sqrt(var_pooled)
    degenerate = ~(sd > DEGENERATE_RTOL * scale)
    sd[degenerate] = 1.0
    site_mean = (intercepts - grand_mean) / sd
    site_mean[~present] = 0.0
    return VoxelStats(coef, grand_mean, var_pooled, site_mean, site_ss / sd**2, degenerate)


# -- pass 2: empirical Bayes ----------------------------------------------------------------
def _mean_var(x: np.ndarray) -> tuple[Any, Any]:
    """``np.mean(x, axis=-1)`` and ``np.var(x, ddof=1, axis=-1)``, with the same
    operations (so the same bits), without their per-call overhead; floats for 1-D
    ``x``, one value per row for 2-D ``x``."""
    x = np.asarray(x, dtype=np.float64)
    size = x.shape[-1]
    mean = x.sum(axis=-1) / size
    dev = x - mean[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.multiply(dev, dev, out=dev).sum(axis=-1) / (size - 1)
    if x.ndim == 1:
        return float(mean), float(var)
    return mean, var


def eb_priors(gamma_hat: np.ndarray, delta_hat: np.ndarray) -> tuple[Any, Any, Any, Any]:
    """Method-of-moments hyper-parameters pooled over voxels (neuroHarmonize's formulas).

    Parameters
    ----------
    gamma_hat, delta_hat : ndarray of shape (V,) or (n_sites, V)
        One site's location and scale estimates (or one row per site).

    Returns
    -------
    gamma_bar, tau2, a_prior, b_prior : float, or ndarray of shape (n_sites,)
        Normal prior ``N(gamma_bar, tau2)`` on ``gamma`` and inverse-gamma
        ``IG(a_prior, b_prior)`` on ``delta``.
    """
    gamma_bar, tau2 = _mean_var(gamma_hat)
    m, s2 = _mean_var(delta_hat)
    with np.errstate(divide="ignore", invalid="ignore"):
        a_prior = (2 * s2 + m**2) / s2
        b_prior = (m * s2 + m**3) / s2
    if np.ndim(gamma_hat) == 1:
        return gamma_bar, tau2, float(a_prior), float(b_prior)
    return gamma_bar, tau2, a_prior, b_prior


def empirical_bayes(
    gamma_hat: np.ndarray,
    site_mean: np.ndarray,
    site_ss: np.ndarray,
    n: Any,
    priors: tuple[Any, Any, Any, Any],
    *,
    conv: float = EB_CONV,
    max_iter: int = EB_MAX_ITER,
    block: int = 16384,
) -> tuple[np.ndarray, np.ndarray, Any]:
    """Parametric EB estimates of one site's ``gamma`` and ``delta`` (``it_sol``), or of
    several sites at once (one row each).

    The fixed-point iterations of a site stop when the largest relative change over all
    its voxels is at most ``conv``, as in neuroHarmonize (whose criterion divides by the
    signed old value); the rows of several sites iterate together, each stopping at its
    own count (a table's sites: one call instead of one per site). A voxel whose own
    relative changes fell below ``EB_FREEZE`` (1e-12) has reached its fixed point to
    rounding; it is frozen (no longer updated), which changes its estimates by about
    1e-12 relative and never the number of iterations, and makes the many fast voxels
    cheap while a few slow ones decide the count.

    Parameters
    ----------
    gamma_hat : ndarray of shape (V,) or (n_sites, V)
        Least-squares location estimates.
    site_mean : ndarray like ``gamma_hat``
        Mean of the site's standardized data (equals ``gamma_hat`` without a reference).
    site_ss : ndarray like ``gamma_hat``
        Sum of squared deviations of the site's standardized data from ``site_mean``.
    n : int, or ndarray of shape (V,), (n_sites,) or (n_sites, V)
        Number of images behind each voxel's estimates (>= 2).
    priors : tuple
        ``(gamma_bar, tau2, a_prior, b_prior)`` from :func:`eb_priors` (floats, or one
        value per site).
    conv : float, default=1e-4
        Stop when the largest relative change over all voxels is at most ``conv``.
    max_iter : int, default=1000
    block : int, default=16384
        Voxels updated at once (cache-friendly; results do not depend on it).

    Returns
    -------
    gamma_star, delta_star : ndarray like ``gamma_hat``
    n_iter : int, or ndarray of int of shape (n_sites,)
    """
    one_site = np.ndim(gamma_hat) == 1
    gamma_hat = np.atleast_2d(np.asarray(gamma_hat, dtype=np.float64))
    n_rows, n_vox = gamma_hat.shape

    def per_voxel(value: Any) -> np.ndarray:  # a site's value (or voxel values), flat
        value = np.asarray(value, dtype=np.float64)
        if value.ndim == 1 and not one_site:
            value = value[:, None]
        return np.broadcast_to(value, (n_rows, n_vox)).ravel()

    gamma_bar, tau2, a_prior, b_prior = (per_voxel(p) for p in priors)
    n_arr = per_voxel(n)
    # per-voxel constants: postmean = (tn_g + d * g_bar) / (tn + d);
    # postvar = (0.5 * (ss + n * (mean - g)**2) + b) / (n / 2 + a - 1) = c1 + c2 * (mean - g)**2
    denom = n_arr / 2.0 + a_prior - 1.0
    tn = tau2 * n_arr
    ss = np.asarray(site_ss, dtype=np.float64).ravel()
    state = {
        "index": np.arange(n_rows * n_vox),
        "row": np.repeat(np.arange(n_rows), n_vox),
        "g_bar": gamma_bar,
        "tn": tn,
        "tn_g": tn * gamma_hat.ravel(),
        "c1": (0.5 * ss + b_prior) / denom,
        "c2": 0.5 * n_arr / denom,
        "mean": np.asarray(site_mean, dtype=np.float64).ravel(),
        "g": gamma_hat.ravel().copy(),
        "d": ss / (n_arr - 1),
    }
    g_out, d_out = np.empty(n_rows * n_vox), np.empty(n_rows * n_vox)
    n_iter = np.zeros(n_rows, dtype=np.int64)
    count = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        while state["g"].size:
            count += 1
            g, d, size = state["g"], state["d"], state["g"].size
            g_new, d_new = np.empty(size), np.empty(size)
            rg, rd = np.empty(size), np.empty(size)
            for start in range(0, size, block):
                sl = slice(start, min(start + block, size))
                go, do, gn, dn, a, b = g[sl], d[sl], g_new[sl], d_new[sl], rg[sl], rd[sl]
                np.multiply(do, state["g_bar"][sl], out=a)
                np.add(state["tn_g"][sl], a, out=a)
                np.add(state["tn"][sl], do, out=b)
                np.divide(a, b, out=gn)
                np.subtract(state["mean"][sl], gn, out=a)
                np.multiply(a, a, out=a)
                np.multiply(a, state["c2"][sl], out=a)
                np.add(state["c1"][sl], a, out=dn)
                np.subtract(gn, go, out=a)
                np.abs(a, out=a)
                np.divide(a, go, out=a)
                np.subtract(dn, do, out=b)
                np.abs(b, out=b)
                np.divide(b, do, out=b)
            state["g"], state["d"] = g_new, d_new
            # each site's largest relative changes (NaN sticks), combined as Python's
            # max(cg, cd) does: cd only where it is larger
            rows = state["row"]
            starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
            cg, cd = np.maximum.reduceat(rg, starts), np.maximum.reduceat(rd, starts)
            change = np.where(cd > cg, cd, cg)
            done = ~(change > conv)
            stuck = ~done & (count >= max_iter)
            for r in rows[starts[stuck]]:
                warnings.warn(
                    f"ComBat empirical Bayes did not converge in {max_iter} iterations "
                    f"(largest relative change {change[rows[starts] == r][0]:.3g}); using "
                    "the last estimates.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            finished = done | stuck
            n_iter[rows[starts[finished]]] = count
            if count % 4 == 0 or finished.any():
                ended = np.repeat(finished, np.diff(np.r_[starts, size]))
                frozen = (np.abs(rg) <= EB_FREEZE) & (np.abs(rd) <= EB_FREEZE)
                if finished.any() or frozen.sum() > 0.2 * size:
                    frozen |= ended
                    idx = state["index"][frozen]
                    g_out[idx], d_out[idx] = g_new[frozen], d_new[frozen]
                    state = {k: v[~frozen] for k, v in state.items()}
    logger.debug("EB converged after %s iterations", n_iter.tolist())
    shape = (n_vox,) if one_site else (n_rows, n_vox)
    return g_out.reshape(shape), d_out.reshape(shape), int(n_iter[0]) if one_site else n_iter
