"""Where and in which precision IGUANe runs: the device and the autocast dtype.

One rule for mixed precision serves training (:class:`~harmonix.iguane.config.TrainConfig`),
the estimator and inference: :func:`autocast_dtype` turns the ``mixed_precision`` switch
into a dtype, :func:`resolve_amp_dtype` turns an ``amp_dtype`` name into one.
"""

from __future__ import annotations

import torch

__all__ = ["autocast_dtype", "cpu_supports_bf16", "resolve_amp_dtype", "resolve_device"]

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
