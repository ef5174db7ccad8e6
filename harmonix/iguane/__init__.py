"""IGUANe: a 3-D many-to-one CycleGAN for multi-site brain MRI harmonization."""

from harmonix.iguane.config import CPU_RECIPE
from harmonix.iguane.networks import Generator3D, MADInstanceNorm3d, PatchDiscriminator3D

__all__ = ["CPU_RECIPE", "Generator3D", "MADInstanceNorm3d", "PatchDiscriminator3D"]
