"""Tests of the IGUANe networks (harmonix.iguane.model.networks)."""

import math

import pytest
import torch

from harmonix.iguane.model.networks import Generator3D, MADInstanceNorm3d, PatchDiscriminator3D


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- sizes


def test_generator_parameter_count_matches_paper():
    assert _n_params(Generator3D()) == 6_532_098


def test_discriminator_parameter_count_matches_paper():
    assert _n_params(PatchDiscriminator3D()) == 2_633_217


def test_base_width_gives_smaller_models():
    assert _n_params(Generator3D(base_width=8)) < _n_params(Generator3D())
    assert _n_params(Generator3D(base_width=4)) < _n_params(Generator3D(base_width=8))
    assert _n_params(PatchDiscriminator3D(base_width=16)) < _n_params(PatchDiscriminator3D())


def test_generator_channel_widths_follow_base_width():
    g = Generator3D(base_width=4)
    assert [b.conv.out_channels for b in g.enc_convs] == [4, 8, 16, 32]
    assert [b.conv.out_channels for b in g.downs] == [4, 8, 16, 32]
    assert g.bottleneck.conv.out_channels == 64
    assert [b.conv.out_channels for b in g.ups] == [32, 16, 8, 4]
    assert [b.conv.in_channels for b in g.dec_convs] == [64, 32, 16, 8]
    assert g.out_conv.in_channels == 4 + 1


@pytest.mark.parametrize("shape", [(32, 32, 32), (16, 32, 48)])
def test_generator_output_shape_equals_input_shape(shape):
    g = Generator3D(base_width=4)
    x = torch.randn(2, 1, *shape)
    with torch.inference_mode():
        y = g(x)
    assert y.shape == x.shape
    assert y.dtype == torch.float32


def test_discriminator_output_shape_32_to_4():
    d = PatchDiscriminator3D(base_width=8)
    with torch.inference_mode():
        assert d(torch.randn(1, 1, 32, 32, 32)).shape == (1, 1, 4, 4, 4)


def test_discriminator_output_shape_is_one_eighth():
    # 160x192x160 -> 20x24x20, checked at a quarter of the size: 40x48x40 -> 5x6x5.
    d = PatchDiscriminator3D(base_width=4)
    with torch.inference_mode():
        assert d(torch.randn(1, 1, 40, 48, 40)).shape == (1, 1, 5, 6, 5)
    assert [s // 8 for s in (160, 192, 160)] == [20, 24, 20]


@pytest.mark.parametrize("shape", [(30, 32, 32), (32, 32, 24), (8, 16, 16)])
def test_generator_rejects_sizes_not_multiple_of_16(shape):
    g = Generator3D(base_width=2)
    with pytest.raises(ValueError, match="multiples of 16"):
        g(torch.zeros(1, 1, *shape))


def test_networks_reject_wrong_rank_or_channels():
    g = Generator3D(base_width=2)
    d = PatchDiscriminator3D(base_width=2)
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        g(torch.zeros(1, 16, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        g(torch.zeros(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        d(torch.zeros(16, 16, 16))
    with pytest.raises(ValueError, match="at least 8"):
        d(torch.zeros(1, 1, 4, 16, 16))


def test_invalid_widths_raise():
    with pytest.raises(ValueError, match="base_width"):
        Generator3D(base_width=0)
    with pytest.raises(ValueError, match="in_channels"):
        PatchDiscriminator3D(in_channels=0)


def test_layers_in_order_cover_every_parameter_once():
    g = Generator3D(base_width=2)
    layers = g.layers_in_order()
    ids = [id(p) for m in layers for p in m.parameters()]
    assert sorted(ids) == sorted(id(p) for p in g.parameters())
    kinds = [type(m).__name__ for m in layers]
    assert kinds[:4] == ["OneDNNConv3d", "MADInstanceNorm3d"] * 2
    assert kinds[18:20] == ["OneDNNConvTranspose3d", "MADInstanceNorm3d"]
    assert layers[2].stride == (2, 2, 2) and layers[4].stride == (1, 1, 1)
    assert layers[-1] is g.out_conv


# --------------------------------------------------------------------------- init


def test_init_is_glorot_uniform_with_zero_biases():
    for net in (Generator3D(base_width=4), PatchDiscriminator3D(base_width=4)):
        for m in net.modules():
            if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d):
                w = m.weight
                rf = w[0, 0].numel()
                bound = math.sqrt(6.0 / ((w.shape[0] + w.shape[1]) * rf))
                assert w.abs().max() <= bound
                assert w.abs().max() > 0.5 * bound
                if m.bias is not None:
                    assert torch.count_nonzero(m.bias) == 0
            elif isinstance(m, MADInstanceNorm3d):
                assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_discriminator_biases_only_on_last_conv():
    d = PatchDiscriminator3D()
    assert d.conv1.bias is None and d.conv2.bias is None and d.conv3.bias is None
    assert d.out_conv.bias is not None


# --------------------------------------------------------------------------- behaviour


def test_generator_is_residual():
    g = Generator3D(base_width=2)
    with torch.no_grad():
        g.out_conv.weight.zero_()
        g.out_conv.bias.zero_()
    x = torch.randn(1, 1, 16, 16, 32)
    with torch.inference_mode():
        assert torch.equal(g(x), x)


def test_generator_correction_bounded_by_one():
    g = Generator3D(base_width=2)
    with torch.no_grad():
        g.out_conv.weight.mul_(100.0)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        assert (g(x) - x).abs().max() <= 1.0 + 1e-6


def test_discriminator_pads_with_minus_one():
    # A constant -1 volume gives the same features everywhere at the first layer only if
    # the padding value is -1 too.
    d = PatchDiscriminator3D(base_width=2)
    x = torch.full((1, 1, 16, 16, 16), -1.0)
    with torch.inference_mode():
        first = d.conv1(torch.nn.functional.pad(x, (1,) * 6, value=-1.0))
    assert torch.allclose(first, first.flatten(2)[..., :1].unsqueeze(-1).unsqueeze(-1))


def test_gradients_reach_every_parameter_of_both_networks():
    """A loss on the discriminator's output of the generator's output gives every weight of
    both networks a non-zero gradient (a detached branch or a dead layer would not)."""
    torch.manual_seed(0)
    g = Generator3D(base_width=2)
    d = PatchDiscriminator3D(base_width=2)
    x = torch.randn(1, 1, 32, 32, 32)  # the bottleneck keeps 2x2x2 voxels to normalize
    d(g(x)).square().mean().backward()
    for net in (g, d):
        dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
        assert dead == [], f"{type(net).__name__}: no gradient for {dead}"


def test_channels_last_3d_matches_contiguous():
    g = Generator3D(base_width=2)
    d = PatchDiscriminator3D(base_width=2)
    x = torch.randn(1, 1, 16, 32, 16)
    with torch.inference_mode():
        ref_g, ref_d = g(x), d(x)
        g.to(memory_format=torch.channels_last_3d)
        d.to(memory_format=torch.channels_last_3d)
        xc = x.to(memory_format=torch.channels_last_3d)
        assert (g(xc) - ref_g).abs().max() < 1e-4
        assert (d(xc) - ref_d).abs().max() < 1e-4


# --------------------------------------------------------------------------- MAD norm


def test_mad_norm_matches_hand_computation():
    norm = MADInstanceNorm3d(2)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 1.0]))
        norm.bias.copy_(torch.tensor([0.5, -1.0]))
    # sample 0, channel 0: values 1, 2, 3, 6 -> mean 3, deviations -2, -1, 0, 3, MAD 1.5
    # sample 0, channel 1: values 0, 0, 4, 4 -> mean 2, deviations -2, -2, 2, 2, MAD 2
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]]).reshape(1, 2, 1, 2, 2)
    expected = torch.tensor(
        [
            [2.0 * v / (1.5 + 1e-3) + 0.5 for v in (-2.0, -1.0, 0.0, 3.0)],
            [1.0 * v / (2.0 + 1e-3) - 1.0 for v in (-2.0, -2.0, 2.0, 2.0)],
        ]
    ).reshape(1, 2, 1, 2, 2)
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_mad_norm_is_per_sample_and_channel():
    norm = MADInstanceNorm3d(3)
    x = torch.randn(2, 3, 4, 5, 6) * torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1, 1, 1) + 7
    y = norm(x)
    assert torch.allclose(y.mean(dim=(2, 3, 4)), torch.zeros(2, 3), atol=1e-5)
    mad = y.abs().mean(dim=(2, 3, 4))
    raw_mad = (x - x.mean(dim=(2, 3, 4), keepdim=True)).abs().mean(dim=(2, 3, 4))
    assert torch.allclose(mad, raw_mad / (raw_mad + 1e-3), atol=1e-5)
    # one sample does not change the other's result
    assert torch.allclose(norm(x[:1]), y[:1])


def test_mad_norm_has_no_running_stats_and_same_in_eval():
    norm = MADInstanceNorm3d(4)
    assert list(norm.buffers()) == []
    x = torch.randn(1, 4, 3, 3, 3)
    y_train = norm(x)
    norm.eval()
    assert torch.equal(norm(x), y_train)


def test_mad_norm_float32_under_bf16_autocast():
    norm = MADInstanceNorm3d(2)
    x = (torch.randn(1, 2, 8, 8, 8) * 3 + 100).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
        y32 = norm(x.float())
    assert y.dtype == torch.bfloat16
    assert y32.dtype == torch.float32
    # the statistics were computed in float32, then the result cast back
    assert torch.equal(y, norm(x.float()).to(torch.bfloat16))


def test_mad_norm_keeps_float64():
    norm = MADInstanceNorm3d(2).double()
    x = torch.randn(1, 2, 6, 6, 6, dtype=torch.float64) * 1e-3 + 1.0
    y = norm(x)
    assert y.dtype == torch.float64
    dev = x - x.mean(dim=(2, 3, 4), keepdim=True)
    expected = dev / (dev.abs().mean(dim=(2, 3, 4), keepdim=True) + 1e-3)
    assert torch.allclose(y, expected, rtol=0, atol=1e-12)


def test_generator_under_bf16_autocast():
    g = Generator3D(base_width=2)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        ref = g(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = g(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    # bf16 convolutions: loose agreement only
    assert (y.float() - ref).abs().mean() < 0.05


def test_mad_norm_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"\(N, 3, D, H, W\)"):
        MADInstanceNorm3d(3)(torch.zeros(1, 2, 4, 4, 4))


def test_onednn_conv3d_matches_torch_conv3d_with_gradients():
    from harmonix.iguane.model.networks import OneDNNConv3d

    torch.manual_seed(0)
    for kwargs in (dict(kernel_size=3, padding=1), dict(kernel_size=4, stride=2, padding=1)):
        ours = OneDNNConv3d(2, 4, **kwargs)
        ref = torch.nn.Conv3d(2, 4, **kwargs)
        ref.load_state_dict(ours.state_dict())
        for dtype in (torch.float32, torch.float64):  # float64 falls back to nn.Conv3d
            ours.to(dtype), ref.to(dtype)
            x = torch.randn(1, 2, 8, 10, 8, dtype=dtype, requires_grad=True)
            y_ours, y_ref = ours(x), ref(x)
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(y_ours, y_ref, rtol=tol, atol=tol)
            (g_ours,) = torch.autograd.grad(y_ours.square().sum(), x)
            (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
            torch.testing.assert_close(g_ours, g_ref, rtol=tol, atol=tol)
            w_ours = torch.autograd.grad(ours(x).square().sum(), ours.weight)[0]
            w_ref = torch.autograd.grad(ref(x).square().sum(), ref.weight)[0]
            torch.testing.assert_close(w_ours, w_ref, rtol=10 * tol, atol=10 * tol)
