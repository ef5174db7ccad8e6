"""Data-parallel IGUANe training on CPU: torchrun processes against one process.

Trains the CPU configuration (base width 4, 32^3 patches, no augmentation) on synthetic
4 mm data (8 subjects x 3 sites, one reference) for ``--steps`` steps, three ways, each in
a fresh process:

- ``1 process, batch 1``: the single-process training of one pair per update;
- ``1 process, batch P``: the same work as P processes, in one process using P threads;
- ``P processes (torchrun, gloo), batch 1 each``: DistributedDataParallel, one thread per
  process; the same training as the previous line (see
  :mod:`harmonix.iguane.training.distributed`).

Reports seconds per step and (source, reference) pairs trained per second, and writes
``benchmarks/results/iguane_ddp.md``. On a small CPU machine the processes share its
cores, so the figure to read is the pairs per second of P processes against one process
with P threads doing the same updates; on GPUs each process gets its own device.

Usage::

    python benchmarks/bench_iguane_ddp.py [--steps 10] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

from _helpers import common

CONFIG = dict(
    n_epochs=1,
    base_width=4,
    patch_size=32,
    disc_pairs=2,
    augment=False,
    identity_init=True,
    val_fraction=0.0,
)


def worker(steps: int, batch_size: int, threads: int, out: pathlib.Path) -> None:
    """Train in this process (or in this torchrun process) and write the timing as JSON."""
    import numpy as np
    import torch

    from harmonix.datasets import make_multisite
    from harmonix.iguane.inputs import volumes as D
    from harmonix.iguane.training import loop as T
    from harmonix.iguane.training.config import TrainConfig

    torch.set_num_threads(threads)
    ds = make_multisite(n_subjects=8, n_sites=3, resolution=4, random_state=0)
    vols = [(p.x, p.mask) for p in (D.prepare_volume(img) for img in ds.imgs)]
    config = TrainConfig(**CONFIG, steps_per_epoch=steps, batch_size=batch_size)
    start = time.perf_counter()
    result = T.train(vols, ds.sites, "site0", ds.ages, config, random_state=0, device="cpu")
    seconds = time.perf_counter() - start
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        out.write_text(
            json.dumps(
                {
                    "seconds": seconds,
                    "steps": result.step,
                    "pairs_per_update": batch_size * world,
                    "n_sources": len(set(ds.sites.tolist())) - 1,
                    "final_generator_loss": float(np.mean(result.history["loss_generator"][-3:])),
                }
            )
        )


def _run(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> None:
    parser = common.script_parser(__doc__, "iguane_ddp.md")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--worker", nargs=4, metavar=("STEPS", "BATCH", "THREADS", "JSON"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        steps, batch, threads, out = args.worker
        worker(int(steps), int(batch), int(threads), pathlib.Path(out))
        return

    import tempfile

    import torch

    p = args.processes
    me = str(pathlib.Path(__file__).resolve())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    runs = [
        ("1 process, batch 1 (1 thread)", 1, 1, None),
        (f"1 process, batch {p} ({p} threads)", p, p, None),
        (f"{p} processes (torchrun, gloo), batch 1 and 1 thread each", 1, 1, p),
    ]
    load_start = common.load_now()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, batch, threads, procs) in enumerate(runs):
            out = pathlib.Path(tmp) / f"run{i}.json"
            tail = [me, "--worker", str(args.steps), str(batch), str(threads), str(out)]
            run_env = {**env, "OMP_NUM_THREADS": str(threads)}
            if procs is None:
                _run([sys.executable, *tail], run_env)
            else:
                _run(
                    [
                        sys.executable,
                        "-m",
                        "torch.distributed.run",
                        "--standalone",
                        f"--nproc_per_node={procs}",
                        *tail,
                    ],
                    run_env,
                )
            results.append((name, json.loads(out.read_text())))
            print(f"{name}: {results[-1][1]['seconds']:.1f} s", flush=True)
    load_end = common.load_now()

    def pairs_per_s(r: dict) -> float:
        return r["steps"] * r["n_sources"] * r["pairs_per_update"] / r["seconds"]

    same_work = pairs_per_s(results[2][1]) / pairs_per_s(results[1][1])
    lines = [
        "# IGUANe data-parallel training on CPU (torchrun, gloo)",
        "",
        "Written by `benchmarks/bench_iguane_ddp.py` (see its docstring). CPU configuration: "
        "base width 4, 32^3 patches, 2 discriminator pairs, no augmentation; synthetic 4 mm "
        f"data, 8 subjects x 3 sites (2 source sites); {args.steps} steps; whole-process "
        "training time including network set-up.",
        "",
        f"- CPU: {common.cpu_model()}, {os.cpu_count()} logical cores",
        f"- Python {platform.python_version()}, PyTorch {torch.__version__}",
        common.load_line(load_start, load_end),
        "",
        "| run | pairs per update | seconds | s per step | pairs per second |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {r['pairs_per_update']} | {r['seconds']:.1f} | "
            f"{r['seconds'] / r['steps']:.2f} | {pairs_per_s(r):.2f} |"
            for name, r in results
        ),
        "",
        f"{p} processes against 1 process doing the same updates with {p} threads: "
        f"{same_work:.2f}x the pairs per second. Against 1 process with batch 1 (each "
        f"process's own share of the work): "
        f"{pairs_per_s(results[2][1]) / pairs_per_s(results[0][1]):.2f}x the pairs per second, "
        f"{results[2][1]['seconds'] / results[0][1]['seconds']:.2f}x the time per step.",
        "",
        "The processes share this machine's cores, so this measures the overhead and "
        "efficiency of the data-parallel path (gradient all-reduce after every update, "
        "one thread per process), not a gain from more hardware; with one GPU per "
        "process, each process brings its own device. That the distributed run is the "
        "same training as one process with the larger batch is tested in "
        "tests/test_iguane_distributed.py (float64: equal to 4e-14 after 4 steps).",
    ]
    common.write_results(args.out, lines)


if __name__ == "__main__":
    main()
