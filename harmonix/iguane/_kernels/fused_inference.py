"""The generator's fused inference pass and its CPU kernels.

Without autograd, :class:`~harmonix.iguane.model.networks.Generator3D` runs
:func:`generator_forward_fused`: the same function as its plain pass, with far less memory
traffic and memory. Channels-last feature maps throughout; ReLU and the MAD instance norm
fused and in place (:func:`relu_mad_norm_`); full-resolution convolutions computed in
depth slabs; convolutions that always take oneDNN on CPU (:func:`conv3d`). Speed and
memory are measured in ``benchmarks/results/iguane_inference.md``.

These are functions on tensors and on the generator's modules; the modules themselves are
in :mod:`harmonix.iguane.model.networks`. The file is a little over 600 lines because the
pass is one algorithm: the slab-wise convolutions, the fused norm and the level
recomputation share private helpers that would otherwise cross module boundaries.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from harmonix.iguane._kernels.reduced_precision import conv3d_float32, needs_float32

__all__ = [
    "conv3d",
    "conv_transpose3d",
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
    machine the call's threads make a full-size pass a little faster, on a busy one
    several times slower (``benchmarks/results/iguane_inference.md``).
    :func:`~harmonix.iguane.inference.harmonize_volume` enables this with
    ``num_threads="auto"`` when it finds no busy neighbour, the trainer for its no-grad
    generator passes. The values do not depend on it (each channel's sums
    are made by one thread).

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
def _single_intraop_thread(device_type: str, always: bool = False) -> Iterator[None]:
    """Run the enclosed CPU operations on the calling thread only (unless
    :func:`norms_on_call_threads` is in effect and not ``always``).

    The fused normalization issues many small memory-bound operations; with several
    OpenMP threads each one ends in a barrier, and on a busy machine the spinning threads
    cost far more CPU time than they gain. ``torch.set_num_threads`` sets the OpenMP
    thread count of the calling thread; it is restored on exit.
    """
    if device_type != "cpu" or not (always or _NORMS_SINGLE_THREAD.get()):
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


def _row_chunks(
    x: torch.Tensor, out: torch.Tensor
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """``x`` and ``out`` as matching chunks of their rows views, and the voxel axis.

    On CPU a chunk holds about ``_CPU_CHUNK_BYTES`` of ``x``; elsewhere the whole map is
    one chunk. Raises ``RuntimeError`` when a tensor has no rows view (see :func:`_rows`).
    """
    n, c = x.shape[:2]
    channels_last = _is_channels_innermost(x)
    xr, outr = _rows(x, channels_last), _rows(out, channels_last)
    sdim = 1 if channels_last else 2
    step = xr.shape[sdim]
    if x.device.type == "cpu":
        step = max(1, _CPU_CHUNK_BYTES // max(1, n * c * x.element_size()))
    return list(zip(xr.split(step, sdim), outr.split(step, sdim))), sdim


def _relu_mad_affine_(
    x: torch.Tensor, norm: nn.Module
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ReLU of ``x`` in place, and the MAD norm of the result as an affine map.

    Returns ``(mean, scale, shift)``, each of shape ``(N, C)``, in float32 (float64 for a
    float64 ``x``): the norm is ``(relu(x) - mean) * scale + shift``
    (:func:`_affine_`). Passes 1 and 2 of :func:`relu_mad_norm_`; ``x`` must have a
    rows view.
    """
    n, c = x.shape[:2]
    chunks, sdim = _row_chunks(x, x)
    nvox = x[0, 0].numel()
    acc = torch.promote_types(x.dtype, torch.float32)
    total = torch.float64 if x.device.type == "cpu" else acc
    # a sum with one output is split between threads (thread-dependent rounding); with
    # several outputs each is summed by one thread: the same values on any thread count
    single = n * c == 1
    with _autocast_off(x.device.type), _single_intraop_thread(x.device.type, single):
        sums = torch.zeros((n, c), dtype=total, device=x.device)
        for xc, _ in chunks:
            xc.clamp_(min=0)
            sums += xc.sum(sdim, dtype=acc)
        mean = (sums / nvox).to(acc)
        sums.zero_()
        for xc, _ in chunks:
            sums += (xc - mean.unsqueeze(sdim)).abs_().sum(sdim)
        mad = (sums / nvox).to(acc)
        scale = norm.weight.to(acc) / (mad + norm.eps)
        shift = norm.bias.to(acc).expand(n, c)
    return mean, scale, shift


def _affine_(
    x: torch.Tensor,
    affine: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(x - mean) * scale + shift`` per sample and channel, into ``out`` (default: ``x``
    itself). Pass 3 of :func:`relu_mad_norm_`; elementwise, so a map and each of its depth
    slabs give the same values."""
    target = x if out is None else out
    chunks, sdim = _row_chunks(x, target)
    mean, scale, shift = (t.unsqueeze(sdim) for t in affine)
    with _autocast_off(x.device.type), _single_intraop_thread(x.device.type):
        for xc, oc in chunks:
            torch.addcmul(shift, xc - mean, scale, out=oc)
    return target


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
    target = x if out is None else out
    try:
        _row_chunks(x, target)
    except RuntimeError:  # a layout without a rows view: work on a copy, then copy back
        return target.copy_(relu_mad_norm_(x.contiguous(memory_format=_CL), norm))
    return _affine_(x, _relu_mad_affine_(x, norm), target)


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
    float64, other devices, no oneDNN) goes through ``F.conv3d``, in float32 where CPU
    reduced precision is unsafe
    (:func:`~harmonix.iguane._kernels.reduced_precision.needs_float32`).
    """
    if onednn_applies(x, weight) and x.is_contiguous(memory_format=_CL):
        try:
            return torch.mkldnn_convolution(
                x, weight, bias, list(padding), [stride] * 3, [1, 1, 1], 1
            )
        except RuntimeError:  # pragma: no cover - unexpected oneDNN limitation
            pass
    if needs_float32(x, weight, [stride] * 3, padding):
        return conv3d_float32(x, weight, bias, stride=stride, padding=padding)
    return F.conv3d(x, weight, bias, stride=stride, padding=padding)


def conv_transpose3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int, int],
    stride: int = 2,
) -> torch.Tensor:
    """``F.conv_transpose3d``, in float32 where CPU reduced precision is unsafe
    (:func:`~harmonix.iguane._kernels.reduced_precision.needs_float32`)."""
    if needs_float32(x, weight, [stride] * 3, padding, transposed=True):
        return conv3d_float32(x, weight, bias, transposed=True, stride=stride, padding=padding)
    return F.conv_transpose3d(x, weight, bias, stride=stride, padding=padding)


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


def _first_conv_slab(conv: nn.Conv3d, x: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Depth slices ``a .. b - 1`` of the generator's first 3×3×3 convolution (stride 1,
    padding 1) of ``x``, channels-last.

    The input has few channels, which oneDNN handles poorly (one channel especially): the
    three taps along the last axis become channels (the slab of the input is expanded to
    ``3·C`` shifted copies) and the kernel becomes 3×3×1, which oneDNN runs faster.
    """
    n, cin, d = x.shape[:3]
    cout = conv.out_channels
    weight = conv.weight.permute(0, 1, 4, 2, 3).reshape(cout, 3 * cin, 3, 3, 1)
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
    return conv3d(x3, weight, conv.bias, (0, 1, 0))


def _first_conv_slabs(conv: nn.Conv3d, x: torch.Tensor, slab: int) -> torch.Tensor:
    """The generator's first convolution of ``x``, ``slab`` depth slices at a time
    (:func:`_first_conv_slab`), into a channels-last result: no full-size temporary."""
    n, _, d, h, w = x.shape
    result = None
    for a in range(0, d, slab):
        b = min(d, a + slab)
        out = _first_conv_slab(conv, x, a, b)
        if result is None:
            result = torch.empty(
                (n, out.shape[1], d, h, w), dtype=out.dtype, device=x.device, memory_format=_CL
            )
        result[:, :, a:b].copy_(out)
    return result


class _RecomputedLevel:
    """The generator's first level (convolution, ReLU, norm) of ``x``, recomputed one
    depth slab at a time, so that the fused pass need not keep that full-resolution map
    from the encoder to the decoder.

    The slabs are those of :func:`_first_conv_slabs` and the norm's affine map is the
    encoder's (``affine``, from :func:`_relu_mad_affine_`), applied slab by slab as the
    encoder applies it (:func:`_normalize_slabs`): the rows equal the encoder's, bit for
    bit. Calling the object with ``(lo, hi)`` returns depth slices ``lo .. hi - 1`` as a
    list of pieces; a slab is computed once while consecutive ranges are asked for.
    """

    def __init__(
        self,
        conv: nn.Conv3d,
        x: torch.Tensor,
        affine: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        slab: int,
        dtype: torch.dtype,
    ) -> None:
        self.conv, self.x, self.affine, self.slab = conv, x, affine, slab
        self.channels, self.dtype = conv.out_channels, dtype
        self._cache: dict[int, torch.Tensor] = {}

    def _slab(self, k: int) -> torch.Tensor:
        if k not in self._cache:
            a = k * self.slab
            b = min(self.x.shape[2], a + self.slab)
            out = _first_conv_slab(self.conv, self.x, a, b).clamp_(min=0)
            self._cache[k] = _affine_(out, self.affine)
        return self._cache[k]

    def __call__(self, lo: int, hi: int) -> list[torch.Tensor]:
        first, last = lo // self.slab, (hi - 1) // self.slab
        for k in [k for k in self._cache if k < first]:  # never asked for again
            del self._cache[k]
        pieces = []
        for k in range(first, last + 1):
            start = k * self.slab
            rows = self._slab(k)
            pieces.append(rows[:, :, max(lo, start) - start : min(hi, start + self.slab) - start])
        return pieces


def _normalize_slabs(
    x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor, torch.Tensor], slab: int
) -> torch.Tensor:
    """:func:`_affine_` on ``x`` (after its ReLU), one depth slab of ``slab`` slices at a
    time: the slabs of :class:`_RecomputedLevel`, so that both give the same values."""
    for a in range(0, x.shape[2], slab):
        _affine_(x[:, :, a : a + slab], affine)
    return x


def _concat_conv_slabs(
    conv: nn.Conv3d, first: torch.Tensor, second: _RecomputedLevel, slab: int
) -> torch.Tensor:
    """``conv(cat(first, second))`` for a 3×3×3 convolution (stride 1, padding 1), in place.

    ``second`` gives the depth slices of the second input (:class:`_RecomputedLevel`).
    The concatenation is made one slab at a time, in a reused slab buffer, and the result
    overwrites ``first`` (which must have ``conv.out_channels`` channels): each slab's
    result is written once the next slab has been computed, when the rows it overwrites are
    no longer needed. Returns ``first``.
    """
    n, c1, d, h, w = first.shape
    dtype = torch.promote_types(first.dtype, second.dtype)
    work = torch.empty(
        (n, c1 + second.channels, min(slab, d) + 2, h, w),
        dtype=dtype,
        device=first.device,
        memory_format=_CL,
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
        at = front
        for rows in second(lo, hi):
            piece[:, c1:, at : at + rows.shape[2]].copy_(rows)
            at += rows.shape[2]
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
        out = conv_transpose3d(piece, conv.weight, conv.bias, (3, 1, 1))
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
    """:class:`~harmonix.iguane.model.networks.Generator3D` ``gen`` on ``x``, without autograd.

    The same function as the generator's plain, differentiable pass.

    Channels-last feature maps throughout; ReLU and norm fused and in place
    (:func:`relu_mad_norm_`); every map is released as soon as it has been used.

    Concatenations: below full resolution, the decoder writes its upsampled maps into
    the first half of a buffer whose second half already holds the skip connection, so
    that no ``torch.cat`` copy is made. At full resolution the convolutions run slab by
    slab along the depth axis (``*_slabs`` helpers), with small temporaries that the
    allocator reuses: the first level's output is not kept from the encoder to the decoder
    but recomputed there one slab at a time (:class:`_RecomputedLevel`: its convolution
    has one input channel: about 1 % of the pass's work), the
    concatenation is made one slab at a time and the last decoder convolution overwrites
    the upsampled maps as it goes. With the final 1×1×1 convolution split into its
    feature and input parts, the peak memory is about one full-resolution
    ``base_width``-channel map (0.31 GB at 160×192×160 in float32, half that under
    bfloat16 autocast) plus the half-resolution ``2·base_width``-channel map.

    Under CPU bfloat16 autocast the convolutions run in bfloat16 (the tiny ones that
    oneDNN gets wrong in float32,
    :func:`~harmonix.iguane._kernels.reduced_precision.needs_float32`)
    and the maps are kept in bfloat16; the norm statistics, the final projection, ``tanh``
    and the residual sum are computed in float32, and the output is float32 (the dtype
    of ``x``).
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

    # full resolution, encoder: the first level's map is freed after the down
    # convolution, and recomputed slab by slab by the decoder (_RecomputedLevel)
    first = _first_conv_slabs(enc0.conv, x, slab)
    affine = _relu_mad_affine_(first, enc0.norm)
    _normalize_slabs(first, affine, slab)
    h = relu_mad_norm_(_down_conv_slabs(down0.conv, first, slab_half), down0.norm)
    skip0 = _RecomputedLevel(enc0.conv, x, affine, slab, first.dtype)
    del first

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
    channel. Everything is computed in the dtype of ``x`` with autocast off (the slabs of
    a bfloat16 ``h`` are converted): no rounding to bfloat16 after the last norm.
    """
    n, k, d = h.shape[:3]
    dtype = x.dtype
    weight = gen.out_conv.weight.view(-1).to(dtype)
    w_feat = weight[:k]
    channels_last = _is_channels_innermost(h)
    z = torch.empty((n, 1, *h.shape[2:]), dtype=dtype, device=x.device)
    slab = d if slab is None else slab
    with _autocast_off(x.device.type):
        for a in range(0, d, slab):
            piece = h[:, :, a : a + slab]
            layout = channels_last
            try:
                rows = _rows(piece, layout)
            except RuntimeError:  # an unusual layout: a channels-last copy of the slab
                piece = piece.contiguous(memory_format=_CL)
                layout = _is_channels_innermost(piece)
                rows = _rows(piece, layout)
            rows = rows.to(dtype)
            zs = torch.matmul(rows, w_feat) if layout else torch.matmul(w_feat, rows)
            z[:, 0, a : a + slab].copy_(zs.view(n, *piece.shape[2:]))
        del h, piece, rows, zs
        w_in = weight[k:]
        for c in range(x.shape[1]):
            z.addcmul_(x[:, c : c + 1], w_in[c])
        if gen.out_conv.bias is not None:
            z.add_(gen.out_conv.bias.to(dtype))
        return z.tanh_().add_(x[:, :1])
