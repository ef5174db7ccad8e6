"""The IGUANe networks: the generator, the patch discriminator and their losses."""
