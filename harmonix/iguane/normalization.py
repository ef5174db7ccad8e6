"""Intensity normalization of IGUANe's inputs, and the size of the generator's correction.

IGUANe (Roca et al. 2025) median-normalizes each image (brain median 500) before the
networks; the generator must then learn the whole intensity mapping of every site. With
``"histogram"``, each image is first mapped onto the reference site's Nyúl–Udupa standard
scale (:mod:`harmonix.histogram_matching`, fitted on the reference site's training
images), so that the generator starts from histogram matching and learns only what is
left: spatial effects (bias, blur) and the local contrast a global curve cannot fix. An
identity generator then gives exactly the histogram-matched image, which bounds how far
an unusual image can drift from it.

:func:`correction_size` measures how much the forward generator changed an image; the
estimator compares it with the corrections it made on held-out training images to flag
images unlike those it was trained on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from harmonix.histogram_matching import apply_landmarks, compute_landmarks, standard_scale
from harmonix.iguane.data import brain_median

__all__ = ["INPUT_NORMALIZATIONS", "InputNormalizer", "correction_size"]

#: Accepted values of ``input_normalization``.
INPUT_NORMALIZATIONS = ("median", "histogram")

#: Landmark percentiles of the "histogram" normalization (those of the HM baseline).
LANDMARK_PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
_MEDIAN_LANDMARK = LANDMARK_PERCENTILES.index(50)


@dataclass(frozen=True)
class InputNormalizer:
    """How raw images become the intensities IGUANe median-normalizes.

    Attributes
    ----------
    kind : {"median", "histogram"}
    standard_landmarks : ndarray or None
        The reference site's standard scale ("histogram" only).
    """

    kind: str = "median"
    standard_landmarks: np.ndarray | None = None

    @classmethod
    def fit(cls, kind: str, reference_images: Iterable[np.ndarray]) -> InputNormalizer:
        """Fit the normalization on the reference site's images (background 0).

        Parameters
        ----------
        kind : {"median", "histogram"}
        reference_images : iterable of ndarray
            The reference site's training images ("histogram" only; not read otherwise).

        Returns
        -------
        InputNormalizer
        """
        if kind not in INPUT_NORMALIZATIONS:
            raise ValueError(
                f"input_normalization must be one of {INPUT_NORMALIZATIONS}, got {kind!r}."
            )
        if kind == "median":
            return cls("median")
        landmarks = [compute_landmarks(x, x != 0, LANDMARK_PERCENTILES) for x in reference_images]
        return cls("histogram", standard_scale(np.stack(landmarks)))

    def __call__(self, data: np.ndarray) -> tuple[np.ndarray, float]:
        """Normalize one image; return it and the brain median to divide it by.

        Parameters
        ----------
        data : ndarray of shape (i, j, k)
            Raw image, background 0 (not modified).

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
        landmarks = compute_landmarks(data, brain, LANDMARK_PERCENTILES)
        mapped = apply_landmarks(data, landmarks, standard, brain)
        # brain voxels mapped to 0 or below stay brain (lowest network value)
        mapped[brain & (mapped <= 0)] = np.float32(1e-6 * standard[-1])
        return mapped, float(standard[_MEDIAN_LANDMARK])

    def to_dict(self) -> dict:
        """Plain values (for saving)."""
        lm = self.standard_landmarks
        return {"kind": self.kind, "standard_landmarks": None if lm is None else lm.tolist()}

    @classmethod
    def from_dict(cls, values: dict) -> InputNormalizer:
        """Inverse of :meth:`to_dict`."""
        lm = values.get("standard_landmarks")
        return cls(values["kind"], None if lm is None else np.asarray(lm, dtype=np.float64))


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
