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
