"""Seconds per IGUANe site-step on CPU: the CPU configuration and the paper's full size.

A *site-step* is one source site's share of a training step: its two discriminator
updates and one joint generator update (IGUANE.md, "Training"). The script trains with
``IGUANeHarmonizer`` for a few steps on ``make_multisite`` data and divides the training
time by the number of site-steps (the first step, which includes one-off set-up, is timed
separately). Each CPU configuration is timed in alternating rounds (medians reported):
with harmonix's
convolutions (:class:`harmonix.iguane.networks.OneDNNConv3d`, which always takes oneDNN on CPU)
and with PyTorch's stock ``nn.Conv3d`` dispatch, which sends one-volume batches of thin
maps to a slow reference kernel. Results: ``benchmarks/results/iguane_training.md``.

Run: ``python benchmarks/bench_iguane_training.py [--full-steps 1]`` (the full-size case
needs a few minutes per site-step on 2 CPU cores; it is the reason CPU users train small).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from harmonix import IGUANeHarmonizer, make_multisite
from harmonix.iguane import networks
from harmonix.preprocessing import crop_or_pad

RESULTS = Path(__file__).resolve().parent / "results" / "iguane_training.md"


def _seconds_per_site_step(imgs, sites, n_sources: int, steps: int, **params) -> float:
    times = []
    for n in (1, 1 + steps):  # difference of two runs removes the set-up cost
        est = IGUANeHarmonizer(n_epochs=1, steps_per_epoch=n, val_fraction=0.0,
                               augment=True, random_state=0, **params)
        start = time.perf_counter()
        est.fit(imgs, sites)
        times.append(time.perf_counter() - start)
    return (times[1] - times[0]) / (steps * n_sources)


@contextlib.contextmanager
def _stock_conv3d():
    """harmonix's Conv3d dispatching like ``torch.nn.Conv3d`` (PyTorch's heuristic)."""
    ours = networks.OneDNNConv3d.forward
    networks.OneDNNConv3d.forward = torch.nn.Conv3d.forward
    try:
        yield
    finally:
        networks.OneDNNConv3d.forward = ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="steps for the CPU configs")
    parser.add_argument("--full-steps", type=int, default=1, help="steps at full size (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    args = parser.parse_args()

    rows = []
    ds = make_multisite(n_subjects=4, n_sites=3, resolution=4, random_state=0)
    configs = [
        ("CPU config (demo): width 4, 32³ patches, 4 mm", dict(base_width=4, patch_size=32,
                                                               identity_init=True)),
        ("width 4, whole 4 mm volume (48×64×48)", dict(base_width=4, identity_init=True)),
        ("width 8, 32³ patches, 4 mm", dict(base_width=8, patch_size=32, identity_init=True)),
    ]
    for name, params in configs:
        ours, theirs = [], []
        for _ in range(args.rounds):  # alternating rounds, medians
            ours.append(_seconds_per_site_step(ds.imgs, ds.sites, 2, args.steps, **params))
            with _stock_conv3d():
                theirs.append(_seconds_per_site_step(ds.imgs, ds.sites, 2, args.steps, **params))
        s, stock = float(np.median(ours)), float(np.median(theirs))
        rows.append((name, s, stock))
        print(f"{name}: {s:.2f} s per site-step (stock nn.Conv3d {stock:.2f})", flush=True)
    if args.full_steps:
        full = make_multisite(n_subjects=1, n_sites=2, resolution=1, random_state=0)
        vols = np.stack([crop_or_pad(v)[0] for v in full.imgs])  # 160×192×160
        s = _seconds_per_site_step(vols, full.sites, 1, args.full_steps, base_width=16)
        rows.append(("paper: width 16, whole 160×192×160 volume", s, None))
        print(f"full size: {s:.1f} s per site-step", flush=True)

    lines = [
        "# IGUANe training speed on CPU (seconds per site-step)",
        "",
        f"Produced by `python benchmarks/bench_iguane_training.py`. {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python "
        f"{platform.python_version()}, load average at the end {os.getloadavg()[0]:.1f} "
        "(with other jobs on the machine absolute times are upper bounds; the stock/harmonix "
        "ratio comes from the same run).",
        "",
        "| configuration | s / site-step | with stock nn.Conv3d | speed-up | paper schedule "
        "(200 k site-steps for 10 sites) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s, stock in rows:
        other = "" if stock is None else f"{stock:.2f} | {stock / s:.2f}x"
        lines.append(f"| {name} | {s:.2f} | {other or ' | '} | {s * 200_000 / 3600:,.0f} h |")
    lines += [
        "",
        "The paper's schedule (100 epochs × 200 steps × N source sites) is a GPU job; on CPU "
        "use `base_width=4, patch_size=32, identity_init=True` and as many steps as time "
        "allows. The comparison benchmark (compare_methods.md) shows what such a short run "
        "achieves; `identity_init` keeps short runs from damaging images.",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
