"""The fit of :class:`~harmonix.combat.ComBatHarmonizer` (a mixin of it): the design, the
regression of every voxel (or feature) and the site effects, shrunk by empirical Bayes."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from harmonix.combat import _math as cm
from harmonix.combat._voxels import FlatIndex
from harmonix.inputs._reading import Inputs
from harmonix.inputs.covariates import site_gram
from harmonix.inputs.tables import FeatureTable
from harmonix.io import ImageCollection

logger = logging.getLogger(__name__)


class ComBatFit:
    """``_fit`` and its parts; mixed into :class:`~harmonix.combat.ComBatHarmonizer`."""

    def _fit(self, data: Inputs) -> None:
        imgs, sites, covariates = data.imgs, data.sites, data.covariates
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
        first, codes = data.site_groups  # labels are the sorted distinct sites
        codes = np.searchsorted(labels, np.asarray(first, dtype=str))[codes]
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
        table = isinstance(imgs, FeatureTable)
        # the rank of [site one-hot | columns]: the reference site's column of ones
        # (ref_level) spans the same space. Without spline terms the columns are the
        # covariates' design, whose separability from the sites fit_covariate_levels
        # checked (the same rank): only spline terms need the check here
        p = n_sites + columns.shape[1]
        if len(sites) <= p or (
            smooth
            and np.linalg.matrix_rank(site_gram(codes, n_sites, columns), hermitian=True) < p
        ):
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

        if table:
            self.voxel_mask_ = None
            logger.info("ComBat: %d rows, %d features", len(sites), imgs.n_features)
            # the table's finiteness is checked from the pass's sums (quietly: a NaN or inf
            # in the table is refused with its rows and features, not warned about)
            with np.errstate(invalid="ignore", over="ignore"):
                stats = cm.table_regression(imgs.values, columns, codes, n_sites, ref_level)
            if not np.isfinite(stats.site_ss).all():
                imgs.refuse_non_finite()
        else:
            design = cm.design_matrix(codes, n_sites, columns, ref_level)
            voxels = self._load_voxels(imgs)
            chunk = self.chunk_size or cm.auto_chunk_size(len(sites), p)
            logger.info(
                "ComBat: %d images, %d voxels, chunks of %d", len(sites), voxels.shape[1], chunk
            )
            stats = cm.voxel_regression(voxels, design, codes, n_sites, ref_level, chunk)
            del voxels

        gamma, delta, priors, n_iter = self._site_effects(stats, counts, ref_level)
        valid = ~stats.degenerate
        beta = stats.coef[n_sites:]
        self.covariate_means_ = cm.column_means(columns)
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
                first = FlatIndex(np.flatnonzero(brain), shape)
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
