"""Site-paired, age-balanced sampling of IGUANe training pairs.

For every step and every source site the trainer draws (source, reference) pairs with
:class:`SitePairSampler`; with ages, pairs are age-balanced
(:func:`age_bin_probabilities`), and with categorical covariates (strata) balanced over
them too. Pairs are :class:`Pair` named tuples, so the order is never ambiguous.

All randomness comes from a :class:`numpy.random.Generator` passed by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Pair", "SitePairSampler", "age_bin_probabilities"]


class Pair(NamedTuple):
    """Indices of one (source, reference) training pair."""

    source: int
    reference: int


def age_bin_probabilities(
    source_ages: Sequence[float], reference_ages: Sequence[float], bin_width: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """Common age-bin distribution of a source site and the reference site.

    Ages of both sites are binned with consecutive bins of ``bin_width`` years starting at
    the *shared* minimum age ``max(min_src, min_ref)``, as many as needed to reach the
    shared maximum ``min(max_src, max_ref)`` (the last bin is closed); ages outside the bins
    are never drawn. Each site's bin distribution is the fraction of its images in each
    bin; the common distribution is their bin-wise minimum, renormalized: a bin missing on
    either side gets 0, and drawing both images of a pair from one bin gives the source and
    the reference images the same age distribution.

    Parameters
    ----------
    source_ages, reference_ages : sequence of float
    bin_width : float, default=5
        In the unit of the ages (years).

    Returns
    -------
    edges : ndarray of shape (n_bins + 1,)
    probs : ndarray of shape (n_bins,)
        Sums to 1, or is empty (with ``edges`` empty) when no bin holds ages of both
        sites.
    """
    src = np.asarray(source_ages, dtype=float)
    ref = np.asarray(reference_ages, dtype=float)
    if not bin_width > 0:
        raise ValueError(f"bin_width must be positive, got {bin_width!r}.")
    if src.size == 0 or ref.size == 0:
        return np.empty(0), np.empty(0)
    low, high = max(src.min(), ref.min()), min(src.max(), ref.max())
    if low > high:
        return np.empty(0), np.empty(0)
    n_bins = max(1, math.ceil((high - low) / bin_width))
    edges = low + bin_width * np.arange(n_bins + 1, dtype=float)
    probs = _common_distribution(_bin_of(src, edges), _bin_of(ref, edges), n_bins)
    if probs.size == 0:  # the ranges overlap but no bin holds images of both sites
        return np.empty(0), np.empty(0)
    return edges, probs


def _common_distribution(src_keys: np.ndarray, ref_keys: np.ndarray, n_keys: int) -> np.ndarray:
    """Bin-wise minimum of two sites' distributions over keys ``0..n_keys - 1``,
    renormalized (key ``n_keys`` marks images outside every bin); empty when no key holds
    images of both sites."""
    p_src = np.bincount(src_keys, minlength=n_keys + 1)[:n_keys] / src_keys.size
    p_ref = np.bincount(ref_keys, minlength=n_keys + 1)[:n_keys] / ref_keys.size
    common = np.minimum(p_src, p_ref)
    if common.sum() == 0:
        return np.empty(0)
    return common / common.sum()


def _bin_of(ages: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each age (``len(edges) - 1`` for ages outside the binned range)."""
    n_bins = len(edges) - 1
    idx = np.floor((ages - edges[0]) / (edges[1] - edges[0])).astype(int)
    idx = np.where(ages == edges[-1], n_bins - 1, idx)  # the last bin is closed
    # ages beyond the shared range but inside the last bin's span are outside it too
    outside = (ages < edges[0]) | (idx >= n_bins) | (ages > edges[-1])
    return np.where(outside, n_bins, np.clip(idx, 0, n_bins - 1))


class SitePairSampler:
    """Draw (source, reference) training pairs for every source site.

    Parameters
    ----------
    sites : array-like of shape (n_images,)
        Site label of every image.
    reference_site : hashable
        The reference label (must be in ``sites``).
    ages : array-like of shape (n_images,), default=None
        With ages, pairs are age-balanced: a bin is drawn from
        :func:`age_bin_probabilities` of the source site and the reference, then both
        images uniformly within it. A site whose ages do not overlap the reference's is
        sampled uniformly (see :attr:`balanced`).
    indices : array-like of int, default=None
        Images that may be drawn (e.g. the training split); all by default.
    age_bin_width : float, default=5
        Width of the age bins, in years.
    strata : array-like of shape (n_images,), default=None
        A categorical label of every image (e.g. its sex and diagnosis,
        :func:`harmonix.inputs.covariates.categorical_strata`). Pairs are then balanced over the
        labels as over the age bins: the bins are (label, age bin) combinations, drawn
        from the distribution the source and the reference share, so that a pair never
        joins, say, a patient and a control.

    Attributes
    ----------
    source_sites : list
        Source labels (every label but the reference, in sorted order).
    balanced : dict
        Per source site, whether its pairs are balanced (over ages and/or strata). A site
        that shares no bin with the reference is sampled uniformly.
    """

    def __init__(
        self,
        sites: Sequence[Hashable],
        reference_site: Hashable,
        ages: Sequence[float] | None = None,
        *,
        indices: Sequence[int] | None = None,
        age_bin_width: float = 5.0,
        strata: Sequence[Hashable] | None = None,
    ) -> None:
        sites = np.asarray(sites)
        pool = np.arange(len(sites)) if indices is None else np.asarray(indices, dtype=int)
        labels = sorted(set(sites.tolist()), key=_sort_key)
        if reference_site not in labels:
            raise ValueError(f"reference_site {reference_site!r} is not among {labels}.")
        self.reference_site = reference_site
        self.source_sites = [s for s in labels if s != reference_site]
        by_site = {s: pool[sites[pool] == s] for s in labels}
        for s, idx in by_site.items():
            if idx.size == 0:
                raise ValueError(f"Site {s!r} has no training image left to sample.")
        self._ref = by_site[reference_site]
        self._src = {s: by_site[s] for s in self.source_sites}
        self._bins: dict[Any, tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]] = {}
        self.balanced = {s: False for s in self.source_sites}
        if ages is None and strata is None:
            return
        codes = None
        if strata is not None:
            _, codes = np.unique(np.asarray(strata), return_inverse=True)
            codes = codes.ravel()
        ages = None if ages is None else np.asarray(ages, dtype=float)
        for s in self.source_sites:
            keys = self._keys(s, ages, codes, age_bin_width)
            if keys is None:
                continue
            src_keys, ref_keys, n_keys = keys
            probs = _common_distribution(src_keys, ref_keys, n_keys)
            if probs.size == 0:
                continue
            self._bins[s] = (
                probs,
                [self._src[s][src_keys == b] for b in range(n_keys)],
                [self._ref[ref_keys == b] for b in range(n_keys)],
            )
            self.balanced[s] = True

    def _keys(
        self, site: Hashable, ages: np.ndarray | None, codes: np.ndarray | None, width: float
    ) -> tuple[np.ndarray, np.ndarray, int] | None:
        """Bin of every source and reference image: its age bin (of the pair's shared age
        range) combined with its stratum; ``n_keys`` marks images outside every bin. None
        when neither can balance the pair (ages that do not overlap, no strata)."""
        src, ref = self._src[site], self._ref
        src_keys, ref_keys, n_keys = np.zeros(src.size, int), np.zeros(ref.size, int), 1
        if ages is not None:
            edges, probs = age_bin_probabilities(ages[src], ages[ref], width)
            if probs.size:
                n_keys = len(probs)
                src_keys, ref_keys = _bin_of(ages[src], edges), _bin_of(ages[ref], edges)
            elif codes is None:
                return None
        if codes is not None:
            n_strata = int(codes.max()) + 1
            outside = n_keys * n_strata
            src_keys = np.where(src_keys == n_keys, outside, src_keys * n_strata + codes[src])
            ref_keys = np.where(ref_keys == n_keys, outside, ref_keys * n_strata + codes[ref])
            n_keys = outside
        return src_keys, ref_keys, n_keys

    def sample(self, site: Hashable, rng: np.random.Generator) -> Pair:
        """Draw one pair for source site ``site``.

        Parameters
        ----------
        site : hashable
            A source site label.
        rng : numpy.random.Generator

        Returns
        -------
        Pair
            ``Pair(source=i, reference=j)`` image indices.
        """
        if site in self._bins:
            probs, src_bins, ref_bins = self._bins[site]
            b = int(rng.choice(len(probs), p=probs))
            return Pair(int(rng.choice(src_bins[b])), int(rng.choice(ref_bins[b])))
        return Pair(int(rng.choice(self._src[site])), int(rng.choice(self._ref)))


def _sort_key(label: Any) -> tuple[str, Any]:
    return (type(label).__name__, label)
