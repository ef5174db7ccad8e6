"""3-D convolutions whose backward pass stays on oneDNN, in parallel (CPU float32 training).

:class:`~harmonix.iguane.model.networks.OneDNNConv3d` forces oneDNN for its forward pass, but
autograd differentiates :func:`torch.mkldnn_convolution` with the generic
``convolution_backward``, which chooses its kernels again, and badly for IGUANe's
one-volume batches:

- a batch of one thin map (``C·D·H <= 20480``, e.g. every 3×3×3 convolution of a width-4
  generator below full resolution) goes to PyTorch's slow reference kernel;
- oneDNN (AVX2) computes most weight gradients as im2col + GEMM parallel over the batch
  only: with one volume, on one thread.

:func:`conv3d_onednn` (also transposed) computes the same gradients with
oneDNN kernels that use every thread:

- the input gradient of a stride-1 convolution as the forward convolution of the output
  gradient with the flipped, transposed kernel (``padding k - 1 - p``), much faster than
  the reference kernel on thin maps and as fast elsewhere; strided and transposed
  convolutions keep ATen's (oneDNN) input gradient;
- the weight gradient of a one-volume batch from the volume split in two depth halves, each
  with its halo, given to oneDNN as a batch of two (:func:`weight_gradient`); oneDNN sums
  the per-sample gradients. A transposed convolution's weight gradient is that of the
  strided convolution from its output to its input.

Same values as autograd of ``F.conv3d`` / ``F.conv_transpose3d`` (float32 rounding: the
sums run in another order). The gains, per layer and per site-step, are measured in
``benchmarks/results/iguane_training_speed.md`` ("Convolution gradients").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["conv3d_onednn", "input_gradient", "weight_gradient"]

_ONES = [1, 1, 1]
_ZEROS = [0, 0, 0]


def input_gradient(
    grad: torch.Tensor, weight: torch.Tensor, padding: Sequence[int]
) -> torch.Tensor:
    """Gradient of a stride-1 convolution with respect to its input.

    Parameters
    ----------
    grad : torch.Tensor of shape (N, C_out, D', H', W')
        Gradient of the convolution's output.
    weight : torch.Tensor of shape (C_out, C_in, kD, kH, kW)
    padding : sequence of 3 ints
        The forward convolution's zero padding, at most ``k - 1`` per axis.

    Returns
    -------
    torch.Tensor of shape (N, C_in, D, H, W)
        The full convolution of ``grad`` with the flipped kernel, channels in and out
        swapped.
    """
    flipped = weight.flip(2, 3, 4).transpose(0, 1).contiguous()
    pad = [k - 1 - p for k, p in zip(weight.shape[2:], padding)]
    return torch.mkldnn_convolution(grad, flipped, None, pad, _ONES, _ONES, 1)


def _split_in_depth(
    x: torch.Tensor, grad: torch.Tensor, kernel: int, stride: int, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``grad`` (batches of one) as batches of two depth halves.

    Output slices ``[a, b)`` depend on the input slices ``[s·a - p, s·(b - 1) - p + k)``:
    each half of ``x`` carries that halo, zero where it falls outside the volume, so that
    the two halves convolved without depth padding give the two halves of the output. An
    odd output depth is completed by one zero slice of ``grad``, which adds nothing.
    """
    depth, out_depth = x.shape[2], grad.shape[2]
    half = (out_depth + 1) // 2
    if 2 * half != out_depth:
        grad = F.pad(grad, (0, 0, 0, 0, 0, 1))
    pieces = []
    for a in (0, half):
        lo, hi = stride * a - pad, stride * (a + half - 1) - pad + kernel
        piece = x[0, :, max(lo, 0) : min(hi, depth)]
        pieces.append(F.pad(piece, (0, 0, 0, 0, max(-lo, 0), max(hi - depth, 0))))
    grads = grad[0].unflatten(1, (2, half)).transpose(0, 1)
    return torch.stack(pieces), grads.contiguous()


def weight_gradient(
    x: torch.Tensor,
    grad: torch.Tensor,
    weight_shape: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
) -> torch.Tensor:
    """Gradient of an (untransposed) 3-D convolution with respect to its weight.

    Parameters
    ----------
    x : torch.Tensor of shape (N, C_in, D, H, W)
        The convolution's input.
    grad : torch.Tensor of shape (N, C_out, D', H', W')
        Gradient of its output.
    weight_shape : sequence of 5 ints
        ``(C_out, C_in, kD, kH, kW)``.
    stride, padding : sequences of 3 ints

    Returns
    -------
    torch.Tensor of shape ``weight_shape``
        For a batch of one with more than one input channel and an output depth of at
        least 2: oneDNN on the two depth halves as a batch of two (two threads at work
        instead of one; see the module notes); otherwise ATen's ``convolution_backward``.
        (With one input channel ATen's kernel is the faster one.)
    """
    stride, pad = list(stride), list(padding)
    if x.shape[0] == 1 and x.shape[1] > 1 and grad.shape[2] >= 2:
        x, grad = _split_in_depth(x, grad, weight_shape[2], stride[0], pad[0])
        pad[0] = 0
    empty = x.new_empty(tuple(weight_shape))
    mask = [False, True, False]
    return torch.ops.aten.convolution_backward(
        grad, x, empty, None, stride, pad, _ONES, False, _ZEROS, 1, mask
    )[1]


def _aten_input_gradient(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    transposed: bool,
) -> torch.Tensor:
    """ATen's input gradient (oneDNN for the 4×4×4 strided kernels of IGUANe)."""
    mask = [True, False, False]
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, stride, padding, _ONES, transposed, _ZEROS, 1, mask
    )[0]


class _OneDNNConv(torch.autograd.Function):
    """A convolution or transposed convolution with the backward pass of this module."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, transposed):
        ctx.save_for_backward(x, weight)
        ctx.conf = (list(stride), list(padding), transposed, bias is not None)
        if transposed:
            return F.conv_transpose3d(x, weight, bias, stride=stride, padding=padding)
        return torch.mkldnn_convolution(x, weight, bias, list(padding), list(stride), _ONES, 1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, transposed, has_bias = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x:
            if not transposed and stride == _ONES:
                gx = input_gradient(grad, weight, padding)
            else:
                gx = _aten_input_gradient(grad, x, weight, stride, padding, transposed)
        if need_w:
            if transposed:  # the strided convolution from the output back to the input
                gw = weight_gradient(grad, x, weight.shape, stride, padding)
            else:
                gw = weight_gradient(x, grad, weight.shape, stride, padding)
        if has_bias and need_b:
            gb = grad.sum((0, 2, 3, 4))
        return gx, gw, gb, None, None, None


def conv3d_onednn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    *,
    transposed: bool = False,
) -> torch.Tensor:
    """Undilated, ungrouped (transposed) 3-D convolution with this module's backward pass.

    For CPU float32 tensors outside autocast (see
    :func:`~harmonix.iguane._kernels.fused_inference.onednn_applies`), zero padding of at most
    ``k - 1`` per axis and no output padding; the caller checks these conditions.

    Parameters
    ----------
    x : torch.Tensor of shape (N, C_in, D, H, W)
    weight : torch.Tensor
        ``(C_out, C_in, kD, kH, kW)``, or ``(C_in, C_out, kD, kH, kW)`` when transposed.
    bias : torch.Tensor of shape (C_out,) or None
    stride, padding : sequences of 3 ints
    transposed : bool, default=False
        A transposed convolution (``F.conv_transpose3d``) instead of ``F.conv3d``.

    Returns
    -------
    torch.Tensor of shape (N, C_out, D', H', W')
    """
    return _OneDNNConv.apply(x, weight, bias, tuple(stride), tuple(padding), bool(transposed))
