"""IGUANe: a 3-D many-to-one CycleGAN for multi-site brain MRI harmonization."""

from harmonix.iguane.networks import Generator3D, MADInstanceNorm3d, PatchDiscriminator3D
from harmonix.iguane.recipes import CPU_RECIPE

__all__ = ["CPU_RECIPE", "Generator3D", "MADInstanceNorm3d", "PatchDiscriminator3D"]
