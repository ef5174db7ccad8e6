"""WhiteStripe intensity normalization (the WS baseline), mapped onto a reference site.

WhiteStripe (Shinohara et al. 2014) z-scores a T1-weighted image with the mean and
standard deviation of a "stripe" of normal-appearing white matter (WM): the voxels whose
intensity quantile lies within ``±width`` of the quantile of the WM mode. Here the
z-scores are then mapped onto the reference site's typical WM stripe
(``out = z * sigma_ref + mu_ref``), so outputs of every site share the reference site's
intensity scale. The per-image statistics are a public function,
:func:`whitestripe_stats`.

References
----------
R. T. Shinohara et al., "Statistical normalization techniques for magnetic resonance
imaging", NeuroImage: Clinical 6, 2014.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from harmonix._docs import fill_doc
from harmonix.base import BaseHarmonizer
from harmonix.inputs._reading import Inputs
from harmonix.intensity._voxelstats import BinnedVoxels, brain_values, percentiles, scatter_brain

__all__ = ["WhiteStripeHarmonizer", "whitestripe_stats"]

#: histogram of the brain voxels: this many bins between these two percentiles (exact,
#: of all brain voxels: a subsample would depend on the order the voxels are stored in).
_N_BINS = 2000
_RANGE_PERCENTILES = (0.5, 99.5)
#: least standard deviation, in bins, of the Gaussian that smooths the histogram.
_MIN_SMOOTH_BINS = 10.0
#: a histogram peak counts if its prominence is at least this fraction of the maximum.
_PROMINENCE = 0.05
#: the 3-class Otsu thresholds are searched on the histogram regrouped by this many bins.
_OTSU_GROUP = 10


def _check_width(width: Any) -> float:
    try:
        value = float(width)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"width must be a number in (0, 0.5), got {width!r}.") from exc
    if not 0.0 < value < 0.5:
        raise ValueError(
            f"width must lie in (0, 0.5) (a quantile half-width; 0.05 is usual), got {width!r}."
        )
    return value


def _otsu3_upper(counts: np.ndarray) -> int:
    """Index of the first bin of the brightest class of a 3-class Otsu split of a histogram.

    The two thresholds maximise the between-class variance, searched exhaustively over
    all pairs of bin boundaries (global optimum, no iterations).
    """
    x = np.arange(counts.size, dtype=np.float64)
    p = np.cumsum(counts / counts.sum())
    s = np.cumsum(counts / counts.sum() * x)
    p1, s1 = p[:-2, None], s[:-2, None]  # class 1 = bins [0, i], class 2 = (i, j]
    p2, s2 = p[None, 1:-1] - p1, s[None, 1:-1] - s1
    p3, s3 = 1.0 - p[None, 1:-1], s[-1] - s[None, 1:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = s1**2 / p1 + s2**2 / p2 + s3**2 / p3
    i = np.arange(counts.size - 2)[:, None]
    j = np.arange(1, counts.size - 1)[None, :]
    between[(j <= i) | ~(p1 > 0) | ~(p2 > 0) | ~(p3 > 0)] = -np.inf
    _, j_best = np.unravel_index(np.argmax(between), between.shape)
    return int(j_best) + 2  # class 3 starts after bin j = j_best + 1


def _histogram_quantiles(counts: np.ndarray, centers: np.ndarray, q: Any) -> np.ndarray:
    cdf = np.cumsum(counts) / counts.sum()
    return np.interp(q, cdf, centers)


def _wm_mode(binned: BinnedVoxels) -> float:
    """Intensity of the T1 white-matter mode (see :class:`WhiteStripeHarmonizer`)."""
    centers = binned.inner_centers
    counts = binned.inner_counts.astype(np.float64)
    if not counts.sum() > 0:  # a handful of voxels, all outside the inner range
        return float(np.median(binned.values))
    width = centers[1] - centers[0]
    # Silverman's rule-of-thumb bandwidth (from the IQR) sets the smoothing for few voxels
    q25, q75 = _histogram_quantiles(counts, centers, [0.25, 0.75])
    bandwidth = 0.9 * (q75 - q25) / 1.34 * binned.values.size**-0.2
    sigma = max(_MIN_SMOOTH_BINS, 0.5 * bandwidth / width)
    smooth = gaussian_filter1d(counts, sigma)
    grouped = counts[: counts.size // _OTSU_GROUP * _OTSU_GROUP].reshape(-1, _OTSU_GROUP)
    start = _otsu3_upper(grouped.sum(axis=1)) * _OTSU_GROUP
    peaks, _ = find_peaks(smooth[start:], prominence=_PROMINENCE * smooth.max())
    if peaks.size:
        # sub-bin position: vertex of the parabola through the peak bin and its neighbours
        k = start + int(peaks[-1])
        left, top, right = smooth[k - 1], smooth[k], smooth[k + 1]
        curvature = left - 2.0 * top + right
        shift = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
        return float(centers[k] + shift * width)
    wm_counts = counts[start:]
    if wm_counts.sum() == 0:  # no voxel in the upper class: fall back to the whole histogram
        return float(np.dot(counts, centers) / counts.sum())
    return float(np.dot(wm_counts, centers[start:]) / wm_counts.sum())


def _stripe_stats(values: np.ndarray, width: float) -> tuple[float, float, float]:
    lo, hi = percentiles(values, _RANGE_PERCENTILES)
    if not hi > lo:
        raise ValueError(
            "The image's brain voxels have (almost) one intensity; WhiteStripe needs a T1 "
            "image with grey/white matter contrast."
        )
    binned = BinnedVoxels(values, lo, hi, _N_BINS)
    mode = _wm_mode(binned)
    n = values.size
    below = np.count_nonzero(values < mode)
    at_most = np.count_nonzero(values <= mode)
    q_mode = 0.5 * (below + at_most) / n
    q = np.clip([q_mode - width, q_mode + width], 0.0, 1.0)
    low, high = binned.quantiles(q)
    stripe = values[(values >= low) & (values <= high)]
    if stripe.size < 2:
        raise ValueError(
            f"The white-matter stripe holds {stripe.size} voxel(s); the image has too few "
            "brain voxels or too little intensity variation for WhiteStripe, or width is too "
            "small."
        )
    mu = float(np.mean(stripe, dtype=np.float64))
    sigma = float(np.std(stripe, dtype=np.float64))
    if not sigma > 0:
        raise ValueError(
            "The white-matter stripe has a single intensity (standard deviation 0); the "
            "image has too little intensity variation for WhiteStripe, or width is too small."
        )
    return mu, sigma, mode


@fill_doc
def whitestripe_stats(
    data: np.ndarray, brain: np.ndarray | None = None, width: float = 0.05
) -> tuple[float, float, float]:
    """Mean and standard deviation of an image's white-matter stripe, and its WM mode.

    Parameters
    ----------
    data : ndarray of shape (i, j, k)
        A skull-stripped T1-weighted image (not modified).
    %(brain)s
    width : float, default=0.05
        Half-width of the stripe in quantiles, in (0, 0.5).

    Returns
    -------
    mu : float
        Mean intensity of the stripe voxels.
    sigma : float
        Standard deviation (``ddof=0``) of the stripe voxels.
    mode : float
        Intensity of the white-matter mode.

    Raises
    ------
    ValueError
        If the image has no brain voxels or too little intensity variation.

    See Also
    --------
    WhiteStripeHarmonizer : how the mode and the stripe are found.
    """
    width = _check_width(width)
    values, _ = brain_values(data, brain)
    return _stripe_stats(values, width)


@fill_doc
class WhiteStripeHarmonizer(BaseHarmonizer):
    """WhiteStripe normalization of T1 images, expressed on the reference site's scale.

    Each image is z-scored with the mean and standard deviation of its white-matter stripe
    (see :func:`whitestripe_stats`); fit learns the reference site's mean stripe mean
    ``mu_ref`` and mean stripe standard deviation ``sigma_ref`` (raw intensities), and
    transform returns ``z * sigma_ref + mu_ref`` for brain voxels, 0 elsewhere. It needs no
    site labels at transform time and serves images of any site.

    Parameters
    ----------
    %(reference_site)s
    width : float, default=0.05
        Half-width of the stripe in quantiles, in (0, 0.5): the stripe holds the voxels
        whose quantile lies within ``q_mode ± width``.
    %(mask)s

    Attributes
    ----------
    reference_mean_ : float
        Mean over the reference site's images of their stripe means.
    reference_std_ : float
        Mean over the reference site's images of their stripe standard deviations.
    width_ : float
        The stripe half-width used, copied from ``width`` at fit (transform uses it, so
        ``set_params`` after fit changes nothing until the next fit).
    %(reference_attributes)s

    Notes
    -----
    Finding the WM mode (deterministic; T1 contrast, WM brightest):

    1. histogram of the brain voxels with 2000 bins between their 0.5th and 99.5th
       percentiles (exact, of all brain voxels, so the result does not depend on the
       order the voxels are stored in: a left-right flipped copy of an image gives the
       same numbers; the R WhiteStripe package also uses 2000 bins), smoothed with a
       Gaussian of standard deviation ``max(10 bins, h / 2)``, ``h`` being Silverman's
       rule-of-thumb bandwidth ``0.9 * IQR / 1.34 * n ** -0.2`` (so 10 bins, 0.5 % of the
       range, for a 1 mm brain; more for small images, whose histograms are noisier);
    2. a three-class (CSF, GM, WM) Otsu split of the histogram (both thresholds searched
       exhaustively on the histogram regrouped into 200 bins) gives the WM class: the bins
       above the upper threshold;
    3. as in WhiteStripe, the WM mode is the last (highest) peak of the smoothed histogram,
       here among the WM class's bins, whose prominence (within those bins) is at least 5 %
       of the histogram's maximum, located to a fraction of a bin by the vertex of the
       parabola through the peak bin and its two neighbours;
    4. if the WM class has no such peak, WM shows only as a shoulder of the GM peak
       (typical of images with a strong uncorrected bias field, such as
       :func:`harmonix.datasets.make_multisite`'s) and the mode is the WM class's mean.
       Plain "last peak" would pick the grey-matter peak there. When the GM/WM contrast
       is low as well, the histogram is a plateau from GM to WM and this mean can lie
       above the WM voxels' median by up to about half the GM-WM gap (seen on some
       simulated sites); bias field correction before WhiteStripe avoids it.

    The mode's quantile is its mid-rank among the brain voxels; the stripe bounds are the
    quantiles ``q_mode ± width`` (clipped to [0, 1], linear interpolation) and the stripe
    holds the voxels between them, bounds included. Intensity-normalization's KDE on an
    80-point grid, by contrast, quantizes the mode to about 1 % of the WM intensity.

    WhiteStripe assumes T1 contrast; apply it to skull-stripped images, ideally after bias
    field correction.

    Grid: the stripe is found from the brain's intensity histogram, which does not depend
    on the voxel size, shape, orientation or storage order, so %(any_grid)s

    %(ignores_covariates)s

    Examples
    --------
    >>> import numpy as np
    >>> from harmonix.intensity.whitestripe import WhiteStripeHarmonizer
    >>> rng = np.random.default_rng(0)
    >>> wm = rng.normal(100, 5, 6000)  # a "T1": GM around 60, WM around 100
    >>> img = np.concatenate([rng.normal(60, 8, 6000), wm]).reshape(20, 20, 30)
    >>> img = np.pad(img, 5)  # background 0 around the "brain"
    >>> other = np.where(img != 0, 3 * img + 20, 0)  # site "b": another scale
    >>> imgs = np.stack([img, other]).astype(np.float32)
    >>> ws = WhiteStripeHarmonizer(reference_site="a").fit(imgs, ["a", "b"])
    >>> out = ws.transform(imgs)
    >>> bool(np.allclose(out[1], out[0], atol=1e-3))
    True
    """

    _checked_params = {"width_": ("width", _check_width)}

    def __init__(self, reference_site: Any = None, width: float = 0.05, mask: Any = None):
        self.reference_site = reference_site
        self.width = width
        self.mask = mask

    def _fit(self, data: Inputs) -> None:
        width = _check_width(self.width)
        stats = [_stripe_stats(v, width) for v in self._reference_values(data.imgs, data.sites)]
        means, stds, _ = zip(*stats)
        self.reference_mean_ = float(np.mean(means))
        self.reference_std_ = float(np.mean(stds))
        self.width_ = width

    def _transform_one(
        self, data: np.ndarray, brain: np.ndarray, site: Any, age: float | None
    ) -> np.ndarray:
        values = data[brain]
        mu, sigma, _ = _stripe_stats(values, self.width_)
        gain = self.reference_std_ / sigma
        dtype = np.float64 if values.dtype == np.float64 else np.float32
        out = values * dtype(gain)  # out = (x - mu) / sigma * sigma_ref + mu_ref
        out += dtype(self.reference_mean_ - mu * gain)
        return scatter_brain(out, brain)
