"""CPU thread policy shared by IGUANe and the preprocessing chain (private).

:func:`intraop_threads` runs a block with a given intra-op thread count and restores the
previous one. :func:`inference_threads` sizes a count from the busy neighbours seen when
it is called (:func:`busy_neighbours`): the number of runnable tasks of the other
processes (``procs_running`` of ``/proc/stat`` less this process's runnable threads,
sampled a few times within a millisecond or two, the median kept), not the load average,
which lags by a minute and counts the caller's own earlier work. Where ``/proc/stat``
cannot be read (not Linux), PyTorch's setting is used.

Two rules, chosen by ``fair_share``: a long parallel pass (inference) runs *more* threads
than cores next to busy processes, since the scheduler is fair per thread and the many
threads even out OpenMP's static split of the work; many short parallel regions
(training) run on the idle cores only, since every OpenMP barrier waits for a
descheduled thread. What each rule gains is measured in
``benchmarks/results/iguane_inference.md`` ("busy neighbours") and
``benchmarks/results/iguane_training_speed.md``.

Callers look the functions up on this module at call time (``_threads.busy_neighbours()``),
so tests can replace them here.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator

import torch

__all__ = ["busy_neighbours", "inference_threads", "intraop_threads", "load_following"]

#: Samples of the runnable-task count taken by :func:`inference_threads`, and the pause
#: between two of them (seconds): about 2 ms in all, a thousandth of a full-size pass.
_SAMPLES = 5
_SAMPLE_PAUSE = 0.0005
#: With busy neighbours, inference runs at most this many times ``limit`` threads.
_MAX_OVERSUBSCRIPTION = 4


def _procs_running() -> int | None:
    """Runnable tasks (threads) of other processes now, plus one for the caller; None when
    ``/proc`` cannot be read.

    ``procs_running`` of ``/proc/stat`` counts every runnable thread of the machine; the
    runnable threads of this process (state ``R`` in ``/proc/self/task/*/stat``, e.g.
    OpenMP workers still spinning after a parallel region) are taken off, the caller is
    counted back once.
    """
    try:
        with open("/proc/stat", "rb") as f:
            running = next(
                (int(line.split()[1]) for line in f if line.startswith(b"procs_running")), None
            )
        if running is None:
            return None
        own = 0
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat", "rb") as f:
                    stat = f.read()
            except OSError:  # the thread ended meanwhile
                continue
            # the state follows the command name, which is in parentheses
            if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"R":
                own += 1
    except (OSError, ValueError, IndexError):
        return None
    return max(1, running - own + 1)


def _usable_cores() -> tuple[int, int]:
    """(cores this process may run on, online cores of the machine)."""
    online = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        usable = online
    return max(1, usable), max(usable, online)


def inference_threads(
    limit: int | None = None,
    *,
    fair_share: bool = True,
    read_running: Callable[[], int | None] = _procs_running,
    cores: tuple[int, int] | None = None,
) -> int:
    """CPU threads for one inference pass, from the busy neighbours seen now.

    Parameters
    ----------
    limit : int, optional
        Threads on an idle machine; by default :func:`torch.get_num_threads` (one per
        physical core unless the user changed it).
    fair_share : bool, default=True
        What to do when busy neighbours share the cores. True (inference: a few long
        parallel regions): *more* threads than cores, ``limit + 2·busy`` (at most
        ``4·limit``), so that the scheduler, fair per thread, gives the pass a share
        of the machine closer to what an idle one would (measured in
        ``benchmarks/results/iguane_inference.md``); but only when ``limit`` is at least
        the usable core count (a lower setting is the user's cap). False (training: many
        small parallel regions, where every OpenMP barrier waits for a descheduled
        thread): the free cores, at least one.
    read_running : callable, optional
        Returns the number of runnable tasks of the machine, the calling thread included,
        or None when unknown (then ``limit`` threads are used). For tests.
    cores : (int, int), optional
        Cores this process may run on and online cores of the machine; by default read
        from the system. For tests.

    Returns
    -------
    int
        ``limit`` without busy neighbours; with ``busy > 0`` (the median over a few
        samples of the runnable tasks of other processes, see :func:`busy_neighbours`),
        ``min(limit + 2·busy, 4·limit)`` (``fair_share``, ``limit >= usable``), ``limit``
        (``fair_share``, ``limit < usable``) or ``max(1, min(limit, usable - busy))``.

    Notes
    -----
    A CPU quota (cgroup ``cpu.max``) without pinning is not seen: set ``num_threads`` or
    :func:`torch.set_num_threads` there.
    """
    limit = torch.get_num_threads() if limit is None else int(limit)
    return _threads_for(busy_neighbours(read_running, cores), max(1, limit), fair_share)


def busy_neighbours(
    read_running: Callable[[], int | None] = _procs_running,
    cores: tuple[int, int] | None = None,
) -> tuple[int, int] | None:
    """Busy neighbours now and the cores this process may use, as ``(busy, usable)``.

    ``busy`` is the median over a few samples of the runnable tasks of other processes,
    scaled by ``usable / online`` when the process is pinned to ``usable`` of the
    machine's ``online`` cores. None when the runnable tasks cannot be read. The arguments
    are those of :func:`inference_threads`.
    """
    samples = []
    for i in range(_SAMPLES):
        if i:
            time.sleep(_SAMPLE_PAUSE)
        running = read_running()
        if running is None:
            return None
        samples.append(max(0, running - 1))
    usable, online = _usable_cores() if cores is None else cores
    return int(round(statistics.median(samples) * usable / max(usable, online))), usable


def _threads_for(load: tuple[int, int] | None, limit: int, fair_share: bool) -> int:
    """The rule of :func:`inference_threads` for ``load = (busy, usable)`` (None: unknown)."""
    if load is None:
        return limit
    busy, usable = load
    if busy == 0:
        return limit
    if not fair_share:
        return max(1, min(limit, usable - busy))
    if limit < usable:  # the user's lower setting is a cap
        return limit
    return min(limit + 2 * busy, _MAX_OVERSUBSCRIPTION * limit)


@contextlib.contextmanager
def intraop_threads(n: int | None) -> Iterator[None]:
    """Run the enclosed code with ``n`` intra-op CPU threads (None: leave the setting).

    The previous :func:`torch.get_num_threads` is restored on exit; ``ValueError`` for
    ``n < 1``.
    """
    if n is None:
        yield
        return
    if int(n) < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {n!r}.")
    before = torch.get_num_threads()
    if int(n) == before:  # setting the count, even to its value, can restart thread pools
        yield
        return
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_following(limit: int) -> tuple[int, bool]:
    """Threads for one long parallel pass now, and whether the machine is idle.

    ``(count, idle)``: :func:`inference_threads`'s ``fair_share`` rule for ``limit`` on the
    busy neighbours seen now; ``idle`` is True when none was seen (False when unknown).
    """
    load = busy_neighbours()
    return _threads_for(load, limit, fair_share=True), load is not None and load[0] == 0
