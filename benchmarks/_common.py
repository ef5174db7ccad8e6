"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: CPU flags that decide how fast IGUANe runs (float32 vector width, native bfloat16).
SPEED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "avx_vnni",
)


def cpu_flags() -> str:
    """The CPU flags of :data:`SPEED_FLAGS` this machine has (``/proc/cpuinfo``), and
    whether PyTorch sees native bfloat16, as one line for a results file."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [line for line in fh if line.startswith("flags")]
        flags = lines[0].split(":", 1)[1].split() if lines else []
    except OSError:
        flags = []
    present = [f for f in SPEED_FLAGS if f in flags] or ["unknown (no /proc/cpuinfo)"]
    try:
        from harmonix.iguane.devices import cpu_supports_bf16

        native = "yes" if cpu_supports_bf16() else "no (emulated: slow)"
    except ImportError:  # pragma: no cover - harmonix not installed
        native = "unknown"
    return f"CPU flags: {' '.join(present)}; native bfloat16 (PyTorch): {native}"


def load_line(start: Sequence[float], end: Sequence[float]) -> str:
    """A results-file line with the load averages at the start and at the end of a run."""
    fmt = " ".join
    return (
        "- load average (1, 5, 15 min) at start: "
        + fmt(f"{v:.2f}" for v in start)
        + "; at end: "
        + fmt(f"{v:.2f}" for v in end)
    )


def write_results(path: Path, lines: Sequence[str]) -> None:
    """Write a results file (creating its folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")
