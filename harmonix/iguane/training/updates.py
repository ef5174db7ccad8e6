"""One IGUANe update as one module: what :class:`~torch.nn.parallel.DistributedDataParallel`
wraps in a distributed training (one forward call per backward pass).
"""

from __future__ import annotations

import torch
from torch import nn

from harmonix.iguane.model.losses import (
    cycle_loss,
    discriminator_loss,
    generator_adversarial_loss,
    generator_loss,
    identity_loss,
)

__all__ = ["DiscriminatorStep", "GeneratorStep", "masked"]


def masked(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A generator output re-masked (background 0)."""
    return torch.where(mask, out, torch.zeros((), dtype=out.dtype, device=out.device))


class DiscriminatorStep(nn.Module):
    """Loss of one source site's two discriminators on real and generated batches."""

    def __init__(self, disc_ref: nn.Module, disc_src: nn.Module) -> None:
        super().__init__()
        self.disc_ref = disc_ref
        self.disc_src = disc_src

    def forward(
        self, src: torch.Tensor, fake_src: torch.Tensor, ref: torch.Tensor, fake_ref: torch.Tensor
    ) -> torch.Tensor:
        return discriminator_loss(self.disc_src(src), self.disc_src(fake_src)) + (
            discriminator_loss(self.disc_ref(ref), self.disc_ref(fake_ref))
        )


class GeneratorStep(nn.Module):
    """Joint loss of the generator to the reference site and one site's generator to it.

    The discriminators judge but are not trained here: they are kept in a tuple, so they
    are not sub-modules (and not part of a DistributedDataParallel wrapper of this step).
    """

    def __init__(
        self,
        to_reference: nn.Module,
        to_source: nn.Module,
        disc_ref: nn.Module,
        disc_src: nn.Module,
        cycle_weight: float,
        identity_weight: float,
    ) -> None:
        super().__init__()
        self.to_reference = to_reference
        self.to_source = to_source
        self.discs = (disc_ref, disc_src)
        self.cycle_weight = cycle_weight
        self.identity_weight = identity_weight

    def forward(
        self, src: torch.Tensor, ms: torch.Tensor, ref: torch.Tensor, mr: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        to_ref, to_src = self.to_reference, self.to_source
        disc_ref, disc_src = self.discs
        fake_ref = masked(to_ref(src), ms)
        fake_src = masked(to_src(ref), mr)
        adv = generator_adversarial_loss(disc_ref(fake_ref)) + generator_adversarial_loss(
            disc_src(fake_src)
        )
        cyc = cycle_loss(src, masked(to_src(fake_ref), ms), ref, masked(to_ref(fake_src), mr))
        ident = identity_loss(ref, masked(to_ref(ref), mr)) + identity_loss(
            src, masked(to_src(src), ms)
        )
        loss = generator_loss(
            adv,
            cyc,
            ident,
            cycle_weight=self.cycle_weight,
            identity_weight=self.identity_weight,
        )
        return loss, adv, cyc, ident
