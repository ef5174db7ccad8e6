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

import numpy as np
import torch
from _helpers import common
from _helpers.iguane_scores import (
    Scorer,
    artifact_kinds,
    calibrate_profile,
    per_image_ssim,
    training_labels,
)
from _helpers.site_family_b import make_family_b

from harmonix import HistogramMatchingHarmonizer, IGUANeHarmonizer
from harmonix.benchmark.metrics import robust_range
from harmonix.datasets import make_multisite


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
    p = common.script_parser(__doc__)
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
