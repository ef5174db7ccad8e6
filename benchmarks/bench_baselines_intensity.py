"""Speed and memory of harmonix's HM and WS baselines against intensity-normalization.

Times, side by side in one run, harmonix's :class:`HistogramMatchingHarmonizer` and
:class:`WhiteStripeHarmonizer` ``transform`` of one 182x218x182 volume against
intensity-normalization's equivalents (``NyulNormalizer.transform`` after
``fit_population``; ``WhiteStripeNormalizer.fit_transform``, which is WhiteStripe's whole
per-image work), alternating the libraries and reporting medians. Peak memory of each call is
measured in a fresh subprocess (see ``measure_memory``).

Environment (intensity-normalization goes into its own virtual environment so that it can
never change the versions harmonix is tested with; 4.0 needs Python >= 3.12, so on Python
3.11 the newest installable release is 3.0.1)::

    python -m venv .venv-bench
    .venv-bench/bin/pip install -e . "intensity-normalization==3.0.1"

Run from the repository root (about 2 minutes on 2 cores)::

    .venv-bench/bin/python benchmarks/bench_baselines_intensity.py

It writes ``benchmarks/results/baselines_intensity.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from _helpers import common

SHAPE = (182, 218, 182)
VOLUME_BYTES = int(np.prod(SHAPE)) * 4  # one float32 volume
SPEED_GOAL = 3.0  # harmonix at least this many times faster
MEMORY_GOAL = 3.0  # peak memory at most this many volumes' bytes
#: intensity-normalization 4.0 figures on a 2-core machine (shared/BASELINES.md); not
#: measured here, since 4.0 cannot be installed on Python 3.11.
ANCHOR_40 = {"HM": (0.23, 361.0), "WS": (0.105, None)}


# -- the four calls ---------------------------------------------------------------------------
def make_calls(imgs: np.ndarray, sites: np.ndarray, workdir: Path) -> dict:
    """Fit the models once and return {name: callable(volume_index)} plus fit timings."""
    from intensity_normalization import NyulNormalizer, WhiteStripeNormalizer, create_image

    from harmonix.intensity.histogram_matching import HistogramMatchingHarmonizer
    from harmonix.intensity.whitestripe import WhiteStripeHarmonizer

    vols = [imgs[i] for i in range(len(imgs))]
    in_imgs = [create_image(v) for v in vols]
    in_masks = [create_image((v != 0).astype(np.float32)) for v in vols]
    reference = sites[0]

    fit_times: dict[str, list[float]] = {"HM harmonix": [], "HM intensity-normalization": []}
    for rep in range(3):
        order = [0, 1] if rep % 2 == 0 else [1, 0]
        for which in order:
            t0 = time.perf_counter()
            if which == 0:
                hm = HistogramMatchingHarmonizer(reference_site=reference).fit(vols, sites)
                fit_times["HM harmonix"].append((time.perf_counter() - t0) / len(vols))
            else:
                nyul = NyulNormalizer()
                nyul.fit_population(in_imgs, in_masks)
                fit_times["HM intensity-normalization"].append(
                    (time.perf_counter() - t0) / len(vols)
                )
    ws = WhiteStripeHarmonizer(reference_site=reference).fit(vols, sites)

    hm.save(workdir / "hm.npz")
    ws.save(workdir / "ws.npz")
    nyul.save_standard_histogram(str(workdir / "nyul.npy"))

    calls = {
        "HM harmonix": lambda i: hm.transform([vols[i]]),
        "HM intensity-normalization": lambda i: nyul.transform(in_imgs[i], in_masks[i]),
        "WS harmonix": lambda i: ws.transform([vols[i]]),
        "WS intensity-normalization": lambda i: WhiteStripeNormalizer(width=0.05).fit_transform(
            in_imgs[i], in_masks[i]
        ),
    }
    return calls, fit_times


def time_calls(calls: dict, n_volumes: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Alternate the calls (rotating their order), one volume per round."""
    names = list(calls)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for name in names:  # warm-up (imports, caches)
        calls[name](0)
    for rep in range(repeats):
        i = rep % n_volumes
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            calls[name](i)
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu}


# -- memory, one fresh process per call ---------------------------------------------------------
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(name: str, workdir: Path) -> dict:
    """Run one call in this (fresh) process; report its peak memory in MiB.

    ``rss_mib``: peak resident set size during the call minus the resident size just
    before it (the kernel's high-water mark is reset first through /proc/self/clear_refs).
    ``tracemalloc_mib``: peak of Python-tracked allocations (numpy's included) during a
    second, identical call.
    """
    from intensity_normalization import NyulNormalizer, WhiteStripeNormalizer, create_image

    from harmonix.intensity.histogram_matching import HistogramMatchingHarmonizer
    from harmonix.intensity.whitestripe import WhiteStripeHarmonizer

    vol = np.load(workdir / "volume.npy")
    if name == "HM harmonix":
        model = HistogramMatchingHarmonizer.load(workdir / "hm.npz")
        call = lambda: model.transform([vol])  # noqa: E731
    elif name == "WS harmonix":
        model = WhiteStripeHarmonizer.load(workdir / "ws.npz")
        call = lambda: model.transform([vol])  # noqa: E731
    else:
        img, mask = create_image(vol), create_image((vol != 0).astype(np.float32))
        if name == "HM intensity-normalization":
            nyul = NyulNormalizer()
            nyul.load_standard_histogram(str(workdir / "nyul.npy"))
            call = lambda: nyul.transform(img, mask)  # noqa: E731
        else:
            call = lambda: WhiteStripeNormalizer(width=0.05).fit_transform(img, mask)  # noqa: E731
    small = np.zeros((8, 8, 8), dtype=np.float32)
    small[2:6, 2:6, 2:6] = np.arange(64).reshape(4, 4, 4) + 1
    if "harmonix" in name:  # warm up code paths on a tiny image
        model.transform([small])
    gc.collect()
    result: dict = {}
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        before = _rss_kib("VmRSS")
        out = call()
        result["rss_mib"] = (_rss_kib("VmHWM") - before) / 1024
        del out
    except OSError:
        result["rss_mib"] = None
    gc.collect()
    tracemalloc.start()
    out = call()
    result["tracemalloc_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    del out
    return result


def measure_memory(names: list[str], volume: np.ndarray, workdir: Path) -> dict:
    np.save(workdir / "volume.npy", volume)
    out = {}
    for name in names:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", name, "--workdir", str(workdir)],
            check=True,
            capture_output=True,
            text=True,
        )
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# -- report ------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ["harmonix", "intensity-normalization", "numpy", "scipy", "nibabel"]:
        out[pkg] = version(pkg)
    return out


def fmt(x: float | None, spec: str = ".0f") -> str:
    return "n/a" if x is None else format(x, spec)


def report(timing, fit_times, memory, args, load_before, load_after) -> str:
    wall, cpu = timing["wall"], timing["cpu"]
    med = {n: float(np.median(v)) * 1e3 for n, v in wall.items()}
    med_cpu = {n: float(np.median(v)) * 1e3 for n, v in cpu.items()}
    vol_mib = VOLUME_BYTES / 2**20
    lines = [
        "# HM and WS baselines: harmonix vs intensity-normalization",
        "",
        f"Generated by `benchmarks/bench_baselines_intensity.py` on {time.strftime('%Y-%m-%d')}.",
        "",
        f"- Data: `make_multisite(n_subjects={args.subjects}, n_sites={args.sites}, "
        f"resolution=1, random_state=0)`: {args.subjects * args.sites} volumes of "
        f"{'x'.join(map(str, SHAPE))} (float32 volume = {vol_mib:.1f} MiB); "
        f"reference site {args.reference!r}.",
        f"- Per-volume transform, {args.repeats} rounds; each round runs the four calls on "
        "the same volume in a rotated order (volumes cycle over rounds). Medians (wall "
        "clock; CPU time of the process in parentheses: with other jobs competing for the "
        "CPUs, the CPU time is the closer estimate of the wall time on an idle machine).",
        "- harmonix: `HistogramMatchingHarmonizer.transform([vol])`, "
        "`WhiteStripeHarmonizer.transform([vol])` (validation, background handling and "
        "output wrapping included). intensity-normalization: `NyulNormalizer.transform(img, "
        "mask)` after `fit_population`; `WhiteStripeNormalizer(width=0.05).fit_transform(img, "
        "mask)`.",
        "- Peak memory: each call in a fresh subprocess, on one volume already in memory. "
        "RSS = peak resident set size during the call minus the resident size just before "
        "it (kernel high-water mark reset through `/proc/self/clear_refs`); tracemalloc = "
        "peak of Python-tracked allocations (numpy's included) during the same call. Both "
        "include the returned volume.",
        f"- Machine: {os.cpu_count()} CPUs ({common.cpu_model()}), shared with other jobs: load "
        f"average {load_before:.1f} before, {load_after:.1f} after.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        "## Transform of one volume",
        "",
        "| method | harmonix ms | intensity-normalization ms | speed-up | "
        "harmonix peak MiB (RSS / tracemalloc) | intensity-normalization peak MiB "
        "(RSS / tracemalloc) | harmonix peak / volume bytes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for method in ["HM", "WS"]:
        ours, theirs = f"{method} harmonix", f"{method} intensity-normalization"
        ratio = med[theirs] / med[ours]
        ratio_cpu = med_cpu[theirs] / med_cpu[ours]
        mem_ours, mem_theirs = memory[ours], memory[theirs]
        peak = max(v for v in mem_ours.values() if v is not None)
        lines.append(
            f"| {method} | {med[ours]:.0f} ({med_cpu[ours]:.0f}) | {med[theirs]:.0f} "
            f"({med_cpu[theirs]:.0f}) | {ratio:.1f}x ({ratio_cpu:.1f}x) | "
            f"{fmt(mem_ours['rss_mib'])} / {fmt(mem_ours['tracemalloc_mib'])} | "
            f"{fmt(mem_theirs['rss_mib'])} / {fmt(mem_theirs['tracemalloc_mib'])} | "
            f"{peak / vol_mib:.2f} |"
        )
        anchor_s, anchor_mb = ANCHOR_40[method]
        met = ratio >= SPEED_GOAL and ratio_cpu >= SPEED_GOAL
        verdicts.append(
            f"- {method}: speed goal (>= {SPEED_GOAL:.0f}x) {'met' if met else 'NOT met'} "
            f"({ratio:.1f}x wall, {ratio_cpu:.1f}x CPU vs intensity-normalization "
            f"{versions()['intensity-normalization']}); memory goal "
            f"(<= {MEMORY_GOAL:.0f}x volume bytes = {MEMORY_GOAL * vol_mib:.0f} MiB) "
            f"{'met' if peak <= MEMORY_GOAL * vol_mib else 'NOT met'} ({peak:.0f} MiB). "
            f"Against the intensity-normalization 4.0 figures in shared/BASELINES.md "
            f"({anchor_s * 1e3:.0f} ms"
            + (f", {anchor_mb:.0f} MB" if anchor_mb else "")
            + "; measured elsewhere on an unshared machine of this type, not side by side): "
            f"{anchor_s * 1e3 / med_cpu[ours]:.1f}x using harmonix's CPU time "
            f"({anchor_s * 1e3 / med[ours]:.1f}x using its wall time on this shared machine)."
        )
    fit_ours = float(np.median(fit_times["HM harmonix"])) * 1e3
    fit_theirs = float(np.median(fit_times["HM intensity-normalization"])) * 1e3
    lines += [
        "",
        "HM fit, per training volume (median of 3 alternating fits on all volumes): "
        f"harmonix {fit_ours:.0f} ms, intensity-normalization {fit_theirs:.0f} ms "
        f"({fit_theirs / fit_ours:.1f}x).",
        "",
        "## Goals",
        "",
        *verdicts,
        "",
        "Raw wall-clock times (ms) per round:",
        "",
    ]
    for name, values in wall.items():
        lines.append(f"- {name}: " + ", ".join(f"{v * 1e3:.0f}" for v in values))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = common.script_parser(__doc__, "baselines_intensity.md", repeats=7)
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.workdir)))
        return

    from harmonix.datasets import make_multisite

    load_before = common.load_now()[0]
    ds = make_multisite(n_subjects=args.subjects, n_sites=args.sites, resolution=1, random_state=0)
    imgs, sites = ds.imgs, np.asarray(ds.sites)
    assert imgs.shape[1:] == SHAPE, imgs.shape
    args.reference = str(sites[0])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        calls, fit_times = make_calls(imgs, sites, workdir)
        timing = time_calls(calls, len(imgs), args.repeats)
        print("timed", {n: round(float(np.median(v)) * 1e3) for n, v in timing["wall"].items()})
        del calls
        gc.collect()
        memory = measure_memory(list(timing["wall"]), np.array(imgs[len(imgs) // 2]), workdir)
        print("memory", memory)
    text = report(timing, fit_times, memory, args, load_before, common.load_now()[0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
