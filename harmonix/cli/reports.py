"""Subcommands that score methods: ``harmonix benchmark`` (on a manifest) and ``harmonix
demo`` (on synthetic data)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmonix.cli._options import subcommand
from harmonix.cli.methods import IGUANE_CPU_PARAMS, METHODS, harmonizer_class, make_harmonizer
from harmonix.io import read_manifest

logger = logging.getLogger("harmonix")


def _dataset_from_manifest(path: str) -> Any:
    from harmonix.benchmark.runner import dataset_from_manifest

    return dataset_from_manifest(read_manifest(path))


def _harmonizers(methods: Sequence[str], seed: int, pretrained_iguane: bool = False) -> dict:
    """The harmonizers of ``methods``; IGUANe is the CPU recipe seeded with ``seed``, or the
    shipped model with ``pretrained_iguane``."""
    harmonizers = {}
    for m in methods:
        if m == "iguane" and pretrained_iguane:
            from harmonix.iguane.pretrained import PretrainedIGUANe

            harmonizers[m] = PretrainedIGUANe()
            continue
        params = dict(IGUANE_CPU_PARAMS, random_state=seed) if m == "iguane" else {}
        harmonizers[m] = make_harmonizer(m, params)
    return harmonizers


def _run_and_report(ds: Any, harmonizers: dict, out: Path, quiet: bool, **options: Any) -> int:
    """Run the benchmark (``options`` go to :func:`~harmonix.benchmark.run_benchmark`), write
    benchmark.md, benchmark.csv and metrics.png into ``out`` and print the table."""
    from harmonix.benchmark import plot_metrics, run_benchmark, to_markdown

    df = run_benchmark(harmonizers, ds, verbose=not quiet, **options)
    out.mkdir(parents=True, exist_ok=True)
    table = to_markdown(df)
    (out / "benchmark.md").write_text(table + "\n")
    df.to_csv(out / "benchmark.csv", index=False)
    plot_metrics(df, out / "metrics.png")
    sys.stdout.write(f"{table}\n")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        harmonizer_class(m)
    ds = _dataset_from_manifest(args.manifest)
    test_sites = args.test_sites.split(",") if args.test_sites else None
    harmonizers = _harmonizers(methods, args.seed)
    return _run_and_report(
        ds, harmonizers, Path(args.out), args.quiet, test_sites=test_sites, random_state=args.seed
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from harmonix.datasets import make_multisite

    start = time.perf_counter()
    ds = make_multisite(
        n_subjects=args.n_subjects, n_sites=5, resolution=args.resolution, random_state=args.seed
    )
    test_site = [s for s in np.unique(ds.sites) if s != ds.reference_site][-1]
    logger.info(
        "demo: %d synthetic images from 5 sites; %s held out as an unseen site", len(ds), test_site
    )
    methods = [m for m in METHODS if m != "iguane" or not args.no_iguane]
    pretrained = args.resolution == 4.0
    if "iguane" in methods and pretrained and args.seed == 0:
        logger.warning(
            "demo: seed 0's sites 0-3 are the shipped IGUANe model's training "
            "sites; use another seed to see it on new sites"
        )
    if "iguane" in methods:
        logger.info(
            "demo: IGUANe is %s",
            "the shipped 4 mm CPU model (trained on other synthetic sites, so every demo "
            "site is new to it)"
            if pretrained
            else "a tiny training (the shipped model is for 4 mm images)",
        )
    # the oracle row (each subject's reference-site scan) gives the ceiling of every metric;
    # 200 bootstrap samples keep the demo's intervals cheap
    code = _run_and_report(
        ds,
        _harmonizers(methods, args.seed, pretrained_iguane=pretrained),
        Path(args.out),
        args.quiet,
        test_sites=[test_site],
        random_state=args.seed,
        oracle=True,
        n_boot=200,
    )
    logger.info("demo finished in %.0f s; results in %s", time.perf_counter() - start, args.out)
    return code


@subcommand("demo", _cmd_demo, help="benchmark every method on synthetic data (~1 min on CPU)")
def add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="harmonix-demo", help="output folder")
    p.add_argument("--n-subjects", type=int, default=8)
    p.add_argument("--resolution", type=float, default=4.0, choices=[1.0, 2.0, 4.0])
    p.add_argument(
        "--seed",
        type=int,
        default=1,
        help="data seed (the shipped IGUANe model was trained on seed 0's sites)",
    )
    p.add_argument("--no-iguane", action="store_true", help="skip IGUANe training")


@subcommand("benchmark", _cmd_benchmark, help="score methods on a manifest with common metrics")
def add_benchmark(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="CSV with path,site,age,subject")
    p.add_argument(
        "--methods",
        default="none,hm,ws,combat",
        help=f"comma-separated, from {', '.join(METHODS)}",
    )
    p.add_argument(
        "--test-sites",
        help="comma-separated sites held out as unseen (default: with 3 sites or more, one "
        "site other than the reference, drawn with --seed)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
