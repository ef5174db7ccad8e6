"""Stress tests of IGUANe models on unseen inputs unlike their training: SSIM vs HM, the guard.

For each (seed, model) pair: ``make_multisite(8, 5, resolution=4, random_state=seed,
style="legacy")`` (the data the models were trained on) gives the training sites (site0-3)
HM is fitted on and the subjects. Two kinds of unseen inputs are scored:

- ``harsh``: ``make_family_b(..., strength="harsh")`` scans the subjects at 4 sites with
  strong effects of other kinds (gamma 0.3-3, 4-7 mm slices, 80-150 % linear bias, 6-12 %
  Gaussian noise);
- ``artifacts``: the unseen site4 scans damaged in ways no training site shows, each kind
  given as a new site: contrast inverted (a T2-like image), a ghost (half the image added
  again shifted by a quarter of the field of view), blur (Gaussian, sigma 1.5 voxels = 6 mm),
  strong noise (sigma 25 % of the brain median, magnitude), three dark lesions (8 mm radius,
  30 % intensity), stripes (intensity modulated by 60 % along one axis).

Each image's SSIM to its subject's reference-site image (both harmonized by the method) is
compared between IGUANe and HM and no harmonization, beside ``distribution_distance`` and
the model's ``ood_threshold_``.

Models: files saved by ``IGUANeHarmonizer.save`` after training on the same seed as in
``bench_iguane_learning.py --save-models DIR`` (the shipped model is seed 0's)::

    python benchmarks/bench_iguane_guard.py --seed-models 0=harmonix/data/iguane_cpu_demo.pt \\
        1=models/seed1.pt 2=models/seed2.pt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_iguane_learning import Scorer, per_image_ssim
from site_family_b import make_family_b

from harmonix import HistogramMatchingHarmonizer, IGUANeHarmonizer
from harmonix.benchmark.metrics import robust_range
from harmonix.datasets import make_multisite
from harmonix.iguane._fitting import set_guard
from harmonix.iguane._harmonizing import checked_statistics, fitted_inputs, network_inputs
from harmonix.iguane.guard import ContrastProfile, evenly
from harmonix.iguane.pretrained import DEMO_SITE_PREFIX


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


def flags(est: IGUANeHarmonizer, imgs: np.ndarray, sites: np.ndarray) -> tuple:
    """Guard distances, profile correlations and the images ``transform`` flags."""
    dist = est.distribution_distance(imgs, sites)
    corr = est.profile_correlation(imgs, sites)
    return dist, corr, (dist > est.ood_threshold_) | (corr < est.profile_threshold_)


def harsh(seed: int, est: IGUANeHarmonizer, ds, score: Scorer, hm) -> None:
    b = make_family_b(ds, n_sites=4, random_state=seed + 50, strength="harsh")
    score = Scorer(ds, b, ds.site_names[-1])
    labels = training_labels(est, ds.sites)
    ri = score(est.transform(ds.imgs, labels), est.transform(b.imgs, b.sites))
    rh = score(hm.transform(ds.imgs), hm.transform(b.imgs))
    dist, corr, flagged = flags(est, b.imgs, b.sites)
    mine, ref = np.array(ri["per_image_b"]), np.array(rh["per_image_b"])
    below = mine < ref
    print(
        f"seed {seed} harsh: traveling SSIM IGUANe {ri['ssim_family_b']:.3f}, HM "
        f"{rh['ssim_family_b']:.3f}; images below HM {below.sum()}/{len(mine)}, flagged "
        f"{flagged.sum()}, below and flagged {(below & flagged).sum()}; threshold "
        f"{est.ood_threshold_:.2f}, distances {dist.min():.2f}-{dist.max():.2f}; profile "
        f"threshold {est.profile_threshold_:.3f}, correlations {corr.min():.3f}-"
        f"{corr.max():.3f}",
        flush=True,
    )


def artifacts(seed: int, est: IGUANeHarmonizer, ds, score: Scorer, hm) -> None:
    tr, unseen, mask = score.train, score.unseen, ds.mask
    ref = [score.ref_index[s] for s in ds.subjects[unseen]]
    labels = training_labels(est, ds.sites)
    ref_i = est.transform(ds.imgs[ref], labels[ref])
    ref_h = hm.transform(ds.imgs[ref])
    vr_i = robust_range(est.transform(ds.imgs[tr], labels[tr]), mask)
    vr_h = robust_range(hm.transform(ds.imgs[tr]), mask)
    vr_n = robust_range(ds.imgs[tr], mask)
    rng = np.random.default_rng(seed)
    kinds = {"clean": ds.imgs[unseen], **artifact_kinds(ds.imgs[unseen], mask, rng)}
    print(f"seed {seed} artifacts (per-image SSIM to the reference-site scan, 8 images):")
    print(
        f"(profile threshold {est.profile_threshold_:.3f}; training correlations "
        f"{est.training_profile_correlations_.min():.3f}-"
        f"{est.training_profile_correlations_.max():.3f})"
    )
    print(
        "| kind | IGUANe | HM | none | below HM | below none | flagged | distances | "
        "profile corr. |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, imgs in kinds.items():
        sites = np.full(len(imgs), f"new-{name}")
        mine = per_image_ssim(est.transform(imgs, sites), ref_i, mask, vr_i)
        by_hm = per_image_ssim(hm.transform(imgs), ref_h, mask, vr_h)
        none = per_image_ssim(imgs, ds.imgs[ref], mask, vr_n)
        dist, corr, flagged = flags(est, imgs, sites)
        print(
            f"| {name} | {mine.mean():.3f} | {by_hm.mean():.3f} | {none.mean():.3f} | "
            f"{(mine < by_hm).sum()} | {(mine < none).sum()} | {flagged.sum()} | "
            f"{dist.min():.2f}-{dist.max():.2f} | {corr.min():.3f}-{corr.max():.3f} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed-models", nargs="+", required=True, metavar="SEED=PATH")
    p.add_argument(
        "--tests", nargs="+", choices=("harsh", "artifacts"), default=["harsh", "artifacts"]
    )
    args = p.parse_args()
    torch.set_num_threads(2)
    for item in args.seed_models:
        seed_text, _, path = item.partition("=")
        seed = int(seed_text)
        ds = make_multisite(8, 5, resolution=4, random_state=seed, style="legacy")
        score = Scorer(ds, ds, ds.site_names[-1])
        est = IGUANeHarmonizer.load(path).set_params(ood_action="ignore")
        calibrate_profile(est, ds, score)
        hm = HistogramMatchingHarmonizer(reference_site=ds.reference_site)
        hm.fit(ds.imgs[score.train], ds.sites[score.train])
        for test in args.tests:
            (harsh if test == "harsh" else artifacts)(seed, est, ds, score, hm)


if __name__ == "__main__":
    main()
