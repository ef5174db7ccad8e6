"""Training throughput of IGUANe on CPU: harmonix against a TensorFlow site-step and the limit.

For each configuration (``--configs``):

- ``recipe``: the CPU recipe's networks (:data:`harmonix.iguane.CPU_RECIPE`: generators of
  width 4, discriminators of width 16) on whole 4 mm volumes (48×64×48);
- ``w16``: the published widths (16 / 64) on the same volumes;
- ``full``: the published widths on one whole 160×192×160 volume (slow: one round);

it reports seconds per *site-step* (one source site's two discriminator updates on 2 real +
2 generated volumes and one joint generator update, see ``_helpers/tf_iguane_step.py``), the
convolution work of a site-step counted from the layer shapes (forward and backward, see
:func:`site_step_gflop`), the GFLOP/s achieved, and the same machine's oneDNN conv3d
throughput (:func:`conv_limit`, forward + backward of a well-shaped 3×3×3 layer) as the
limit.

Variants, each in its own worker process, timed in alternating rounds (medians; each
request 0.5 s after the previous reply, ``SETTLE``, so that the previous worker's spinning
threads are not counted as busy neighbours by harmonix's thread rule):

- ``harmonix``: :func:`harmonix.iguane.training.loop.train` with its defaults (float32,
  PyTorch's thread count whatever the load: ``TrainConfig.cpu_threads=None``, the same
  model from the same seed idle or busy); a site-step is timed between two updates of
  the discriminators' optimizer (an optimizer step hook), so data handling and
  bookkeeping count;
- ``harmonix auto threads``: the same with ``cpu_threads="auto"`` (each site-step on the
  cores idle when it starts: faster next to busy processes, not reproducible bit for bit);
- ``harmonix bf16``: the defaults with ``mixed_precision=True`` (CPU bfloat16 autocast).
  Timed by default only where the CPU computes bfloat16 natively (AVX512-BF16, AMX);
  elsewhere it is emulated and many times slower (name it in ``--variants`` to time it
  anyway);
- ``tf``: ``_helpers.tf_iguane_step.TFSiteStep`` with TensorFlow's defaults (on CPUs without
  AVX512-VNNI/BF16/AMX, such as AVX2-only ones, TensorFlow does *not* use oneDNN by
  default);
- ``tf onednn``: the same with ``TF_ENABLE_ONEDNN_OPTS=1`` (TensorFlow's fastest setting
  here). The ratio to TensorFlow is taken against the faster of the two.

``--busy N`` adds a second phase with the same workers: N busy background processes (pure
Python loops) started by the script and stopped at the end of the phase; the load average
is recorded before and after each phase.
``--profile`` adds torch.profiler tables of harmonix's site-steps (CPU recipe).

Run (TensorFlow lives in the benchmark environment, see ``bench_iguane_inference.py``)::

    .venv-bench/bin/python benchmarks/bench_iguane_training_speed.py --configs recipe w16 full

Results: ``benchmarks/results/iguane_training_speed.md`` (``--out``; ``--append`` adds the
section to the file instead of replacing it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _helpers import common
from _helpers.tf_iguane_step import synthetic_volume

CONFIGS = {
    "recipe": dict(
        label="CPU recipe: width 4 / disc 16, 48×64×48", width=4, disc=16, shape=(48, 64, 48)
    ),
    "w16": dict(label="width 16 / disc 64, 48×64×48", width=16, disc=64, shape=(48, 64, 48)),
    "full": dict(
        label="width 16 / disc 64, 160×192×160", width=16, disc=64, shape=(160, 192, 160)
    ),
}
VARIANTS = ("harmonix", "harmonix auto threads", "harmonix bf16", "tf", "tf onednn")
#: TensorFlow's default (Eigen) kernels take tens of seconds per site-step here: only on
#: request (``--variants``); bfloat16 only where it is native (see the module notes).
DEFAULT_VARIANTS = ("harmonix", "harmonix auto threads", "harmonix bf16", "tf onednn")
HARMONIX = ("harmonix", "harmonix auto threads", "harmonix bf16")
#: Pause before each timed request (seconds): TensorFlow's and OpenMP's worker threads
#: spin for a while after a call; a harmonix call starting meanwhile would count the
#: previous worker's threads as busy neighbours and size its threads for a loaded machine.
SETTLE = 0.5
RATIO_GOAL = 1.0  # harmonix float32 site-step / TF's, idle (issue 26)
LIMIT_GOAL = 0.5
#: What the profiles of this script (and ONEDNN_VERBOSE=1 runs) showed; written under the
#: measured tables.
NOTES = [
    "## Reading (where the time goes, what was done, what remains)",
    "",
    "- **Convolution gradients.** Autograd differentiates `torch.mkldnn_convolution` with "
    "the generic `convolution_backward`, which picks its kernels again: one-volume batches "
    "of thin maps (`C·D·H <= 20480`, every 3×3×3 layer of a width-4 generator below full "
    "resolution) went to PyTorch's reference kernel, and oneDNN computed most weight "
    "gradients as im2col + GEMM parallel over the batch only, i.e. on one thread. "
    "`harmonix.iguane._kernels.conv_backward` computes the input gradient of stride-1 layers as a "
    "oneDNN forward convolution with the flipped kernel and every weight gradient from the "
    "two depth halves of the volume as a batch of two. Per layer (2 threads, idle): "
    "16→32 at 24×32×24 input gradient 37.9 → 7.1 ms, weight gradient 25.5 → 11.6 ms; "
    "8→4 at 48×64×48 weight gradient 26.4 → 12.9 ms; 32→16 at 48×64×48 weight gradient "
    "174 → 98 ms; a 16→32 transposed convolution's weight gradient 53 → 25 ms. With the "
    "norm below, one generator forward + backward at 48×64×48: width 4 258 → 147 ms, "
    "width 16 993 → 862 ms (same gradients: tests/test_iguane_conv_backward.py).",
    "- **MAD norm.** One autograd node with the closed-form backward "
    "(`harmonix.iguane._kernels.norm_autograd`: `gx = a - mean(a)`, `a = γr·g - k·sign(d)`, "
    "`k = γr²·mean(g·d)`): forward + backward 1.4-1.7x faster than autograd of the plain "
    "norm (after an in-place ReLU, at 48×64×48: 4 channels 6.5 → 4.7 ms, 16 channels "
    "16.4 → 9.8 ms); fusing the ReLU into the node was slower.",
    "- **Threads.** By default (`TrainConfig.cpu_threads=None`) every site-step runs on "
    "PyTorch's thread count whatever the load: the reduction order of oneDNN's kernels "
    "follows the thread count, and a count that followed the load made two fits with one "
    "seed differ (up to 8.2 on intensities of ~500, idle against two busy processes). "
    "`cpu_threads='auto'` (the 'auto threads' rows) runs each site-step on the cores idle "
    "when it starts, at least one (`inference_threads(fair_share=False)`). "
    "With one busy process on 2 cores, CPU-recipe site-step: 1 thread 2.26 s, 2 threads "
    "4.27 s, 4 threads 2.86 s, 6 threads 3.15 s: unlike inference, training (many small "
    "parallel regions) does not gain from more threads than cores. Setting the thread count, "
    "even to its current value, restarts thread pools (1.43 → 1.65 s per site-step when "
    "done at every site-step): the trainer leaves it alone when the answer is unchanged.",
    "- **What remains.** Width 16: a site-step is 370.9 GFLOP of convolutions; at the "
    "oneDNN limit of this machine (69-72 GFLOP/s forward + backward) that alone is "
    "5.2-5.4 s, while 0.7x TensorFlow's 7.5-8.2 s is 5.3-5.7 s: the goal needs ~97 % of "
    "the limit on every layer (TensorFlow reaches 66 %, harmonix 68 %). CPU recipe: thin "
    "layers (1-8 channels) run at 10-26 GFLOP/s in oneDNN (the 8→4 3×3×3 forward at "
    "48×64×48: 26 GFLOP/s; AVX2 kernels fill 8-wide vectors with 4 channels); oneDNN's "
    "execution alone is about 0.8 s of a 1.4 s site-step (ONEDNN_VERBOSE), against about "
    "1.0-1.1 s for 0.7x TensorFlow. The rest is the norms and elementwise operations "
    "(~18 %), copies (~8 %), autograd and Python (~4 %).",
    "- **TensorFlow's defaults.** On this AVX2 CPU TensorFlow does not enable oneDNN by "
    "default (only on CPUs with AVX512-VNNI/BF16/AMX); its Eigen kernels took ~55 s per "
    "width-4 site-step at load 8 against ~5 s with `TF_ENABLE_ONEDNN_OPTS=1`. The ratios "
    "are taken against the faster setting.",
]


# -- work counted from the layer shapes ----------------------------------------------------
def _conv_gflop_per_layer(module, shape: tuple) -> list[float]:
    """Forward GFLOP (2 per multiply-add) of each convolution call of ``module`` on one
    ``(1, 1, *shape)`` volume, in call order (plain pass, autograd on)."""
    import torch
    from torch import nn

    flops: list[float] = []

    def hook(m, inp, out):
        k = int(np.prod(m.kernel_size))
        if isinstance(m, nn.ConvTranspose3d):  # every input voxel meets the whole kernel
            n = inp[0].numel() // inp[0].shape[1]
        else:
            n = out.numel() // out.shape[1]
        flops.append(2.0 * n * m.in_channels * m.out_channels * k / m.groups / 1e9)

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)
    ]
    try:
        with torch.enable_grad():
            module(torch.zeros(1, 1, *shape))
    finally:
        for h in handles:
            h.remove()
    return flops


def site_step_gflop(width: int, disc: int, shape: tuple) -> dict[str, float]:
    """Convolution GFLOP of one site-step (forward + backward), from the layer shapes.

    With G (D) the forward work of a generator (discriminator) on one volume and G1 (D1)
    that of its first convolution: the discriminator update runs 2 generators on 2 volumes
    without gradients (4G), 2 discriminators on 4 volumes each (8D) and their backward
    pass: weight gradients (8D) and input gradients of every layer but the first
    (8D - 8D1). The generator update runs 6 generator passes (to the reference and to the
    source, cycles, identities) with weight and input gradients (6G + 6G + 6G - 4G1: four
    of them start from data, which needs no gradient) and 2 discriminator passes with
    input gradients only (2D + 2D). Total ``22G - 4G1 + 28D - 8D1``.
    """
    from harmonix.iguane.model.networks import Generator3D, PatchDiscriminator3D

    g = _conv_gflop_per_layer(Generator3D(width), shape)
    d = _conv_gflop_per_layer(PatchDiscriminator3D(disc), shape)
    G, G1, D, D1 = sum(g), g[0], sum(d), d[0]
    return {
        "generator_forward": G,
        "discriminator_forward": D,
        "site_step": 22 * G - 4 * G1 + 28 * D - 8 * D1,
    }


def conv_limit(repeats: int = 3) -> dict[str, float]:
    """This machine's oneDNN conv3d throughput (GFLOP/s, PyTorch's default threads).

    3×3×3 convolutions, channels-last float32
    (:class:`harmonix.iguane.model.networks.OneDNNConv3d`), 32 → 32 channels on 48×64×48 and
    64 → 64 channels on 24×32×24: forward alone, and forward + backward (input and weight
    gradients, 3× the forward work); the better shape's median of ``repeats`` runs.
    """
    import torch

    from harmonix.iguane.model.networks import OneDNNConv3d

    out: dict[str, float] = {
        "threads": torch.get_num_threads(),
        "forward": 0.0,
        "forward_backward": 0.0,
    }
    for c, shape in ((32, (48, 64, 48)), (64, (24, 32, 24))):
        conv = OneDNNConv3d(c, c, 3, padding=1).to(memory_format=torch.channels_last_3d)
        x = torch.randn(1, c, *shape).contiguous(memory_format=torch.channels_last_3d)
        gflop = 2.0 * x[0, 0].numel() * c * c * 27 / 1e9

        def fwd(conv=conv, x=x):
            with torch.no_grad():
                conv(x)

        def fwd_bwd(conv=conv, x=x):
            xi = x.detach().requires_grad_(True)
            conv(xi).sum().backward()
            conv.zero_grad(set_to_none=True)

        for name, fn, work in (("forward", fwd, gflop), ("forward_backward", fwd_bwd, 3 * gflop)):
            ts = common.timed(fn, repeats)
            out[name] = max(out[name], work / statistics.median(ts))
    return out


# -- workers ---------------------------------------------------------------------------------
def _reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _volumes(shape: tuple, n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` synthetic volumes on the network scale with background -1, and masks."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x, m = synthetic_volume(shape, rng)
        x[~m] = -1.0
        out.append((x, m))
    return out


def harmonix_worker(cfg: dict, variant: str, profile: int = 0) -> None:
    """Train with harmonix; pause at every site-step boundary and wait for orders."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from harmonix.iguane.training.config import TrainConfig
    from harmonix.iguane.training.loop import train
    from harmonix.iguane.training.trainer import Trainer

    policy = Trainer._site_step_threads

    def site_step_threads(self) -> int | None:  # record what the trainer chose
        n = policy(self)
        state["used"].add(torch.get_num_threads() if n is None else n)
        return n

    Trainer._site_step_threads = site_step_threads
    vols = _volumes(cfg["shape"], 4)
    sites = ["ref", "ref", "src", "src"]
    config = TrainConfig(
        n_epochs=1,
        steps_per_epoch=100_000,
        base_width=cfg["width"],
        disc_base_width=cfg["disc"],
        patch_size=None,
        augment=False,
        identity_init=True,
        val_fraction=0.0,
        warmup_steps=0,
        cpu_threads="auto" if variant == "harmonix auto threads" else None,
        mixed_precision=variant == "harmonix bf16",
    )
    if variant == "harmonix bf16":
        import warnings

        from harmonix.iguane.devices import EmulatedBFloat16Warning

        warnings.simplefilter("ignore", EmulatedBFloat16Warning)  # the header says it
    state: dict = {
        "disc_opt": None,
        "last": None,
        "times": [],
        "want": 1,
        "prof": None,
        "used": set(),
    }

    def orders() -> None:
        """Report the finished site-steps; take the next order (blocks)."""
        if state["prof"] is not None:
            state["prof"].__exit__(None, None, None)
            table = (
                state["prof"]
                .key_averages()
                .table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=44)
            )
            _reply(
                {
                    "times": state["times"],
                    "profile": table,
                    "groups": _profile_groups(state["prof"]),
                    "threads": "/".join(str(n) for n in sorted(state["used"])),
                }
            )
            state["prof"] = None
        else:
            used = "/".join(str(n) for n in sorted(state["used"]))
            _reply({"times": state["times"], "threads": used})
        state["used"] = set()
        line = sys.stdin.readline().split()
        if not line or line[0] != "run":
            sys.stdout.flush()
            os._exit(0)
        state["want"], state["times"] = int(line[1]), []
        if len(line) > 2 and line[2] == "profile":
            from torch.profiler import ProfilerActivity, profile

            state["prof"] = profile(activities=[ProfilerActivity.CPU])
            state["prof"].__enter__()

    def hook(opt, args, kwargs) -> None:
        if state["disc_opt"] is None:
            state["disc_opt"] = opt  # the first optimizer stepped is the discriminators'
        if opt is not state["disc_opt"]:
            return
        now = time.perf_counter()
        if state["last"] is not None:
            state["times"].append(now - state["last"])
        if len(state["times"]) >= state["want"]:
            orders()
            now = time.perf_counter()
        state["last"] = now

    register_optimizer_step_post_hook(hook)
    train(vols, sites, "ref", config=config, device="cpu", random_state=0)


def _profile_groups(prof) -> dict[str, float]:
    """Self CPU seconds by kind of operation."""
    groups: dict[str, float] = {}
    rules = (
        (
            "convolution forward",
            ("mkldnn_convolution", "_convolution", "conv_transpose", "slow_conv"),
        ),
        (
            "convolution backward",
            ("convolution_backward", "mkldnn_convolution_backward", "ConvolutionBackward"),
        ),
        (
            "MAD norm and elementwise",
            (
                "mean",
                "sub",
                "abs",
                "addcmul",
                "div",
                "add",
                "mul",
                "relu",
                "leaky_relu",
                "threshold",
                "sgn",
                "sign",
                "where",
                "tanh",
                "clamp",
                "neg",
                "pow",
                "square",
                "sum",
                "Backward",
            ),
        ),
        ("optimizer (Adam)", ("_foreach", "adam", "lerp", "addcdiv", "sqrt")),
        (
            "copies and allocation",
            (
                "copy_",
                "empty",
                "fill_",
                "zero_",
                "zeros",
                "cat",
                "pad",
                "contiguous",
                "to",
                "clone",
                "stack",
            ),
        ),
    )
    for evt in prof.key_averages():
        name = evt.key
        secs = evt.self_cpu_time_total / 1e6
        group = "other (dispatch, autograd engine, Python)"
        for gname, keys in rules:
            if any(k.lower() in name.lower() for k in keys):
                group = gname
                break
        groups[group] = groups.get(group, 0.0) + secs
    return groups


def tf_worker(cfg: dict) -> None:
    """TensorFlow site-steps on orders."""
    from _helpers.tf_iguane_step import TFSiteStep

    step = TFSiteStep(cfg["width"], cfg["disc"], cfg["shape"])
    t0 = time.perf_counter()
    step()
    _reply({"times": [time.perf_counter() - t0]})
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "run":
            break
        times = []
        for _ in range(int(words[1])):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        _reply({"times": times})


# -- orchestration ---------------------------------------------------------------------------
def _spawn(variant: str, config: str, python: str) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    if variant == "tf onednn":
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    elif variant == "tf":
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    return subprocess.Popen(
        [python, str(Path(__file__).resolve()), "--worker", variant, "--config", config],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _ask(p: subprocess.Popen, order: str) -> dict:
    p.stdin.write(order + "\n")
    p.stdin.flush()
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"worker died (exit {p.wait()})")
    return json.loads(line)


def _tf_available(python: str) -> bool:
    probe = subprocess.run(
        [python, "-c", "import tensorflow, tf_keras"],
        capture_output=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    return probe.returncode == 0


def time_config(
    name: str, variants: list[str], rounds: int, steps: int, python: str, phases: list[int]
) -> dict:
    """Alternating rounds of ``steps`` site-steps per variant, for each phase (a number of
    busy background processes started for it); every site-step time kept."""
    procs, info, out = {}, {}, {}
    try:
        for v in variants:  # started (and warmed up) one at a time
            procs[v] = _spawn(v, name, python)
            first = json.loads(procs[v].stdout.readline())
            info[v] = {"first_s": first["times"][0] if first["times"] else None}
        for busy in phases:
            background = common.start_busy(busy)
            try:
                if busy:
                    time.sleep(5)
                load_start = common.load_text()
                times: dict[str, list[float]] = {v: [] for v in variants}
                threads: dict[str, str] = {}
                for r in range(rounds):
                    k = r % len(variants)
                    for v in variants[k:] + variants[:k]:
                        time.sleep(SETTLE)  # the previous worker's thread pools go quiet
                        reply = _ask(procs[v], f"run {steps}")
                        times[v] += reply["times"]
                        threads[v] = reply.get("threads") or "default"
                    print(
                        f"  {name} busy={busy} round {r + 1}/{rounds}: "
                        + ", ".join(
                            f"{v} {statistics.median(times[v][-steps:]):.2f}s" for v in variants
                        )
                        + f" (load {common.load_text()})",
                        flush=True,
                    )
                out[busy] = {
                    "times": times,
                    "threads": threads,
                    "load": (load_start, common.load_text()),
                }
            finally:
                common.stop_busy(background)
    finally:
        for p in procs.values():
            if p.poll() is None:
                try:
                    p.stdin.write("stop\n")
                    p.stdin.close()
                except OSError:
                    pass
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
    return {"phases": out, "info": info}


def profile_harmonix(name: str, steps: int, python: str) -> dict:
    """torch.profiler tables of ``steps`` site-steps, harmonix's defaults (threads by the
    trainer's policy: on a busy machine the profile then shows the work rather than OpenMP
    threads waiting for each other)."""
    p = _spawn("harmonix", name, python)
    try:
        json.loads(p.stdout.readline())
        _ask(p, "run 1")  # one more warm-up site-step
        return _ask(p, f"run {steps} profile")
    finally:
        if p.poll() is None:
            p.stdin.write("stop\n")
            p.stdin.close()
            p.wait(timeout=60)


def render(results: dict, limit: dict, args, load: tuple[str, str], tf_ok: bool) -> list[str]:
    import torch

    command = f"--configs {' '.join(args.configs)} --rounds {args.rounds} --steps {args.steps}" + (
        f" --busy {args.busy}" if args.busy else ""
    )
    lines = [
        f"## Measured: {', '.join(CONFIGS[n]['label'] for n in args.configs)}",
        "",
        f"Written by `benchmarks/bench_iguane_training_speed.py {command}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        f"- CPU: {common.cpu_model()}, {os.cpu_count()} logical cores; Python "
        f"{platform.python_version()}, PyTorch {torch.__version__}",
        f"- {common.cpu_flags()}",
        f"- load average (1, 5, 15 min) at start: {load[0]}; at end: {load[1]}",
        f"- {args.rounds} alternating rounds of {args.steps} site-steps per variant and phase "
        "(full size: 1 round of 1), medians over all site-steps; one source site; float32 "
        "unless the variant says bf16",
        f"- limit: oneDNN conv3d (3×3×3, 32→32 channels at 48×64×48 or 64→64 at 24×32×24, "
        f"channels-last, {limit['threads']} threads, the better one; measured at load "
        f"{limit['load']}) forward {limit['forward']:.0f} GFLOP/s, forward + backward "
        f"{limit['forward_backward']:.0f} GFLOP/s (the training limit below)",
        "",
        "| configuration | phase (load average before / after) | conv GFLOP / site-step "
        "| variant | threads | s / site-step | GFLOP/s | % of limit | ratio to TF |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for name, res in results.items():
        gf = res["gflop"]["site_step"]
        for busy, ph in res["phases"].items():
            first = float(ph["load"][0].split()[0])
            phase = (
                f"{busy} busy background process(es)"
                if busy
                else "idle"
                if first < 1.5
                else "nothing added, machine busy"
            )
            phase += f" ({ph['load'][0].split()[0]} / {ph['load'][1].split()[0]})"
            med = {v: statistics.median(ts) for v, ts in ph["times"].items() if ts}
            tfs = [med[v] for v in ("tf", "tf onednn") if v in med]
            tf_best = min(tfs) if tfs else None
            for v, sec in med.items():
                ratio = f"{sec / tf_best:.2f}" if tf_best else "n/a"
                lines.append(
                    f"| {CONFIGS[name]['label']} | {phase} | {gf:.1f} | {v} | "
                    f"{ph['threads'].get(v, 'default')} | {sec:.2f} | {gf / sec:.1f} | "
                    f"{100 * gf / sec / limit['forward_backward']:.0f} % | {ratio} |"
                )
            for v in HARMONIX:
                if v not in med:
                    continue
                share = gf / med[v] / limit["forward_backward"]
                verdict = (
                    f"- {CONFIGS[name]['label']}, {phase}, {v}: {100 * share:.0f} % of the limit"
                )
                if tf_best:
                    r = med[v] / tf_best
                    verdict += f"; / TF float32 = {r:.2f}"
                    if v == "harmonix" and first < 1.5 and not busy:
                        met = "met" if r <= RATIO_GOAL else "NOT met"
                        verdict += f" (goal ≤ {RATIO_GOAL}: {met})"
                verdicts.append(verdict)
    lines += ["", *verdicts]
    if not tf_ok:
        lines += ["", "TensorFlow was not importable: no TF columns (run with .venv-bench)."]
    lines += [
        "",
        "Convolution work (forward, GFLOP per volume): "
        + "; ".join(
            f"{CONFIGS[n]['label']}: generator {r['gflop']['generator_forward']:.2f}, "
            f"discriminator {r['gflop']['discriminator_forward']:.2f}"
            for n, r in results.items()
        )
        + ". A site-step is `22G - 4G1 + 28D - 8D1` (see `site_step_gflop`). The limit is "
        "what oneDNN reaches on a well-shaped layer; thin layers (1 to 8 channels) cannot.",
    ]
    return lines


def render_profile(prof: dict, steps: int, load: str) -> list[str]:
    total = sum(prof["groups"].values())
    lines = [
        "## Where harmonix's time goes (CPU recipe, torch.profiler)",
        "",
        f"{steps} site-steps after warm-up, threads by the trainer's policy "
        f"({prof.get('threads', '?')}), load average {load}"
        + ("" if float(load.split()[0]) < 1.5 else " (loaded)")
        + f"; median site-step {statistics.median(prof['times']):.2f} s under the profiler.",
        "",
        "| kind of operation | self CPU s | share |",
        "|---|---:|---:|",
    ]
    for g, s in sorted(prof["groups"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {g} | {s:.2f} | {100 * s / total:.0f} % |")
    lines += ["", "```", prof["profile"].rstrip(), "```"]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = common.script_parser(
        __doc__, "iguane_training_speed.md", variants=(VARIANTS, DEFAULT_VARIANTS), busy=True
    )
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["recipe", "w16"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="site-steps per variant and round")
    ap.add_argument("--profile", type=int, default=0, help="profile this many site-steps")
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        cfg = CONFIGS[args.config]
        if args.worker.startswith("tf"):
            return tf_worker(cfg)
        return harmonix_worker(cfg, args.worker)

    python = sys.executable
    tf_ok = _tf_available(python)
    print(common.cpu_flags(), flush=True)
    if args.variants is None:  # emulated bfloat16 is not timed unless asked for
        from harmonix.iguane.devices import cpu_supports_bf16

        native = cpu_supports_bf16()
        args.variants = [v for v in DEFAULT_VARIANTS if v != "harmonix bf16" or native]
    variants = [v for v in args.variants if tf_ok or not v.startswith("tf")]
    phases = [0] + ([args.busy] if args.busy else [])
    load_start = common.load_text()
    limit = conv_limit()
    limit["load"] = common.load_text().split()[0]
    print(f"limit: {limit}", flush=True)
    results = {}
    for name in args.configs:
        full = name == "full"
        results[name] = time_config(
            name,
            variants,
            1 if full else args.rounds,
            1 if full else args.steps,
            python,
            [0] if full else phases,
        )
        cfg = CONFIGS[name]
        results[name]["gflop"] = site_step_gflop(cfg["width"], cfg["disc"], cfg["shape"])
    prof = profile_harmonix("recipe", args.profile, python) if args.profile else None
    load_end = common.load_text()
    lines = render(results, limit, args, (load_start, load_end), tf_ok)
    if prof is not None:
        lines += ["", *render_profile(prof, args.profile, load_end)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append and args.out.exists():
        args.out.write_text(args.out.read_text().rstrip("\n") + "\n\n" + text)
    else:
        header = ["# IGUANe training throughput on CPU (seconds per site-step)", ""]
        args.out.write_text("\n".join(header) + "\n" + text + "\n" + "\n".join(NOTES) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
