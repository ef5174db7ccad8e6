"""Can the benchmark be fooled? Garbage harmonizers beside the real methods.

Runs ``harmonix.benchmark.run_benchmark`` on synthetic traveling subjects
(``make_multisite``) with no harmonization ("none"), the oracle, histogram matching, ComBat
and two harmonizers that keep nothing of their inputs
(``harmonix.benchmark.sanity``): "collapse" returns the mean training image for every
input, "noise" returns uniform noise in each brain. For every kind of metric (traveling
subjects, distances, biology; ``harmonix.benchmark.METRIC_KINDS``) and protocol (seen and
unseen sites) it checks whether both garbage rows rank below every other row, and that
no metric is n/a for them. It also measures the SSIM of two independent noise volumes on
the data set's brain mask, with the benchmark's rule (in-mask windows) and with the
former rule (windows over the mask's bounding box, background included).

Writes ``<out>/benchmark_sanity.md`` and ``<out>/benchmark_sanity.csv`` (per seed).

Usage::

    python benchmarks/bench_sanity.py                     # 4 mm, 20 subjects x 4 sites, 3 seeds
    python benchmarks/bench_sanity.py --n-subjects 6 --seeds 0 --out /tmp/sanity   # quick
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _helpers import common
from skimage.metrics import structural_similarity

from harmonix import ComBatHarmonizer, HistogramMatchingHarmonizer, IdentityHarmonizer
from harmonix.benchmark import (
    METRICS,
    MeanImageHarmonizer,
    NoiseHarmonizer,
    masked_ssim,
    metric_kind,
    run_benchmark,
    summarize,
    to_markdown,
)
from harmonix.datasets import make_multisite

GARBAGE = ("collapse", "noise")
KINDS = ("traveling", "distance", "biology")


def former_masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray, win: int = 7) -> float:
    """The SSIM of harmonix 0.1: skimage's map on the mask's bounding box plus half a
    window, averaged over the mask (windows include the zero background at the edge)."""
    idx = np.nonzero(mask)
    box = tuple(
        slice(max(int(i.min()) - win // 2 - 1, 0), min(int(i.max()) + win // 2 + 2, s))
        for i, s in zip(idx, mask.shape)
    )
    _, smap = structural_similarity(a[box], b[box], data_range=1.0, win_size=win, full=True)
    return float(smap[mask[box]].mean())


def noise_ssim_lines(seed: int) -> list[str]:
    """SSIM of two independent uniform-noise volumes (0 outside the brain) at 4 and 2 mm."""
    lines = [
        "| resolution | in-mask windows (the benchmark) | bounding-box windows (former) |",
        "|---|---:|---:|",
    ]
    for res in (4, 2):
        mask = make_multisite(2, 2, resolution=res, random_state=seed).mask
        rng = np.random.default_rng(seed)
        a, b = (np.where(mask, rng.random(mask.shape), 0.0) for _ in range(2))
        lines.append(
            f"| {res} mm | {masked_ssim(a, b, mask):.4f} | {former_masked_ssim(a, b, mask):.3f} |"
        )
    return lines


def _direction(metric: str) -> str:
    return METRICS[metric][0]


def _badness(values: pd.Series, metric: str, truth: float) -> pd.Series:
    """Higher is worse: the value (lower is better), minus it, or its distance to the truth."""
    direction = _direction(metric)
    if direction == "lower":
        return values
    if direction == "higher":
        return -values
    return (values - truth).abs()


def ranking(summary: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """For every scored metric and protocol: are both garbage rows worse than every other?"""
    rows = []
    for (protocol, metric), g in summary.groupby(["protocol", "metric"], sort=False):
        if metric_kind(metric) in ("cost", "reference"):
            continue
        true = summary[
            (summary.protocol == protocol) & (summary.metric == "true_gm_age_correlation")
        ][value]
        truth = float(true.iloc[0]) if len(true) else float("nan")
        vals = g.set_index("method")[value].astype(float)
        bad = _badness(vals, metric, truth)
        others = bad.drop(list(GARBAGE), errors="ignore").dropna()
        garbage = bad.reindex(list(GARBAGE))
        last = bool(garbage.notna().all() and len(others) and (garbage > others.max()).all())
        rows.append(
            {
                "protocol": protocol,
                "metric": metric,
                "kind": metric_kind(metric),
                "garbage_last": last,
                "garbage_na": int(garbage.isna().sum()),
                "worst_other": others.idxmax() if len(others) else "",
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = common.script_parser(__doc__)
    p.add_argument("--resolution", type=int, default=4, choices=[2, 4])
    p.add_argument("--n-subjects", type=int, default=20)
    p.add_argument("--n-sites", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-boot", type=int, default=500)
    p.add_argument("--out", type=Path, default=common.RESULTS, help="output folder")
    args = p.parse_args(argv)
    load_start = common.load_now()
    t0 = time.perf_counter()
    runs = []
    for seed in args.seeds:
        ds = make_multisite(args.n_subjects, args.n_sites, args.resolution, random_state=seed)
        ref = ds.reference_site
        methods = {
            "none": IdentityHarmonizer(),
            "collapse": MeanImageHarmonizer(),
            "noise": NoiseHarmonizer(),
            "HM": HistogramMatchingHarmonizer(reference_site=ref),
            "ComBat": ComBatHarmonizer(reference_site=ref, unseen_site="fit"),
        }
        df = run_benchmark(methods, ds, oracle=True, random_state=seed, n_boot=args.n_boot)
        df.insert(0, "seed", seed)
        runs.append(df)
        print(f"seed {seed}: held out {df.attrs['held_out']}", flush=True)
    wall = time.perf_counter() - t0
    tidy = pd.concat(runs, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tidy.to_csv(args.out / "benchmark_sanity.csv", index=False)
    summary = summarize(runs)
    rank = ranking(summary)
    per_seed = pd.concat([ranking(r.rename(columns={"value": "mean"})) for r in runs])
    robust = per_seed.groupby(["protocol", "metric"], sort=False)["garbage_last"].sum()

    cmd = " ".join(["python", "benchmarks/bench_sanity.py", *(argv or sys.argv[1:])])
    lines = [
        "# Benchmark sanity: garbage harmonizers must score worst",
        "",
        f"Command: `{cmd}`  ",
        f"Data: `make_multisite(n_subjects={args.n_subjects}, n_sites={args.n_sites}, "
        f"resolution={args.resolution}, random_state=seed)`, seeds {args.seeds}; held-out "
        f"site per seed: {', '.join(r['held_out'].iloc[0] for r in runs)} (drawn by "
        "`run_benchmark` with `random_state=seed`).  ",
        "Rows: none (no harmonization), collapse (`MeanImageHarmonizer`: the mean training "
        "image for every input), noise (`NoiseHarmonizer`: uniform noise in each brain), HM, "
        "ComBat (`unseen_site='fit'`: the unseen site's parameters are estimated on its own "
        "images), oracle (each subject's own reference-site scan).  ",
        f"Machine: {common.cpu_model()}, {os.cpu_count()} CPU(s); {wall / 60:.1f} min in all.",
        common.load_line(load_start, common.load_now()),
        "",
        "## Does garbage rank last?",
        "",
        "A metric ranks garbage last when both collapse and noise are worse than every other "
        "row (none, HM, ComBat, oracle): lower for ↑ metrics, higher for ↓, farther from "
        "`true_gm_age_correlation` for `gm_age_correlation`. Means over seeds; the last "
        "column counts the seeds in which it holds.",
        "",
        "| protocol | kind | metric | garbage last | n/a for garbage | worst other row | seeds |",
        "|---|---|---|---|---:|---|---:|",
    ]
    for _, r in rank.iterrows():
        lines.append(
            f"| {r.protocol} | {r.kind} | `{r.metric}` | {'**yes**' if r.garbage_last else 'no'} "
            f"| {r.garbage_na} | {r.worst_other} | {int(robust[r.protocol, r.metric])}/"
            f"{len(args.seeds)} |"
        )
    lines += ["", "Per kind (at least one metric of the kind ranks garbage last):", ""]
    for protocol in ("seen", "unseen"):
        sub = rank[rank.protocol == protocol]
        for kind in KINDS:
            hits = sub[(sub.kind == kind) & sub.garbage_last].metric.tolist()
            verdict = "**met**" if hits else "**not met**"
            lines.append(f"- {protocol}, {kind}: {verdict} ({', '.join(hits) or 'none'})")
    na = int(rank.garbage_na.sum())
    lines += [
        f"- n/a values for collapse or noise (all metrics, both protocols): {na}.",
        "",
        "## SSIM of unrelated images",
        "",
        "Two independent uniform-noise volumes (0 outside the brain), on the brain mask of "
        "`make_multisite`:",
        "",
        *noise_ssim_lines(args.seeds[0]),
        "",
        "The noise row's traveling-subject SSIM in the tables below compares unrelated noise "
        "images too.",
        "",
        f"## Results (mean ± sd over {len(args.seeds)} seeds)",
        "",
        to_markdown(summary),
        "What each metric can and cannot show: docs, *Benchmarking* (user guide).",
    ]
    common.write_results(args.out / "benchmark_sanity.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
