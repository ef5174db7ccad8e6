"""Where and in which precision IGUANe runs: the device and the autocast dtype.

One rule for mixed precision serves training
(:class:`~harmonix.iguane.training.config.TrainConfig`), the estimator and inference:
:func:`autocast_dtype` turns the ``mixed_precision`` switch into a dtype,
:func:`resolve_amp_dtype` turns an ``amp_dtype`` name into one.
"""

from __future__ import annotations

import warnings

import torch

__all__ = [
    "EmulatedBFloat16Warning",
    "autocast_dtype",
    "cpu_supports_bf16",
    "resolve_amp_dtype",
    "resolve_device",
    "warn_if_emulated",
]


class EmulatedBFloat16Warning(UserWarning):
    """bfloat16 was asked for on a CPU that does not compute it natively (slow)."""


#: The autocast dtypes by name.
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 convolutions natively (AVX512-BF16 or AMX).

    Returns
    -------
    bool
        ``True`` when PyTorch reports ``avx512_bf16`` or ``amx_bf16``. Without them,
        bfloat16 autocast on CPU works but is emulated and slower than float32.
    """
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is None:  # pragma: no cover - older PyTorch
        return False
    try:
        caps = get()
    except Exception:  # pragma: no cover - defensive: capability probing must not fail
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def warn_if_emulated(
    amp_dtype: torch.dtype | None, device: torch.device, stacklevel: int = 2
) -> None:
    """Warn (:class:`EmulatedBFloat16Warning`) when bfloat16 would be emulated.

    Parameters
    ----------
    amp_dtype : torch.dtype or None
        The autocast dtype about to be used.
    device : torch.device
        Where the networks run.
    stacklevel : int, default=2
        As for :func:`warnings.warn`, counted from the caller of this function.

    Notes
    -----
    On a CPU without AVX512-BF16 or AMX (:func:`cpu_supports_bf16`), bfloat16
    convolutions are computed by PyTorch's reference kernels: the results are those of a
    native CPU (up to the kernels' summation order), but a pass takes 10-200 times longer
    than in float32 (measured on an AVX2 CPU: a 4 mm width-4 model about 20x, a
    32->16-channel 3x3x3 convolution about 190x).
    """
    if amp_dtype == torch.bfloat16 and device.type == "cpu" and not cpu_supports_bf16():
        warnings.warn(
            "bfloat16 (mixed_precision=True) on a CPU without AVX512-BF16 or AMX: it is "
            "emulated, many times slower than float32 (10-200x on an AVX2 CPU), with the "
            "same reduced precision. Use mixed_precision=False (the default) on this "
            "machine.",
            EmulatedBFloat16Warning,
            stacklevel=stacklevel + 1,
        )


def resolve_amp_dtype(
    amp_dtype: str | torch.dtype | None, device: torch.device
) -> torch.dtype | None:
    """The autocast dtype to use on ``device``, or ``None`` for full precision.

    Parameters
    ----------
    amp_dtype : {None, "auto", "bfloat16", "float16"} or torch.dtype
        ``None``: no autocast (float32 everywhere). ``"auto"``: float16 on CUDA, bfloat16 on a
        CPU that computes it natively (:func:`cpu_supports_bf16`), otherwise ``None``.
    device : torch.device
        The device the generator runs on.

    Returns
    -------
    torch.dtype or None

    Raises
    ------
    ValueError
        If ``amp_dtype`` is not one of the accepted values.
    """
    if amp_dtype is None:
        return None
    if isinstance(amp_dtype, torch.dtype):
        if amp_dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(
                f"amp_dtype must be torch.bfloat16 or torch.float16, got {amp_dtype}."
            )
        return amp_dtype
    if amp_dtype == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_supports_bf16():
            return torch.bfloat16
        return None
    if amp_dtype in AMP_DTYPES:
        return AMP_DTYPES[amp_dtype]
    raise ValueError(
        f"amp_dtype must be None, 'auto', 'bfloat16' or 'float16', got {amp_dtype!r}."
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a :class:`torch.device`.

    Raises
    ------
    ValueError
        If the name is unknown, or CUDA is asked for but not available.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}."
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} but CUDA is not available on this machine; use "
                "device='cpu' or device='auto'."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist."
            )
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}.")
    return dev


def autocast_dtype(
    mixed_precision: bool | None, device: torch.device, amp_dtype: str | None = None
) -> torch.dtype | None:
    """The autocast dtype of training and of the estimator, or ``None`` for full precision.

    Parameters
    ----------
    mixed_precision : bool or None
        Whether to run under :func:`torch.autocast`; None means on CUDA only.
    device : torch.device
        The device the networks run on.
    amp_dtype : {None, "float16", "bfloat16"}, default=None
        The dtype; None means float16 on CUDA (with loss scaling in training) and bfloat16
        elsewhere.

    Returns
    -------
    torch.dtype or None
    """
    use = device.type == "cuda" if mixed_precision is None else bool(mixed_precision)
    if not use:
        return None
    default = "float16" if device.type == "cuda" else "bfloat16"
    return resolve_amp_dtype(amp_dtype or default, device)
