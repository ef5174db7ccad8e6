"""The transform path of :class:`~harmonix.iguane.estimator.IGUANeHarmonizer`.

For every image, one at a time: the site check of its label's stored intensity map
(:mod:`harmonix.iguane.inputs.site_agreement`, acted on by ``site_check``), the input
normalization and the network grid (:mod:`harmonix.iguane.inputs`), the forward generator
(:func:`harmonix.iguane.inference.harmonize_volume`), the guard's two scores
(:mod:`harmonix.iguane.guard`) and the way back to the image's grid and to the reference
site's intensity scale. :func:`transform_images` acts on the guard's flags
(``ood_action``); :func:`guard_table` sums everything up per labelled group.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from harmonix.base import BaseHarmonizer
from harmonix.iguane.devices import autocast_dtype, resolve_device
from harmonix.iguane.guard import ContrastProfile, OutOfDistributionWarning, check_ood
from harmonix.iguane.inference import harmonize_volume
from harmonix.iguane.inputs.normalization import InputNormalizer, correction_size, image_landmarks
from harmonix.iguane.inputs.volumes import (
    PreparedVolume,
    check_input_shape,
    from_network_scale,
    prepare_volume,
)
from harmonix.iguane.training.config import check_cpu_threads
from harmonix.inputs.site_check import act_on_agreements, check_policy
from harmonix.io import ImageCollection, as_collection

__all__ = [
    "checked_statistics",
    "contrast_profile",
    "fitted_inputs",
    "guard_table",
    "harmonize_all",
    "network_inputs",
    "normalizer",
    "site_check",
    "transform_images",
]


def fitted_inputs(
    est: BaseHarmonizer, imgs: Any, sites: Any
) -> tuple[ImageCollection, np.ndarray | None]:
    """Check the model is fitted; the images as a collection and the checked sites."""
    check_is_fitted(est)
    collection = as_collection(imgs)
    sites, _, _ = est.check_transform_metadata(len(collection), sites)
    return collection, sites


def normalizer(est: BaseHarmonizer) -> InputNormalizer:
    """The fitted input normalization (median normalization for a model without one)."""
    values = getattr(est, "input_normalization_", None)
    return InputNormalizer() if values is None else InputNormalizer.from_dict(values)


def contrast_profile(est: BaseHarmonizer) -> ContrastProfile | None:
    """The fitted contrast profile of the guard; None for a model without one."""
    reference = getattr(est, "reference_profile_", None)
    if reference is None:
        return None
    profile = ContrastProfile()
    profile.reference = np.asarray(reference, dtype=np.float64)
    return profile


def site_check(
    est: BaseHarmonizer, imgs: ImageCollection, sites: np.ndarray | None
) -> tuple[list, Callable[[int], np.ndarray]]:
    """The site agreements of the training labels, and the images' landmarks (cached)."""
    cache: dict[int, np.ndarray] = {}

    def landmarks(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = image_landmarks(imgs[i])
        return cache[i]

    return normalizer(est).check_sites(sites, landmarks), landmarks


def checked_statistics(
    est: BaseHarmonizer, imgs: ImageCollection, sites: np.ndarray | None
) -> tuple[dict[str, Any], list]:
    """Per site of ``sites`` ("histogram" normalization), after the site check (which may
    warn or raise): the mean landmarks of a site unseen in fit; for a training site, None
    (its stored map) once its images passed the check, or their mean landmarks when they
    disagree with it and ``site_check="refit"``. And the agreements."""
    agreements, landmarks = site_check(est, imgs, sites)
    new = act_on_agreements(
        agreements,
        check_policy(est.site_check),
        what="intensity map",
        as_new="its intensity map is fitted from its own images",
    )
    pooled = normalizer(est).pooled_landmarks(sites, landmarks, also=new)
    checked = {a.site for a in agreements}
    stats: dict[str, Any] = {}
    for site in dict.fromkeys([] if sites is None else sites.tolist()):
        if site in pooled:
            stats[site] = pooled[site]
        elif site in checked:
            stats[site] = None  # the stored map, checked
    return stats, agreements


def network_inputs(
    est: BaseHarmonizer,
    imgs: ImageCollection,
    sites: np.ndarray | None = None,
    stats: dict[str, Any] | None = None,
) -> Iterator[tuple[PreparedVolume, np.ndarray, np.ndarray]]:
    """Yield (prepared volume, brain mask, network input with background 0) per image,
    normalized as in ``transform`` (``stats``: ``site_statistics`` of some sites)."""
    input_shape = check_input_shape(est.input_shape_)
    norm = normalizer(est)
    site_lm = norm.site_landmarks_of(sites, lambda i: image_landmarks(imgs[i]), pooled=stats)
    for i, (data, brain) in enumerate(est._iter_brains(imgs)):  # one image at a time
        normalized, median = norm(data, site_lm[i] if site_lm else None)
        prepared = prepare_volume(normalized, median, input_shape=input_shape)
        yield prepared, brain, np.where(prepared.mask, prepared.x, np.float32(0.0))


def harmonize_all(
    est: BaseHarmonizer,
    imgs: ImageCollection,
    sites: np.ndarray | None = None,
    stats: dict[str, Any] | None = None,
) -> Iterator[tuple[np.ndarray, Callable[[], np.ndarray], float, float]]:
    """Yield (harmonized image, normalized input on demand, distance, profile
    correlation) per image."""
    device = resolve_device(est.device)
    generator = est.generator_
    if device.type != "cpu":
        generator = copy.deepcopy(generator).to(device)
    generator.eval()
    amp_dtype = autocast_dtype(est.mixed_precision, device)
    threads = check_cpu_threads(getattr(est, "cpu_threads", None))
    scale = float(est.reference_median_)
    typical = getattr(est, "typical_correction_", 0.0)
    profile = contrast_profile(est)
    for prepared, brain, x in network_inputs(est, imgs, sites, stats):
        corr = float("nan") if profile is None else profile.correlation(x, prepared.mask)
        y = harmonize_volume(generator, x, amp_dtype=amp_dtype, num_threads=threads)
        size = correction_size(x, y, prepared.mask)
        distance = size / typical if typical > 0 else float("nan")
        result = prepared.change.invert(from_network_scale(y, prepared.mask, scale))
        result[~brain] = 0.0

        def plain(x=x, prepared=prepared, brain=brain) -> np.ndarray:
            out = prepared.change.invert(from_network_scale(x, prepared.mask, scale))
            out[~brain] = 0.0
            return out

        yield result, plain, distance, corr


def transform_images(
    est: BaseHarmonizer,
    imgs: ImageCollection,
    sites: np.ndarray | None,
    stats: dict[str, Any],
) -> list[np.ndarray]:
    """The harmonized images, the guard's flags acted on (``ood_action``)."""
    check_ood(est.ood_action, None)  # ood_threshold acts through fit (ood_threshold_)
    threshold = getattr(est, "ood_threshold_", float("inf"))
    min_corr = getattr(est, "profile_threshold_", -float("inf"))
    out, flagged = [], []
    for i, (result, plain, distance, corr) in enumerate(harmonize_all(est, imgs, sites, stats)):
        if distance > threshold or corr < min_corr:
            flagged.append(i)
            if est.ood_action == "fallback":
                result = plain()
        out.append(result)
    if flagged and est.ood_action != "ignore":
        what = (
            "returned without the generator's correction"
            if est.ood_action == "fallback"
            else "check them"
        )
        by_site = ""
        if sites is not None:
            labels, counts = np.unique(sites[flagged], return_counts=True)
            total = {s: int(np.sum(sites == s)) for s in labels.tolist()}
            by_site = " by site: " + ", ".join(
                f"{s!r} {c} of {total[s]}" for s, c in zip(labels.tolist(), counts)
            )
            by_site = f";{by_site}"
        warnings.warn(
            f"{len(flagged)} of {len(out)} image(s) (indices {flagged[:20]}{by_site}) "
            "lie outside "
            f"what the model saw in training: the generator changed them more than "
            f"{threshold:.2f} times its typical correction on held-out training images, "
            f"or their regional intensity profile correlates less than "
            f"{min_corr:.2f} with the reference site's (another contrast, or not "
            f"registered); {what} (see distribution_distance, profile_correlation and "
            f"ood_action).",
            OutOfDistributionWarning,
            stacklevel=4,  # the user's transform call
        )
    return out


def guard_table(
    est: BaseHarmonizer, imgs: ImageCollection, sites: np.ndarray | None
) -> pd.DataFrame:
    """The table of the estimator's ``guard_report`` (see there)."""
    stats, agreements = checked_statistics(est, imgs, sites)
    threshold = getattr(est, "ood_threshold_", float("inf"))
    min_corr = getattr(est, "profile_threshold_", -float("inf"))
    scores = np.array([(d, c) for _, _, d, c in harmonize_all(est, imgs, sites, stats)])
    dist, corr = scores.reshape(-1, 2).T
    flagged = (dist > threshold) | (corr < min_corr)
    labels = [None] * len(imgs) if sites is None else sites.tolist()
    norm = normalizer(est)
    checked = {a.site: a for a in agreements}
    rows = []
    for label in dict.fromkeys(labels):
        idx = np.array([lab == label for lab in labels])
        if norm.kind == "median":
            how = "median"
        elif label is None:
            how = "per image"
        elif norm.known_landmarks(label) is None:
            how = "new site"
        elif stats.get(label) is not None:
            how = "refit"
        elif label in checked and not checked[label].agrees:
            how = "stored (disagrees)"
        else:
            how = "stored"
        agreement = checked.get(label)
        rows.append(
            {
                "site": label,
                "n_images": int(idx.sum()),
                "site_map": how,
                "agreement": np.nan if agreement is None else agreement.statistic,
                "agreement_threshold": np.nan if agreement is None else agreement.threshold,
                "distance_median": float(np.median(dist[idx])),
                "distance_max": float(np.max(dist[idx])),
                "profile_median": float(np.median(corr[idx])),
                "profile_min": float(np.min(corr[idx])),
                "n_flagged": int(flagged[idx].sum()),
            }
        )
    return pd.DataFrame(rows)
