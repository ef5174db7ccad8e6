"""Rebuild the IGUANe model shipped with harmonix (``harmonix/data/iguane_cpu_demo.pt``).

The shipped model is seed 0 of ``benchmarks/bench_iguane_learning.py``:
:class:`harmonix.IGUANeHarmonizer` with :data:`harmonix.iguane.CPU_RECIPE`, trained on
sites ``site0`` (reference) to ``site3`` of
``make_multisite(n_subjects=8, n_sites=5, resolution=4, random_state=0, style="legacy")``
with ages and
``random_state=0``. Those sites are labelled ``demo-train-site0`` ... ``demo-train-site3``
in the model, so that no user's label (``make_multisite``'s are ``site0``...) names one of
them: every site a user brings is new to it. Its scores (unseen ``site4``, family-B sites) are in
``benchmarks/results/iguane_learning.md``. About 20 minutes on 2 CPU cores; CPU training
is reproducible, so the same model comes out (up to the CPU's float rounding).

Run from the repository root::

    python benchmarks/train_demo_model.py [--checkpoint-dir DIR]

With ``--checkpoint-dir`` the training state is kept there, and a finished or interrupted
training in that folder is resumed instead of restarted. ``--seed N --out FILE`` trains the
same recipe on seed N's data (another model of the same kind, e.g. for
``bench_iguane_bf16.py``). ``--add-profile-guard`` does not
train: it gives a model saved before the contrast-profile guard existed the profile that
``fit`` now computes (same calibration images), and saves it again (seconds).
``--rename-sites`` does not train either: it renames the training sites of a model saved
with the plain names (``site0`` -> ``demo-train-site0``...), gives it the yardstick of the
site check that ``fit`` now measures
(:meth:`~harmonix.IGUANeHarmonizer.fit_site_check`, from the same training images), and
saves it again; the weights and every other value stay as they are (seconds).
``--add-grid`` does not train either: it gives a model saved before models recorded their
training grid the grid that ``fit(..., voxel_size=4)`` now records (4 mm voxels, the
training shape, the training images' median brain size) and the ``voxel_size`` parameter,
and saves it again; the weights are unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from _helpers import common
from _helpers.iguane_scores import Scorer, calibrate_profile

from harmonix import IGUANeHarmonizer
from harmonix.datasets import make_multisite
from harmonix.iguane import CPU_RECIPE
from harmonix.iguane.pretrained import DEMO_MODEL_PATH, DEMO_SITE_PREFIX
from harmonix.inputs.grids import check_voxel_size, describe_grid, training_grid
from harmonix.io import as_collection

SEED = 0
UNSEEN = "site4"


def rename_sites(est: IGUANeHarmonizer) -> dict:
    """Prefix the model's training sites with ``DEMO_SITE_PREFIX`` (names only); the map."""
    names = {
        s: s if s.startswith(DEMO_SITE_PREFIX) else DEMO_SITE_PREFIX + s
        for s in est.sites_.tolist()
    }
    est.set_params(reference_site=names[est.reference_site])
    est.reference_site_ = names[est.reference_site_]
    est.sites_ = np.asarray([names[s] for s in est.sites_.tolist()])
    norm = est.input_normalization_
    norm["sites"] = [names[s] for s in norm["sites"]]
    return names


def main() -> None:
    p = common.script_parser(__doc__)
    p.add_argument("--out", default=str(DEMO_MODEL_PATH))
    p.add_argument("--seed", type=int, default=SEED, help="data and training seed (0: shipped)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--add-profile-guard", action="store_true")
    p.add_argument("--rename-sites", action="store_true")
    p.add_argument("--add-grid", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seed = args.seed
    ds = make_multisite(n_subjects=8, n_sites=5, resolution=4, random_state=seed, style="legacy")
    train = ds.sites != UNSEEN
    sites = np.char.add(DEMO_SITE_PREFIX, ds.sites[train])
    if args.rename_sites:
        est = IGUANeHarmonizer.load(args.out)
        names = rename_sites(est)
        est.fit_site_check(ds.imgs[train], sites)
        est.save(Path(args.out))
        check = est.input_normalization_["site_spread"]
        print(f"sites {names}; site check threshold {check['threshold']:.2f}; wrote {args.out}")
        return
    if args.add_profile_guard:
        est = IGUANeHarmonizer.load(args.out)
        calibrate_profile(est, ds, Scorer(ds, ds, UNSEEN))
        est.save(Path(args.out))
        print(f"profile threshold {est.profile_threshold_:.3f}; wrote {args.out}")
        return
    if args.add_grid:
        add_grid(args.out, ds.imgs[train], ds.resolution)
        return
    est = IGUANeHarmonizer(
        reference_site=DEMO_SITE_PREFIX + "site0",
        **CPU_RECIPE,
        voxel_size=ds.resolution,
        random_state=seed,
        device="cpu",
        verbose=1,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.checkpoint_dir is not None,
    )
    start = time.perf_counter()
    est.fit(ds.imgs[train], sites, ds.ages[train])
    est.set_params(checkpoint_dir=None, resume=False, verbose=0)
    est.save(Path(args.out))
    print(
        f"fitted in {time.perf_counter() - start:.0f} s (best step "
        f"{est.history_['best_step']}); wrote {args.out}"
    )


def add_grid(path: str, imgs: np.ndarray, resolution: float) -> None:
    """Record on the model at ``path`` the grid ``fit(imgs, ..., voxel_size=resolution)``
    records now, and save it again (weights unchanged)."""
    est = IGUANeHarmonizer.load(path)
    before = {k: v.clone() for k, v in est.generator_.state_dict().items()}
    est.set_params(voxel_size=resolution)
    grid = training_grid(
        as_collection(imgs),
        check=est._grid_check,
        action="error",
        owner=type(est).__name__,
        voxel_size=check_voxel_size(resolution),
    )
    grid["brain_voxels"] = float(np.median([np.count_nonzero(img) for img in imgs]))
    est.grid_ = grid
    est.save(Path(path))
    after = IGUANeHarmonizer.load(path).generator_.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "weights changed"
    print(f"grid: {describe_grid(grid)}, {grid['brain_voxels']:.0f} brain voxels; wrote {path}")


if __name__ == "__main__":
    main()
