"""Stress test of IGUANe models on harsh unseen sites: per-image SSIM vs HM and the guard.

For each (seed, model) pair: ``make_multisite(8, 5, resolution=4, random_state=seed,
style="legacy")`` (the data the models were trained on)
gives the training sites (site0-3) HM is fitted on and the subjects; ``make_family_b(...,
strength="harsh")`` scans them at 4 sites with strong effects of other kinds (gamma
0.3-3, 4-7 mm slices, 80-150 % linear bias, 6-12 % Gaussian noise). Each image's SSIM to
its subject's reference-site image (both harmonized by the method) is compared between
IGUANe and HM, beside ``distribution_distance`` and the model's ``ood_threshold_``.

Models: files saved by ``IGUANeHarmonizer.save`` after training on the same seed as in
``bench_iguane_learning.py`` (the shipped model is seed 0's)::

    python benchmarks/bench_iguane_guard.py --seed-models 0=harmonix/data/iguane_cpu_demo.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_iguane_learning import Scorer
from site_family_b import make_family_b

from harmonix import HistogramMatchingHarmonizer, IGUANeHarmonizer
from harmonix.datasets import make_multisite


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed-models", nargs="+", required=True, metavar="SEED=PATH")
    args = p.parse_args()
    torch.set_num_threads(2)
    for item in args.seed_models:
        seed_text, _, path = item.partition("=")
        seed = int(seed_text)
        ds = make_multisite(8, 5, resolution=4, random_state=seed, style="legacy")
        b = make_family_b(ds, n_sites=4, random_state=seed + 50, strength="harsh")
        score = Scorer(ds, b, ds.site_names[-1])
        est = IGUANeHarmonizer.load(path).set_params(ood_action="ignore")
        hm = HistogramMatchingHarmonizer(reference_site=ds.reference_site)
        hm.fit(ds.imgs[score.train], ds.sites[score.train])
        ri = score(est.transform(ds.imgs, ds.sites), est.transform(b.imgs, b.sites))
        rh = score(hm.transform(ds.imgs), hm.transform(b.imgs))
        dist = est.distribution_distance(b.imgs, b.sites)
        mine, ref = np.array(ri["per_image_b"]), np.array(rh["per_image_b"])
        below, flagged = mine < ref, dist > est.ood_threshold_
        print(
            f"seed {seed}: harsh-B traveling SSIM IGUANe {ri['ssim_family_b']:.3f}, HM "
            f"{rh['ssim_family_b']:.3f}; images below HM {below.sum()}/{len(mine)}, flagged "
            f"{flagged.sum()}, below and flagged {(below & flagged).sum()}; threshold "
            f"{est.ood_threshold_:.2f}, distances {dist.min():.2f}-{dist.max():.2f}"
        )


if __name__ == "__main__":
    main()
