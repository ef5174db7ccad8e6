"""Fast inference with the IGUANe forward generator: one volume in, one volume out.

:func:`harmonize_volume` runs :class:`~harmonix.iguane.model.networks.Generator3D` on one
volume given on the network scale and returns the generator's output on the same scale, as
a NumPy array. It runs the generator's fused pass (see :meth:`Generator3D.forward
<harmonix.iguane.model.networks.Generator3D.forward>`) under :func:`torch.inference_mode`,
with channels-last feature maps, oneDNN convolutions on CPU and, optionally, mixed
precision. The output equals the plain float32 pass within about 1e-4 on the network
scale.

Threads: by default a call runs on PyTorch's thread setting (:func:`torch.get_num_threads`)
whatever the load, because oneDNN blocks some convolutions differently for other thread
counts, so a count that followed the load would make the same call give different bits on
an idle and on a busy machine. The fused normalizations run on one thread (their result
does not depend on it). ``num_threads="auto"`` opts into a load-following count (the
policy of :mod:`harmonix._threads`): more threads than cores next to busy processes, the
normalizations on the call's threads only on an idle machine (see
:func:`~harmonix.iguane._kernels.fused_inference.norms_on_call_threads`); the price is
outputs that can differ in the last digits from one call to the next when the load
changes.

Two process-wide settings make CPU inference faster, because a pass allocates fresh
feature maps whose pages the kernel otherwise faults in 4 kB at a time; set them in the
environment before Python starts (harmonix never changes them): ``THP_MEM_ALLOC_ENABLE=1``
(PyTorch asks for transparent huge pages) or glibc's
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296`` (freed memory is
kept for reuse; the process then keeps its peak memory).

Speed and memory, against the TensorFlow original and a plain PyTorch pass, idle and next
to busy processes, and what each setting above gains, are measured in
``benchmarks/results/iguane_inference.md`` and ``iguane_inference_memory.md``.
"""

from __future__ import annotations

import numpy as np
import torch

from harmonix import _threads
from harmonix.iguane._kernels.fused_inference import norms_on_call_threads
from harmonix.iguane.devices import resolve_amp_dtype, warn_if_emulated
from harmonix.iguane.model.networks import SIZE_MULTIPLE, Generator3D

__all__ = ["harmonize_volume"]


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
        output on every CPU up to float32 rounding. See
        :func:`~harmonix.iguane.devices.resolve_amp_dtype` for ``"auto"``. bfloat16 is
        faster on CPUs that compute it natively (AVX512-BF16, AMX) and moves the output
        slightly (measured in ``benchmarks/results/iguane_bf16.md``); elsewhere it is
        emulated, many times slower, and warns
        (:class:`~harmonix.iguane.devices.EmulatedBFloat16Warning`).
    num_threads : int or "auto", optional
        CPU threads for this call (restored afterwards). None (default): PyTorch's
        setting, whatever the load (same output on every call). "auto": sized from the
        busy neighbours when the call starts (:func:`harmonix._threads.inference_threads`;
        faster on a shared machine, outputs may differ in the last digits as the load changes; see
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
    Memory: besides the generator and the volume, a forward pass holds one full-size
    16-channel map, the half-size 32-channel one and slab temporaries at its peak (measured
    in ``benchmarks/results/iguane_inference_memory.md``; less under bfloat16).
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
            num_threads, norms_parallel = _threads.load_following(torch.get_num_threads())
    param_dtype = next(generator.parameters()).dtype
    with (
        _threads.intraop_threads(num_threads),
        norms_on_call_threads(norms_parallel),
        torch.inference_mode(),
        torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None),
    ):
        xt = torch.from_numpy(np.ascontiguousarray(arr)).to(device=device, dtype=param_dtype)
        y = generator(xt[None].contiguous(memory_format=torch.channels_last_3d))
        del xt
        return y[0, 0].to(device="cpu", dtype=torch.float32).numpy()
