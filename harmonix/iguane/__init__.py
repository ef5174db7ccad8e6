"""IGUANe: a 3-D many-to-one CycleGAN for multi-site brain MRI harmonization."""

from harmonix.iguane.model.networks import Generator3D, MADInstanceNorm3d, PatchDiscriminator3D
from harmonix.iguane.training.config import CPU_RECIPE

__all__ = ["CPU_RECIPE", "Generator3D", "MADInstanceNorm3d", "PatchDiscriminator3D"]
