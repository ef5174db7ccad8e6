"""Rebuild the IGUANe model shipped with harmonix (``harmonix/data/iguane_cpu_demo.pt``).

The shipped model is seed 0 of ``benchmarks/bench_iguane_learning.py``:
:class:`harmonix.IGUANeHarmonizer` with :data:`harmonix.iguane.CPU_RECIPE`, trained on
sites ``site0`` (reference) to ``site3`` of
``make_multisite(n_subjects=8, n_sites=5, resolution=4, random_state=0, style="legacy")``
with ages and
``random_state=0``. Its scores (unseen ``site4``, family-B sites) are in
``benchmarks/results/iguane_learning.md``. About 20 minutes on 2 CPU cores; CPU training
is reproducible, so the same model comes out (up to the CPU's float rounding).

Run from the repository root::

    python benchmarks/train_demo_model.py [--checkpoint-dir DIR]

With ``--checkpoint-dir`` the training state is kept there, and a finished or interrupted
training in that folder is resumed instead of restarted. ``--add-profile-guard`` does not
train: it gives a model saved before the contrast-profile guard existed the profile that
``fit`` now computes (same calibration images), and saves it again (seconds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_iguane_guard import calibrate_profile
from bench_iguane_learning import Scorer

from harmonix import IGUANeHarmonizer
from harmonix.datasets import make_multisite
from harmonix.iguane import CPU_RECIPE
from harmonix.iguane.pretrained import DEMO_MODEL_PATH

SEED = 0
UNSEEN = "site4"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(DEMO_MODEL_PATH))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--add-profile-guard", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = make_multisite(n_subjects=8, n_sites=5, resolution=4, random_state=SEED, style="legacy")
    train = ds.sites != UNSEEN
    if args.add_profile_guard:
        est = IGUANeHarmonizer.load(args.out)
        calibrate_profile(est, ds, Scorer(ds, ds, UNSEEN))
        est.save(Path(args.out))
        print(f"profile threshold {est.profile_threshold_:.3f}; wrote {args.out}")
        return
    est = IGUANeHarmonizer(
        reference_site="site0",
        **CPU_RECIPE,
        random_state=SEED,
        device="cpu",
        verbose=1,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.checkpoint_dir is not None,
    )
    start = time.perf_counter()
    est.fit(ds.imgs[train], ds.sites[train], ds.ages[train])
    est.set_params(checkpoint_dir=None, resume=False, verbose=0)
    est.save(Path(args.out))
    print(
        f"fitted in {time.perf_counter() - start:.0f} s (best step "
        f"{est.history_['best_step']}); wrote {args.out}"
    )


if __name__ == "__main__":
    main()
