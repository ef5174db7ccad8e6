"""Speed and memory of IGUANe inference: harmonix (PyTorch) against the Keras original.

One forward pass of the IGUANe generator on one volume, at the paper's size (160x192x160,
1 mm) and at the 2 mm size (91x109x91 zero-padded to 96x112x96), CPU only:

- ``keras``: the generator built in tf-keras (``tests/keras_reference.py``, the same
  architecture as the original), called through ``tf.function`` (the fastest way to call it:
  eager calls are about 35 % slower; ``Model.predict`` is the same speed), TensorFlow's
  default settings and threads. On CPUs without AVX512-VNNI/BF16/AMX (AVX2-only ones)
  TensorFlow does not use oneDNN by default;
- ``keras onednn``: the same with ``TF_ENABLE_ONEDNN_OPTS=1``; the ratio is taken against
  the faster of the two Keras variants;
- ``harmonix``: :func:`harmonix.iguane.inference.harmonize_volume` with its defaults (the
  fused pass in float32, PyTorch's thread count whatever the load: reproducible outputs);
- ``harmonix auto threads``: the same with ``num_threads="auto"`` (threads chosen from the
  busy neighbours by :func:`~harmonix._threads.inference_threads`; faster on a
  shared machine, outputs that follow the thread count in their last digits);
- ``harmonix bf16``: the fused pass under bfloat16 autocast (``amp_dtype="bfloat16"``,
  what ``IGUANeHarmonizer(mixed_precision=True)`` runs), default threads. Timed by default
  only where the CPU computes bfloat16 natively (AVX512-BF16, AMX): elsewhere it is
  emulated and many times slower (name it in ``--variants`` to time it anyway); its peak
  memory and output difference are measured everywhere;
- ``harmonix plain``: the plain module-by-module pass (``fused_inference = False``) with
  channels-last tensors, i.e. a straightforward PyTorch port (the reference of the output
  check; timed with ``--variants``);
- ``harmonix 1 thread``: the fused pass with ``num_threads=1`` (``--variants``).

All variants compute the same function from the same weights: random weights (Glorot
kernels, random biases and norm parameters) are set in the Keras model, saved as a Keras 2
``.h5`` file and loaded into harmonix with
:func:`harmonix.iguane.model.keras_weights.load_keras_generator_weights`. The input is a
simulated brain (:func:`harmonix.datasets.make_multisite`) on the network scale.

Timing: each variant lives in its own worker process (so that the libraries' thread pools
never compete), warmed up by one call; the main process then asks the workers in turn,
rotating the order every round, so that every variant sees the same machine load, each
request 0.5 s after the previous reply (``SETTLE``: spinning worker threads of the previous
variant would look like busy neighbours to harmonix's thread rule); medians
are reported, with the ratio harmonix / Keras. ``--busy N`` adds a second phase with the
same workers: N busy background processes (pure Python loops) started by the script,
stopped at the end; the load average is recorded before and after each phase. Memory: peak
RSS (``resource.getrusage(...).ru_maxrss``) of a fresh process that imports the library,
builds the network, loads the weights and runs one forward pass; the RSS just before the
pass is reported too. Output differences are taken over the brain voxels against the plain
float32 pass (``--accuracy``: also against a float64 pass on a 64^3 crop at 2 mm). The
CPU's flags (AVX-512, AVX512-BF16, AMX) head the results.

Environment (TensorFlow goes into its own virtual environment, so that it never changes the
versions harmonix is tested with)::

    python -m venv .venv-bench
    .venv-bench/bin/pip install -e . tensorflow tf-keras h5py nilearn

Run from the repository root (about 4 minutes on an idle 2-core machine)::

    .venv-bench/bin/python benchmarks/bench_iguane_inference.py --sizes 1mm --busy 2

It writes ``benchmarks/results/iguane_inference.md`` (``--out`` to change; ``--repeats``
rounds of timing per size and phase, ``--sizes 2mm`` for a quick run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _helpers import common

HERE = Path(__file__).resolve().parent
common.use_test_helpers()  # keras_reference: test and benchmark support
SIZES = {"1mm": (160, 192, 160), "2mm": (96, 112, 96)}
#: Accuracy checks against float64 (and bf16 on CPUs without native bf16, where it is
#: emulated and very slow) run on the central 64^3 crop of the 2 mm volume: PyTorch's float64
#: convolutions unfold their input (about 8 GB at 96x112x96).
CROP = "crop64"
CROP_SHAPE = (64, 64, 64)
SPEED_GOAL = 1.0  # harmonix float32 / Keras time ratio at most this (idle and loaded)
BF16_GOAL = 0.7  # harmonix bfloat16 / Keras float32 time ratio at most this (idle)
#: Convolution work of one generator pass at 160x192x160 (2 FLOP per multiply-add, counted
#: from the layer shapes; every layer scales with the number of voxels).
GFLOP_1MM = 404.3
#: Pause before each timed request (seconds): TensorFlow's and OpenMP's worker threads
#: spin for a while after a call; a harmonix call starting meanwhile would count the
#: previous worker's threads as busy neighbours and size its threads for a loaded machine.
SETTLE = 0.5
MEMORY_GOAL_MB = 1200.0  # harmonix peak RSS for one full-size volume (float32 and bf16)
TIMED = ("keras", "keras onednn", "harmonix", "harmonix bf16")
VARIANTS = (*TIMED, "harmonix auto threads", "harmonix plain", "harmonix 1 thread")
KERAS = ("keras", "keras onednn")
LABELS = {
    "keras": "Keras (TensorFlow defaults)",
    "keras onednn": "Keras (TF_ENABLE_ONEDNN_OPTS=1)",
    "harmonix auto threads": "harmonix (fused), num_threads='auto'",
    "harmonix": "harmonix (fused)",
    "harmonix plain": "harmonix plain pass",
    "harmonix 1 thread": "harmonix (fused), 1 thread",
    "harmonix bf16": "harmonix fused, bf16 autocast",
    "harmonix float64": "harmonix fused, float64",
}
WEIGHT_SEED = 0
NOTES = [
    "- References: 'plain float32' is harmonix's plain module-by-module pass in float32; "
    "'float64' is harmonix's pass in float64 (which matches the Keras model run in float64 "
    "to ~1e-11, tests/test_keras_weights.py).",
    "- Keras in float32 is much further from the float64 result than harmonix in float32. "
    "The cause is TensorFlow's float32 `reduce_mean` over the ~10^6 voxels of a map "
    "(relative error ~1e-5 against ~1e-7 for PyTorch's cascaded sums), amplified by the 18 "
    "normalizations; with the Keras norm's means accumulated in float64 the Keras and "
    "harmonix float32 outputs agree within ~1e-4 (checked separately at 96x112x96).",
    "- bfloat16 (random weights here) moves the output by ~1e-2 on average on the network "
    "scale; on trained models the SSIM to float32 in the brain is above 0.999 "
    "(`iguane_bf16.md`). It stays off by default (float32: the same outputs on every CPU); "
    "on CPUs without AVX512-BF16/AMX it is emulated and much slower than float32, so it "
    "is only timed by default where the CPU has it.",
    "- Threads: harmonix's default is PyTorch's thread count whatever the load, because "
    "oneDNN blocks some layers differently for other thread counts (outputs 1e-5 apart on "
    "the network scale between 2 and 3 threads): a count that followed the load would make "
    "outputs depend on it. `num_threads='auto'` (the 'auto threads' rows) opts into the "
    "load-following count: with no busy neighbour when a call starts (runnable tasks of "
    "the machine, not the lagging load average) every core, the fused norms included; "
    "with busy neighbours more threads than cores "
    "(limit + 2 per busy task, at most 4x) and the norms on one thread. At 160x192x160 "
    "with 2 busy processes on 2 cores: 2 threads 15.1 s, 4: 11.5 s, 6: 10.7 s, 8: 10.1 s "
    "(Keras about 14 s under the same load); at 96x112x96 on the idle machine: 2 threads 1.48 s, "
    "4: 1.59 s, 6: 1.52 s (no gain without neighbours). The scheduler is fair per thread, "
    "so more threads get a larger share, and OpenMP's static split is then made of "
    "smaller pieces. TensorFlow keeps its default (work-stealing) thread pools.",
    "- What bounds the idle ratio: ONEDNN_VERBOSE on the fused pass at 160x192x160 (2 "
    "threads, idle): the convolutions take 5.8 s of oneDNN execution, at 65-78 GFLOP/s on "
    "the well-shaped layers, while sgemm peaks at 69 GFLOP/s on this CPU (2048^3): the "
    "layers run at the machine's practical peak. 0.8x Keras (7.1-7.2 s) is 5.7 s, less "
    "than the convolutions alone, and Keras runs the same oneDNN kernels. Fewer FLOPs "
    "(Winograd F(2,3) in 3-D: 3.4x fewer multiplications) would need tile transforms that, "
    "written with PyTorch operations, stream about 8x each layer's input through memory "
    "(an estimated ~27 GB of traffic for the 32->16 full-resolution layer, which takes "
    "2.1 s direct): not pursued.",
    "- The full-resolution transposed convolution used to compute 14 output slices per 8 "
    "kept (its slab halo: 0.94 s at 43 GFLOP/s); a depth padding of 3 crops each slab to "
    "its own slices (1 mm pass 7.55 -> 7.18 s, same output).",
    "- Memory: the first level's 16-channel full-resolution map is not kept from the "
    "encoder to the decoder but recomputed there slab by slab (its convolution has one "
    "input channel: about 1 % of the work, 2-3 % of the time): the peak holds one "
    "full-resolution map instead of two (160x192x160: 1145 -> 898 MB peak RSS on the "
    "AVX2 machine, 2026-12).",
    "- Where the time goes (torch.profiler, harmonix fused pass at 96x112x96, 2 threads, "
    "load ~9, 2026-11-29): oneDNN convolutions 59 % of the self CPU time (22 calls), "
    "transposed convolutions 17 % (7 calls, inside aten::_convolution), copies 13 % (425 "
    "calls: slab assembly and the concatenation buffers; 6 % on one thread), the norm "
    "passes (sub, sum, clamp, addcmul, abs) about 9 %. The convolutions set the pace; "
    "the thread count decides how much of the machine they get.",
    "- TensorFlow's defaults: on CPUs without AVX512-VNNI/BF16/AMX (this AVX2 machine) "
    "TensorFlow does not enable oneDNN and runs Eigen kernels, about 2x slower than with "
    "`TF_ENABLE_ONEDNN_OPTS=1` (96x112x96 at load ~7: 12.1 s against 6.1 s); the ratio is "
    "taken against the faster Keras variant timed.",
    "- Peak RSS includes the interpreter and the libraries (about 0.4 GB for harmonix with "
    "PyTorch, 0.75 GB for TensorFlow).",
]


# -- environment ---------------------------------------------------------------------------
def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    return env


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- data and weights (run in a subprocess) ------------------------------------------------
def _network_scale(data: np.ndarray) -> np.ndarray:
    """Median-normalized network scale: brain median 0, background set to 0."""
    brain = data != 0
    out = np.zeros(data.shape, np.float32)
    out[brain] = data[brain] / np.median(data[brain]) - 1.0
    return out


def _make_input(size: str) -> np.ndarray:
    from harmonix.preprocessing import crop_or_pad, pad_to_multiple

    shape = SIZES[size]
    try:
        from harmonix.datasets import make_multisite

        ds = make_multisite(2, 2, resolution=1 if size == "1mm" else 2, random_state=0)
        vol = ds.imgs[0]
    except Exception as exc:  # nilearn missing: a smooth synthetic "brain"
        print(f"make_multisite unavailable ({exc}); using a synthetic volume", file=sys.stderr)
        from scipy import ndimage

        rng = np.random.default_rng(0)
        grid = np.indices(shape, dtype=np.float32)
        r = sum(((g - s / 2) / (0.4 * s)) ** 2 for g, s in zip(grid, shape))
        noise = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 3)
        vol = np.where(r < 1, 500 + 2000 * noise, 0).astype(np.float32)
    if vol.shape != shape:
        vol = crop_or_pad(vol, shape)[0] if size == "1mm" else pad_to_multiple(vol)[0]
    assert vol.shape == shape, vol.shape
    return _network_scale(vol)


def _random_torch_weights(path: Path) -> None:
    """Without TensorFlow: the same kind of random weights (Glorot kernels, norm scales in
    [0.5, 1.5], biases and offsets with sd 0.1) for harmonix alone, as a state dict."""
    import torch

    from harmonix.iguane.model.networks import Generator3D

    gen = Generator3D(16)
    g = torch.Generator().manual_seed(WEIGHT_SEED)
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5, generator=g)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1, generator=g)
    torch.save(gen.state_dict(), path)


def prepare(workdir: Path, sizes: list[str]) -> None:
    """Write random Keras weights (``weights.h5``; ``weights.pt`` for harmonix alone when
    TensorFlow is not installed) and one input volume per size."""
    try:
        from keras_reference import build_keras_generator, random_keras_weights

        model = build_keras_generator()
    except ImportError:
        print("TensorFlow/tf-keras not installed: harmonix variants only", file=sys.stderr)
        _random_torch_weights(workdir / "weights.pt")
    else:
        model.set_weights(random_keras_weights(model, np.random.default_rng(WEIGHT_SEED)))
        model.save_weights(str(workdir / "weights.h5"))
    for size in sizes:
        np.save(workdir / f"input_{size}.npy", _make_input(size))
    x2 = np.load(workdir / "input_2mm.npy") if "2mm" in sizes else _make_input("2mm")
    lo = [(s - c) // 2 for s, c in zip(x2.shape, CROP_SHAPE)]
    crop = x2[tuple(slice(a, a + c) for a, c in zip(lo, CROP_SHAPE))]
    np.save(workdir / f"input_{CROP}.npy", np.ascontiguousarray(crop))


# -- the variants ----------------------------------------------------------------------------
def make_runner(variant: str, workdir: Path, size: str):
    """A callable running one forward pass of ``variant`` (NumPy in, NumPy out)."""
    x = np.load(workdir / f"input_{size}.npy")
    weights = workdir / "weights.h5"
    if variant in KERAS:
        import tensorflow as tf
        from keras_reference import build_keras_generator

        model = build_keras_generator()
        model.load_weights(str(weights))
        fn = tf.function(lambda t: model(t, training=False))

        def run():
            return fn(tf.constant(x[None, ..., None])).numpy()[0, ..., 0]

        return run

    import torch

    from harmonix.iguane.inference import harmonize_volume
    from harmonix.iguane.model.keras_weights import load_keras_generator_weights

    if weights.exists():
        gen = load_keras_generator_weights(weights).eval()
    else:  # no TensorFlow: random harmonix weights (prepare)
        from harmonix.iguane.model.networks import Generator3D

        gen = Generator3D(16)
        gen.load_state_dict(torch.load(workdir / "weights.pt", weights_only=True))
        gen.eval()
    if variant == "harmonix":
        return lambda: harmonize_volume(gen, x)
    if variant == "harmonix 1 thread":
        return lambda: harmonize_volume(gen, x, num_threads=1)
    if variant == "harmonix auto threads":
        return lambda: harmonize_volume(gen, x, num_threads="auto")
    if variant == "harmonix bf16":
        import warnings

        from harmonix.iguane.devices import EmulatedBFloat16Warning

        warnings.simplefilter("ignore", EmulatedBFloat16Warning)  # the header says it
        return lambda: harmonize_volume(gen, x, amp_dtype="bfloat16")
    if variant == "harmonix plain":
        gen.fused_inference = False
        gen = gen.to(memory_format=torch.channels_last_3d)

        def run_plain():
            with torch.inference_mode():
                xt = torch.from_numpy(x)[None, None].contiguous(
                    memory_format=torch.channels_last_3d
                )
                return gen(xt)[0, 0].numpy()

        return run_plain
    if variant == "harmonix float64":
        gen = gen.double()

        def run64():
            with torch.inference_mode():
                return gen(torch.from_numpy(x.astype(np.float64))[None, None])[0, 0].numpy()

        return run64
    raise ValueError(f"unknown variant {variant!r}")


def _versions(variant: str) -> str:
    if variant in KERAS:
        import tensorflow as tf
        import tf_keras as keras

        return f"TensorFlow {tf.__version__}, tf-keras {keras.__version__}"
    import torch

    return f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads at most"


def worker(variant: str, workdir: Path, size: str) -> None:
    """Timing worker: one warm-up call, then one timed call per ``run`` line on stdin."""
    run = make_runner(variant, workdir, size)
    threads: list[int] = []
    if variant not in KERAS:  # record the thread count of every harmonix call
        from harmonix import _threads

        set_threads = _threads.intraop_threads

        def recording(n):
            import torch

            threads.append(torch.get_num_threads() if n is None else int(n))
            return set_threads(n)

        _threads.intraop_threads = recording
    run()
    print(json.dumps({"ready": True, "versions": _versions(variant)}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        threads.clear()
        t0 = time.perf_counter()
        run()
        reply = {"t": time.perf_counter() - t0, "threads": threads[-1] if threads else None}
        print(json.dumps(reply), flush=True)


def _native_like_bf16_kernels() -> None:
    """On a CPU that emulates bfloat16: make CPU bfloat16 convolutions allocate what
    native kernels allocate, for the memory measurement only.

    PyTorch's emulated bfloat16 convolutions (its reference kernels) unfold their input
    into im2col buffers of hundreds of MB per slab, which native oneDNN kernels do not.
    Here each convolution under CPU bfloat16 autocast rounds its input and kernel to
    bfloat16, computes in float32 (oneDNN) and rounds the output to bfloat16: the maps are
    the fused pass's bfloat16 maps, and the only extra memory is a float32 copy of one
    slab's input and output (more than native kernels need, so the figure is an upper
    bound). The values are those of native bfloat16 up to summation order.
    """
    import torch
    import torch.nn.functional as F

    def stand_in(original):
        def conv(x, weight, bias=None, *args, **kwargs):
            on = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == (
                torch.bfloat16
            )
            if not (on and x.device.type == "cpu"):
                return original(x, weight, bias, *args, **kwargs)
            with torch.autocast("cpu", enabled=False):
                xf = x.to(torch.bfloat16).float()
                wf = weight.to(torch.bfloat16).float()
                bf = None if bias is None else bias.to(torch.bfloat16).float()
                y = original(xf, wf, bf, *args, **kwargs)
                del xf
                return y.to(torch.bfloat16)

        return conv

    F.conv3d = stand_in(F.conv3d)
    F.conv_transpose3d = stand_in(F.conv_transpose3d)


def memory_child(variant: str, workdir: Path, size: str) -> None:
    """Fresh process: build, load, one forward pass; report peak RSS and save the output.

    ``harmonix bf16`` on a CPU without native bfloat16 runs with
    :func:`_native_like_bf16_kernels` (its peak RSS then stands for a native CPU's)."""
    t0 = time.perf_counter()
    stand_in = variant == "harmonix bf16" and not _cpu_bf16()
    if stand_in:
        _native_like_bf16_kernels()
    run = make_runner(variant, workdir, size)
    before = _rss_mb()
    t1 = time.perf_counter()
    y = run()
    t2 = time.perf_counter()
    np.save(workdir / f"out_{variant.replace(' ', '_')}_{size}.npy", y.astype(np.float32))
    if variant == "harmonix float64":
        np.save(workdir / f"out64_{size}.npy", y)
    print(
        json.dumps(
            {
                "rss_before_mb": before,
                "peak_rss_mb": _rss_mb(),
                "setup_s": t1 - t0,
                "first_call_s": t2 - t1,
                "stand_in": stand_in,
            }
        ),
        flush=True,
    )


# -- orchestration -------------------------------------------------------------------------
def _spawn(args: list[str], onednn: bool = False, **kw) -> subprocess.Popen:
    env = _worker_env()
    if onednn:
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        env=env,
        text=True,
        **kw,
    )


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result in child output:\n{text}")


def time_variants(
    workdir: Path, size: str, variants: list[str], repeats: int, phases: list[int]
) -> dict:
    """Alternating rounds per phase; a phase is a number of busy background processes."""
    procs: dict[str, subprocess.Popen] = {}
    info: dict[str, str] = {}
    out: dict = {"phases": {}, "versions": info}
    try:
        for v in variants:  # started one by one: warm-ups do not overlap
            p = _spawn(
                ["--worker", v, "--size", size, "--workdir", str(workdir)],
                onednn=v == "keras onednn",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            procs[v] = p
            msg = json.loads(p.stdout.readline())
            info[v] = msg["versions"]
        for busy in phases:
            background = common.start_busy(busy)
            try:
                if busy:
                    time.sleep(5)  # let the load show in the load average a little
                times: dict[str, list[float]] = {v: [] for v in variants}
                used: dict[str, int | None] = {}
                load_start = common.load_text()
                for rep in range(repeats):
                    k = rep % len(variants)
                    for v in variants[k:] + variants[:k]:
                        time.sleep(SETTLE)  # the previous worker's thread pools go quiet
                        procs[v].stdin.write("run\n")
                        procs[v].stdin.flush()
                        reply = json.loads(procs[v].stdout.readline())
                        times[v].append(reply["t"])
                        used[v] = reply.get("threads")
                    print(
                        f"  {size} busy={busy} round {rep + 1}/{repeats}: "
                        + ", ".join(
                            f"{v} {times[v][-1]:.2f}s"
                            + (f" ({used[v]} threads)" if used.get(v) else "")
                            for v in variants
                        )
                        + f" (load {common.load_text()})",
                        flush=True,
                    )
                out["phases"][busy] = {"times": times, "load": (load_start, common.load_text())}
            finally:
                common.stop_busy(background)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.stdin.close()
                p.wait(timeout=120)
    return out


def measure_memory(workdir: Path, size: str, variant: str) -> dict:
    p = _spawn(
        ["--memory-child", variant, "--size", size, "--workdir", str(workdir)],
        onednn=variant == "keras onednn",
        stdout=subprocess.PIPE,
    )
    out, _ = p.communicate()
    if p.returncode:
        raise RuntimeError(f"memory child {variant} {size} failed (exit {p.returncode})")
    return _last_json(out)


def _diff(workdir: Path, size: str, variant: str, reference: str) -> tuple[float, float]:
    ref = np.load(workdir / reference).astype(np.float64)
    y = np.load(workdir / f"out_{variant.replace(' ', '_')}_{size}.npy").astype(np.float64)
    brain = np.load(workdir / f"input_{size}.npy") != 0
    d = np.abs(y - ref)[brain]
    return float(d.max()), float(d.mean())


def _cpu_bf16() -> bool:
    try:
        from harmonix.iguane.devices import cpu_supports_bf16

        return cpu_supports_bf16()
    except Exception:
        return False


def main(argv: list[str] | None = None) -> None:
    ap = common.script_parser(
        __doc__, "iguane_inference.md", repeats=5, variants=(VARIANTS, TIMED), busy=True
    )
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["1mm", "2mm"])
    ap.add_argument(
        "--accuracy",
        action="store_true",
        help="differences to float64 (and bf16) on a 64^3 crop (slow)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.prepare:
        return prepare(args.workdir, args.sizes)
    if args.worker:
        return worker(args.worker, args.workdir, args.size)
    if args.memory_child:
        return memory_child(args.memory_child, args.workdir, args.size)

    load_start = common.load_text()
    bf16 = _cpu_bf16()
    print(common.cpu_flags(), flush=True)
    if args.variants is None:  # emulated bfloat16 is not timed unless asked for
        timed = [v for v in TIMED if v != "harmonix bf16" or bf16]
    else:
        timed = list(args.variants)
    phases = [0] + ([args.busy] if args.busy else [])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print("preparing weights and inputs...", flush=True)
        p = _spawn(["--prepare", "--workdir", str(workdir), "--sizes", *args.sizes])
        if p.wait():
            raise SystemExit("preparation failed")
        if not (workdir / "weights.h5").exists():
            timed = [v for v in timed if v not in KERAS]
        results = {}
        for size in args.sizes:
            print(f"timing {size} {SIZES[size]}...", flush=True)
            results[size] = time_variants(workdir, size, timed, args.repeats, phases)
            mem = {}
            # the plain pass is the output reference; one Keras variant for its memory;
            # harmonix in float32 and bfloat16 always (memory and accuracy hold when
            # bfloat16 is emulated, only slower)
            measured = ["harmonix plain", "harmonix", "harmonix bf16"]
            measured += [v for v in ("keras onednn",) if v in timed]
            for v in measured:
                print(f"  memory/output {size}: {v}", flush=True)
                mem[v] = measure_memory(workdir, size, v)
            results[size]["memory"] = mem
            ref32 = f"out_harmonix_plain_{size}.npy"
            results[size]["diffs"] = {
                (v, "plain float32"): _diff(workdir, size, v, ref32)
                for v in mem
                if v != "harmonix plain"
            }
        crop_diffs = {}
        if args.accuracy:
            print(f"accuracy on the {CROP} {CROP_SHAPE}...", flush=True)
            accuracy = ("keras", "harmonix", "harmonix plain", "harmonix bf16", "harmonix float64")
            for v in accuracy:
                measure_memory(workdir, CROP, v)
            for v in accuracy[:-1]:
                crop_diffs[(v, "float64")] = _diff(workdir, CROP, v, f"out64_{CROP}.npy")
                if v != "harmonix plain":
                    crop_diffs[(v, "plain float32")] = _diff(
                        workdir, CROP, v, f"out_harmonix_plain_{CROP}.npy"
                    )
    load_end = common.load_text()
    report = render(results, crop_diffs, args, load_start, load_end, bf16)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


def _phase_label(busy: int, load: tuple[str, str]) -> str:
    first = float(load[0].split()[0])
    if busy:
        return f"{busy} busy background processes (loaded)"
    return "idle" if first < 1.5 else "no process added, but the machine was busy (loaded)"


def render(
    results: dict, crop_diffs: dict, args, load_start: str, load_end: str, bf16: bool
) -> str:
    import torch

    first = next(iter(results.values()))
    keras_version = next((first["versions"][k] for k in KERAS if k in first["versions"]), "")
    lines = [
        "# IGUANe inference: harmonix against the Keras original (CPU)",
        "",
        "Written by `benchmarks/bench_iguane_inference.py` (see its docstring for the method "
        "and the environment) on " + time.strftime("%Y-%m-%d %H:%M") + ". One forward pass "
        "of the IGUANe generator (6.5 M parameters, about 404 GFLOP at 160x192x160), same "
        "weights and input for every variant; TensorFlow with its default threads, harmonix "
        "with its defaults.",
        "",
        f"- CPU: {common.cpu_model()}, {os.cpu_count()} logical cores; "
        f"native bfloat16: {'yes' if bf16 else 'no (bfloat16 emulated: not timed by default)'}",
        f"- {common.cpu_flags()}",
        f"- Python {platform.python_version()}, PyTorch {torch.__version__}; "
        f"{keras_version or 'TensorFlow not installed (harmonix variants only)'}",
        f"- load average (1, 5, 15 min) at start: {load_start}; at end: {load_end}",
        f"- {args.repeats} alternating rounds per size and phase; medians",
        "",
        "## Time per volume",
        "",
        "| size | phase | load average before / after | variant | median (s) | min (s) "
        "| conv GFLOP/s | ratio to the faster Keras |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for size, res in results.items():
        for busy, ph in res["phases"].items():
            times, load = ph["times"], ph["load"]
            label = _phase_label(busy, load)
            keras = [statistics.median(times[k]) for k in KERAS if k in times]
            k = min(keras) if keras else float("nan")
            for v, ts in times.items():
                med = statistics.median(ts)
                gflop = GFLOP_1MM * float(np.prod(SIZES[size])) / float(np.prod(SIZES["1mm"]))
                lines.append(
                    f"| {SIZES[size][0]}x{SIZES[size][1]}x{SIZES[size][2]} | {label} "
                    f"| {load[0]} / {load[1]} | {LABELS[v]} | {med:.2f} | {min(ts):.2f} "
                    f"| {gflop / med:.0f} | {f'{med / k:.2f}' if keras else 'n/a'} |"
                )
            idle = not busy and float(load[0].split()[0]) < 1.5
            goals = {"harmonix": SPEED_GOAL, "harmonix auto threads": SPEED_GOAL}
            if idle:  # bfloat16's goal is for an idle machine with native bfloat16
                goals["harmonix bf16"] = BF16_GOAL
            for v, goal in goals.items():
                if v not in times or not keras:
                    continue
                ratio = statistics.median(times[v]) / k
                note = "" if v != "harmonix bf16" or bf16 else " (emulated bfloat16)"
                verdicts.append(
                    f"- {size}, {label}: {LABELS[v]} / Keras float32 = {ratio:.2f} "
                    f"(goal <= {goal}: {'met' if ratio <= goal else 'NOT met'}){note}"
                )
    lines += ["", *verdicts, "", "## Peak memory (fresh process, one forward pass)", ""]
    lines += [
        "| size | variant | peak RSS before the pass (MB) | peak RSS (MB) | increase (MB) |",
        "|---|---|---:|---:|---:|",
    ]
    stand_in = False
    for size, res in results.items():
        for v, m in res["memory"].items():
            label = LABELS[v] + (" (*)" if m.get("stand_in") else "")
            stand_in |= bool(m.get("stand_in"))
            lines.append(
                f"| {size} | {label} | {m['rss_before_mb']:.0f} | {m['peak_rss_mb']:.0f} "
                f"| {m['peak_rss_mb'] - m['rss_before_mb']:.0f} |"
            )
    if stand_in:
        lines += [
            "",
            "(*) This CPU emulates bfloat16 with PyTorch's reference kernels, which unfold "
            "their input into im2col buffers that native kernels do not allocate: the bf16 "
            "pass was measured with convolutions that round input, kernel and output to "
            "bfloat16 and compute in float32 (oneDNN), i.e. the fused pass's bfloat16 maps "
            "plus a float32 copy of one slab (an upper bound of a native CPU's figure; the "
            "output difference in the table below is that of these kernels).",
        ]
    if "1mm" in results:
        lines.append("")
        for v in ("harmonix", "harmonix bf16"):
            if v not in results["1mm"]["memory"]:
                continue
            peak = results["1mm"]["memory"][v]["peak_rss_mb"]
            lines.append(
                f"- {LABELS[v]} peak RSS at 160x192x160: {peak:.0f} MB (goal <= "
                f"{MEMORY_GOAL_MB:.0f} MB: {'met' if peak <= MEMORY_GOAL_MB else 'NOT met'})"
            )
    lines += [
        "",
        "## Output differences (brain voxels, network scale: brain median 0, typical values "
        "-1 to 1)",
        "",
        "| size | variant | reference | max abs diff | mean abs diff |",
        "|---|---|---|---:|---:|",
    ]
    for size, res in [*results.items(), (CROP, {"diffs": crop_diffs})]:
        label = "2mm, central 64^3" if size == CROP else size
        for (v, ref), (mx, mean) in res["diffs"].items():
            lines.append(f"| {label} | {LABELS[v]} | {ref} | {mx:.2e} | {mean:.2e} |")
    lines += ["", "## Notes", "", *NOTES]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
