"""The IGUANe networks: the generator, the patch discriminator, their losses, and the
official generator weights."""
