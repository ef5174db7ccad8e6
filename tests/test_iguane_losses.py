"""IGUANe losses (harmonix.iguane.model.losses)."""

from __future__ import annotations

import pytest
import torch

from harmonix.iguane.model import losses as L

pytestmark = pytest.mark.usefixtures("one_thread")


# -- losses --------------------------------------------------------------------------------
def test_lsgan_losses_have_no_half_factor():
    ones, zeros = torch.ones(2, 1, 3, 3, 3), torch.zeros(2, 1, 3, 3, 3)
    assert L.discriminator_loss(ones, zeros).item() == 0.0
    assert L.discriminator_loss(zeros, ones).item() == 2.0
    half = torch.full((4,), 0.5)
    assert L.discriminator_loss(half, half).item() == pytest.approx(0.5)
    assert L.generator_adversarial_loss(ones).item() == 0.0
    assert L.generator_adversarial_loss(zeros).item() == 1.0
    assert L.generator_adversarial_loss(torch.tensor([3.0, 1.0])).item() == pytest.approx(2.0)


def test_l1_cycle_identity_and_weights():
    a, b = torch.zeros(1, 1, 2, 2, 2), torch.full((1, 1, 2, 2, 2), 0.5)
    assert L.l1_loss(a, b).item() == pytest.approx(0.5)
    assert L.cycle_loss(a, b, a, a + 2).item() == pytest.approx(2.5)
    assert L.identity_loss(a, b).item() == pytest.approx(0.5)
    total = L.generator_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0))
    assert total.item() == pytest.approx(1 + 30 * 2 + 15 * 3)
    assert (L.CYCLE_WEIGHT, L.IDENTITY_WEIGHT) == (30.0, 15.0)
    with pytest.raises(ValueError, match="Shapes differ"):
        L.l1_loss(a, torch.zeros(2))


def test_losses_are_float32_for_half_inputs():
    x = torch.rand(1, 1, 4, 4, 4).half()
    assert L.discriminator_loss(x, x).dtype == torch.float32
    assert L.l1_loss(x, x.bfloat16()).dtype == torch.float32


def test_joint_loss_gives_each_generator_its_own_gradient():
    """adv_f + adv_b + 30 cyc + 15 (id_f + id_b) == the original's separate losses."""
    torch.manual_seed(0)
    src, ref = torch.rand(5), torch.rand(5)
    f, b = torch.tensor(1.3, requires_grad=True), torch.tensor(0.7, requires_grad=True)
    d_ref, d_src = (lambda x: x.mean() * 0.9), (lambda x: x.mean() * 1.1)

    def terms():
        fake_ref, fake_src = f * src, b * ref
        adv_f = L.generator_adversarial_loss(d_ref(fake_ref))
        adv_b = L.generator_adversarial_loss(d_src(fake_src))
        cyc = L.cycle_loss(src, b * fake_ref, ref, f * fake_src)
        return adv_f, adv_b, cyc, L.identity_loss(ref, f * ref), L.identity_loss(src, b * src)

    adv_f, adv_b, cyc, id_f, id_b = terms()
    joint = L.generator_loss(adv_f + adv_b, cyc, id_f + id_b)
    g_f, g_b = torch.autograd.grad(joint, (f, b))
    adv_f, adv_b, cyc, id_f, id_b = terms()
    own_f = torch.autograd.grad(L.generator_loss(adv_f, cyc, id_f), f)[0]
    adv_f, adv_b, cyc, id_f, id_b = terms()
    own_b = torch.autograd.grad(L.generator_loss(adv_b, cyc, id_b), b)[0]
    torch.testing.assert_close(g_f, own_f)
    torch.testing.assert_close(g_b, own_b)
