"""The transform of :class:`~harmonix.combat.ComBatHarmonizer` (a mixin of it): the site
labels checked, each site's effects chosen (stored, estimated, or none) and removed from
every image (voxels of ``voxel_mask_``, then the rim) or table row."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from harmonix.combat import _math as cm
from harmonix.combat._unseen import UNSEEN_POLICIES, unseen_site_effects
from harmonix.combat._voxels import empty_stack, harmonize_rim
from harmonix.exceptions import UnseenSiteError
from harmonix.inputs._reading import Inputs
from harmonix.inputs.labels import distinct_sites
from harmonix.inputs.site_check import check_policy
from harmonix.inputs.tables import FeatureTable

logger = logging.getLogger(__name__)


class ComBatTransform:
    """``_transform`` and its parts; mixed into :class:`~harmonix.combat.ComBatHarmonizer`."""

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

    def _check_metadata(self, sites: np.ndarray | None, prepared: frozenset) -> None:
        """Refuse unseen sites (``unseen_site="error"``) and unseen sites with one image
        (``"fit"``), before any work; warn about sites kept unchanged. (The base class
        checks the covariates.)"""
        check_policy(self.site_check)
        known = self._known_sites()
        labels, codes = distinct_sites(sites)
        unseen = sorted(s for s in labels if s not in known)
        policy = self.unseen_site
        if unseen and policy not in UNSEEN_POLICIES:
            raise ValueError(
                f"unseen_site must be one of {list(UNSEEN_POLICIES)}; got {policy!r}."
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

    def _site_statistics(self, data: Inputs) -> dict[str, Any]:
        """Per site of ``sites``: for a training site, None (its stored effects) once its
        images (rows) passed the site check (:meth:`site_agreement`), or, when they
        disagree and ``site_check="refit"``, what ``unseen_site`` gives a site unseen in
        fit; for an unseen site with ``unseen_site="fit"``, its ``(gamma, delta)``
        estimated from its images (rows); ``"keep"``: returned unchanged."""
        imgs, sites = data.imgs, data.sites
        known = self._known_sites()
        labels, codes = data.site_groups
        # tables: rows are trusted to their label (see site_agreement)
        table = isinstance(imgs, FeatureTable)
        if table and all(label in known for label in labels):
            return dict.fromkeys(labels)  # every site's stored effects
        cov, _ = self._covariate_columns(data.covariates, len(sites), self._fitted_knots())
        new = set() if table else self._act_on_site_check(self._site_agreements(imgs, sites, cov))
        dtype = self.grand_mean_.dtype
        stats: dict[str, Any] = {}
        for k, label in enumerate(labels):
            if label in known and label not in new:
                stats[label] = None
            elif self.unseen_site == "keep":
                stats[label] = "keep"
            elif self.unseen_site == "fit":
                if table and not imgs.finite_checked:  # its effects come from its rows
                    imgs.check_finite()
                idx = np.flatnonzero(codes == k).tolist()
                if len(idx) < 2:
                    raise ValueError(
                        f"Site {label!r} is handled as a site unseen in fit (its images do "
                        "not look like the training site of that name) and unseen_site='fit' "
                        "needs at least 2 of its images in the same transform call to "
                        "estimate its effects; got 1. Pass all images of the site together, "
                        "use unseen_site='keep', or site_check='warn'."
                    )
                gamma, delta = unseen_site_effects(
                    self._standardized(imgs, idx, cov),
                    self.var_pooled_.size,
                    self.empirical_bayes_,
                )
                logger.info("ComBat: estimated unseen site %r from %d images", label, len(idx))
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

    def _transform(self, data: Inputs, stats: Mapping[str, Any]) -> list[np.ndarray] | np.ndarray:
        imgs, sites, n = data.imgs, data.sites, len(data)
        cov, _ = self._covariate_columns(data.covariates, n, self._fitted_knots())
        distinct, codes = data.site_groups
        params = self._site_params(distinct, stats)
        if isinstance(imgs, FeatureTable):
            with np.errstate(invalid="ignore", over="ignore"):  # the check is just below
                out, total = self._transform_table(
                    imgs.values, codes, cov, [params[s] for s in distinct]
                )
            if not np.isfinite(total):  # a NaN or inf in the table makes the output's sum one
                imgs.refuse_non_finite()
            return out
        labels = sites.tolist()
        shape = tuple(self.image_shape_)
        voxels = self._voxel_index()
        y, z, mean, work = (np.empty(voxels.c.size, dtype=np.float32) for _ in range(4))
        stacked = None
        out = []
        for i, (image, brain) in enumerate(self._iter_brains(imgs)):
            # keep the memory order of the input (F for NIfTI data): no transposing copy
            fortran = image.flags.f_contiguous and not image.flags.c_contiguous
            if imgs.kind == "array":
                if stacked is None:
                    stacked = empty_stack(n, shape, fortran)
                result = stacked[i]
            else:
                result = np.empty(shape, dtype=np.float32, order="F" if fortran else "C")
            # a new array (never the caller's); background (and outside mask_) -> 0
            np.multiply(image, brain, out=result, casting="unsafe")
            par = params[labels[i]]
            if par is not None:
                a, one_minus_a, o = par
                view, flat = voxels.view(image)
                np.take(view, flat, out=y)
                np.multiply(a, y, out=z)
                np.multiply(one_minus_a, self._model_mean(cov[i], mean, work), out=mean)
                z += mean
                z -= o
                np.multiply(z, y != 0, out=z)  # voxels outside this image's brain stay 0
                view, flat = voxels.view(result)
                view[flat] = z
                harmonize_rim(image, brain, self.voxel_mask_, result, y, z)
            out.append(result)
        return stacked if stacked is not None else out

    def _transform_table(
        self, X: np.ndarray, codes: np.ndarray, cov: np.ndarray, params: list[tuple | None]
    ) -> tuple[np.ndarray, float]:
        """Harmonized table: ``a * y + (1 - a) * model_mean - o``, row ``i`` with the
        ``(a, 1 - a, o)`` of ``params[codes[i]]`` (None: left unchanged, ``1, 0, 0``); and
        the sum of its values, summed block by block while they are in the cache (not
        finite when a value of the table is not: ``y`` enters every output value)."""
        unchanged = (np.ones(X.shape[1]), np.zeros(X.shape[1]), np.zeros(X.shape[1]))
        one_minus_a = np.stack([(p or unchanged)[1] for p in params])
        o = np.stack([(p or unchanged)[2] for p in params])
        # a * y + (1 - a) * (grand_mean + effects) - o = y + (1 - a) * (m - y) + shift,
        # with m = effects = centred covariates . coef and shift = (1 - a) * grand_mean - o:
        # exactly y where a = 1 and o = 0 (a site or a constant feature left unchanged)
        shift = one_minus_a * self.grand_mean_ - o
        centred_t = cm.centred_columns(cov, self.covariate_means_)
        out = np.empty_like(X, dtype=np.float64)
        step = cm.row_block(X.shape[1])
        # two work blocks, reused: no allocation (nor page faults) per block
        mean_buf, site_buf = np.empty((2, min(step, len(X)), X.shape[1]))
        total = 0.0
        for start in range(0, len(X), step):  # blocks of rows that fit in the cache
            rows = slice(start, start + step)
            c = codes[rows]
            mean, per_site = mean_buf[: len(c)], site_buf[: len(c)]
            np.matmul(centred_t[:, rows].T, self.coef_, out=mean)
            block = np.subtract(mean, X[rows], out=out[rows])
            block *= np.take(one_minus_a, c, axis=0, out=per_site, mode="clip")
            block += np.take(shift, c, axis=0, out=per_site, mode="clip")
            block += X[rows]
            total += float(block.sum())
        return out, total
