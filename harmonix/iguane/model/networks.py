"""Networks of IGUANe: the 3-D U-Net generator and the PatchGAN discriminator.

This module holds PyTorch modules only; losses, data sampling and training loops live
elsewhere in :mod:`harmonix.iguane`.

Both networks take volumes of shape ``(batch, 1, depth, height, width)`` (``NCDHW``) on the
*network scale* of IGUANe: an intensity ``x`` that was median-normalized (brain median 500)
is mapped to ``x / 500 - 1``, so that the brain median is 0 and the background would be -1.
The caller then sets the background voxels to 0, a neutral value equal to the brain median,
before calling a network, and multiplies every generator output by the input's brain mask.

Both networks accept ``torch.channels_last_3d`` inputs and modules, and mixed precision
(:func:`torch.autocast`): the instance normalization always computes its statistics in
float32.

Without autograd (under :func:`torch.inference_mode` or :func:`torch.no_grad`) the generator
runs a fused forward pass that computes the same function with far less memory traffic and
memory (see :meth:`Generator3D.forward`); with autograd it runs the plain, differentiable
pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harmonix.iguane._kernels.conv_backward import conv3d_onednn
from harmonix.iguane._kernels.fused_inference import generator_forward_fused, onednn_applies
from harmonix.iguane._kernels.norm_autograd import mad_norm
from harmonix.iguane._kernels.reduced_precision import conv3d_float32, needs_float32

__all__ = [
    "SIZE_MULTIPLE",
    "Generator3D",
    "MADInstanceNorm3d",
    "OneDNNConv3d",
    "OneDNNConvTranspose3d",
    "PatchDiscriminator3D",
    "glorot_init",
    "size_triple",
]

#: Number of times the generator halves each spatial size.
_N_DOWN = 4
#: Spatial sizes given to the generator must be multiples of this.
SIZE_MULTIPLE = 2**_N_DOWN

_SPATIAL_DIMS = (2, 3, 4)


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is enabled for ``device_type`` (False for devices without it)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # e.g. the "meta" device
        return False


def _backward_on_onednn(conv: nn.Conv3d | nn.ConvTranspose3d) -> bool:
    """Whether ``conv`` (on a CPU float32 input) takes the backward pass of
    :mod:`harmonix.iguane._kernels.conv_backward`: with autograd on, for undilated, ungrouped
    convolutions with zero padding below the kernel size and no output padding."""
    return (
        torch.is_grad_enabled()
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and all(d == 1 for d in conv.dilation)
        and all(0 <= p < k for p, k in zip(conv.padding, conv.kernel_size))
        and not any(conv.output_padding)
    )


class OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` that takes oneDNN for CPU float32 inputs, in training too.

    PyTorch's heuristic sends one-volume batches of thin maps to its reference kernel,
    whose backward pass is slow; forcing oneDNN makes CPU training updates faster (see
    ``benchmarks/bench_iguane_training_speed.py``). With autograd on, the gradients are
    computed by :func:`~harmonix.iguane._kernels.conv_backward.conv3d_onednn` (oneDNN on every
    thread). Same parameters and outputs as ``nn.Conv3d`` (to float32 rounding); any other
    case (autocast, float64, GPUs) is ``nn.Conv3d``'s, except CPU bfloat16/float16
    convolutions of maps too small for oneDNN's reduced-precision kernels, computed in
    float32 (:func:`~harmonix.iguane._kernels.reduced_precision.needs_float32`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            onednn_applies(x, self.weight)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        ):
            if _backward_on_onednn(self):
                return conv3d_onednn(x, self.weight, self.bias, self.stride, self.padding)
            return torch.mkldnn_convolution(
                x,
                self.weight,
                self.bias,
                list(self.padding),
                list(self.stride),
                list(self.dilation),
                self.groups,
            )
        if self.padding_mode == "zeros" and needs_float32(
            x, self.weight, self.stride, self.padding, self.dilation
        ):
            return conv3d_float32(
                x,
                self.weight,
                self.bias,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                groups=self.groups,
            )
        return super().forward(x)


class OneDNNConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` whose CPU float32 training gradients use every thread.

    With autograd on, CPU float32 inputs outside autocast go through
    :func:`~harmonix.iguane._kernels.conv_backward.conv3d_onednn` (``transposed=True``): the
    same forward (oneDNN), and a weight gradient computed by oneDNN on two halves of the
    volume instead of one single-threaded GEMM. Same parameters and outputs as
    ``nn.ConvTranspose3d``; every other case is ``nn.ConvTranspose3d``'s, except CPU
    bfloat16/float16 transposed convolutions of maps too small for oneDNN's
    reduced-precision kernels, computed in float32
    (:func:`~harmonix.iguane._kernels.reduced_precision.needs_float32`).
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is None and onednn_applies(x, self.weight) and _backward_on_onednn(self):
            return conv3d_onednn(
                x, self.weight, self.bias, self.stride, self.padding, transposed=True
            )
        if (
            output_size is None
            and self.padding_mode == "zeros"
            and needs_float32(
                x,
                self.weight,
                self.stride,
                self.padding,
                self.dilation,
                transposed=True,
                output_padding=self.output_padding,
            )
        ):
            return conv3d_float32(
                x,
                self.weight,
                self.bias,
                transposed=True,
                stride=self.stride,
                padding=self.padding,
                output_padding=self.output_padding,
                groups=self.groups,
                dilation=self.dilation,
            )
        return super().forward(x, output_size)


class MADInstanceNorm3d(nn.Module):
    """Instance normalization by the mean absolute deviation, as in IGUANe.

    For every sample and channel, over the three spatial dimensions,

    .. math::

        y = \\gamma \\, \\frac{x - \\mathrm{mean}(x)}
                             {\\mathrm{mean}(|x - \\mathrm{mean}(x)|) + \\epsilon} + \\beta

    This is not :class:`torch.nn.InstanceNorm3d` (which divides by the standard deviation
    with ``eps`` inside the square root). There are no running statistics: training and
    evaluation modes compute the same thing.

    Parameters
    ----------
    num_features : int
        Number of channels ``C`` of the input.
    eps : float, default=1e-3
        Added to the mean absolute deviation before dividing.

    Attributes
    ----------
    weight : torch.nn.Parameter of shape (num_features,)
        Per-channel scale :math:`\\gamma`, initialized to 1 (``scale`` in the Keras original).
    bias : torch.nn.Parameter of shape (num_features,)
        Per-channel offset :math:`\\beta`, initialized to 0 (``offset`` in the Keras original).

    Notes
    -----
    The statistics and the affine transform are computed in float32 even under
    :func:`torch.autocast` or with a half-precision input (in float64 for a float64 input);
    the result is returned in the input's dtype. With autograd on, float32/float64 inputs
    outside autocast go through :func:`~harmonix.iguane._kernels.norm_autograd.mad_norm` (one
    autograd node with a closed-form backward; same values).
    """

    def __init__(self, num_features: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(self.num_features))
        self.bias = nn.Parameter(torch.zeros(self.num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x``.

        Parameters
        ----------
        x : torch.Tensor of shape (N, C, D, H, W)
            Input feature maps, any floating dtype and memory format.

        Returns
        -------
        torch.Tensor of shape (N, C, D, H, W)
            Normalized maps, in the dtype of ``x``.
        """
        if x.dim() != 5 or x.shape[1] != self.num_features:
            raise ValueError(
                f"MADInstanceNorm3d({self.num_features}) expects an input of shape "
                f"(N, {self.num_features}, D, H, W), got {tuple(x.shape)}."
            )
        if (
            torch.is_grad_enabled()
            and x.dtype in (torch.float32, torch.float64)
            and self.weight.dtype == x.dtype
            and not _autocast_on(x.device.type)
        ):
            return mad_norm(x, self.weight, self.bias, self.eps)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # float32 for half precision, float64 stays float64; no copy for float32
            dtype = torch.promote_types(x.dtype, torch.float32)
            xf = x.to(dtype)
            dev = xf - xf.mean(dim=_SPATIAL_DIMS, keepdim=True)
            mad = dev.abs().mean(dim=_SPATIAL_DIMS, keepdim=True)
            shape = (1, self.num_features, 1, 1, 1)
            scale = self.weight.to(dtype).view(shape) / (mad + self.eps)
            y = torch.addcmul(self.bias.to(dtype).view(shape), dev, scale)
        return y.to(x.dtype)


class _ConvReLUNorm(nn.Module):
    """Convolution (or transposed convolution) → ReLU → MAD instance norm.

    The normalization comes *after* the activation, as in IGUANe.
    """

    def __init__(self, conv: nn.Conv3d | nn.ConvTranspose3d) -> None:
        super().__init__()
        self.conv = conv
        self.norm = MADInstanceNorm3d(conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.relu(self.conv(x), inplace=True))


def _conv_block(in_channels: int, out_channels: int) -> _ConvReLUNorm:
    return _ConvReLUNorm(OneDNNConv3d(in_channels, out_channels, 3, stride=1, padding=1))


def _down_block(channels: int) -> _ConvReLUNorm:
    return _ConvReLUNorm(OneDNNConv3d(channels, channels, 4, stride=2, padding=1))


def _up_block(in_channels: int, out_channels: int) -> _ConvReLUNorm:
    return _ConvReLUNorm(OneDNNConvTranspose3d(in_channels, out_channels, 4, stride=2, padding=1))


def glorot_init(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Glorot/Xavier-uniform weights and zero biases for every convolution of ``module``.

    Parameters
    ----------
    module : torch.nn.Module
    generator : torch.Generator, default=None
        Source of the random weights (a local generator in training); None: the global one.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            nn.init.xavier_uniform_(m.weight, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def size_triple(value: Any, *, allow_int: bool = False) -> tuple[int, int, int] | None:
    """``value`` as 3 spatial sizes that the generator accepts, or None if it is not.

    Parameters
    ----------
    value : sequence of 3 int, or int with ``allow_int``
        Each size must be a positive multiple of
        :data:`SIZE_MULTIPLE`.
    allow_int : bool, default=False
        Accept one int for the 3 sizes.

    Returns
    -------
    tuple of 3 int or None
    """
    if allow_int and isinstance(value, int | np.integer) and not isinstance(value, bool):
        value = (int(value),) * 3
    try:
        sizes = tuple(int(v) for v in value)
    except TypeError:
        return None
    if len(sizes) != 3 or any(v < SIZE_MULTIPLE or v % SIZE_MULTIPLE for v in sizes):
        return None
    return sizes  # type: ignore[return-value]


def _check_widths(base_width: int, in_channels: int) -> tuple[int, int]:
    """``base_width`` and ``in_channels`` as positive ints (ValueError otherwise)."""
    if int(base_width) < 1:
        raise ValueError(f"base_width must be a positive integer, got {base_width!r}.")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}.")
    return int(base_width), int(in_channels)


def _check_input(x: torch.Tensor, in_channels: int, name: str) -> None:
    if x.dim() != 5 or x.shape[1] != in_channels:
        raise ValueError(
            f"{name} expects a tensor of shape (N, {in_channels}, D, H, W), got {tuple(x.shape)}."
        )


class Generator3D(nn.Module):
    """Residual 3-D U-Net generator of IGUANe.

    Encoder: four levels, each a 3×3×3 convolution block followed by a strided 4×4×4
    convolution (stride 2) that halves the size; a bottleneck convolution block; decoder:
    four levels, each a 4×4×4 transposed convolution (stride 2) that doubles the size, a
    concatenation with the encoder level's output (skip connection) and a convolution block.
    Every block is convolution → ReLU → :class:`MADInstanceNorm3d`. The last features are
    concatenated with the raw input and reduced by a 1×1×1 convolution followed by ``tanh``;
    the output is ``input + tanh(·)`` (a residual correction bounded to ±1).

    With ``base_width=w`` the encoder widths are ``w, 2w, 4w, 8w`` and the bottleneck has
    ``16w`` channels; ``w=16`` is the published network (6,532,098 parameters).

    Parameters
    ----------
    base_width : int, default=16
        Number of channels of the first level; smaller values give much smaller and faster
        networks (the parameter count scales roughly with ``base_width ** 2``).
    in_channels : int, default=1
        Number of input channels. The output has one channel, the residual is added to the
        first input channel.

    Notes
    -----
    Input: a float tensor of shape ``(N, in_channels, D, H, W)`` with ``D``, ``H`` and ``W``
    multiples of 16 (for instance 160×192×160), on the network scale ``x / 500 - 1`` of
    median-normalized intensities, with the background set to 0 by the caller. Output: a
    tensor of shape ``(N, 1, D, H, W)`` on the same scale; the caller multiplies it by the
    brain mask. Weights are Glorot-uniform, biases zero, norm scales 1 and offsets 0.

    :meth:`layers_in_order` lists the layers in forward order, which is also the order of the
    layers of the Keras original (used by
    :func:`harmonix.iguane.model.keras_weights.load_keras_generator_weights`).

    Without autograd (:func:`torch.inference_mode` or :func:`torch.no_grad`), :meth:`forward`
    runs a fused pass (:mod:`harmonix.iguane._kernels.fused_inference`: channels-last maps,
    ReLU and norm fused in place, no concatenation copies, full-resolution convolutions in depth
    slabs, maps freed early) that computes the same function with less CPU time and memory
    than the plain pass (measured in ``benchmarks/results/iguane_inference.md``); set the
    attribute ``fused_inference = False`` on an instance to always run the plain pass. The
    two differ by float rounding only (summation order): in float32 the outputs agree within
    about 1e-4 (mean 5e-6), and both are as close to a float64 computation; in float64 they
    agree within 1e-12.

    Attributes
    ----------
    fused_inference : bool
        Whether :meth:`forward` takes the fused pass when autograd is off (class default
        ``True``). Not part of the ``state_dict``.
    """

    #: Take the fused pass when autograd is off (see the class notes).
    fused_inference: bool = True

    def __init__(self, base_width: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        w, self.in_channels = _check_widths(base_width, in_channels)
        self.base_width = w
        widths = [w * 2**i for i in range(_N_DOWN)]  # w, 2w, 4w, 8w

        self.enc_convs = nn.ModuleList()
        self.downs = nn.ModuleList()
        c_in = self.in_channels
        for c in widths:
            self.enc_convs.append(_conv_block(c_in, c))
            self.downs.append(_down_block(c))
            c_in = c
        self.bottleneck = _conv_block(c_in, 2 * c_in)
        c_in = 2 * c_in

        self.ups = nn.ModuleList()
        self.dec_convs = nn.ModuleList()
        for c in reversed(widths):
            self.ups.append(_up_block(c_in, c))
            self.dec_convs.append(_conv_block(2 * c, c))
            c_in = c
        self.out_conv = OneDNNConv3d(c_in + self.in_channels, 1, 1)
        glorot_init(self)

    def layers_in_order(self) -> list[nn.Module]:
        """Convolutions and norms in the order the forward pass applies them.

        Returns
        -------
        list of torch.nn.Module
            ``Conv3d``, ``ConvTranspose3d`` and :class:`MADInstanceNorm3d` modules: for each
            block its convolution then its norm, encoder to decoder, ending with the final
            1×1×1 convolution. Every parameter of the network belongs to exactly one of them.
        """
        blocks: list[_ConvReLUNorm] = []
        for conv, down in zip(self.enc_convs, self.downs):
            blocks += [conv, down]
        blocks.append(self.bottleneck)
        for up, conv in zip(self.ups, self.dec_convs):
            blocks += [up, conv]
        layers: list[nn.Module] = []
        for block in blocks:
            layers += [block.conv, block.norm]
        layers.append(self.out_conv)
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Harmonize a batch of volumes.

        Parameters
        ----------
        x : torch.Tensor of shape (N, in_channels, D, H, W)
            Volumes on the network scale (``x / 500 - 1``, background set to 0), with
            ``D``, ``H``, ``W`` multiples of 16.

        Returns
        -------
        torch.Tensor of shape (N, 1, D, H, W)
            ``x[:, :1] + tanh(correction)``, on the network scale.

        Raises
        ------
        ValueError
            If ``x`` is not 5-D with ``in_channels`` channels, or a spatial size is not a
            multiple of 16.
        """
        _check_input(x, self.in_channels, "Generator3D")
        spatial = tuple(x.shape[2:])
        if any(s % SIZE_MULTIPLE for s in spatial):
            raise ValueError(
                f"Generator3D needs spatial sizes that are multiples of {SIZE_MULTIPLE}, "
                f"got {spatial}; crop or pad the volume (e.g. to 160x192x160)."
            )
        if self.fused_inference and not torch.is_grad_enabled():
            return self._forward_fused(x)
        return self._forward_plain(x)

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable forward pass, one module after the other."""
        skips = []
        h = x
        for conv, down in zip(self.enc_convs, self.downs):
            h = conv(h)
            skips.append(h)
            h = down(h)
        h = self.bottleneck(h)
        for up, conv in zip(self.ups, self.dec_convs):
            h = conv(torch.cat((up(h), skips.pop()), dim=1))
        h = self.out_conv(torch.cat((h, x), dim=1))
        return x[:, :1] + torch.tanh(h)

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The same function as :meth:`_forward_plain`, for use without autograd
        (:func:`harmonix.iguane._kernels.fused_inference.generator_forward_fused`)."""
        return generator_forward_fused(self, x)


class PatchDiscriminator3D(nn.Module):
    """3-D PatchGAN discriminator of IGUANe.

    The input is padded by one voxel on every side with the value -1 (the background on the
    network scale), then: 4×4×4 convolution, stride 2, no padding, no bias → LeakyReLU(0.2)
    → 4×4×4 convolution (``2·base_width``), stride 2, padding 1, no bias →
    :class:`MADInstanceNorm3d` → LeakyReLU(0.2) → same with ``4·base_width`` channels →
    3×3×3 convolution to one channel, padding 1, with bias, linear output (LSGAN scores).

    Each spatial size ``s`` becomes ``s // 8``: a 160×192×160 volume gives a 20×24×20 map.

    Parameters
    ----------
    base_width : int, default=64
        Channels of the first convolution; ``64`` is the published network
        (2,633,217 parameters).
    in_channels : int, default=1
        Number of input channels.
    instance_norm : bool, default=True
        The two MAD instance normalizations of the published network; False leaves them
        out, so that the scores can use each volume's own contrast, blur and noise level
        (which the normalizations divide away): see
        ``benchmarks/results/discriminator_probe_1500.md``.

    Notes
    -----
    Input: shape ``(N, in_channels, D, H, W)`` with every spatial size at least 8, on the
    network scale (``x / 500 - 1``). Weights are Glorot-uniform, the last bias zero.
    """

    def __init__(
        self, base_width: int = 64, in_channels: int = 1, instance_norm: bool = True
    ) -> None:
        super().__init__()
        w, self.in_channels = _check_widths(base_width, in_channels)
        self.base_width = w
        self.conv1 = OneDNNConv3d(self.in_channels, w, 4, stride=2, padding=0, bias=False)
        self.conv2 = OneDNNConv3d(w, 2 * w, 4, stride=2, padding=1, bias=False)
        self.conv3 = OneDNNConv3d(2 * w, 4 * w, 4, stride=2, padding=1, bias=False)
        self.norm2: nn.Module = MADInstanceNorm3d(2 * w) if instance_norm else nn.Identity()
        self.norm3: nn.Module = MADInstanceNorm3d(4 * w) if instance_norm else nn.Identity()
        self.out_conv = OneDNNConv3d(4 * w, 1, 3, stride=1, padding=1)
        glorot_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score every patch of ``x``.

        Parameters
        ----------
        x : torch.Tensor of shape (N, in_channels, D, H, W)
            Volumes on the network scale, each spatial size at least 8.

        Returns
        -------
        torch.Tensor of shape (N, 1, D // 8, H // 8, W // 8)
            Unbounded patch scores (real → 1, fake → 0 under the LSGAN loss).

        Raises
        ------
        ValueError
            If ``x`` is not 5-D with ``in_channels`` channels or a spatial size is below 8.
        """
        _check_input(x, self.in_channels, "PatchDiscriminator3D")
        if min(x.shape[2:]) < 8:
            raise ValueError(
                f"PatchDiscriminator3D needs spatial sizes of at least 8, "
                f"got {tuple(x.shape[2:])}."
            )
        h = F.pad(x, (1, 1, 1, 1, 1, 1), mode="constant", value=-1.0)
        h = F.leaky_relu(self.conv1(h), 0.2, inplace=True)
        h = F.leaky_relu(self.norm2(self.conv2(h)), 0.2, inplace=True)
        h = F.leaky_relu(self.norm3(self.conv3(h)), 0.2, inplace=True)
        return self.out_conv(h)
