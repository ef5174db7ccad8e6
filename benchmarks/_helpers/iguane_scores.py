"""Scores and damaged inputs shared by the IGUANe quality benchmarks
(``bench_iguane_learning.py``, ``bench_iguane_guard.py``, ``bench_site_check.py``,
``train_demo_model.py``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from harmonix.benchmark.metrics import (
    distance_correlation_score,
    gm_age_correlation,
    masked_ssim,
    robust_range,
    robust_scale,
    traveling_subject_ssim_score,
)
from harmonix.iguane._fitting import set_guard
from harmonix.iguane._harmonizing import checked_statistics, fitted_inputs, network_inputs
from harmonix.iguane.estimator import IGUANeHarmonizer
from harmonix.iguane.guard import ContrastProfile, evenly
from harmonix.iguane.pretrained import DEMO_SITE_PREFIX
from harmonix.intensity.histogram_matching import HistogramMatchingHarmonizer
from harmonix.intensity.whitestripe import WhiteStripeHarmonizer


def per_image_ssim(out: np.ndarray, ref_out: np.ndarray, mask: np.ndarray, vr) -> np.ndarray:
    """SSIM of each image to its subject's reference-site image (both on one scale)."""
    a = robust_scale(out, mask, value_range=vr)
    b = robust_scale(ref_out, mask, value_range=vr)
    return np.array([masked_ssim(x, y, mask) for x, y in zip(a, b)])


class Scorer:
    """Scores of one method's outputs on the A data set and the B sites."""

    def __init__(self, ds, ds_b, unseen: str) -> None:
        self.ds, self.b = ds, ds_b
        self.train = ds.sites != unseen
        self.unseen = ds.sites == unseen
        self.seen_src = self.train & (ds.sites != ds.reference_site)
        self.ref_index = {
            s: i for i, s in enumerate(ds.subjects) if ds.sites[i] == ds.reference_site
        }

    def oracle(self, out_a: np.ndarray) -> np.ndarray:
        """Each A image replaced by its subject's reference-site image in ``out_a``."""
        return np.stack([out_a[self.ref_index[s]] for s in self.ds.subjects])

    def baselines(self) -> dict[str, dict]:
        """Scores of none, HM, WS (fitted on the training images) and the oracle.

        The oracle harmonizes every image into its subject's reference-site scan: the
        ceiling of the SSIM scores, and what a perfect harmonization does to the distance
        correlation (between-subject differences as the reference scanner sees them).
        """
        ds, ds_b, tr = self.ds, self.b, self.train
        rows = {}
        for name, factory in (
            ("none", None),
            ("HM", HistogramMatchingHarmonizer),
            ("WS", WhiteStripeHarmonizer),
        ):
            if factory is None:
                out_a, out_b = ds.imgs, ds_b.imgs
            else:
                h = factory(reference_site=ds.reference_site).fit(ds.imgs[tr], ds.sites[tr])
                out_a, out_b = h.transform(ds.imgs), h.transform(ds_b.imgs)
            rows[name] = self(out_a, out_b)
        oracle_a = self.oracle(ds.imgs)
        oracle_b = np.stack([ds.imgs[self.ref_index[s]] for s in ds_b.subjects])
        rows["oracle"] = self(oracle_a, oracle_b)
        return rows

    def __call__(self, out_a: np.ndarray, out_b: np.ndarray) -> dict[str, float]:
        ds, b = self.ds, self.b
        vr = robust_range(out_a[self.train], ds.mask)
        both = np.concatenate([out_a, out_b])
        subjects = np.concatenate([ds.subjects, b.subjects])
        sites = np.concatenate([ds.sites, b.sites])
        flags = {
            "unseen": np.r_[self.unseen, np.zeros(len(out_b), bool)],
            "seen": np.r_[self.seen_src, np.zeros(len(out_b), bool)],
            "family_b": np.r_[np.zeros(len(out_a), bool), np.ones(len(out_b), bool)],
        }
        res = {}
        for name, inc in flags.items():
            res[f"ssim_{name}"] = traveling_subject_ssim_score(
                both, subjects, sites, ds.mask, include=inc, value_range=vr
            )
        res["distance_corr_unseen"] = distance_correlation_score(
            ds.imgs[self.unseen], out_a[self.unseen], ds.sites[self.unseen], ds.mask
        )
        res["distance_corr_oracle_unseen"] = distance_correlation_score(
            self.oracle(ds.imgs)[self.unseen], out_a[self.unseen], ds.sites[self.unseen], ds.mask
        )
        res["gm_age_r_true_unseen"] = float(
            np.corrcoef(ds.gm_volume[self.unseen], ds.ages[self.unseen])[0, 1]
        )
        res["gm_age_r_unseen"] = gm_age_correlation(
            out_a[self.unseen], ds.ages[self.unseen], ds.mask
        )
        ref = np.stack([out_a[self.ref_index[s]] for s in b.subjects])
        res["per_image_b"] = per_image_ssim(out_b, ref, ds.mask, vr).tolist()
        ref_a = np.stack([out_a[self.ref_index[s]] for s in ds.subjects[self.unseen]])
        res["per_image_unseen"] = per_image_ssim(out_a[self.unseen], ref_a, ds.mask, vr).tolist()
        return res


def _lesions(rng: np.random.Generator, mask: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def damage(x: np.ndarray) -> np.ndarray:
        y = x.copy()
        inside = np.argwhere(mask)
        grid = np.indices(x.shape)
        for _ in range(3):
            centre = inside[rng.integers(len(inside))]
            dist = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
            y[dist < 2] *= 0.3
        return y

    return damage


def artifact_kinds(imgs: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> dict:
    """The damaged versions of ``imgs`` (see the module docstring), background kept at 0."""
    top = float(np.percentile(imgs[:, mask], 99.5))
    median = float(np.median(imgs[:, mask]))
    axis0 = np.indices(imgs.shape[1:])[0]
    kinds = {
        "inverted": lambda x: 1.05 * top - x,
        "ghost": lambda x: x + 0.5 * np.roll(x, x.shape[1] // 4, axis=1),
        "blur": lambda x: ndimage.gaussian_filter(x, 1.5),
        "noise": lambda x: np.abs(x + rng.normal(0.0, 0.25 * median, x.shape)),
        "lesions": _lesions(rng, mask),
        "stripes": lambda x: x * (1 + 0.6 * np.sin(axis0 / 1.5)),
    }
    out = {}
    for name, damage in kinds.items():
        damaged = np.stack([damage(x) for x in imgs]).astype(np.float32)
        damaged[:, ~mask] = 0
        damaged[:, mask] = np.maximum(damaged[:, mask], 1e-3 * median)
        out[name] = damaged
    return out


def calibrate_profile(est: IGUANeHarmonizer, ds, score: Scorer) -> None:
    """Give a model saved before the profile guard its profile, as ``fit`` computes it.

    Reference profile from (up to 32 of) the reference site's training images, threshold
    from the held-out images and up to 32 other source-site training images; indices are
    those of the training subset the model was fitted on.
    """
    if getattr(est, "reference_profile_", None) is not None:
        return
    imgs, sites = ds.imgs[score.train], training_labels(est, ds.sites[score.train])
    held = [int(i) for i in est.history_["val_indices"]]
    rest = [i for i in np.flatnonzero(sites != est.reference_site_) if i not in set(held)]

    def inputs(idx: list) -> list:
        collection, labels = fitted_inputs(est, imgs[idx], sites[idx])
        stats, _ = checked_statistics(est, collection, labels)
        return [(x, p.mask) for p, _, x in network_inputs(est, collection, labels, stats)]

    profile = ContrastProfile().fit(inputs(evenly(np.flatnonzero(sites == est.reference_site_))))
    corr = [profile.correlation(x, m) for x, m in inputs(held + evenly(rest))]
    set_guard(est, profile, est.training_corrections_, corr)


def training_labels(est: IGUANeHarmonizer, sites: np.ndarray) -> np.ndarray:
    """The model's names of the data's training sites (``site1`` -> ``demo-train-site1``
    for the shipped model, whose training sites carry a prefix), so that the training
    sites keep their stored maps."""
    names = {s.removeprefix(DEMO_SITE_PREFIX): s for s in est.sites_.tolist()}
    return np.asarray([names.get(s, s) for s in sites.tolist()])
