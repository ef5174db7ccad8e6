"""Losses of IGUANe: least-squares GAN, cycle consistency and identity.

Small pure functions on tensors; the training loop (:mod:`harmonix.iguane.training.loop`)
combines them. They compute in float32 at least (outputs of networks run under
:func:`torch.autocast` may be half precision; float64 inputs stay float64).

The weights follow the original implementation: cycle weight 30 (both cycles, in the loss
of both generators) and identity weight 15 (half the cycle weight).
"""

from __future__ import annotations

import torch

__all__ = [
    "CYCLE_WEIGHT",
    "IDENTITY_WEIGHT",
    "cycle_loss",
    "discriminator_loss",
    "generator_adversarial_loss",
    "generator_loss",
    "identity_loss",
    "l1_loss",
]

#: Weight of the cycle-consistency loss in IGUANe.
CYCLE_WEIGHT = 30.0
#: Weight of the identity loss in IGUANe (half the cycle weight).
IDENTITY_WEIGHT = 15.0


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _mse_to(scores: torch.Tensor, target: float) -> torch.Tensor:
    return torch.mean(torch.square(_at_least_float32(scores) - target))


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of a discriminator.

    ``mean((D(real) - 1)^2) + mean(D(fake)^2)``, without the 0.5 factor of some CycleGAN
    implementations (as in IGUANe).

    Parameters
    ----------
    real_scores : torch.Tensor
        Discriminator outputs on real images (any shape).
    fake_scores : torch.Tensor
        Discriminator outputs on generated images.

    Returns
    -------
    torch.Tensor
        A float32 scalar (float64 for float64 inputs).
    """
    return _mse_to(real_scores, 1.0) + _mse_to(fake_scores, 0.0)


def generator_adversarial_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of a generator: ``mean((D(fake) - 1)^2)``.

    Parameters
    ----------
    fake_scores : torch.Tensor
        Discriminator outputs on the generator's images.

    Returns
    -------
    torch.Tensor
        A float32 scalar (float64 for float64 inputs).
    """
    return _mse_to(fake_scores, 1.0)


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over all voxels (background included, as in IGUANe).

    Parameters
    ----------
    output, target : torch.Tensor
        Tensors of the same shape.

    Returns
    -------
    torch.Tensor
        A float32 scalar (float64 for float64 inputs).
    """
    if output.shape != target.shape:
        raise ValueError(f"Shapes differ: {tuple(output.shape)} and {tuple(target.shape)}.")
    return torch.mean(torch.abs(_at_least_float32(output) - _at_least_float32(target)))


def cycle_loss(
    source: torch.Tensor,
    cycled_source: torch.Tensor,
    reference: torch.Tensor,
    cycled_reference: torch.Tensor,
) -> torch.Tensor:
    """Unweighted cycle-consistency loss: the sum of both cycles' L1 losses.

    Parameters
    ----------
    source : torch.Tensor
        Source-site images.
    cycled_source : torch.Tensor
        ``backward(forward(source))``.
    reference : torch.Tensor
        Reference-site images.
    cycled_reference : torch.Tensor
        ``forward(backward(reference))``.

    Returns
    -------
    torch.Tensor
        A float32 scalar ``L1(source, cycled_source) + L1(reference, cycled_reference)``.
    """
    return l1_loss(cycled_source, source) + l1_loss(cycled_reference, reference)


def identity_loss(image: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
    """Unweighted identity loss of one generator: ``L1(image, G(image))``.

    ``image`` comes from the generator's *target* domain (reference images for the forward
    generator, source images for a backward one), which it should leave unchanged.

    Parameters
    ----------
    image : torch.Tensor
    mapped : torch.Tensor
        The generator's output on ``image``.

    Returns
    -------
    torch.Tensor
        A float32 scalar (float64 for float64 inputs).
    """
    return l1_loss(mapped, image)


def generator_loss(
    adversarial: torch.Tensor,
    cycle: torch.Tensor,
    identity: torch.Tensor,
    *,
    cycle_weight: float = CYCLE_WEIGHT,
    identity_weight: float = IDENTITY_WEIGHT,
) -> torch.Tensor:
    """Weighted generator loss: ``adversarial + w_cycle * cycle + w_identity * identity``.

    In IGUANe each generator of a (forward, backward) pair minimizes its own adversarial
    and identity terms plus the *shared* cycle term (both cycles). The joint loss
    ``generator_loss(adv_fwd + adv_bwd, cycle, id_fwd + id_bwd)`` counts the cycle term
    once; since a generator's own adversarial and identity terms do not depend on the other
    generator, back-propagating it once gives each generator exactly the gradients of its
    own loss.

    Parameters
    ----------
    adversarial : torch.Tensor
        :func:`generator_adversarial_loss` (or a sum of them).
    cycle : torch.Tensor
        :func:`cycle_loss`.
    identity : torch.Tensor
        :func:`identity_loss` (or a sum of them).
    cycle_weight : float, default=30
    identity_weight : float, default=15

    Returns
    -------
    torch.Tensor
        A float32 scalar (float64 for float64 inputs).
    """
    return adversarial + cycle_weight * cycle + identity_weight * identity
