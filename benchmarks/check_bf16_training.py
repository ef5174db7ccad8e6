"""bfloat16 training without NaN: many repeats of issue 26's short bf16 training.

The training is the 2-step test training in which the NaN of issue 26 appeared on an
AVX512-BF16 CPU (``tests/_iguane_helpers.bf16_short_training``: width-2 networks on 16³
blobs, ``mixed_precision=True, amp_dtype="bfloat16"``, seed 0, one thread), repeated in
one process with the freed memory filled with NaN before each repeat (so that a kernel
reading outside its tensors reads NaN). Each repeat must give finite losses, validation
scores and weights, and the same history as the first (a result that depends on memory
differs between repeats).

``--without-rule`` repeats it with :func:`harmonix.iguane._kernels.reduced_precision.needs_float32`
switched off (every convolution in bfloat16): on an AVX512-BF16/AMX CPU this shows the
failure the rule removes (2-8 NaN runs out of 12 before the rule); on CPUs that emulate
bfloat16 both variants run PyTorch's reference kernels, which read no padding out of
bounds.

Run from the repository root (about 5 s per repeat on a loaded AVX2 machine)::

    python benchmarks/check_bf16_training.py --repeats 50 --without-rule

It writes ``benchmarks/results/iguane_bf16_training.md`` (``--out``).
"""

from __future__ import annotations

import platform
import time
import warnings

import numpy as np
import torch
from _helpers import common

common.use_test_helpers()  # the training the tests repeat
from _iguane_helpers import bf16_short_training, fill_freed_memory_with_nan  # noqa: E402

from harmonix.iguane.devices import EmulatedBFloat16Warning, cpu_supports_bf16  # noqa: E402
from harmonix.iguane.model import networks  # noqa: E402

KEYS = ("loss_discriminator", "loss_generator", "val_score")


def repeat(n: int) -> dict:
    """``n`` trainings: how many are finite, how many equal the first, seconds each."""
    finite = same = 0
    first = None
    start = time.perf_counter()
    for _ in range(n):
        fill_freed_memory_with_nan()
        result = bf16_short_training()
        history = {k: result.history[k] for k in KEYS}
        ok = all(np.isfinite(v).all() for v in history.values()) and all(
            torch.isfinite(w).all() for w in result.generator.state_dict().values()
        )
        finite += bool(ok)
        first = history if first is None else first
        same += history == first
    return {"n": n, "finite": finite, "same": same, "seconds": (time.perf_counter() - start) / n}


def main(argv: list[str] | None = None) -> None:
    ap = common.script_parser(__doc__, "iguane_bf16_training.md", repeats=50)
    ap.add_argument("--without-rule", action="store_true", help="also without the float32 rule")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # as the tests: the NaN appeared with one thread
    warnings.simplefilter("ignore", EmulatedBFloat16Warning)  # the flags line says it
    print(common.cpu_flags(), flush=True)
    load = common.load_now()
    rows = [("float32 rule on (harmonix)", repeat(args.repeats))]
    print(rows[-1], flush=True)
    if args.without_rule:
        rule = networks.needs_float32
        networks.needs_float32 = lambda *a, **k: False
        try:
            rows.append(("rule off (every convolution in bfloat16)", repeat(args.repeats)))
        finally:
            networks.needs_float32 = rule
        print(rows[-1], flush=True)
    lines = [
        "# IGUANe bfloat16 training: repeated short trainings",
        "",
        f"Written by `{common.command_line(argv)}` on {time.strftime('%Y-%m-%d %H:%M')}:"
        " issue 26's 2-step bfloat16 training (width-2 networks on 16³ blobs, seed 0, one "
        "thread) repeated in one process, the freed memory filled with NaN before each.",
        "",
        *common.machine_lines(load, flags=True),
        f"- Python {platform.python_version()}, PyTorch {torch.__version__}",
        "",
        "| variant | repeats | finite | same history as the first | s per training |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {r['n']} | {r['finite']} | {r['same']} | {r['seconds']:.1f} |")
    r = rows[0][1]
    ok = r["finite"] == r["n"] == r["same"]
    lines += [
        "",
        f"- Goal (issue 26): bf16 training finite in 50 of 50 repeats: "
        f"{'met' if ok and r['n'] >= 50 else 'NOT met'} ({r['finite']} of {r['n']} finite, "
        f"{r['same']} identical to the first)",
    ]
    if not cpu_supports_bf16():
        lines.append(
            "- This CPU emulates bfloat16 (PyTorch's reference kernels), where the NaN of "
            "issue 26 cannot occur: these repeats check the rule's float32 layers and the "
            "training's numerics; the native figure needs an AVX512-BF16/AMX CPU (the same "
            "command)."
        )
    common.write_results(args.out, lines)


if __name__ == "__main__":
    main()
