"""Fast inference with the IGUANe forward generator: one volume in, one volume out.

:func:`harmonize_volume` runs :class:`~harmonix.iguane.networks.Generator3D` on one volume
given on the network scale and returns the generator's output on the same scale, as a NumPy
array. It runs the generator's fused pass (see :meth:`Generator3D.forward
<harmonix.iguane.networks.Generator3D.forward>`) under :func:`torch.inference_mode`, with
channels-last feature maps, oneDNN convolutions on CPU and, optionally, mixed precision.

Speed and memory, against the TensorFlow original and a plain PyTorch pass, are measured in
``benchmarks/results/iguane_inference.md``. The output equals the plain float32 pass within
about 1e-4 on the network scale.

Threads: by default a call runs on PyTorch's thread setting (:func:`torch.get_num_threads`,
one per physical core unless changed), whatever the load, because the output depends on
the thread count: oneDNN blocks some convolutions differently for other counts (at
64×80×64, 3 or 6 threads give outputs 1e-5 away from 1, 2 or 4 threads' on the network
scale), so a count that followed the load would make the same call give different bits
on an idle and on a busy machine. The fused normalizations run on one thread (their
result does not depend on it).

``num_threads="auto"`` opts into a load-following count (:func:`inference_threads`):
the call counts the busy neighbours when it starts, from the number of runnable tasks of
the other processes (``procs_running`` of ``/proc/stat`` less this process's runnable
threads, sampled a few times within a millisecond or two, the median kept), not from the
load average: the load average lags by a minute and counts the caller's own earlier
passes. On an idle machine every core is used; with busy neighbours the pass runs more
threads than cores (``limit + 2·busy``, at most 4x): the scheduler is fair per thread, so
the pass gets a larger share of the shared cores, and the many threads even out OpenMP's
static split of the work (with two busy processes on 2 cores a full-size pass took 15.1 s
with 2 threads and 10.7 s with 6). A thread setting below the core count is kept as the
user's cap. Where ``/proc/stat`` cannot be read (not Linux), PyTorch's setting is used.
The normalizations then run on the call's threads on an idle machine and on one thread
otherwise (on a busy machine each of their barriers would wait for a descheduled thread;
see :func:`~harmonix.iguane.fused_inference.norms_on_call_threads`). The price of
``"auto"``: outputs that can differ in the last digits from one call to the next when
the load changes.

Two process-wide settings make CPU inference faster (see the same results), because a pass
allocates about 0.5 GB of fresh feature maps whose pages the kernel otherwise faults in 4 kB
at a time; set them in the environment before Python starts (harmonix never changes them):
``THP_MEM_ALLOC_ENABLE=1`` (PyTorch asks for transparent huge pages) or glibc's
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296`` (freed memory is
kept for reuse; the process then keeps its peak memory).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from harmonix.iguane.devices import cpu_supports_bf16, resolve_amp_dtype, warn_if_emulated
from harmonix.iguane.fused_inference import norms_on_call_threads
from harmonix.iguane.networks import SIZE_MULTIPLE, Generator3D

__all__ = [
    "busy_neighbours",
    "cpu_supports_bf16",
    "harmonize_volume",
    "inference_threads",
    "intraop_threads",
    "resolve_amp_dtype",
]

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
        of the machine closer to what an idle one would (measured at 160×192×160 with two
        busy processes on 2 cores: 15.1 s with 2 threads, 10.7 s with 6; TensorFlow's
        work-stealing pool about 14 s); but only when ``limit`` is at least the usable core
        count (a lower setting is the user's cap). False (training: many small parallel
        regions, where every OpenMP barrier waits for a descheduled thread): the free
        cores, at least one.
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


def _module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")  # pragma: no cover - the generator always has parameters


def harmonize_volume(
    generator: Generator3D,
    x: np.ndarray,
    *,
    amp_dtype: str | torch.dtype | None = None,
    num_threads: int | str | None = None,
) -> np.ndarray:
    """Run the forward generator on one volume, network scale in and out.

    Parameters
    ----------
    generator : Generator3D
        The forward generator, on the device to use (CPU or GPU); it is not modified. Its
        fused pass is used unless its ``fused_inference`` attribute was set to ``False``.
    x : numpy.ndarray of shape (D, H, W) or (C, D, H, W)
        One volume on the network scale (``intensity / median - 1``, background set to 0),
        ``C = generator.in_channels``; ``D``, ``H``, ``W`` multiples of 16. Any float dtype;
        converted to the generator's dtype (float32 normally).
    amp_dtype : {None, "auto", "bfloat16", "float16"} or torch.dtype, default=None
        Mixed precision (:func:`torch.autocast`) for the convolutions; the normalization
        statistics, the final projection, ``tanh`` and the residual sum stay in float32.
        ``None`` (the default) computes in the generator's dtype, which gives the same
        output on every CPU up to float32 rounding. See :func:`resolve_amp_dtype` for
        ``"auto"``. bfloat16 is faster on CPUs that compute it natively (AVX512-BF16,
        AMX) and moves the output by about 1e-3 of its range (SSIM to float32 above 0.999
        in the brain, ``benchmarks/results/iguane_bf16.md``); elsewhere it is emulated,
        10-200 times slower, and warns
        (:class:`~harmonix.iguane.devices.EmulatedBFloat16Warning`).
    num_threads : int or "auto", optional
        CPU threads for this call (restored afterwards). None (default): PyTorch's
        setting, whatever the load (same output on every call). "auto": sized from the
        busy neighbours when the call starts (:func:`inference_threads`; faster on a
        shared machine, outputs may differ in the last digits as the load changes; see
        the module notes).

    Returns
    -------
    numpy.ndarray of shape (D, H, W), float32
        The generator output ``x + tanh(correction)`` on the network scale. The caller
        multiplies it by the brain mask and maps it back to intensities.

    Raises
    ------
    ValueError
        If ``x`` has the wrong number of dimensions or channels, a spatial size that is not
        a multiple of 16, non-finite values, or ``amp_dtype`` / ``num_threads`` is invalid.
    TypeError
        If ``generator`` is not a :class:`Generator3D`.

    Notes
    -----
    Memory: besides the generator and the volume, one 160×192×160 float32 forward pass
    needs about 0.5 GB at its peak (one full-size 16-channel map, the half-size
    32-channel one and slab temporaries; less under bfloat16).
    """
    if not isinstance(generator, Generator3D):
        raise TypeError(f"generator must be a Generator3D, got {type(generator).__name__}.")
    arr = np.asarray(x)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[0] != generator.in_channels:
        raise ValueError(
            f"x must have shape (D, H, W) or ({generator.in_channels}, D, H, W) for this "
            f"generator, got {np.shape(x)}."
        )
    if any(s % SIZE_MULTIPLE for s in arr.shape[1:]):
        raise ValueError(
            f"x needs spatial sizes that are multiples of {SIZE_MULTIPLE}, got "
            f"{arr.shape[1:]}; crop or pad it (harmonix.preprocessing.pad_to_multiple)."
        )
    if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise ValueError("x must be a floating-point array of finite values.")
    device = _module_device(generator)
    amp = resolve_amp_dtype(amp_dtype, device)
    warn_if_emulated(amp, device)
    norms_parallel = False
    if isinstance(num_threads, str):
        if num_threads != "auto":
            raise ValueError(
                f"num_threads must be a positive integer, 'auto' or None, got {num_threads!r}."
            )
        num_threads = None
        if device.type == "cpu":
            load = busy_neighbours()
            num_threads = _threads_for(load, torch.get_num_threads(), fair_share=True)
            norms_parallel = load is not None and load[0] == 0  # an idle machine
    param_dtype = next(generator.parameters()).dtype
    with (
        intraop_threads(num_threads),
        norms_on_call_threads(norms_parallel),
        torch.inference_mode(),
        torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None),
    ):
        xt = torch.from_numpy(np.ascontiguousarray(arr)).to(device=device, dtype=param_dtype)
        y = generator(xt[None].contiguous(memory_format=torch.channels_last_3d))
        del xt
        return y[0, 0].to(device="cpu", dtype=torch.float32).numpy()
