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

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Generator3D", "MADInstanceNorm3d", "PatchDiscriminator3D"]

#: Number of times the generator halves each spatial size.
_N_DOWN = 4
#: Spatial sizes given to the generator must be multiples of this.
SIZE_MULTIPLE = 2**_N_DOWN

_SPATIAL_DIMS = (2, 3, 4)
_CL = torch.channels_last_3d

#: Size of the slabs the fused normalization works on, on CPU: small enough to stay in the
#: cache between the operations on one slab, large enough to keep the per-operation overhead
#: low. On other devices a tensor is processed whole.
_CPU_CHUNK_BYTES = 2 << 20
#: Size of the depth slabs in which the full-resolution convolutions are computed on CPU
#: (of their ``base_width``-channel output): small temporaries, which the allocator reuses
#: instead of faulting in fresh pages. On other devices the whole depth is one slab.
_CPU_SLAB_BYTES = 16 << 20


@contextlib.contextmanager
def _single_intraop_thread(device_type: str) -> Iterator[None]:
    """Run the enclosed CPU operations on the calling thread only.

    The fused normalization issues many small memory-bound operations; with several
    OpenMP threads each one ends in a barrier, and on a busy machine the spinning threads
    cost far more than they gain (on 2 loaded cores: 1.5 s instead of 3 s of CPU time for a
    96×112×96 pass). ``torch.set_num_threads`` sets the OpenMP thread count of the calling
    thread; it is restored on exit.
    """
    if device_type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Disable autocast on ``device_type`` (a no-op for devices without autocast)."""
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # e.g. the "meta" device
        return contextlib.nullcontext()


def _is_channels_innermost(t: torch.Tensor) -> bool:
    """Whether the channels of an ``(N, C, D, H, W)`` tensor are its innermost axis.

    True for channels-last tensors and for channel slices of them (such as one half of a
    concatenation buffer); with one channel the plain ``(N, C, V)`` view is used.
    """
    return t.shape[1] > 1 and t.stride(1) == 1


def _rows(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A 3-D view of an ``(N, C, D, H, W)`` tensor: ``(N, V, C)`` or ``(N, C, V)``.

    ``V = D·H·W``; raises ``RuntimeError`` when ``t`` cannot be viewed that way.
    """
    n, c = t.shape[:2]
    if channels_last:
        return t.permute(0, 2, 3, 4, 1).view(n, -1, c)
    return t.view(n, c, -1)


def _relu_mad_norm_(
    x: torch.Tensor, norm: MADInstanceNorm3d, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``norm(relu(x))`` without autograd, overwriting ``x`` (and writing ``out`` if given).

    Three passes over memory instead of about ten, and no full-size temporary: ReLU and the
    channel sums (pass 1), the sums of absolute deviations (pass 2), the affine transform
    (pass 3); on CPU each pass goes slab by slab, so that the operations of one slab run on
    data in the cache. Statistics are accumulated in float32 (float64 for a float64 input)
    within a slab and in float64 across slabs on CPU; the result is rounded once to the
    dtype of ``x``. On CPU these small operations run on one thread (see
    :func:`_single_intraop_thread`). ``x`` may be a channel slice of a channels-last buffer.
    Only for use without autograd: ``x`` is modified in place.
    """
    n, c = x.shape[:2]
    target = x if out is None else out
    channels_last = _is_channels_innermost(x)
    try:
        xr = _rows(x, channels_last)
        outr = _rows(target, channels_last)
    except RuntimeError:  # a layout without a rows view: work on a copy, then copy back
        return target.copy_(_relu_mad_norm_(x.contiguous(memory_format=_CL), norm))
    sdim = 1 if channels_last else 2
    nvox = xr.shape[sdim]
    acc = torch.promote_types(x.dtype, torch.float32)
    if x.device.type == "cpu":
        step = max(1, _CPU_CHUNK_BYTES // max(1, n * c * x.element_size()))
        total = torch.float64
    else:
        step = nvox
        total = acc
    chunks = list(zip(xr.split(step, sdim), outr.split(step, sdim)))
    with _autocast_off(x.device.type), _single_intraop_thread(x.device.type):
        sums = torch.zeros((n, c), dtype=total, device=x.device)
        for xc, _ in chunks:
            xc.clamp_(min=0)
            sums += xc.sum(sdim, dtype=acc)
        mean = (sums / nvox).to(acc).unsqueeze(sdim)
        sums.zero_()
        for xc, _ in chunks:
            sums += (xc - mean).abs_().sum(sdim)
        mad = (sums / nvox).to(acc)
        scale = (norm.weight.to(acc) / (mad + norm.eps)).unsqueeze(sdim)
        shift = norm.bias.to(acc).expand(n, c).unsqueeze(sdim)
        for xc, oc in chunks:
            torch.addcmul(shift, xc - mean, scale, out=oc)
    return target


def _empty_like_layout(
    t: torch.Tensor, channels: int, memory_format: torch.memory_format
) -> torch.Tensor:
    return torch.empty(
        (t.shape[0], channels, *t.shape[2:]),
        dtype=t.dtype,
        device=t.device,
        memory_format=memory_format,
    )


def _depth_slab(t: torch.Tensor, lo: int, hi: int, front: int, back: int) -> torch.Tensor:
    """``t[:, :, lo:hi]`` as a channels-last tensor, zero-padded by ``front``/``back`` slices
    along the depth axis (no copy when ``t`` is channels-last and nothing is padded)."""
    piece = t[:, :, lo:hi]
    if not (front or back):
        return piece.contiguous(memory_format=_CL)
    n, c, d, h, w = piece.shape
    out = torch.empty(
        (n, c, d + front + back, h, w), dtype=t.dtype, device=t.device, memory_format=_CL
    )
    out[:, :, :front].zero_()
    out[:, :, front + d :].zero_()
    out[:, :, front : front + d].copy_(piece)
    return out


def _conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int, int],
    stride: int = 1,
) -> torch.Tensor:
    """``F.conv3d`` that always takes oneDNN for channels-last float32 inputs on CPU.

    PyTorch sends thin inputs (``N·C·D·H <= 20480``, e.g. the slabs of the first
    convolution or the 12×14×12 maps of a 2 mm volume) to its slow reference kernel, about
    three times slower here; :func:`torch.mkldnn_convolution` skips that heuristic. Any other
    case (autocast, float64, other devices, no oneDNN) goes through ``F.conv3d``.
    """
    if _onednn_applies(x, weight) and x.is_contiguous(memory_format=_CL):
        try:
            return torch.mkldnn_convolution(
                x, weight, bias, list(padding), [stride] * 3, [1, 1, 1], 1
            )
        except RuntimeError:  # pragma: no cover - unexpected oneDNN limitation
            pass
    return F.conv3d(x, weight, bias, stride=stride, padding=padding)


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`torch.mkldnn_convolution` can replace ``F.conv3d`` (CPU float32)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and hasattr(torch, "mkldnn_convolution")
    )


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that takes oneDNN for CPU float32 inputs, in training too.

    PyTorch's heuristic sends one-volume batches of thin maps to its reference kernel,
    whose backward pass is slow. Forcing oneDNN makes a training update of the CPU
    configuration (width 4, 32³ patches, batch 1, one thread) about 1.5× faster, and was
    never slower in our measurements (widths 4 and 16, 32³ to 64³ inputs, batch 1-2, 1-2
    threads). Same parameters and outputs as ``nn.Conv3d`` (to float32 rounding); any
    other case (autocast, float64, GPUs) is ``nn.Conv3d``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            _onednn_applies(x, self.weight)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        ):
            return torch.mkldnn_convolution(
                x,
                self.weight,
                self.bias,
                list(self.padding),
                list(self.stride),
                list(self.dilation),
                self.groups,
            )
        return super().forward(x)


def _conv_module(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Apply a ``Conv3d`` module through :func:`_conv3d` on a channels-last input."""
    return _conv3d(
        x.contiguous(memory_format=_CL), conv.weight, conv.bias, conv.padding, conv.stride[0]
    )


def _first_conv_slabs(conv: nn.Conv3d, x: torch.Tensor, slab: int) -> torch.Tensor:
    """The first 3×3×3 convolution of the generator (stride 1, padding 1), slab by slab.

    Computed ``slab`` depth slices at a time into a channels-last result, so that no
    full-size temporary is made. The input has few channels, which oneDNN handles poorly
    (a few GFLOP/s for one channel): the three taps along the last axis become channels (the
    input is expanded to ``3·C`` shifted copies, one slab at a time) and the kernel becomes
    3×3×1, which runs about twice as fast.
    """
    n, cin, d, h, w = x.shape
    cout = conv.out_channels
    weight = conv.weight.permute(0, 1, 4, 2, 3).reshape(cout, 3 * cin, 3, 3, 1)
    result = None
    for a in range(0, d, slab):
        b = min(d, a + slab)
        lo, hi = max(a - 1, 0), min(b + 1, d)
        # zero padding: one slice in depth at the volume's faces, one voxel in width
        piece = F.pad(x[:, :, lo:hi], (1, 1, 0, 0, int(a == 0), int(b == d)))
        taps = piece.unfold(-1, 3, 1)  # (n, cin, depth, h, w, 3)
        x3 = torch.empty(
            (n, 3 * cin, *taps.shape[2:5]), dtype=x.dtype, device=x.device, memory_format=_CL
        )
        # x3[:, 3 * ci + k, ..., j] = x[:, ci, ..., j + k - 1]
        x3.permute(0, 2, 3, 4, 1).unflatten(-1, (cin, 3)).copy_(taps.permute(0, 2, 3, 4, 1, 5))
        del piece, taps
        out = _conv3d(x3, weight, conv.bias, (0, 1, 0))
        del x3
        if result is None:
            result = torch.empty(
                (n, cout, d, h, w), dtype=out.dtype, device=x.device, memory_format=_CL
            )
        result[:, :, a:b].copy_(out)
    return result


def _concat_conv_slabs(
    conv: nn.Conv3d, first: torch.Tensor, second: torch.Tensor, slab: int
) -> torch.Tensor:
    """``conv(cat(first, second))`` for a 3×3×3 convolution (stride 1, padding 1), in place.

    The concatenation is made one slab at a time, in a reused slab buffer, and the result
    overwrites ``first`` (which must have ``conv.out_channels`` channels): each slab's
    result is written once the next slab has been computed, when the rows it overwrites are
    no longer needed. Returns ``first``.
    """
    n, c1, d, h, w = first.shape
    c2 = second.shape[1]
    dtype = torch.promote_types(first.dtype, second.dtype)
    work = torch.empty(
        (n, c1 + c2, min(slab, d) + 2, h, w), dtype=dtype, device=first.device, memory_format=_CL
    )
    pending = None
    for a in range(0, d, slab):
        b = min(d, a + slab)
        lo, hi = max(a - 1, 0), min(b + 1, d)
        front, back = int(a == 0), int(b == d)
        piece = work[:, :, : hi - lo + front + back]
        if front:
            piece[:, :, 0].zero_()
        if back:
            piece[:, :, -1].zero_()
        piece[:, :c1, front : front + hi - lo].copy_(first[:, :, lo:hi])
        piece[:, c1:, front : front + hi - lo].copy_(second[:, :, lo:hi])
        out = _conv3d(piece, conv.weight, conv.bias, (0, 1, 1))
        if pending is not None:
            first[:, :, pending[0] : pending[1]].copy_(pending[2])
        pending = (a, b, out)
    if pending is not None:
        first[:, :, pending[0] : pending[1]].copy_(pending[2])
    return first


def _down_conv_slabs(conv: nn.Conv3d, src: torch.Tensor, slab: int) -> torch.Tensor:
    """``conv(src)`` for a 4×4×4 convolution with stride 2 and padding 1, slab by slab.

    ``src`` may be a channel slice of a buffer; only one slab of it is copied at a time.
    ``slab`` counts output slices.
    """
    n, _, d, h, w = src.shape
    d_out = d // 2
    out_all = None
    for a in range(0, d_out, slab):
        b = min(d_out, a + slab)
        lo, hi = max(2 * a - 1, 0), min(2 * b + 1, d)
        piece = _depth_slab(src, lo, hi, int(2 * a - 1 < 0), int(2 * b + 1 > d))
        out = _conv3d(piece, conv.weight, conv.bias, (0, 1, 1), stride=2)
        del piece
        if out_all is None:
            out_all = torch.empty(
                (n, conv.out_channels, d_out, *out.shape[3:]),
                dtype=out.dtype,
                device=src.device,
                memory_format=_CL,
            )
        out_all[:, :, a:b].copy_(out)
    return out_all


def _up_conv_slabs(conv: nn.ConvTranspose3d, src: torch.Tensor, slab: int) -> torch.Tensor:
    """``conv(src)`` for a 4×4×4 transposed convolution with stride 2 and padding 1.

    Output slices ``2a .. 2b - 1`` depend on the input slices ``a - 1 .. b``; each slab of
    ``slab`` input slices is convolved without depth padding and the matching output slices
    are copied into the channels-last result.
    """
    n, _, d, h, w = src.shape
    result = None
    for a in range(0, d, slab):
        b = min(d, a + slab)
        lo, hi = max(a - 1, 0), min(b + 1, d)
        piece = src[:, :, lo:hi].contiguous(memory_format=_CL)
        out = F.conv_transpose3d(piece, conv.weight, conv.bias, stride=2, padding=(0, 1, 1))
        del piece
        if result is None:
            result = torch.empty(
                (n, conv.out_channels, 2 * d, *out.shape[3:]),
                dtype=out.dtype,
                device=src.device,
                memory_format=_CL,
            )
        # local output slice j is global slice j + 2 * lo - 1
        first = 2 * (a - lo) + 1
        result[:, :, 2 * a : 2 * b].copy_(out[:, :, first : first + 2 * (b - a)])
    return result


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
    the result is returned in the input's dtype.
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
    return _ConvReLUNorm(Conv3d(in_channels, out_channels, 3, stride=1, padding=1))


def _down_block(channels: int) -> _ConvReLUNorm:
    return _ConvReLUNorm(Conv3d(channels, channels, 4, stride=2, padding=1))


def _up_block(in_channels: int, out_channels: int) -> _ConvReLUNorm:
    return _ConvReLUNorm(nn.ConvTranspose3d(in_channels, out_channels, 4, stride=2, padding=1))


def _glorot_init(module: nn.Module) -> None:
    """Glorot/Xavier-uniform weights and zero biases for every convolution of ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


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
    :func:`harmonix.iguane.keras_weights.load_keras_generator_weights`).

    Without autograd (:func:`torch.inference_mode` or :func:`torch.no_grad`), :meth:`forward`
    runs a fused pass (channels-last maps, ReLU and norm fused in place, no concatenation
    copies, full-resolution convolutions in depth slabs, maps freed early) that computes the
    same function with about half the CPU time and half the memory of the plain pass (see
    :meth:`_forward_fused`); set the attribute ``fused_inference = False`` on an instance to
    always run the plain pass. The two differ by float rounding only (summation order): in
    float32 the outputs agree within about 1e-4 (mean 5e-6), and both are as close to a
    float64 computation; in float64 they agree within 1e-12.

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
        if int(base_width) < 1:
            raise ValueError(f"base_width must be a positive integer, got {base_width!r}.")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}.")
        self.base_width = w = int(base_width)
        self.in_channels = int(in_channels)
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
        self.out_conv = Conv3d(c_in + self.in_channels, 1, 1)
        _glorot_init(self)

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
        """The same function as :meth:`_forward_plain`, for use without autograd.

        Channels-last feature maps throughout; ReLU and norm fused and in place
        (:func:`_relu_mad_norm_`); every map is released as soon as it has been used.

        Concatenations: below full resolution, the decoder writes its upsampled maps into
        the first half of a buffer whose second half already holds the skip connection, so
        that no ``torch.cat`` copy is made. At full resolution the convolutions run slab by
        slab along the depth axis (``*_slabs`` helpers), with small temporaries that the
        allocator reuses: the concatenation is made one slab at a time and the last decoder
        convolution overwrites the upsampled maps as it goes. With the final 1×1×1
        convolution split into its feature and input parts, the peak memory is about two
        full-resolution ``base_width``-channel maps (0.63 GB at 160×192×160 in float32) plus
        the eighth-size maps.
        """
        enc0, down0 = self.enc_convs[0], self.downs[0]
        up0, dec0 = self.ups[-1], self.dec_convs[-1]
        c0 = enc0.conv.out_channels
        n, _, d, hh, ww = x.shape
        if x.device.type == "cpu":  # slabs of about _CPU_SLAB_BYTES of c0-channel maps
            per_slice = n * c0 * hh * ww * x.element_size()
            slab = max(2, _CPU_SLAB_BYTES // max(1, per_slice))
        else:
            slab = d
        slab_half = max(1, slab // 2)

        # full resolution, encoder
        skip0 = _relu_mad_norm_(_first_conv_slabs(enc0.conv, x, slab), enc0.norm)
        h = _relu_mad_norm_(_down_conv_slabs(down0.conv, skip0, slab_half), down0.norm)

        skips = []
        for block, down in zip(self.enc_convs[1:], self.downs[1:]):
            h = _relu_mad_norm_(_conv_module(block.conv, h), block.norm)
            nxt = _relu_mad_norm_(_conv_module(down.conv, h), down.norm)
            c = h.shape[1]
            buf = _empty_like_layout(h, 2 * c, _CL)
            buf[:, c:].copy_(h)
            skips.append(buf)
            h = nxt
            del nxt, buf
        h = _relu_mad_norm_(_conv_module(self.bottleneck.conv, h), self.bottleneck.norm)
        for up, block in zip(self.ups[:-1], self.dec_convs[:-1]):
            buf = skips.pop()
            u = up.conv(h)
            del h
            _relu_mad_norm_(u, up.norm, out=buf[:, : u.shape[1]])
            del u
            h = _relu_mad_norm_(_conv_module(block.conv, buf), block.norm)
            del buf

        # full resolution, decoder: the last convolution overwrites the upsampled maps
        u = _relu_mad_norm_(_up_conv_slabs(up0.conv, h, slab_half), up0.norm)
        del h
        h = _concat_conv_slabs(dec0.conv, u, skip0, slab)
        del u, skip0
        h = _relu_mad_norm_(h, dec0.norm)
        return self._output_fused(h, x, slab)

    def _output_fused(self, h: torch.Tensor, x: torch.Tensor, slab: int | None = None):
        """``x[:, :1] + tanh(out_conv(cat(h, x)))`` without the concatenation.

        The 1×1×1 convolution to one channel is a matrix-vector product over the features
        (``slab`` depth slices at a time; ``h`` may be a channel slice of a buffer) plus a
        weighted sum of the input channels: oneDNN has no fast kernel for one output
        channel. The sum and ``tanh`` are computed in the dtype of ``x``.
        """
        n, k, d = h.shape[:3]
        weight = self.out_conv.weight.view(-1)
        w_feat = weight[:k]
        channels_last = _is_channels_innermost(h)
        z = torch.empty((n, 1, *h.shape[2:]), dtype=x.dtype, device=x.device)
        slab = d if slab is None else slab
        for a in range(0, d, slab):
            piece = h[:, :, a : a + slab]
            layout = channels_last
            try:
                rows = _rows(piece, layout)
            except RuntimeError:  # an unusual layout: a channels-last copy of the slab
                piece = piece.contiguous(memory_format=_CL)
                layout = _is_channels_innermost(piece)
                rows = _rows(piece, layout)
            zs = torch.matmul(rows, w_feat) if layout else torch.matmul(w_feat, rows)
            z[:, 0, a : a + slab].copy_(zs.view(n, *piece.shape[2:]))
        del h, piece, rows, zs
        with _autocast_off(x.device.type):
            w_in = weight[k:].to(x.dtype)
            for c in range(x.shape[1]):
                z.addcmul_(x[:, c : c + 1], w_in[c])
            if self.out_conv.bias is not None:
                z.add_(self.out_conv.bias.to(x.dtype))
            return z.tanh_().add_(x[:, :1])


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

    Notes
    -----
    Input: shape ``(N, in_channels, D, H, W)`` with every spatial size at least 8, on the
    network scale (``x / 500 - 1``). Weights are Glorot-uniform, the last bias zero.
    """

    def __init__(self, base_width: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        if int(base_width) < 1:
            raise ValueError(f"base_width must be a positive integer, got {base_width!r}.")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}.")
        self.base_width = w = int(base_width)
        self.in_channels = int(in_channels)
        self.conv1 = Conv3d(self.in_channels, w, 4, stride=2, padding=0, bias=False)
        self.conv2 = Conv3d(w, 2 * w, 4, stride=2, padding=1, bias=False)
        self.norm2 = MADInstanceNorm3d(2 * w)
        self.conv3 = Conv3d(2 * w, 4 * w, 4, stride=2, padding=1, bias=False)
        self.norm3 = MADInstanceNorm3d(4 * w)
        self.out_conv = Conv3d(4 * w, 1, 3, stride=1, padding=1)
        _glorot_init(self)

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
