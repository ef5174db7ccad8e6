"""Sites unseen in fit: the policies of ``unseen_site`` and the estimate of a new site's
effects from its own images (``unseen_site="fit"``)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from harmonix.combat import _math as cm

#: The values of ``unseen_site``.
UNSEEN_POLICIES = ("error", "fit", "keep")


def unseen_site_effects(
    residuals: Iterable[tuple[np.ndarray, np.ndarray]], n_vox: int, empirical_bayes: bool
) -> tuple[np.ndarray, np.ndarray]:
    """An unseen site's ``(gamma, delta)`` from the standardized residuals of its images
    (or rows): ``(s, present)`` pairs of ``n_vox`` values, as
    ``ComBatHarmonizer._standardized`` yields them. Voxels present in fewer than 2 images
    keep ``gamma = 0``, ``delta = 1``; with ``empirical_bayes`` the estimates are shrunk
    with priors estimated from the site's own voxels."""
    count = np.zeros(n_vox, dtype=np.int64)
    mean = np.zeros(n_vox)
    m2 = np.zeros(n_vox)
    for s, present in residuals:
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
        if empirical_bayes and ok.sum() >= 2:
            pri = cm.eb_priors(g_hat, d_hat)
            if all(np.isfinite(pri)) and pri[1] >= 0 and pri[3] > 0:
                g_star, d_star, _ = cm.empirical_bayes(g_hat, g_hat, ss, n_ok, pri)
        bad = ~(np.isfinite(g_star) & np.isfinite(d_star) & (d_star > 0))
        gamma[ok] = np.where(bad, g_hat, g_star)
        delta[ok] = np.where(bad, 1.0, d_star)
    return gamma, delta
