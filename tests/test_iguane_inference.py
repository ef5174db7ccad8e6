"""Tests of the fused inference pass of the IGUANe generator
(harmonix.iguane._kernels.fused_inference) and of harmonize_volume (harmonix.iguane.inference)."""

import copy

import numpy as np
import pytest
import torch
from _iguane_helpers import random_generator

from harmonix.iguane._kernels import fused_inference
from harmonix.iguane._kernels.fused_inference import conv3d, relu_mad_norm_
from harmonix.iguane.inference import harmonize_volume
from harmonix.iguane.model.networks import Generator3D, MADInstanceNorm3d

CL = torch.channels_last_3d
#: float32 fused pass against the float32 plain pass (observed <= 1.3e-4 at 32^3, where the
#: bottleneck statistics come from 8 voxels and amplify rounding; ~1e-5 at full size).
TOL32 = 1e-3
TOL64 = 1e-10


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # One intra-op thread: on a busy 2-core machine OpenMP barriers make these tiny
    # networks 10-40x slower with two threads (one test checks two threads explicitly).
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_generator = random_generator


def _both(g, x):
    """(plain, fused) outputs under inference mode."""
    with torch.inference_mode():
        g.fused_inference = False
        plain = g(x)
        g.fused_inference = True
        fused = g(x)
    return plain, fused


# --------------------------------------------------------------------------- fused pass


@pytest.mark.parametrize("shape", [(32, 32, 32), (16, 32, 48)])
def test_fused_equals_plain_float32(shape):
    g = _generator()
    x = torch.randn(1, 1, *shape)
    plain, fused = _both(g, x)
    assert fused.shape == plain.shape == x.shape
    assert fused.dtype == torch.float32
    assert (fused - plain).abs().max() <= TOL32


def test_fused_is_the_default_without_grad():
    g = _generator()
    x = torch.randn(1, 1, 16, 16, 16)
    calls = []
    orig = g._forward_fused
    g._forward_fused = lambda t: calls.append(1) or orig(t)
    with torch.no_grad():
        g(x)
    with torch.inference_mode():
        g(x)
    assert len(calls) == 2
    g(x)  # grad mode: plain pass
    assert len(calls) == 2


def test_fused_with_two_threads_restores_thread_count():
    g = _generator(base_width=2)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        ref = g(x)
        torch.set_num_threads(2)
        y = g(x)
        assert torch.get_num_threads() == 2
    assert (y - ref).abs().max() <= TOL32


def test_float64_unaffected():
    g = _generator(dtype=torch.float64)
    x = torch.randn(2, 1, 32, 32, 16, dtype=torch.float64)
    plain, fused = _both(g, x)
    assert fused.dtype == torch.float64
    assert (fused - plain).abs().max() <= TOL64


def test_batch_and_several_input_channels():
    g = _generator(in_channels=2, dtype=torch.float64)
    x = torch.randn(3, 2, 16, 16, 32, dtype=torch.float64)
    plain, fused = _both(g, x)
    assert fused.shape == (3, 1, 16, 16, 32)
    assert (fused - plain).abs().max() <= TOL64
    # samples are independent
    with torch.inference_mode():
        assert torch.allclose(g(x[1:2]), fused[1:2], atol=TOL64, rtol=0)


@pytest.mark.parametrize("slab_bytes", [1, 3000, 1 << 30])
@pytest.mark.parametrize(
    ("shape", "batch", "in_channels"), [((16, 16, 32), 1, 1), ((48, 32, 16), 2, 2)]
)
def test_full_resolution_slabs_equal_plain(monkeypatch, slab_bytes, shape, batch, in_channels):
    # slabs of 2 slices (1 at half resolution), of a few slices, and one slab; float64 so
    # that any indexing error in the halos shows up as a large difference
    monkeypatch.setattr(fused_inference, "_CPU_SLAB_BYTES", slab_bytes)
    g = _generator(base_width=3, in_channels=in_channels, dtype=torch.float64)
    x = torch.randn(batch, in_channels, *shape, dtype=torch.float64)
    plain, fused = _both(g, x)
    assert (fused - plain).abs().max() <= TOL64


def test_conv3d_helper_matches_functional_conv():
    x = torch.randn(1, 3, 6, 10, 8).to(memory_format=CL)
    w = torch.randn(5, 3, 3, 3, 1)
    b = torch.randn(5)
    expected = torch.nn.functional.conv3d(x, w, b, padding=(0, 1, 0))
    with torch.inference_mode():
        y = conv3d(x, w, b, (0, 1, 0))
        assert y.is_contiguous(memory_format=CL)
        assert torch.allclose(y, expected, atol=1e-5)
        w2 = torch.randn(4, 3, 4, 4, 4)
        y2 = conv3d(x, w2, None, (1, 1, 1), stride=2)
        assert torch.allclose(y2, torch.nn.functional.conv3d(x, w2, None, 2, 1), atol=1e-5)
        # autocast and float64 take the functional path
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv3d(x, w, b, (0, 1, 0)).dtype == torch.bfloat16
        assert conv3d(x.double(), w.double(), b.double(), (0, 1, 0)).dtype == torch.float64


def test_channels_last_module_and_input():
    g = _generator()
    x = torch.randn(1, 1, 32, 16, 32)
    plain, _ = _both(g, x)
    g_cl = copy.deepcopy(g).to(memory_format=CL)
    with torch.inference_mode():
        fused_cl = g_cl(x.to(memory_format=CL))
        # a non-contiguous input view works as well
        xt = x.transpose(2, 4).contiguous().transpose(2, 4)
        fused_view = g(xt)
    assert (fused_cl - plain).abs().max() <= TOL32
    assert (fused_view - plain).abs().max() <= TOL32


def test_fused_pass_leaves_input_and_parameters_untouched():
    g = _generator()
    x = torch.randn(1, 1, 16, 16, 16)
    x0 = x.clone()
    params = {k: v.clone() for k, v in g.state_dict().items()}
    with torch.inference_mode():
        g(x)
    assert torch.equal(x, x0)
    assert all(torch.equal(v, params[k]) for k, v in g.state_dict().items())


def test_training_still_works_after_inference():
    g = _generator(base_width=2)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        g(x)
    g.train()
    y = g(x)
    assert y.requires_grad
    (y - x).abs().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.parameters())
    with torch.no_grad():  # one SGD step, then the fused pass again, then another backward
        for p in g.parameters():
            p -= 1e-3 * p.grad
        g(x)
    g.zero_grad()
    g(x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.parameters())
    # the gradient is the plain pass's: same as with the fused pass switched off
    grads = [p.grad.clone() for p in g.parameters()]
    g.zero_grad()
    g.fused_inference = False
    g(x).square().mean().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, g.parameters()))


def test_inference_under_no_grad_with_input_requiring_grad():
    g = _generator(base_width=2)
    x = torch.randn(1, 1, 16, 16, 16, requires_grad=True)
    with torch.no_grad():
        y = g(x)
    assert not y.requires_grad
    assert x.grad is None


def test_fused_under_bf16_autocast_close_to_float32():
    g = _generator()
    x = torch.randn(1, 1, 32, 32, 32)
    plain, _ = _both(g, x)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        g.fused_inference = False
        plain_bf16 = g(x)
        g.fused_inference = True
        fused_bf16 = g(x)
    assert fused_bf16.dtype == torch.float32  # x + tanh(.) with a float32 x
    assert torch.isfinite(fused_bf16).all()
    # bf16 convolutions: loose agreement only, similar for both passes
    assert (fused_bf16 - plain).abs().mean() < 0.05
    assert (fused_bf16 - plain_bf16.float()).abs().mean() < 0.05


@pytest.mark.slow  # PyTorch's first operation on the meta device takes several seconds
def test_fused_on_meta_device_gives_shapes():
    # the device-generic branch (whole tensors instead of CPU slabs, no thread changes, no
    # float64 totals) runs without data, as it would on a GPU
    g = Generator3D(base_width=2).to("meta").eval()
    with torch.inference_mode():
        y = g(torch.empty(1, 1, 16, 32, 16, device="meta"))
    assert y.shape == (1, 1, 16, 32, 16)
    assert y.device.type == "meta"


# --------------------------------------------------------------------------- fused norm


def _norm(c, dtype=torch.float32):
    norm = MADInstanceNorm3d(c).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0.0, 0.5)
    return norm


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("chunk_bytes", [64, 1 << 30])
def test_fused_norm_matches_module(monkeypatch, channels_last, chunk_bytes):
    monkeypatch.setattr(fused_inference, "_CPU_CHUNK_BYTES", chunk_bytes)
    norm = _norm(3)
    x = torch.randn(2, 3, 5, 6, 7) * 2 + 1
    if channels_last:
        x = x.to(memory_format=CL)
    expected = norm(torch.relu(x))
    with torch.inference_mode():
        xi = x.clone()
        y = relu_mad_norm_(xi, norm)
    assert y.data_ptr() == xi.data_ptr()  # in place
    assert torch.allclose(y, expected, atol=1e-5, rtol=1e-5)


def test_fused_norm_writes_into_a_concatenation_buffer():
    norm = _norm(4)
    x = torch.randn(1, 4, 6, 6, 6).to(memory_format=CL)
    buf = torch.full((1, 8, 6, 6, 6), 7.0).to(memory_format=CL)
    expected = norm(torch.relu(x))
    with torch.inference_mode():
        relu_mad_norm_(x.clone(), norm, out=buf[:, :4])
    assert torch.allclose(buf[:, :4], expected, atol=1e-5)
    assert torch.all(buf[:, 4:] == 7.0)
    # an output laid out differently still gets the right values
    other = torch.zeros(1, 4, 6, 6, 6)
    with torch.inference_mode():
        relu_mad_norm_(x.clone(), norm, out=other)
    assert torch.allclose(other, expected, atol=1e-5)


def test_fused_norm_statistics_in_float32_for_bf16():
    norm = _norm(2)
    x = (torch.randn(1, 2, 8, 8, 8) * 3 + 100).to(torch.bfloat16)
    expected = norm(torch.relu(x))  # float32 statistics, cast back
    with torch.inference_mode():
        y = relu_mad_norm_(x.clone(), norm)
    assert y.dtype == torch.bfloat16
    # one bf16 rounding of the same float32 values, up to summation order
    assert (y.float() - expected.float()).abs().max() <= 2 * 2**-8 * expected.abs().max()


def test_fused_norm_float64():
    norm = _norm(2, torch.float64)
    x = torch.randn(1, 2, 6, 6, 6, dtype=torch.float64) * 1e-3 + 1.0
    with torch.inference_mode():
        y = relu_mad_norm_(x.clone(), norm)
    assert torch.allclose(y, norm(torch.relu(x)), atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- harmonize_volume


def test_harmonize_volume_matches_plain_forward():
    g = _generator()
    x = np.random.default_rng(0).normal(size=(32, 16, 32)).astype(np.float32)
    y = harmonize_volume(g, x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == x.shape
    g.fused_inference = False
    with torch.inference_mode():
        ref = g(torch.from_numpy(x)[None, None])[0, 0].numpy()
    g.fused_inference = True
    assert np.abs(y - ref).max() <= TOL32
    # 4-D input with the channel axis, float64 input converted to the generator's dtype
    y4 = harmonize_volume(g, x[None].astype(np.float64))
    assert np.array_equal(y4, y)


def test_harmonize_volume_bf16_autocast():
    g = _generator()
    x = np.random.default_rng(1).normal(size=(16, 16, 16)).astype(np.float32)
    y = harmonize_volume(g, x, amp_dtype="bfloat16")
    assert y.dtype == np.float32 and np.isfinite(y).all()
    assert np.abs(y - harmonize_volume(g, x)).mean() < 0.05


def test_harmonize_volume_restores_threads():
    g = _generator(base_width=2)
    before = torch.get_num_threads()
    harmonize_volume(g, np.zeros((16, 16, 16), np.float32), num_threads=1)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads"):
        harmonize_volume(g, np.zeros((16, 16, 16), np.float32), num_threads=0)


def test_harmonize_volume_rejects_bad_input():
    g = _generator(base_width=2)
    with pytest.raises(ValueError, match="multiples of 16"):
        harmonize_volume(g, np.zeros((16, 16, 20), np.float32))
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        harmonize_volume(g, np.zeros((2, 16, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        harmonize_volume(g, np.zeros((16, 16), np.float32))
    bad = np.zeros((16, 16, 16), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        harmonize_volume(g, bad)
    with pytest.raises(TypeError, match="Generator3D"):
        harmonize_volume(torch.nn.Identity(), bad)
    with pytest.raises(ValueError, match="amp_dtype"):
        harmonize_volume(g, np.zeros((16, 16, 16), np.float32), amp_dtype="half")
