"""ComBat with covariates, on voxels or on tables of features: :class:`ComBatHarmonizer`."""

from harmonix.combat.estimator import ComBatHarmonizer

__all__ = ["ComBatHarmonizer"]
