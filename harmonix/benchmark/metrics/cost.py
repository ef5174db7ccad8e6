"""Wall-clock time and peak memory of one call (:func:`measure_cost`)."""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

__all__ = ["measure_cost"]


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


class _PeakRSS:
    """Sample the resident set size in a thread; ``peak`` = max - value at start."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> _PeakRSS:
        self._start = _rss_bytes() or 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None:
                self.peak = max(self.peak, rss - self._start)
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        rss = _rss_bytes()
        if rss is not None:
            self.peak = max(self.peak, rss - self._start)


def measure_cost(func: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """Call ``func(*args, **kwargs)``, timing it and recording its peak memory.

    Memory is the peak **resident set size above its value at the call's start**, sampled
    every 5 ms from ``/proc/self/statm`` (Linux; it includes PyTorch and other native
    allocations). Memory the process already held and reuses does not count, so the value
    is a lower bound of the memory the call needs. Where ``/proc`` is absent (macOS,
    Windows), :mod:`tracemalloc`'s peak of Python and NumPy allocations is used instead.

    Parameters
    ----------
    func : callable
        What to run.
    *args, **kwargs
        Its arguments.

    Returns
    -------
    result : object
        What ``func`` returned.
    seconds : float
        Wall-clock duration.
    peak_mb : float
        Peak memory increase in MB (10**6 bytes).
    """
    if _rss_bytes() is not None:
        with _PeakRSS() as probe:
            t0 = time.perf_counter()
            result = func(*args, **kwargs)
            seconds = time.perf_counter() - t0
        return result, seconds, probe.peak / 1e6
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        t0 = time.perf_counter()
        result = func(*args, **kwargs)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not tracing:
            tracemalloc.stop()
    return result, seconds, max(peak, 0) / 1e6
