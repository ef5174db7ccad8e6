"""The generator's fused inference pass and its CPU kernels.

Without autograd, :class:`~harmonix.iguane.networks.Generator3D` runs
:func:`generator_forward_fused`: the same function as its plain pass, with far less memory
traffic and memory. Channels-last feature maps throughout; ReLU and the MAD instance norm
fused and in place (:func:`relu_mad_norm_`); full-resolution convolutions computed in
depth slabs; convolutions that always take oneDNN on CPU (:func:`conv3d`). Speed and
memory are measured in ``benchmarks/results/iguane_inference.md``.

These are functions on tensors and on the generator's modules; the modules themselves are
in :mod:`harmonix.iguane.networks`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "conv3d",
    "generator_forward_fused",
    "norms_on_call_threads",
    "onednn_applies",
    "relu_mad_norm_",
]

_CL = torch.channels_last_3d

#: Size of the slabs the fused normalization works on, on CPU: small enough to stay in the
#: cache between the operations on one slab, large enough to keep the per-operation overhead
#: low. On other devices a tensor is processed whole.
_CPU_CHUNK_BYTES = 2 << 20
#: Size of the depth slabs in which the full-resolution convolutions are computed on CPU
#: (of their ``base_width``-channel output): small temporaries, which the allocator reuses
#: instead of faulting in fresh pages. On other devices the whole depth is one slab.
_CPU_SLAB_BYTES = 16 << 20


#: Whether the fused normalizations run on one thread (see :func:`norms_on_call_threads`).
_NORMS_SINGLE_THREAD: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "harmonix_norms_single_thread", default=True
)


@contextlib.contextmanager
def norms_on_call_threads(enabled: bool = True) -> Iterator[None]:
    """Let the fused normalizations of the enclosed passes use the call's threads.

    By default they run on one thread (see :func:`_single_intraop_thread`); on an idle
    machine the call's threads make a full-size pass about 5 % faster, on a busy one
    they make it several times slower. :func:`~harmonix.iguane.inference.harmonize_volume`
    enables this when it finds no busy neighbour, the trainer for its no-grad generator
    passes (whose thread count already leaves busy cores out).

    Parameters
    ----------
    enabled : bool, default=True
        False leaves the default (one thread).
    """
    token = _NORMS_SINGLE_THREAD.set(not enabled)
    try:
        yield
    finally:
        _NORMS_SINGLE_THREAD.reset(token)


@contextlib.contextmanager
def _single_intraop_thread(device_type: str) -> Iterator[None]:
    """Run the enclosed CPU operations on the calling thread only (unless
    :func:`norms_on_call_threads` is in effect).

    The fused normalization issues many small memory-bound operations; with several
    OpenMP threads each one ends in a barrier, and on a busy machine the spinning threads
    cost far more CPU time than they gain. ``torch.set_num_threads`` sets the OpenMP
    thread count of the calling thread; it is restored on exit.
    """
    if device_type != "cpu" or not _NORMS_SINGLE_THREAD.get():
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


def relu_mad_norm_(
    x: torch.Tensor, norm: nn.Module, out: torch.Tensor | None = None
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
        return target.copy_(relu_mad_norm_(x.contiguous(memory_format=_CL), norm))
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


def conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int, int],
    stride: int = 1,
) -> torch.Tensor:
    """``F.conv3d`` that always takes oneDNN for channels-last float32 inputs on CPU.

    PyTorch sends thin inputs (``N·C·D·H <= 20480``, e.g. the slabs of the first
    convolution or the 12×14×12 maps of a 2 mm volume) to its slow reference kernel;
    :func:`torch.mkldnn_convolution` skips that heuristic. Any other case (autocast,
    float64, other devices, no oneDNN) goes through ``F.conv3d``.
    """
    if onednn_applies(x, weight) and x.is_contiguous(memory_format=_CL):
        try:
            return torch.mkldnn_convolution(
                x, weight, bias, list(padding), [stride] * 3, [1, 1, 1], 1
            )
        except RuntimeError:  # pragma: no cover - unexpected oneDNN limitation
            pass
    if bf16_single_voxel_output(x, weight, [stride] * 3, padding):
        return conv3d_float32(x, weight, bias, stride=stride, padding=padding)
    return F.conv3d(x, weight, bias, stride=stride, padding=padding)


def bf16_single_voxel_output(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, ...] | list[int],
    padding: tuple[int, ...] | list[int],
    dilation: tuple[int, ...] | list[int] = (1, 1, 1),
) -> bool:
    """Whether a CPU bfloat16 convolution would hit oneDNN's single-voxel strided bug.

    On CPUs with native bfloat16 (avx512_bf16, AMX), the oneDNN bundled with PyTorch
    computes wrong bfloat16 3-D convolutions when an output axis has size 1 and the
    stride is above 1 (pytorch/pytorch#169688): training a generator on volumes whose
    coarsest level is one voxel wide then gives NaN after the first update. Such
    convolutions are computed in float32 instead (their output is tiny, so the cost is
    nil). True when ``x`` is on the CPU, the convolution runs in bfloat16 (a bfloat16
    input or CPU autocast to bfloat16), some stride is above 1 and the output has an
    axis of size 1.
    """
    if x.device.type != "cpu" or x.dim() != 5:
        return False
    autocast_bf16 = (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
    if not (autocast_bf16 or x.dtype == torch.bfloat16 or weight.dtype == torch.bfloat16):
        return False
    if max(stride) <= 1:
        return False
    kernel = weight.shape[2:]
    out = [
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation)
    ]
    return min(out) == 1


def conv3d_float32(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, **kwargs: object
) -> torch.Tensor:
    """``F.conv3d`` in float32 with CPU autocast off (see :func:`bf16_single_voxel_output`)."""
    with torch.autocast("cpu", enabled=False):
        return F.conv3d(
            x.float(), weight.float(), None if bias is None else bias.float(), **kwargs
        )


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
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


def _conv_module(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Apply a ``Conv3d`` module through :func:`conv3d` on a channels-last input."""
    return conv3d(
        x.contiguous(memory_format=_CL), conv.weight, conv.bias, conv.padding, conv.stride[0]
    )


def _first_conv_slabs(conv: nn.Conv3d, x: torch.Tensor, slab: int) -> torch.Tensor:
    """The first 3×3×3 convolution of the generator (stride 1, padding 1), slab by slab.

    Computed ``slab`` depth slices at a time into a channels-last result, so that no
    full-size temporary is made. The input has few channels, which oneDNN handles poorly
    (one channel especially): the three taps along the last axis become channels (the input
    is expanded to ``3·C`` shifted copies, one slab at a time) and the kernel becomes
    3×3×1, which oneDNN runs faster.
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
        out = conv3d(x3, weight, conv.bias, (0, 1, 0))
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
        out = conv3d(piece, conv.weight, conv.bias, (0, 1, 1))
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
        out = conv3d(piece, conv.weight, conv.bias, (0, 1, 1), stride=2)
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
    ``slab`` input slices is taken with that halo (a zero slice beyond the volume's faces,
    which adds nothing) and convolved with a depth padding of 3, which crops the result to
    exactly those output slices: no output slice is computed twice.
    """
    n, _, d, h, w = src.shape
    result = None
    for a in range(0, d, slab):
        b = min(d, a + slab)
        lo, hi = max(a - 1, 0), min(b + 1, d)
        piece = _depth_slab(src, lo, hi, int(a == 0), int(b == d))
        out = F.conv_transpose3d(piece, conv.weight, conv.bias, stride=2, padding=(3, 1, 1))
        del piece
        if result is None:
            result = torch.empty(
                (n, conv.out_channels, 2 * d, *out.shape[3:]),
                dtype=out.dtype,
                device=src.device,
                memory_format=_CL,
            )
        result[:, :, 2 * a : 2 * b].copy_(out)
    return result


def generator_forward_fused(gen: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:class:`~harmonix.iguane.networks.Generator3D` ``gen`` on ``x``, without autograd.

    The same function as the generator's plain, differentiable pass.

    Channels-last feature maps throughout; ReLU and norm fused and in place
    (:func:`relu_mad_norm_`); every map is released as soon as it has been used.

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
    enc0, down0 = gen.enc_convs[0], gen.downs[0]
    up0, dec0 = gen.ups[-1], gen.dec_convs[-1]
    c0 = enc0.conv.out_channels
    n, _, d, hh, ww = x.shape
    if x.device.type == "cpu":  # slabs of about _CPU_SLAB_BYTES of c0-channel maps
        per_slice = n * c0 * hh * ww * x.element_size()
        slab = max(2, _CPU_SLAB_BYTES // max(1, per_slice))
    else:
        slab = d
    slab_half = max(1, slab // 2)

    # full resolution, encoder
    skip0 = relu_mad_norm_(_first_conv_slabs(enc0.conv, x, slab), enc0.norm)
    h = relu_mad_norm_(_down_conv_slabs(down0.conv, skip0, slab_half), down0.norm)

    skips = []
    for block, down in zip(gen.enc_convs[1:], gen.downs[1:]):
        h = relu_mad_norm_(_conv_module(block.conv, h), block.norm)
        nxt = relu_mad_norm_(_conv_module(down.conv, h), down.norm)
        c = h.shape[1]
        buf = _empty_like_layout(h, 2 * c, _CL)
        buf[:, c:].copy_(h)
        skips.append(buf)
        h = nxt
        del nxt, buf
    h = relu_mad_norm_(_conv_module(gen.bottleneck.conv, h), gen.bottleneck.norm)
    for up, block in zip(gen.ups[:-1], gen.dec_convs[:-1]):
        buf = skips.pop()
        u = up.conv(h)
        del h
        relu_mad_norm_(u, up.norm, out=buf[:, : u.shape[1]])
        del u
        h = relu_mad_norm_(_conv_module(block.conv, buf), block.norm)
        del buf

    # full resolution, decoder: the last convolution overwrites the upsampled maps
    u = relu_mad_norm_(_up_conv_slabs(up0.conv, h, slab_half), up0.norm)
    del h
    h = _concat_conv_slabs(dec0.conv, u, skip0, slab)
    del u, skip0
    h = relu_mad_norm_(h, dec0.norm)
    return _output_fused(gen, h, x, slab)


def _output_fused(
    gen: nn.Module, h: torch.Tensor, x: torch.Tensor, slab: int | None = None
) -> torch.Tensor:
    """``x[:, :1] + tanh(out_conv(cat(h, x)))`` without the concatenation.

    The 1×1×1 convolution to one channel is a matrix-vector product over the features
    (``slab`` depth slices at a time; ``h`` may be a channel slice of a buffer) plus a
    weighted sum of the input channels: oneDNN has no fast kernel for one output
    channel. The sum and ``tanh`` are computed in the dtype of ``x``.
    """
    n, k, d = h.shape[:3]
    weight = gen.out_conv.weight.view(-1)
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
        if gen.out_conv.bias is not None:
            z.add_(gen.out_conv.bias.to(x.dtype))
        return z.tanh_().add_(x[:, :1])
