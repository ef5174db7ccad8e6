"""The scaffolding every benchmark script shares, in one place.

- arguments: :func:`script_parser` (the description from the script's docstring, ``--out``
  with its results file under ``benchmarks/results/``, ``--repeats``);
- threads: :func:`limit_threads` (BLAS/OpenMP to one thread, before numpy is imported);
- the machine and its load: :func:`cpu_model`, :func:`cpu_flags`, :func:`load_now`,
  :func:`load_line`, :func:`machine_lines` (the results-file header: CPU, flags, load);
- the command to re-run: :func:`command_line`;
- timing a call: :func:`timed` (repeats after a warm-up);
- busy neighbours: :func:`start_busy` / :func:`stop_busy` (pure Python loops);
- the results file: :func:`write_results`.

Scripts run as ``python benchmarks/<script>.py`` from the repository root and import it as
``from _helpers.common import ...`` (the script's folder is first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

#: The ``benchmarks/`` folder, its results and the repository root.
BENCHMARKS = Path(__file__).resolve().parents[1]
RESULTS = BENCHMARKS / "results"
REPO = BENCHMARKS.parent

#: The load average (1 min) above which timings are marked as taken on a loaded machine.
LOADED = 1.5


def use_test_helpers() -> None:
    """Make ``tests/``'s support modules importable (``keras_reference``,
    ``_iguane_helpers``): the benchmarks time what the tests check."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def limit_threads(n: int = 1) -> None:
    """Limit BLAS and OpenMP to ``n`` threads; call it before numpy is imported."""
    for var in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    ):
        os.environ[var] = str(n)


def script_parser(
    doc: str | None,
    out: str | None = None,
    *,
    repeats: int | None = None,
    variants: tuple[Sequence[str], Sequence[str]] | None = None,
    busy: bool = False,
) -> argparse.ArgumentParser:
    """The argument parser of a benchmark script, with the options they share.

    Parameters
    ----------
    doc : str
        The script's docstring: its first paragraph is the description.
    out : str, optional
        The results file's name under ``benchmarks/results/`` (or a folder's): adds
        ``--out`` with that default.
    repeats : int, optional
        Adds ``--repeats`` (timed runs) with this default.
    variants : (choices, default), optional
        Adds ``--variants``: which of ``choices`` to time (``None``: ``default``, which
        the script narrows to what the machine runs natively).
    busy : bool, default=False
        Adds ``--busy N``: time again beside N busy processes (:func:`start_busy`).
    """
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if out is not None:
        parser.add_argument(
            "--out", type=Path, default=RESULTS / out, help=f"default: results/{out}"
        )
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help="timed runs")
    if variants is not None:
        choices, default = variants
        parser.add_argument(
            "--variants",
            nargs="+",
            choices=choices,
            default=None,
            help=f"default: {', '.join(default)} (bf16 variants only with native bfloat16)",
        )
    if busy:
        parser.add_argument(
            "--busy", type=int, default=0, help="also time with this many busy processes"
        )
    return parser


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, to put in its results file and re-run it
    (without ``--out``: where the file was written is no part of the measurement, and a
    path of one machine has no place in a committed file)."""
    script = Path(sys.argv[0]).resolve()
    try:
        name = script.relative_to(REPO).as_posix()
    except ValueError:
        name = f"benchmarks/{script.name}"
    words = list(sys.argv[1:] if argv is None else argv)
    kept = []
    while words:
        word = words.pop(0)
        if word == "--out":
            words = words[1:]
        elif not word.startswith("--out="):
            kept.append(word)
    return " ".join(["python", name, *kept])


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


def load_now() -> tuple[float, float, float]:
    """The load averages (1, 5, 15 min); NaN where the system has none."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):  # pragma: no cover - not on Unix
        return (float("nan"),) * 3


def load_text(load: Sequence[float] | None = None) -> str:
    """Load averages as ``"0.52 0.40 0.33"`` (now by default)."""
    return " ".join(f"{v:.2f}" for v in (load_now() if load is None else load))


def load_line(start: Sequence[float], end: Sequence[float]) -> str:
    """A results-file line with the load averages at the start and at the end of a run."""
    return f"- load average (1, 5, 15 min) at start: {load_text(start)}; at end: {load_text(end)}"


def machine_lines(start: Sequence[float], *, flags: bool = False) -> list[str]:
    """The results-file header of a timed run: CPU, (flags,) load at start and now, and a
    warning when the machine was loaded (1-min load above :data:`LOADED`)."""
    end = load_now()
    lines = [f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores"]
    if flags:
        lines.append(f"- {cpu_flags()}")
    lines.append(load_line(start, end))
    if max(start[0], end[0]) > LOADED:
        lines.append(
            f"- the machine was loaded (1-min load above {LOADED}): re-run on an idle "
            "machine for wall-clock figures"
        )
    return lines


def timed(
    fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` by ``clock``, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return times


def start_busy(n: int) -> list[subprocess.Popen]:
    """``n`` busy background processes (pure Python loops); stop them with
    :func:`stop_busy`."""
    return [subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"]) for _ in range(n)]


def stop_busy(procs: Sequence[subprocess.Popen]) -> None:
    """Stop the processes of :func:`start_busy`."""
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def write_results(path: Path, lines: Sequence[str]) -> None:
    """Write a results file, its lines ending with a newline (creating its folder), and
    say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    path.write_text(text if text.endswith("\n") else text + "\n")
    print(f"wrote {path}")
