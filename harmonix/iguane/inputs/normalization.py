"""Intensity normalization of IGUANe's inputs, and the size of the generator's correction.

IGUANe (Roca et al. 2025) median-normalizes each image (brain median 500) before the
networks; the generator must then learn the whole intensity mapping of every site. With
``"histogram"``, images are first mapped onto the reference site's Nyúl–Udupa standard
scale (the landmarks of :mod:`harmonix.intensity.histogram_matching`, fitted on the
reference site's training images), so that the generator starts from histogram matching
and learns only what is left: spatial effects (bias, blur) and local contrast a global
curve cannot fix. An identity generator then returns the histogram-matched image, which
bounds how far an unusual image can drift from it.

The mapping is *per site*: all images of a site go through one piecewise-linear map, from
the site's landmarks (the mean of its images' landmarks) to the standard ones. Mapping
each image by its own landmarks (classic HM) would force every histogram onto the same
shape and erase real differences between subjects (an older brain has more CSF and less
GM, which moves its percentiles); one map per site keeps them. The site landmarks of the
training sites are stored in the model; for other images the caller's site labels group
them (:meth:`InputNormalizer.site_landmarks_of`), and an image without a site label uses
its own landmarks. A group whose label names a training site uses that site's stored map
only when its images agree with it (:meth:`InputNormalizer.check_sites`, measured with
the spread of the training images: :mod:`harmonix.iguane.inputs.site_agreement`); a label is a
name, and another scanner may carry it.

:func:`correction_size` measures how much the forward generator changed an image; the
estimator compares it with the corrections it made on held-out training images to flag
images unlike those it was trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harmonix.iguane.inputs.site_agreement import LandmarkSpread, map_slopes
from harmonix.iguane.inputs.volumes import brain_median
from harmonix.inputs.labels import as_label, as_labels
from harmonix.inputs.site_check import SiteAgreement
from harmonix.intensity.landmarks import apply_landmarks, compute_landmarks, standard_scale

__all__ = [
    "INPUT_NORMALIZATIONS",
    "InputNormalizer",
    "check_kind",
    "correction_size",
    "image_landmarks",
]

#: Accepted values of ``input_normalization``.
INPUT_NORMALIZATIONS = ("median", "histogram")


def check_kind(kind: Any) -> None:
    """Refuse an ``input_normalization`` that is not one of :data:`INPUT_NORMALIZATIONS`."""
    if kind not in INPUT_NORMALIZATIONS:
        raise ValueError(
            f"input_normalization must be one of {INPUT_NORMALIZATIONS}, got {kind!r}."
        )


#: Landmark percentiles of the "histogram" normalization (those of the HM baseline).
LANDMARK_PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
_MEDIAN_LANDMARK = LANDMARK_PERCENTILES.index(50)


def image_landmarks(data: np.ndarray) -> np.ndarray:
    """Landmarks of one image (brain = non-zero voxels) at :data:`LANDMARK_PERCENTILES`."""
    return compute_landmarks(data, data != 0, LANDMARK_PERCENTILES)


@dataclass(frozen=True)
class InputNormalizer:
    """How raw images become the intensities IGUANe median-normalizes.

    Attributes
    ----------
    kind : {"median", "histogram"}
    standard_landmarks : ndarray or None
        The reference site's standard scale ("histogram" only).
    sites : list
        Training sites whose landmarks are known ("histogram" only).
    site_landmarks : ndarray of shape (n_sites, n_landmarks) or None
        Their landmarks (mean of their training images' landmarks).
    spread : LandmarkSpread or None
        How the training images scatter around their site's landmarks: the yardstick of
        :meth:`check_sites` (None: no check, e.g. a model saved before it existed).
    """

    kind: str = "median"
    standard_landmarks: np.ndarray | None = None
    sites: list = field(default_factory=list)
    site_landmarks: np.ndarray | None = None
    spread: LandmarkSpread | None = None

    @classmethod
    def fit(
        cls, kind: str, landmarks: np.ndarray | None, sites: np.ndarray, reference_site: Any
    ) -> InputNormalizer:
        """Fit the normalization from the training images' landmarks.

        Parameters
        ----------
        kind : {"median", "histogram"}
        landmarks : ndarray of shape (n_images, n_landmarks) or None
            :func:`image_landmarks` of every training image ("histogram" only).
        sites : ndarray of shape (n_images,)
        reference_site : hashable

        Returns
        -------
        InputNormalizer
        """
        check_kind(kind)
        if kind == "median" or landmarks is None:
            return cls("median")
        labels = list(dict.fromkeys(sites.tolist()))
        per_site = np.stack([landmarks[sites == s].mean(axis=0) for s in labels])
        standard = standard_scale(landmarks[sites == reference_site])
        spread = LandmarkSpread.fit(landmarks, sites, labels, per_site, standard)
        return cls("histogram", standard, labels, per_site, spread)

    def with_spread(self, landmarks: np.ndarray, sites: np.ndarray) -> InputNormalizer:
        """This normalization with the site check's yardstick measured on its training images.

        For a model fitted before the check existed: ``landmarks`` and ``sites`` must be
        those of the images it was fitted on, which is verified (every site's mean
        landmarks must equal the stored ones).

        Parameters
        ----------
        landmarks : ndarray of shape (n_images, n_landmarks)
        sites : ndarray of shape (n_images,)

        Returns
        -------
        InputNormalizer

        Raises
        ------
        ValueError
            If the normalization is not "histogram", or the images are not the training
            images.
        """
        if self.kind != "histogram":
            raise ValueError("Only a 'histogram' input normalization has per-site maps.")
        landmarks = np.asarray(landmarks, dtype=np.float64)
        sites = as_labels(sites)
        known = as_labels(self.sites).tolist()
        labels = list(dict.fromkeys(sites.tolist()))
        if set(labels) != set(known):
            raise ValueError(
                f"The images' sites {labels} are not the model's training sites {known}."
            )
        for label in labels:
            mean = landmarks[sites == label].mean(axis=0)
            if not np.allclose(mean, self.known_landmarks(label), rtol=1e-9, atol=0.0):
                raise ValueError(
                    f"The images of site {label!r} are not those the model was fitted on "
                    "(their mean landmarks differ from the stored ones); pass the training "
                    "images and their site labels."
                )
        spread = LandmarkSpread.fit(
            landmarks,
            sites,
            known,
            np.asarray(self.site_landmarks, dtype=np.float64),
            np.asarray(self.standard_landmarks, dtype=np.float64),
        )
        return dataclasses.replace(self, spread=spread)

    def check_sites(
        self, sites: np.ndarray | None, landmarks: Callable[[int], np.ndarray]
    ) -> list[SiteAgreement]:
        """How each labelled group of a seen site agrees with the site's stored map.

        Parameters
        ----------
        sites : ndarray of str of shape (n_images,) or None
            Site labels of the images (text, as :func:`harmonix.inputs.labels.check_sites` gives).
        landmarks : callable
            ``landmarks(i)``: the landmarks of image ``i``.

        Returns
        -------
        list of SiteAgreement
            One per label of a training site in ``sites`` (empty for "median", without
            sites or without a yardstick); the statistic is
            :meth:`LandmarkSpread.statistic`, the mismatch the root mean square of the
            group's deviation in percent of the standard brain median.
        """
        if self.kind == "median" or sites is None or self.spread is None:
            return []
        standard = np.asarray(self.standard_landmarks, dtype=np.float64)
        median = float(standard[_MEDIAN_LANDMARK])
        scatter = 100 * float(np.sqrt(np.mean(np.diag(self.spread.covariance)))) / median
        out = []
        for j, site in enumerate(as_labels(self.sites).tolist()):
            idx = np.flatnonzero(sites == site)
            if not idx.size:
                continue
            stored = np.asarray(self.site_landmarks)[j]
            mean = np.mean([landmarks(int(i)) for i in idx], axis=0)
            d = map_slopes(stored, standard) * (mean - stored)
            stat = self.spread.statistic(d, idx.size, self.spread.counts[j])
            size = 100 * float(np.sqrt(np.mean(d**2))) / median
            out.append(
                SiteAgreement(
                    site,
                    int(idx.size),
                    stat,
                    self.spread.threshold,
                    f"mapped with the stored intensity map, their mean landmarks land "
                    f"{size:.1f} % of the brain median away from the reference scale "
                    f"(training images scatter by {scatter:.1f} %)",
                )
            )
        return out

    @property
    def median(self) -> float:
        """Brain median of every "histogram"-normalized image (the standard median)."""
        if self.standard_landmarks is None:
            raise ValueError("Only a 'histogram' normalization has a common median.")
        return float(self.standard_landmarks[_MEDIAN_LANDMARK])

    def known_landmarks(self, site: Any) -> np.ndarray | None:
        """The stored landmarks of a training site (labels compared as text), or None."""
        if self.kind == "median" or self.site_landmarks is None:
            return None
        rows = dict(zip(as_labels(self.sites).tolist(), np.asarray(self.site_landmarks)))
        return rows.get(as_label(site))

    def pooled_landmarks(
        self,
        sites: np.ndarray | None,
        landmarks: Callable[[int], np.ndarray],
        also: Collection = (),
    ) -> dict[str, np.ndarray]:
        """The landmarks of each site unseen in fit: the mean over its images.

        Parameters
        ----------
        sites : ndarray of str of shape (n_images,) or None
            Site labels of the images (text, as :func:`harmonix.inputs.labels.check_sites` gives).
        landmarks : callable
            ``landmarks(i)``: the landmarks of image ``i`` (read only for these sites).
        also : collection, default=()
            Labels of training sites to pool too (treated as new sites, see
            :meth:`check_sites`).

        Returns
        -------
        dict
            Site label -> mean landmarks (empty for "median" or without sites).
        """
        if self.kind == "median" or sites is None:
            return {}
        labels = sites.tolist()
        return {
            site: np.mean([landmarks(i) for i, s in enumerate(labels) if s == site], axis=0)
            for site in dict.fromkeys(labels)
            if site in also or self.known_landmarks(site) is None
        }

    def site_landmarks_of(
        self,
        sites: np.ndarray | None,
        landmarks: Callable[[int], np.ndarray],
        pooled: dict[str, np.ndarray | None] | None = None,
    ) -> list[np.ndarray | None]:
        """The landmarks to map each image with: its site's, or None (its own).

        Parameters
        ----------
        sites : ndarray of str of shape (n_images,) or None
            Site labels of the images; None: every image uses its own landmarks.
        landmarks : callable
            ``landmarks(i)``: the landmarks of image ``i`` (read only for sites unseen in
            fit and missing from ``pooled``, whose landmarks are the mean over their
            images).
        pooled : dict, default=None
            Landmarks of sites already computed (:meth:`pooled_landmarks`); None as a
            value: the site's stored landmarks (a training site that passed
            :meth:`check_sites`).

        Returns
        -------
        list
            One entry per image (all None for "median" or without sites).
        """
        if self.kind == "median" or sites is None:
            return [None] * (0 if sites is None else len(sites))
        pooled = dict(pooled or {})
        labels = sites.tolist()
        todo = [i for i, s in enumerate(labels) if s not in pooled]
        more = self.pooled_landmarks(sites[todo], lambda j: landmarks(todo[j]))
        pooled.update(more)
        out: list[np.ndarray | None] = []
        for site in labels:
            given = pooled.get(site)
            out.append(given if given is not None else self.known_landmarks(site))
        return out

    def __call__(
        self, data: np.ndarray, landmarks: np.ndarray | None = None
    ) -> tuple[np.ndarray, float]:
        """Normalize one image; return it and the brain median to divide it by.

        Parameters
        ----------
        data : ndarray of shape (i, j, k)
            Raw image, background 0 (not modified).
        landmarks : ndarray, default=None
            Landmarks to map from (its site's); None: the image's own.

        Returns
        -------
        data : ndarray
            ``data`` itself ("median") or its histogram-matched version, background 0.
        median : float
        """
        brain = data != 0
        if self.kind == "median":
            return data, brain_median(data, brain)
        standard = np.asarray(self.standard_landmarks, dtype=np.float64)
        own = image_landmarks(data) if landmarks is None else np.asarray(landmarks)
        mapped = apply_landmarks(data, own, standard, brain)
        # brain voxels mapped to 0 or below stay brain (lowest network value)
        mapped[brain & (mapped <= 0)] = np.float32(1e-6 * standard[-1])
        return mapped, self.median

    def to_dict(self) -> dict:
        """Plain values (for saving)."""
        lm, sl = self.standard_landmarks, self.site_landmarks
        return {
            "kind": self.kind,
            "standard_landmarks": None if lm is None else lm.tolist(),
            "sites": [s.item() if isinstance(s, np.generic) else s for s in self.sites],
            "site_landmarks": None if sl is None else np.asarray(sl).tolist(),
            "site_spread": None if self.spread is None else self.spread.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: dict) -> InputNormalizer:
        """Inverse of :meth:`to_dict`."""
        lm, sl = values.get("standard_landmarks"), values.get("site_landmarks")
        return cls(
            values["kind"],
            None if lm is None else np.asarray(lm, dtype=np.float64),
            list(values.get("sites") or []),
            None if sl is None else np.asarray(sl, dtype=np.float64),
            LandmarkSpread.from_dict(values.get("site_spread")),
        )


def correction_size(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute change ``|y - x|`` inside the brain, on the network scale.

    Parameters
    ----------
    x, y : ndarray
        Network-scale volume before and after the forward generator.
    mask : ndarray of bool
        Brain voxels.

    Returns
    -------
    float
        0 for an unchanged image; 0.1 is a change of a tenth of the brain median.
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return 0.0
    return float(np.mean(np.abs(np.asarray(y)[m] - np.asarray(x)[m])))
