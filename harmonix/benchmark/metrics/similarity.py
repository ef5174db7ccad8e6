"""Image-similarity metrics: do a subject's images agree across sites, are they its own,
how close are they to the truth, and are the differences between subjects kept?

- :func:`traveling_subject_ssim_score` (on :func:`masked_ssim`): one subject's images at
  different sites look alike;
- :func:`subject_specificity_score`: and more alike than two subjects' images;
- :func:`truth_ssim_score`: each image against its ground truth (synthetic data);
- :func:`distance_correlation_score`: inter-subject distances within a site kept.

Every image is first put on the common intensity scale (:func:`robust_scale`; see
:mod:`harmonix.benchmark.metrics` for the rule, and for the registry of every metric).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
from scipy import ndimage, stats

from harmonix._docs import fill_doc
from harmonix.benchmark.metrics.biology import pearson
from harmonix.benchmark.metrics.scale import _as_labels, _as_mask, robust_scale


# ----------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------
def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def masked_ssim(
    a: np.ndarray,
    b: np.ndarray,
    mask: np.ndarray,
    *,
    data_range: float = 1.0,
    win_size: int = 7,
) -> float:
    """Mean of the 3-D SSIM map of two images inside a mask, from in-mask windows only.

    SSIM (Wang et al. 2004) compares local means, variances and the covariance of two
    images in a ``win_size``-voxel cubic window around each voxel, with the constants
    ``C1 = (0.01 * data_range) ** 2`` and ``C2 = (0.03 * data_range) ** 2`` and the sample
    covariance, as :func:`skimage.metrics.structural_similarity` with a uniform window.
    Here each window's statistics use **only the voxels of the window that lie in the
    mask** (a masked average), and the map is averaged over the mask voxels whose
    window holds at least 2 of them. Voxels outside the mask never enter a window, so two
    images do not look alike because they share a zero background: two independent
    uniform-noise volumes score about 0 (0.008 at 4 mm and 0.002 at 2 mm on the brain
    mask of the synthetic data; with background in the windows, as in harmonix 0.1.0,
    0.23 and 0.12). Where the whole window lies in the mask this is skimage's SSIM
    exactly.

    Parameters
    ----------
    a, b : ndarray of shape (i, j, k)
        Images already on a common scale (e.g. from :func:`robust_scale`).
    mask : ndarray of shape (i, j, k)
        Voxels compared: they make up the windows and their SSIM values are averaged.
    data_range : float, default=1.0
        Dynamic range of the images (1 for images from :func:`robust_scale`).
    win_size : int, default=7
        Odd side of the SSIM window (voxels).

    Returns
    -------
    float
        Mean SSIM inside the mask: 1 for identical images, about 0 for unrelated ones
        (the constants leave a small positive floor for low-variance noise: 0.04 for two
        independent Gaussian noises of standard deviation 0.1 on a range of 1).
    """
    smap = _ssim_map(a, b, mask, data_range=data_range, win_size=win_size)
    values = smap[np.isfinite(smap)]
    if not len(values):
        raise ValueError("The mask has no voxel with another mask voxel in its SSIM window.")
    return float(values.mean())


def _ssim_map(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray, *, data_range: float, win_size: int
) -> np.ndarray:
    """SSIM of every mask voxel from its window's mask voxels (see :func:`masked_ssim`);
    NaN outside the mask and where the window holds fewer than 2 mask voxels."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(
            f"masked_ssim needs two 3-D images of one shape; got {a.shape}, {b.shape}."
        )
    if (
        isinstance(win_size, bool)
        or not isinstance(win_size, int | np.integer)
        or win_size < 1
        or win_size % 2 == 0
    ):
        raise ValueError(f"win_size must be an odd positive integer, got {win_size!r}.")
    m = _as_mask(mask, a.shape)
    box = _bbox(m)  # windows read mask voxels only: the mask's bounding box suffices
    inside = m[box]
    x, y = np.where(inside, a[box], 0.0), np.where(inside, b[box], 0.0)

    def window_sum(v: np.ndarray) -> np.ndarray:
        # uniform_filter averages; zero padding outside the box adds nothing to the sums
        return ndimage.uniform_filter(v, win_size, mode="constant") * win_size**3

    count = window_sum(inside.astype(np.float64))
    use = inside & (count >= 1.5)  # at least 2 mask voxels in the window
    n = count[use]
    mx, my = window_sum(x)[use] / n, window_sum(y)[use] / n
    cov_norm = n / (n - 1.0)
    vx = (window_sum(x * x)[use] / n - mx * mx) * cov_norm
    vy = (window_sum(y * y)[use] / n - my * my) * cov_norm
    vxy = (window_sum(x * y)[use] / n - mx * my) * cov_norm
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = np.full(a.shape, np.nan)
    sub = np.full(inside.shape, np.nan)
    sub[use] = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    out[box] = sub
    return out


@fill_doc
def traveling_subject_ssim_score(
    imgs: Any,
    subjects: Any,
    sites: Any,
    mask: Any,
    *,
    include: Any = None,
    value_range: tuple[float, float] | None = None,
    win_size: int = 7,
    return_pairs: bool = False,
) -> float | tuple[float, list[tuple[int, int, float]]]:
    """Traveling-subject SSIM: do one subject's images look alike at every site?

    All images are put on one scale (:func:`robust_scale`); then for every subject and
    every pair of its images from *different* sites, the SSIM inside the mask
    (:func:`masked_ssim`, ``data_range=1``) is computed. The score is the mean over all
    such (subject, site pair) pairs.

    It judges agreement only: a method that returns the same image for every input
    scores 1, as the oracle does. :func:`subject_specificity_score` asks whether the
    agreement is the subject's own.

    Parameters
    ----------
    %(bm_pairs)s
    include : array-like of bool, shape (n_images,), default=None
        Score only the pairs that contain at least one included image (e.g. the images of
        unseen sites, compared with the same subjects' images at any other site). All
        pairs by default.
    %(bm_value_range)s
    win_size : int, default=7
        SSIM window.
    return_pairs : bool, default=False
        Also return ``(index_a, index_b, ssim)`` for each pair.

    Returns
    -------
    float or (float, list of tuple)
        Mean SSIM (NaN when no subject has images at two sites).
    """
    arr = robust_scale(imgs, mask, value_range=value_range)
    subjects, sites, inc = _pair_labels(subjects, sites, include, len(arr))
    m = _as_mask(mask, arr.shape[1:])
    pairs = [
        (i, j, masked_ssim(arr[i], arr[j], m, win_size=win_size))
        for i, j in cross_site_pairs(subjects, sites, inc)
    ]
    score = float(np.mean([p[2] for p in pairs])) if pairs else float("nan")
    return (score, pairs) if return_pairs else score


def _pair_labels(
    subjects: Any, sites: Any, include: Any, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    subjects = _as_labels(subjects, n, "subjects")
    sites = _as_labels(sites, n, "sites")
    inc = np.ones(n, bool) if include is None else _as_labels(include, n, "include").astype(bool)
    return subjects, sites, inc


def cross_site_pairs(
    subjects: np.ndarray, sites: np.ndarray, include: np.ndarray
) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of one subject's images at two different sites,
    keeping the pairs with at least one ``include``-d image (subjects in order of first
    appearance)."""
    pairs = []
    for subject in dict.fromkeys(subjects.tolist()):
        idx = np.flatnonzero(subjects == subject)
        for i, j in combinations(idx.tolist(), 2):
            if sites[i] != sites[j] and (include[i] or include[j]):
                pairs.append((i, j))
    return pairs


def _correlations(arr: np.ndarray, m: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Pearson correlation matrix of the images' voxels inside the mask (float64; 0 for an
    image without variance)."""
    vox = arr[:, m]
    mean = vox.mean(axis=1, dtype=np.float64)[:, None]
    gram = np.zeros((len(vox), len(vox)))
    for start in range(0, vox.shape[1], chunk):
        c = vox[:, start : start + chunk].astype(np.float64) - mean
        gram += c @ c.T
    sd = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    scale = np.where(sd > 0, sd, np.inf)
    return gram / scale[:, None] / scale[None, :]


def specificity_from(same: np.ndarray, other: np.ndarray) -> float:
    """:func:`subject_specificity_score` from per-pair correlations: ``(mean(same) -
    mean(other)) / (1 - mean(other))``, 0 when every image is alike (``other`` = 1)."""
    if len(same) == 0:
        return float("nan")
    ms, mo = float(np.mean(same)), float(np.mean(other))
    return (ms - mo) / (1.0 - mo) if 1.0 - mo > 1e-9 else 0.0


@fill_doc
def subject_specificity_score(
    imgs: Any,
    subjects: Any,
    sites: Any,
    mask: Any,
    *,
    include: Any = None,
    value_range: tuple[float, float] | None = None,
    return_pairs: bool = False,
) -> float | tuple[float, np.ndarray]:
    """Is a subject's image at one site more like its own image at another site than like
    other subjects' images there?

    The traveling-subject SSIM rewards images that look alike across sites, so a method
    that returns one image for every input (a mean image) scores 1 on it. This score asks
    for subject-specific agreement. All images are put on one scale
    (:func:`robust_scale`); for every pair of a subject's images at two different sites
    ``A`` and ``B`` (the pairs of :func:`traveling_subject_ssim_score`), ``same`` is the
    Pearson correlation of the two images' voxels inside the mask and ``other`` the mean
    correlation of the subject's image at ``A`` with the other subjects' images at ``B``
    and of its image at ``B`` with the other subjects' images at ``A``. The score is

    ``(mean(same) - mean(other)) / (1 - mean(other))``

    over all pairs: the share of the room above what any two subjects share that the
    subject's own images take. 1: each subject's images are identical across sites (the
    oracle); 0: a subject's images are no more alike than any two subjects' (every output
    the same image, or noise); negative: less alike. The correlation ignores a global
    scale or offset of each image, which the SSIM judges.

    Parameters
    ----------
    %(bm_pairs)s
    include : array-like of bool, shape (n_images,), default=None
        Score only the pairs that contain at least one included image (as in
        :func:`traveling_subject_ssim_score`).
    %(bm_value_range)s
    return_pairs : bool, default=False
        Also return an array of ``(index_a, index_b, same, other)`` rows, one per pair.

    Returns
    -------
    float or (float, ndarray of shape (n_pairs, 4))
        The score (NaN when no subject has images at two sites, or no site has another
        subject to compare with).
    """
    arr = robust_scale(imgs, mask, value_range=value_range)
    subjects, sites, inc = _pair_labels(subjects, sites, include, len(arr))
    corr = _correlations(arr, _as_mask(mask, arr.shape[1:]))
    rows = []
    for i, j in cross_site_pairs(subjects, sites, inc):
        at_j = (sites == sites[j]) & (subjects != subjects[i])
        at_i = (sites == sites[i]) & (subjects != subjects[i])
        if at_i.any() and at_j.any():
            other = (corr[i, at_j].mean() + corr[at_i, j].mean()) / 2.0
            rows.append((i, j, corr[i, j], other))
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    score = specificity_from(table[:, 2], table[:, 3])
    return (score, table) if return_pairs else score


@fill_doc
def truth_ssim_score(
    imgs: Any,
    truth: Any,
    mask: Any,
    *,
    value_range: tuple[float, float] | None = None,
    truth_range: tuple[float, float] | None = None,
    win_size: int = 7,
    return_values: bool = False,
) -> float | tuple[float, np.ndarray]:
    """SSIM of each harmonized image against its ground truth, averaged over images.

    ``imgs`` and ``truth`` are each put on one scale by :func:`robust_scale` (separately:
    the truth's units need not be the method's), then compared image by image with
    :func:`masked_ssim`.

    Parameters
    ----------
    %(bm_harmonized)s
    truth : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        The ideal output of each image (e.g. the subject rendered clean at the reference
        site, ``make_multisite(...).truth``).
    %(bm_mask2)s
    %(bm_value_range)s
    truth_range : tuple of float, default=None
        The same for ``truth``.
    win_size : int, default=7
        SSIM window.
    return_values : bool, default=False
        Also return the SSIM of each image.

    Returns
    -------
    float or (float, ndarray)
        Mean SSIM over images.

    Notes
    -----
    The truth has the reference site's contrast, curve, blur and scale, but no bias field
    or noise, so it is not what any scan looks like: a perfect mapping to the reference
    site (each subject's own reference-site scan, the benchmark's oracle) scores below 1,
    and a method that also smooths noise can score above it. Use it to rank how close
    methods get to the reference *contrast*; the traveling-subject SSIM judges the site
    effect itself.
    """
    a = robust_scale(imgs, mask, value_range=value_range)
    t = robust_scale(truth, mask, value_range=truth_range)
    if a.shape != t.shape:
        raise ValueError(f"imgs {a.shape} and truth {t.shape} must have the same shape.")
    m = _as_mask(mask, a.shape[1:])
    values = np.array([masked_ssim(x, y, m, win_size=win_size) for x, y in zip(a, t)])
    score = float(values.mean())
    return (score, values) if return_values else score


# ----------------------------------------------------------------------------------------
# Inter-subject distances
# ----------------------------------------------------------------------------------------
def _distance_matrix(arr: np.ndarray, m: np.ndarray) -> np.ndarray:
    vox = arr[:, m]
    d = np.zeros((len(vox), len(vox)))
    for i, j in combinations(range(len(vox)), 2):
        d[i, j] = d[j, i] = np.abs(vox[i] - vox[j]).mean()
    return d


def site_distances(
    before: Any,
    after: Any,
    sites: Any,
    mask: Any,
    *,
    before_range: tuple[float, float] | None = None,
    value_range: tuple[float, float] | None = None,
) -> dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Inter-subject distances within each site, before and after harmonization.

    Returns ``{site: (index, d_before, d_after)}`` for the sites with at least 3 images:
    the images' indices and their mean-absolute-difference matrices on the common scale
    (see :func:`distance_correlation_score`).
    """
    b = robust_scale(before, mask, value_range=before_range)
    a = robust_scale(after, mask, value_range=value_range)
    if a.shape != b.shape:
        raise ValueError(f"before {b.shape} and after {a.shape} must have the same shape.")
    sites = _as_labels(sites, len(a), "sites")
    m = _as_mask(mask, a.shape[1:])
    out = {}
    for site in dict.fromkeys(sites.tolist()):
        idx = np.flatnonzero(sites == site)
        if len(idx) >= 3:
            out[site] = (idx, _distance_matrix(b[idx], m), _distance_matrix(a[idx], m))
    return out


def distance_correlation_from(
    distances: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    method: str = "spearman",
    keep: np.ndarray | None = None,
) -> float:
    """:func:`distance_correlation_score` from :func:`site_distances`.

    ``keep`` (image indices, repeats allowed, e.g. a bootstrap sample) restricts the pairs
    to those between two different draws of kept images; pairs of an image with itself
    are left out.
    """
    values = []
    for idx, db, da in distances.values():
        pos = np.arange(len(idx))
        if keep is not None:
            where = {v: k for k, v in enumerate(idx.tolist())}
            pos = np.array([where[i] for i in np.asarray(keep).tolist() if i in where], int)
        ii, jj = np.triu_indices(len(pos), 1)
        ii, jj = pos[ii], pos[jj]
        ii, jj = ii[ii != jj], jj[ii != jj]
        if len(ii) < 3 or np.ptp(db[ii, jj]) == 0:
            continue  # fewer than 3 pairs, or every distance equal before: undefined
        x, y = db[ii, jj], da[ii, jj]
        if np.ptp(y) == 0:  # every subject as far from every other: no difference kept
            values.append(0.0)
            continue
        if method == "spearman":
            x, y = stats.rankdata(x), stats.rankdata(y)
        values.append(pearson(x, y))
    return float(np.mean(values)) if values else float("nan")


@fill_doc
def distance_correlation_score(
    before: Any,
    after: Any,
    sites: Any,
    mask: Any,
    *,
    method: str = "spearman",
    before_range: tuple[float, float] | None = None,
    value_range: tuple[float, float] | None = None,
) -> float:
    """Are inter-subject differences within a site kept by harmonization?

    ``before`` and ``after`` are each put on one scale (:func:`robust_scale`). Within each
    site, the distance between two subjects is the mean absolute voxel difference inside
    the mask; the score is the correlation between the distances before and after
    harmonization, averaged over the sites that have at least 3 images (3 pairs). An
    increasing affine intensity map of all images scores exactly 1. The score is
    insensitive to a site's global intensity scale (other metrics judge that), so by
    default each set is scaled by its own pooled range.

    A site whose distances after harmonization are all equal (e.g. every output the same
    image) keeps no difference between its subjects and scores 0, as do outputs
    unrelated to the inputs (noise) on average; a site whose distances are all equal
    *before* is left out (nothing to keep). The rank correlation does not see a uniform
    shrinking of the distances (outputs ``mean + 0.01 * (input - mean)`` score 1).

    Parameters
    ----------
    before : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        Images before harmonization.
    after : ndarray of shape (n_images, i, j, k) or list of 3-D arrays
        The same images after harmonization, in the same order.
    sites : array-like of shape (n_images,)
        Site of each image.
    %(bm_mask2)s
    method : {"spearman", "pearson"}, default="spearman"
        Rank correlation (robust to a monotone change of the distance scale) or linear.
    before_range, value_range : tuple of float, default=None
        Intensity ranges mapped to ``[0, 1]`` for ``before`` and ``after``
        (:func:`robust_scale`); default: the pooled robust range of each.

    Returns
    -------
    float
        Mean correlation over sites (NaN when no site has 3 images with distinct
        distances before harmonization).
    """
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}.")
    distances = site_distances(
        before, after, sites, mask, before_range=before_range, value_range=value_range
    )
    return distance_correlation_from(distances, method=method)
