"""Whole-process time of ``harmonix demo`` (the README's first command after install).

Runs ``python -m harmonix --quiet demo`` ``--repeats`` times in fresh processes (each in a
new temporary output folder), measures wall-clock seconds, the children's CPU seconds
(user + system) and peak RSS, and writes ``benchmarks/results/demo.md``. The goal is a
demo of at most 3 minutes on a 2-core CPU machine. The load average before and after is
reported, since other jobs on the machine slow every figure.

Usage::

    python benchmarks/bench_demo.py [--repeats 3] [--out benchmarks/results/demo.md]
"""

from __future__ import annotations

import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from _helpers import common

GOAL_S = 180.0


def _run_once() -> dict[str, float]:
    """One demo in a fresh process: wall seconds, CPU seconds and peak RSS (MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "harmonix", "--quiet", "demo", "--out", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of children is the largest child so far (kB on Linux)
    return {"wall": wall, "cpu": cpu, "peak_mb": after.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> None:
    args = common.script_parser(__doc__, "demo.md", repeats=3).parse_args(argv)

    import torch

    import harmonix

    load_start = common.load_now()
    runs = []
    for i in range(args.repeats):
        runs.append(_run_once())
        print(f"run {i + 1}: {runs[-1]['wall']:.1f} s wall", flush=True)
    wall = statistics.median(r["wall"] for r in runs)
    cpu = statistics.median(r["cpu"] for r in runs)
    peak = max(r["peak_mb"] for r in runs)
    met = "met" if wall <= GOAL_S else "not met"
    lines = [
        "# `harmonix demo`: whole-process time",
        "",
        f"Written by `{common.command_line(argv)}`: {args.repeats} runs of "
        "`python -m harmonix --quiet demo` (synthetic data at 4 mm, 8 subjects x 5 sites, "
        "site4 unseen; none, HM, WS, ComBat, the shipped CPU IGUANe model and the oracle "
        "row; benchmark tables with 95 % intervals (200 bootstrap samples) and plots "
        "written), each in a fresh process.",
        "",
        *common.machine_lines(load_start),
        f"- Python {platform.python_version()}, harmonix {harmonix.__version__}, "
        f"PyTorch {torch.__version__}",
        "",
        "| run | wall (s) | CPU, user + system (s) |",
        "|---|---:|---:|",
        *(f"| {i + 1} | {r['wall']:.1f} | {r['cpu']:.1f} |" for i, r in enumerate(runs)),
        "",
        f"Median wall time {wall:.1f} s (CPU {cpu:.1f} s); goal <= {GOAL_S:.0f} s: {met}. "
        f"Peak RSS of the demo process: {peak:.0f} MB.",
    ]
    common.write_results(args.out, lines)


if __name__ == "__main__":
    main()
