"""Tests of the training kernels: oneDNN convolution gradients and the one-node MAD norm.

References are autograd of ``F.conv3d`` / ``F.conv_transpose3d`` / the plain norm in
float64 (independent code paths); the float32 oneDNN results must agree to float32
rounding.
"""

import pytest
import torch
import torch.nn.functional as F

from harmonix.iguane._kernels import conv_backward as cb
from harmonix.iguane._kernels.norm_autograd import mad_norm
from harmonix.iguane.model.networks import (
    Generator3D,
    MADInstanceNorm3d,
    OneDNNConv3d,
    OneDNNConvTranspose3d,
    PatchDiscriminator3D,
)

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="needs PyTorch with oneDNN"
)


def _grads_64(fn, tensors, grad):
    leaves = [t.detach().double().requires_grad_() for t in tensors]
    fn(*leaves).backward(grad.double())
    return [t.grad for t in leaves]


def _grads_32(fn, tensors, grad):
    leaves = [t.detach().float().requires_grad_() for t in tensors]
    fn(*leaves).backward(grad.float())
    return [t.grad for t in leaves]


def _assert_close_relative(ours, ref, rel=1e-5):
    scale = ref.abs().max().item()
    assert (ours.double() - ref).abs().max().item() <= rel * max(scale, 1e-12)


# (C_in, C_out, spatial, kernel, stride, padding, batch): thin and wide maps, odd output
# depths (the split adds a zero slice), paddings 0 to k - 1, one input channel (no split),
# a batch of two (no split)
CONV_CASES = [
    (8, 4, (12, 10, 8), 3, 1, 1, 1),
    (3, 5, (7, 6, 5), 3, 1, 0, 1),
    (2, 3, (9, 6, 5), 3, 1, 2, 1),
    (1, 4, (8, 6, 6), 3, 1, 1, 1),
    (4, 4, (12, 8, 10), 4, 2, 1, 1),
    (3, 5, (11, 6, 8), 4, 2, 1, 1),
    (2, 3, (10, 6, 8), 4, 2, 0, 1),
    (4, 6, (8, 6, 6), 3, 1, 1, 2),
]


@pytest.mark.parametrize(("cin", "cout", "shape", "k", "s", "p", "n"), CONV_CASES)
def test_conv3d_onednn_gradients_match_float64_autograd(cin, cout, shape, k, s, p, n):
    torch.manual_seed(0)
    x = torch.randn(n, cin, *shape)
    w = torch.randn(cout, cin, k, k, k)
    b = torch.randn(cout)
    grad = torch.randn_like(F.conv3d(x, w, b, stride=s, padding=p))

    def ref(x, w, b):
        return F.conv3d(x, w, b, stride=s, padding=p)

    def ours(x, w, b):
        return cb.conv3d_onednn(x, w, b, (s,) * 3, (p,) * 3)

    for got, want in zip(_grads_32(ours, (x, w, b), grad), _grads_64(ref, (x, w, b), grad)):
        _assert_close_relative(got, want)


@pytest.mark.parametrize(("cin", "cout", "shape"), [(8, 4, (6, 5, 4)), (1, 3, (5, 6, 7))])
def test_transposed_conv3d_onednn_gradients_match_float64_autograd(cin, cout, shape):
    torch.manual_seed(1)
    x = torch.randn(1, cin, *shape)
    w = torch.randn(cin, cout, 4, 4, 4)
    b = torch.randn(cout)
    grad = torch.randn_like(F.conv_transpose3d(x, w, b, stride=2, padding=1))

    def ref(x, w, b):
        return F.conv_transpose3d(x, w, b, stride=2, padding=1)

    def ours(x, w, b):
        return cb.conv3d_onednn(x, w, b, (2, 2, 2), (1, 1, 1), transposed=True)

    for got, want in zip(_grads_32(ours, (x, w, b), grad), _grads_64(ref, (x, w, b), grad)):
        _assert_close_relative(got, want)


def test_weight_gradient_split_equals_the_unsplit_gradient():
    torch.manual_seed(2)
    x = torch.randn(1, 6, 9, 8, 7)  # odd output depth
    grad = torch.randn(1, 5, 9, 8, 7)
    split = cb.weight_gradient(x, grad, (5, 6, 3, 3, 3), (1, 1, 1), (1, 1, 1))
    ones, mask = [1, 1, 1], [False, True, False]
    whole = torch.ops.aten.convolution_backward(
        grad.double(), x.double(), torch.empty(5, 6, 3, 3, 3, dtype=torch.float64), None,
        ones, ones, ones, False, [0, 0, 0], 1, mask,
    )[1]  # fmt: skip
    _assert_close_relative(split, whole)


def test_split_halves_carry_their_halo():
    x = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(1, 2, 10, 1, 1)
    grad = torch.zeros(1, 3, 5, 1, 1)  # k4 s2 p1: output slice j reads 2j - 1 .. 2j + 2
    xs, gs = cb._split_in_depth(x, grad, kernel=4, stride=2, pad=1)
    assert gs.shape == (2, 3, 3, 1, 1)  # 5 output slices + 1 zero slice, in two halves
    assert xs[0, 0, :, 0, 0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6]  # zero before slice 0
    assert xs[1, 0, :, 0, 0].tolist() == [5, 6, 7, 8, 9, 0, 0, 0]  # zeros past the end


def test_modules_take_the_onednn_backward_only_with_autograd_on_float32():
    conv, up = OneDNNConv3d(2, 3, 3, padding=1), OneDNNConvTranspose3d(2, 3, 4, 2, 1)
    x = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    assert type(conv(x).grad_fn).__name__ == "_OneDNNConvBackward"
    assert type(up(x).grad_fn).__name__ == "_OneDNNConvBackward"
    with torch.no_grad():
        assert conv(x).grad_fn is None
    conv64 = OneDNNConv3d(2, 3, 3, padding=1).double()
    assert type(conv64(x.double()).grad_fn).__name__ != "_OneDNNConvBackward"
    dilated = OneDNNConv3d(2, 3, 3, padding=2, dilation=2)
    assert type(dilated(x).grad_fn).__name__ != "_OneDNNConvBackward"


def test_transposed_module_matches_torch_module():
    torch.manual_seed(3)
    ours = OneDNNConvTranspose3d(3, 2, 4, stride=2, padding=1)
    ref = torch.nn.ConvTranspose3d(3, 2, 4, stride=2, padding=1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 4, 6, 4, requires_grad=True)
    y_ours, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-5)
    g_ours = torch.autograd.grad(y_ours.square().sum(), (x, ours.weight, ours.bias))
    g_ref = torch.autograd.grad(y_ref.square().sum(), (x, ref.weight, ref.bias))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# -- MAD norm --------------------------------------------------------------------------
def _plain_norm(norm, x):
    """The norm's autograd-of-primitives path (what it computes without ``mad_norm``)."""
    dims = (2, 3, 4)
    dev = x - x.mean(dims, keepdim=True)
    mad = dev.abs().mean(dims, keepdim=True)
    shape = (1, -1, 1, 1, 1)
    return norm.bias.view(shape) + dev * norm.weight.view(shape) / (mad + norm.eps)


def test_mad_norm_values_and_gradients_match_plain_autograd():
    torch.manual_seed(4)
    norm = MADInstanceNorm3d(3).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 3, 5, 6, 4, dtype=torch.float64)
    x[0, 0] = x[0, 0].clamp_min(0)  # ReLU-like: many voxels at one value
    grad = torch.randn_like(x)
    results = []
    for fn in (_plain_norm, lambda n, t: mad_norm(t, n.weight, n.bias, n.eps)):
        norm.zero_grad()
        leaf = x.clone().requires_grad_()
        y = fn(norm, leaf)
        y.backward(grad)
        results.append((y.detach(), leaf.grad, norm.weight.grad.clone(), norm.bias.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_mad_norm_passes_gradcheck():
    torch.manual_seed(5)
    x = torch.randn(1, 2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: mad_norm(x, w, b, 1e-3), (x, w, b))


def test_norm_module_uses_the_one_node_path_only_with_autograd():
    norm = MADInstanceNorm3d(2)
    x = torch.randn(1, 2, 3, 3, 3, requires_grad=True)
    assert type(norm(x).grad_fn).__name__ == "_MADNormBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(norm(x).grad_fn).__name__ != "_MADNormBackward"


def test_networks_train_the_same_with_the_new_kernels(monkeypatch):
    """Generator and discriminator gradients equal those of the plain modules' autograd."""
    from harmonix.iguane.model import networks

    torch.manual_seed(6)
    gen, disc = Generator3D(2), PatchDiscriminator3D(4)
    x = torch.randn(1, 1, 16, 16, 16)

    def grads():
        gen.zero_grad(), disc.zero_grad()
        disc(gen(x)).square().sum().backward()
        return [p.grad.clone() for p in (*gen.parameters(), *disc.parameters())]

    ours = grads()
    monkeypatch.setattr(networks, "_backward_on_onednn", lambda conv: False)
    monkeypatch.setattr(networks, "mad_norm", lambda x, w, b, eps: _plain_norm_fn(x, w, b, eps))
    plain = grads()
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4 * b.abs().max().item())


def _plain_norm_fn(x, w, b, eps):
    norm = MADInstanceNorm3d(x.shape[1], eps)
    norm.weight, norm.bias = w, b
    return _plain_norm(norm, x)
