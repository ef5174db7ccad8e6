"""Do a labelled group's images agree with the intensity map stored for that site?

IGUANe's "histogram" input normalization maps every image of a site through one
piecewise-linear map, from the site's landmarks ``M_s`` (the mean of its training
images' landmarks) to the reference site's standard landmarks ``S``
(:mod:`harmonix.iguane.inputs.normalization`). Images that carry a training label but come from
another scanner would be mapped with that scanner's map; this module measures, on the
standard scale, how far they lie from it (see :mod:`harmonix.inputs.site_check` for what
:meth:`~harmonix.IGUANeHarmonizer.transform` does with the answer).

**Deviations on the standard scale.** Near its landmarks, the map of site ``s`` scales
landmark ``k`` by its local slope ``g_sk`` (the central difference
``(S[k+1] - S[k-1]) / (M_s[k+1] - M_s[k-1])``; one-sided at the ends), so a landmark
vector ``L`` deviates from where the map expects it by ``e = g_s * (L - M_s)``,
expressed in standard-scale intensities whatever the site's own scale. This puts the
training images of every site on one scale and their deviations are pooled into one
covariance ``C`` (``n_images - n_sites`` degrees of freedom), mixed with
:data:`SHRINKAGE` of its diagonal so that it stays invertible with few images.

**The statistic.** A group of ``n`` images labelled ``s`` (``n_s`` training images)
deviates by ``d = g_s * (mean of its landmarks - M_s)``; its statistic is the squared
Mahalanobis length per landmark, divided by the variance of a difference of two means::

    Q = d' C^-1 d / (p * (1 / n + 1 / n_s))

of order 1 or below for new images of the same site whatever ``n`` (below 1 mostly:
the shrinkage overstates the smallest variances; 0.05-0.7 for new scans of the shipped
model's sites), while a colliding scanner of the synthetic data scores hundreds to
tens of thousands.

**The threshold** is set from the training images themselves: each one, left out of its
site's mean and of the covariance, is scored against the rest (``n = 1``), and the
threshold is :data:`MARGIN` times the largest of these scores. Few training images give
a rough covariance and large leave-one-out scores, so the threshold widens by itself
where the yardstick is uncertain. How often new scans of a true site cross it, and how
often a colliding scanner passes, by the number of training images per site, is measured
in ``benchmarks/results/site_check.md`` (``benchmarks/bench_site_check.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MARGIN", "SHRINKAGE", "LandmarkSpread", "map_slopes"]

#: Share of its diagonal mixed into the pooled landmark covariance.
SHRINKAGE = 0.05
#: The threshold is this many times the largest leave-one-out score of a training image.
MARGIN = 4.0
_FLOOR = 1e-9  # relative size of a deviation, or a variance, that counts as none


def map_slopes(site_landmarks: np.ndarray, standard: np.ndarray) -> np.ndarray:
    """Local slope of a site's map at each of its landmarks (central differences).

    Parameters
    ----------
    site_landmarks, standard : ndarray of shape (n_landmarks,)
        Strictly increasing site landmarks and the standard ones they map onto.

    Returns
    -------
    ndarray of shape (n_landmarks,)
    """
    m = np.asarray(site_landmarks, dtype=np.float64)
    s = np.asarray(standard, dtype=np.float64)
    g = np.empty_like(m)
    g[1:-1] = (s[2:] - s[:-2]) / (m[2:] - m[:-2])
    g[0] = (s[1] - s[0]) / (m[1] - m[0])
    g[-1] = (s[-1] - s[-2]) / (m[-1] - m[-2])
    return g


def _shrunk(scatter: np.ndarray, dof: int) -> np.ndarray:
    cov = scatter / dof
    diag = np.diag(cov)
    floor = _FLOOR * max(float(diag.max()), np.finfo(float).tiny)
    return (1.0 - SHRINKAGE) * cov + np.diag(SHRINKAGE * diag + floor)


def _quadratic(cov: np.ndarray, d: np.ndarray) -> float:
    return float(d @ np.linalg.solve(cov, d))


@dataclass(frozen=True)
class LandmarkSpread:
    """The yardstick of the site check: how training images scatter around their site.

    Attributes
    ----------
    covariance : ndarray of shape (n_landmarks, n_landmarks)
        Pooled, shrunk covariance of the training images' deviations on the standard
        scale.
    counts : list of int
        Training images of each site (in the order of the normalizer's sites).
    threshold : float
        Statistic above which a group disagrees with its site.
    """

    covariance: np.ndarray
    counts: list
    threshold: float

    @classmethod
    def fit(
        cls,
        landmarks: np.ndarray,
        sites: np.ndarray,
        labels: Sequence[Any],
        site_landmarks: np.ndarray,
        standard: np.ndarray,
    ) -> LandmarkSpread | None:
        """The spread of the training images, or None when it cannot be measured.

        Parameters
        ----------
        landmarks : ndarray of shape (n_images, n_landmarks)
            Every training image's landmarks.
        sites : ndarray of shape (n_images,)
        labels : sequence
            The sites, in the order of ``site_landmarks``.
        site_landmarks : ndarray of shape (n_sites, n_landmarks)
        standard : ndarray of shape (n_landmarks,)

        Returns
        -------
        LandmarkSpread or None
            None when no image can be left out (every site has one image) or the
            training images of each site are identical.
        """
        landmarks = np.asarray(landmarks, dtype=np.float64)
        p = landmarks.shape[1]
        dev, owner, counts = [], [], []
        for j, label in enumerate(labels):
            rows = landmarks[sites == label]
            g = map_slopes(site_landmarks[j], standard)
            dev.append(g * (rows - site_landmarks[j]))
            owner += [len(rows)] * len(rows)
            counts.append(len(rows))
        e = np.concatenate(dev)
        scatter = e.T @ e
        dof = len(e) - len(labels)
        spread = float(np.sqrt(np.trace(scatter) / len(e)))
        if dof < 2 or not spread > _FLOOR * float(np.max(np.abs(standard))):
            return None  # nothing to leave out, or identical images (up to rounding)
        loo = []
        for e_i, n_s in zip(e, owner):
            if n_s < 2:
                continue
            w = n_s / (n_s - 1)  # leaving x out moves its site mean: x - m' = w (x - m)
            cov = _shrunk(scatter - w * np.outer(e_i, e_i), dof - 1)
            loo.append(_quadratic(cov, w * e_i) / (p * (1.0 + 1.0 / (n_s - 1))))
        if not loo:
            return None
        return cls(_shrunk(scatter, dof), counts, float(MARGIN * max(loo)))

    def statistic(self, deviation: np.ndarray, n_images: int, n_train: int) -> float:
        """``Q`` of a group whose mean deviates by ``deviation`` (see the module doc)."""
        d = np.asarray(deviation, dtype=np.float64)
        return _quadratic(self.covariance, d) / (d.size * (1.0 / n_images + 1.0 / n_train))

    def to_dict(self) -> dict:
        """Plain values (for saving)."""
        return {
            "covariance": self.covariance.tolist(),
            "counts": [int(c) for c in self.counts],
            "threshold": float(self.threshold),
        }

    @classmethod
    def from_dict(cls, values: dict | None) -> LandmarkSpread | None:
        """Inverse of :meth:`to_dict` (None stays None)."""
        if not values:
            return None
        return cls(
            np.asarray(values["covariance"], dtype=np.float64),
            [int(c) for c in values["counts"]],
            float(values["threshold"]),
        )
