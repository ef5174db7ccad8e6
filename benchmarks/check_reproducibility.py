"""Reproducibility under load: same-seed IGUANe fits idle and busy, and the test suite busy.

Two checks of issue 26, each run in fresh processes:

- ``--fits``: ``IGUANeHarmonizer(n_epochs=1, steps_per_epoch=2, base_width=4,
  random_state=0, voxel_size=4)`` (the issue's fit, default threads) fitted twice on the
  same 4 mm data, once with nothing added to the machine and once next to two busy processes (pure
  Python loops started by this script); the two models' weights and their outputs on the
  data are compared bit for bit. The same pair with ``cpu_threads="auto"`` shows what
  following the load costs.
- ``--suite N``: the default test suite (``python -m pytest -q -x -p no:cacheprovider``)
  N times in a row while two busy processes run.

Run from the repository root::

    python benchmarks/check_reproducibility.py --fits --suite 3

It writes ``benchmarks/results/reproducibility.md`` (``--out``; ``--append`` adds the
sections to an existing file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _helpers import common

FIT = dict(n_epochs=1, steps_per_epoch=2, base_width=4, random_state=0)


def fit_child(out: Path, cpu_threads: str | None) -> None:
    """Fit the issue's model, save it and its outputs (runs in a fresh process)."""
    import numpy as np
    import torch

    from harmonix.datasets import make_multisite
    from harmonix.iguane.estimator import IGUANeHarmonizer

    ds = make_multisite(n_subjects=4, n_sites=3, resolution=4, random_state=0)
    est = IGUANeHarmonizer(**FIT, voxel_size=ds.resolution, cpu_threads=cpu_threads)
    est.fit(ds.imgs, ds.sites, ds.ages)
    torch.save(est.generator_.state_dict(), out / "generator.pt")
    np.save(out / "outputs.npy", est.transform(ds.imgs))
    print(json.dumps({"threads": torch.get_num_threads()}))


def run_fit(tmp: Path, name: str, cpu_threads: str | None, busy: int) -> dict:
    out = tmp / name
    out.mkdir()
    procs = common.start_busy(busy)
    try:
        if busy:
            time.sleep(3)
        load = common.load_text()
        start = time.perf_counter()
        arg = cpu_threads or "default"
        subprocess.run(
            [sys.executable, __file__, "--fit-child", str(out), "--cpu-threads", arg],
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - start
    finally:
        common.stop_busy(procs)
    return {"dir": out, "load": load, "seconds": seconds, "busy": busy}


def compare(a: Path, b: Path) -> tuple[bool, float, float]:
    """(weights equal bit for bit, largest weight difference, largest output difference)."""
    import numpy as np
    import torch

    wa = torch.load(a / "generator.pt", weights_only=True)
    wb = torch.load(b / "generator.pt", weights_only=True)
    equal = all(torch.equal(wa[k], wb[k]) for k in wa)
    dw = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    do = float(np.abs(np.load(a / "outputs.npy") - np.load(b / "outputs.npy")).max())
    return equal, dw, do


def check_fits() -> list[str]:
    lines = [
        "## Two fits with one random_state, idle and next to two busy processes",
        "",
        f"`IGUANeHarmonizer({', '.join(f'{k}={v}' for k, v in FIT.items())}, voxel_size=4)` on "
        "`make_multisite(n_subjects=4, n_sites=3, resolution=4, random_state=0)`, each fit "
        "in a fresh process; 'busy' = two pure-Python loops started by the script.",
        "",
        "| cpu_threads | fit | load average at start | s | weights equal bit for bit "
        "| largest weight difference | largest output difference (intensity) |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for threads in (None, "auto"):
            label = "None (default)" if threads is None else f"'{threads}'"
            runs = [
                run_fit(tmp, f"{threads}-idle", threads, 0),
                run_fit(tmp, f"{threads}-busy", threads, 2),
            ]
            equal, dw, do = compare(runs[0]["dir"], runs[1]["dir"])
            for run, what in zip(runs, ("nothing added", "2 busy processes")):
                lines.append(
                    f"| {label} | {what} | {run['load']} | {run['seconds']:.0f} | "
                    + (
                        f"{'yes' if equal else 'no'} | {dw:.3g} | {do:.3g} |"
                        if run["busy"]
                        else "| | |"
                    )
                )
            print(lines[-2:], flush=True)
    return lines


def check_suite(n: int) -> list[str]:
    lines = [
        f"## The default test suite {n} times in a row next to two busy processes",
        "",
        "`python -m pytest -q -x -p no:cacheprovider`, the two busy processes started before "
        "the first run and stopped after the last.",
        "",
        "| run | load average at start / end | s | result |",
        "|---:|---|---:|---|",
    ]
    procs = common.start_busy(2)
    try:
        time.sleep(3)
        for i in range(n):
            load = common.load_text()
            start = time.perf_counter()
            res = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"],
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - start
            summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "no output"
            lines.append(
                f"| {i + 1} | {load} / {common.load_text()} | {seconds:.0f} | "
                f"{'passed' if res.returncode == 0 else 'FAILED'}: {summary.strip('= ')} |"
            )
            print(lines[-1], flush=True)
            if res.returncode:
                print(res.stdout[-5000:], flush=True)
    finally:
        common.stop_busy(procs)
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = common.script_parser(__doc__, "reproducibility.md")
    ap.add_argument("--fits", action="store_true", help="the two same-seed fits")
    ap.add_argument("--suite", type=int, default=0, help="run the test suite this many times")
    ap.add_argument("--append", action="store_true", help="add the sections to --out")
    ap.add_argument("--fit-child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cpu-threads", default="default", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fit_child is not None:
        threads = None if args.cpu_threads == "default" else args.cpu_threads
        return fit_child(args.fit_child, threads)
    import torch

    lines = [
        "# Reproducibility under load (issue 26)",
        "",
        f"Written by `benchmarks/check_reproducibility.py` on {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        f"- CPU: {common.cpu_model()}, {os.cpu_count()} logical cores",
        f"- {common.cpu_flags()}",
        f"- PyTorch {torch.__version__}, {torch.get_num_threads()} threads by default",
        f"- load average at start: {common.load_text()} (the machine is shared: the "
        "'nothing added' runs are not idle when this is above 1.5)",
        "",
    ]
    if args.fits:
        lines += [*check_fits(), ""]
    if args.suite:
        lines += [*check_suite(args.suite), ""]
    lines.append(f"Load average at end: {common.load_text()}.")
    if args.append and args.out.exists():  # the new sections under the existing ones
        lines = [args.out.read_text().rstrip("\n"), "", *lines[lines.index("") + 1 :]]
    common.write_results(args.out, lines)


if __name__ == "__main__":
    main()
