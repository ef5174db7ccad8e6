"""The site check of :class:`~harmonix.combat.ComBatHarmonizer` (a mixin of it): does a
group of images labelled with a training site agree with that site's stored effects?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harmonix.exceptions import UnseenSiteError
from harmonix.inputs.site_check import (
    SiteAgreement,
    act_on_agreements,
    check_policy,
    describe_mismatches,
)
from harmonix.inputs.tables import FeatureTable
from harmonix.io import ImageCollection

#: A labelled group disagrees with its training site when its statistic (see
#: :meth:`ComBatHarmonizer.site_agreement`) exceeds this.
SITE_CHECK_THRESHOLD = 10.0
#: Training images a site needs for its variance to be a yardstick (the statistic's
#: expected value (n - 1) / (n - 3) needs n > 3).
SITE_CHECK_MIN_IMAGES = 4


class ComBatSiteCheck:
    """The statistic of ``site_agreement`` and what ``site_check`` does with it; mixed into
    :class:`~harmonix.combat.ComBatHarmonizer`."""

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
