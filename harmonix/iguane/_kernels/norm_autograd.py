"""IGUANe's MAD instance norm as one autograd node, with a closed-form backward.

Autograd of :class:`~harmonix.iguane.model.networks.MADInstanceNorm3d` records about ten
operations over the whole feature map and replays about fifteen in the backward pass;
:func:`mad_norm` computes the same function and its gradients in fewer passes (the ReLU
before it stays an in-place autograd ReLU, faster than fusing it here; both measured in
``benchmarks/results/iguane_training_speed.md``, "MAD norm").

Per sample and channel over the ``V`` voxels of ``x``,
``d = x - mean(x)``, ``m = mean(|d|)``, ``r = 1 / (m + eps)``,
``y = γ·r·d + β``; for an output gradient ``g``:

- ``a = γ·r·g - k·sign(d)`` with ``k = γ·r²·mean(g·d)`` (the path through ``m``),
- ``dL/dx = a - mean(a)`` (the path through the mean),
- ``dL/dγ = Σ g·d·r`` and ``dL/dβ = Σ g`` (summed over the batch).

``sign(0) = 0`` as in autograd of ``abs``. Statistics in the input's dtype (float32 or
float64); used by the networks with autograd on and autocast off.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["mad_norm"]

_SPATIAL = (2, 3, 4)


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """A ``(N, C)`` tensor as ``(N, C, 1, 1, 1)`` for broadcasting over space."""
    return t.view(*t.shape, 1, 1, 1)


class _MADNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mean = x.mean(_SPATIAL)
        d = x - _per_channel(mean)
        inv = 1.0 / (d.abs().mean(_SPATIAL) + eps)
        y = d.mul_(_per_channel(weight * inv)).add_(_per_channel(bias.expand_as(inv)))
        ctx.save_for_backward(x, mean, inv, weight)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, mean, inv, weight = ctx.saved_tensors
        voxels = x[0, 0].numel()
        d = x - _per_channel(mean)
        g_sum = g.sum(_SPATIAL)
        gd_sum = (g * d).sum(_SPATIAL)
        sign = d.sign_()
        sign_sum = sign.sum(_SPATIAL)
        scale = weight * inv  # γ·r, (N, C)
        k = scale * inv * gd_sum / voxels  # γ·r²·mean(g·d)
        # dx = γr·g - k·sign - mean(γr·g - k·sign)
        offset = (k * sign_sum - scale * g_sum) / voxels
        gx = torch.addcmul(_per_channel(offset), g, _per_channel(scale))
        gx.addcmul_(sign, _per_channel(-k))
        g_weight = (gd_sum * inv).sum(0) if ctx.needs_input_grad[1] else None
        g_bias = g_sum.sum(0) if ctx.needs_input_grad[2] else None
        return gx, g_weight, g_bias, None


def mad_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """:class:`~harmonix.iguane.model.networks.MADInstanceNorm3d`'s function, differentiable.

    Parameters
    ----------
    x : torch.Tensor of shape (N, C, D, H, W)
        Float32 or float64 feature maps (autocast off).
    weight, bias : torch.Tensor of shape (C,)
        The norm's scale γ and offset β, in the dtype of ``x``.
    eps : float
        Added to the mean absolute deviation.

    Returns
    -------
    torch.Tensor of shape (N, C, D, H, W)
    """
    return _MADNorm.apply(x, weight, bias, float(eps))
