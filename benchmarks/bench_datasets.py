"""Speed of ``harmonix.datasets.make_multisite`` on one CPU core.

Times the template loading (nilearn ICBM152 maps resampled to the FSL grid, cached in
memory after the first call) separately, then the median of ``--repeats`` runs of
``make_multisite(n_subjects=40, n_sites=5)`` at 2 mm and of a smaller data set at 1 mm, and
writes ``benchmarks/results/datasets.md``. The goal is 200 volumes at 2 mm in <= 15 s.

Threads are limited to one before numpy is imported (``OMP_NUM_THREADS`` and friends), and
again with threadpoolctl when it is installed, so the figures are single-core figures.

Usage::

    python benchmarks/bench_datasets.py [--repeats 3] [--out benchmarks/results/datasets.md]
"""

from __future__ import annotations

import os

for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
from _common import cpu_model  # noqa: E402

GOAL_S = 15.0
HERE = pathlib.Path(__file__).resolve().parent




def _thread_limit():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _time_call(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU (user + system, this process) seconds of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        del result
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-subjects", type=int, default=40)
    parser.add_argument("--n-sites", type=int, default=5)
    parser.add_argument("--n-subjects-1mm", type=int, default=4)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results" / "datasets.md")
    args = parser.parse_args(argv)

    with _thread_limit():
        start = time.perf_counter()
        import nilearn

        try:
            from harmonix import datasets
        except ImportError:  # running from a source checkout without installing
            sys.path.insert(0, str(HERE.parent))
            from harmonix import datasets

        import_s = time.perf_counter() - start

        load_s = {}
        for res in (2, 1):
            start = time.perf_counter()
            datasets._load_anatomy(res)
            load_s[res] = time.perf_counter() - start

        # Warm-up (first-touch allocations, caches), not timed.
        datasets.make_multisite(2, 2, resolution=2, random_state=0)

        runs = {}
        configs = [
            (2, args.n_subjects, args.n_sites),
            (1, args.n_subjects_1mm, args.n_sites),
        ]
        for res, n_subjects, n_sites in configs:
            print(f"timing {n_subjects} subjects x {n_sites} sites at {res} mm ...", flush=True)
            wall, cpu = _time_call(
                lambda res=res, n_subjects=n_subjects, n_sites=n_sites: datasets.make_multisite(
                    n_subjects, n_sites, resolution=res, random_state=0
                ),
                args.repeats,
            )
            runs[(res, n_subjects, n_sites)] = wall, cpu
            print(
                "  wall "
                + ", ".join(f"{t:.2f} s" for t in wall)
                + "; cpu "
                + ", ".join(f"{t:.2f} s" for t in cpu),
                flush=True,
            )

    load_avg = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    try:
        n_usable = len(os.sched_getaffinity(0))
    except AttributeError:
        n_usable = os.cpu_count()
    main_key = configs[0]
    main_wall = statistics.median(runs[main_key][0])
    main_cpu = statistics.median(runs[main_key][1])
    met = main_cpu <= GOAL_S

    lines = [
        "# `make_multisite` speed (synthetic traveling-subject data)",
        "",
        "Produced by `python benchmarks/bench_datasets.py`; one thread (BLAS/OpenMP limited",
        "to 1 before importing numpy, and with threadpoolctl when installed).",
        "",
        "## Machine",
        "",
        f"- CPU: {cpu_model()}; `os.cpu_count()` = {os.cpu_count()}, usable = {n_usable}",
        f"- load average at the end (1/5/15 min): "
        f"{load_avg[0]:.2f} / {load_avg[1]:.2f} / {load_avg[2]:.2f}; when it exceeds the "
        "core count other processes compete for the cores and wall-clock times grow, so the "
        "goal is judged on the CPU time of this (single-threaded) process",
        f"- Python {platform.python_version()}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, nilearn {nilearn.__version__}",
        f"- OS: {platform.system()} {platform.release()} ({platform.machine()})",
        "",
        "## Template loading (once per resolution, then cached in memory)",
        "",
        f"- import harmonix.datasets + nilearn: {import_s:.2f} s",
        f"- ICBM152 maps resampled to the 2 mm grid: {load_s[2]:.2f} s",
        f"- ICBM152 maps resampled to the 1 mm grid: {load_s[1]:.2f} s",
        "",
        f"## Generation (templates cached; median of {args.repeats} runs after a warm-up)",
        "",
        "| resolution | subjects x sites | volumes | grid | median CPU s | median wall s "
        "| CPU runs s | wall runs s | CPU s / volume |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    grids = {2: "91x109x91", 1: "182x218x182"}
    for (res, n_subjects, n_sites), (wall, cpu) in runs.items():
        med_cpu, med_wall = statistics.median(cpu), statistics.median(wall)
        n_vol = n_subjects * n_sites
        lines.append(
            f"| {res} mm | {n_subjects} x {n_sites} | {n_vol} | {grids[res]} | {med_cpu:.2f} "
            f"| {med_wall:.2f} | "
            + ", ".join(f"{t:.2f}" for t in cpu)
            + " | "
            + ", ".join(f"{t:.2f}" for t in wall)
            + f" | {med_cpu / n_vol:.3f} |"
        )
    lines += [
        "",
        f"Goal: {main_key[1] * main_key[2]} volumes at 2 mm in <= {GOAL_S:.0f} s on one core: "
        f"**{'met' if met else 'not met'}** (median CPU time {main_cpu:.2f} s, "
        f"wall-clock {main_wall:.2f} s).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, args.out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
