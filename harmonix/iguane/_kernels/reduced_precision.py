"""Which CPU convolutions run in float32 under reduced precision, and how.

Under CPU :func:`torch.autocast` to bfloat16 (or with bfloat16 tensors), PyTorch sends
3-D convolutions to oneDNN's reduced-precision kernels, which on CPUs with native bfloat16
(AVX512-BF16, AMX) are the BRGEMM ones. Two failures of those kernels were seen on tiny
feature maps, never on maps that hold a whole kernel window:

- a strided convolution whose output has one voxel along an axis computes wrong values
  (pytorch/pytorch#169688, oneDNN 3.12's ``brg_conv_fwd``);
- IGUANe's 2-step test training gave NaN in about one run of three on an AVX512-BF16 CPU,
  and different losses in the others, the first non-finite output being the
  discriminator's last convolution (32→1, 3×3×3, stride 1, padding 1) on a finite
  2×2×2 input, i.e. an input smaller than the kernel; replaying that call never failed,
  so the result depended on what the memory around the tensors held: the kernel read
  outside the valid data (bytes that hold NaN then poison the sum, others change it).
  oneDNN handles the padded borders of a map separately from its inside; on such a map
  *every* output is a border case.

:func:`needs_float32` names the whole class: along some spatial axis, **no output
position has its kernel window inside the input** (every output reads padding: an input
smaller than the kernel, or padding reaching across the whole input), or the output is
**one voxel wide with a stride above 1**. A transposed convolution is judged as the
direct convolution it is the gradient of (from its output back to its input), which is
also the convolution that computes its weight gradient. Such convolutions are computed in
float32 (:func:`conv3d_float32`), and autograd then differentiates them in float32 too.
Their maps hold a few voxels, so the cost is nil; IGUANe's networks meet them only on
volumes of a few tens of voxels per axis (the tests' 16³ volumes: the generator's two
deepest levels and the discriminator's last two convolutions), never at 4 mm (48×64×48)
or 1 mm.

The rule covers float16 as well (oneDNN's reduced-precision kernels on CPUs with
AVX512-FP16/AMX-FP16 share the BRGEMM design), and only CPU tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["conv3d_float32", "needs_float32", "reduced_precision_on_cpu"]

_REDUCED = (torch.bfloat16, torch.float16)


def reduced_precision_on_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a CPU convolution of ``x`` by ``weight`` would run in bfloat16 or float16.

    True when ``x`` is on the CPU and either tensor has a reduced-precision dtype, or CPU
    autocast to one of them is enabled.
    """
    if x.device.type != "cpu":
        return False
    if x.dtype in _REDUCED or weight.dtype in _REDUCED:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _REDUCED


def _no_inner_window(size: int, kernel: int, stride: int, padding: int, dilation: int) -> bool:
    """Whether no output window of a direct convolution along one axis lies inside its
    input of ``size`` voxels (every output reads padding).

    Output ``o`` reads input voxels ``o·stride - padding`` to ``o·stride - padding +
    extent - 1``; the first that starts inside the input is ``ceil(padding / stride)``.
    """
    extent = dilation * (kernel - 1) + 1
    first = -(-padding // stride)
    return first * stride - padding + extent > size


def needs_float32(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int] | str,
    dilation: Sequence[int] = (1, 1, 1),
    *,
    transposed: bool = False,
    output_padding: Sequence[int] = (0, 0, 0),
) -> bool:
    """Whether a 3-D convolution must run in float32 instead of CPU reduced precision.

    See the module notes for the rule and the evidence behind it.

    Parameters
    ----------
    x : torch.Tensor of shape (N, C, D, H, W)
        The convolution's input.
    weight : torch.Tensor
        Its kernel (``(C_out, C_in, kD, kH, kW)``; ``(C_in, C_out, ...)`` when transposed).
    stride, padding, dilation : sequences of 3 ints
        As for :func:`torch.nn.functional.conv3d`. A string padding ("same", "valid") is
        never flagged.
    transposed : bool, default=False
        A transposed convolution (:func:`torch.nn.functional.conv_transpose3d`).
    output_padding : sequence of 3 ints, default=(0, 0, 0)
        Of a transposed convolution.

    Returns
    -------
    bool
        True when the convolution would run in bfloat16 or float16 on the CPU
        (:func:`reduced_precision_on_cpu`) and, along some spatial axis of the direct
        convolution (for a transposed one: the direct convolution from its output to its
        input), no output window lies inside the input, or the output is one voxel wide
        with a stride above 1.
    """
    if x.dim() != 5 or isinstance(padding, str) or not reduced_precision_on_cpu(x, weight):
        return False
    axes = zip(x.shape[2:], weight.shape[2:], stride, padding, dilation, output_padding)
    for size, k, s, p, d, extra in axes:
        if transposed:  # the direct convolution from the output (src) to the input (dst)
            src, dst = (size - 1) * s - 2 * p + d * (k - 1) + extra + 1, size
        else:
            src, dst = size, (size + 2 * p - d * (k - 1) - 1) // s + 1
        if _no_inner_window(src, k, s, p, d) or (dst == 1 and s > 1):
            return True
    return False


def conv3d_float32(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    transposed: bool = False,
    **kwargs: object,
) -> torch.Tensor:
    """A (transposed) 3-D convolution computed in float32 with CPU autocast off.

    Parameters
    ----------
    x, weight, bias : torch.Tensor
        Converted to float32 (a no-op for float32 tensors).
    transposed : bool, default=False
        :func:`torch.nn.functional.conv_transpose3d` instead of
        :func:`torch.nn.functional.conv3d`.
    **kwargs
        ``stride``, ``padding``... of the functional convolution.

    Returns
    -------
    torch.Tensor
        float32 under CPU autocast (the next operations cast it as they need); otherwise
        in the dtype the convolution would have had (that of ``x`` and ``weight``).
    """
    autocast = torch.is_autocast_enabled("cpu")
    conv = F.conv_transpose3d if transposed else F.conv3d
    with torch.autocast("cpu", enabled=False):
        y = conv(x.float(), weight.float(), None if bias is None else bias.float(), **kwargs)
    return y if autocast else y.to(torch.promote_types(x.dtype, weight.dtype))
