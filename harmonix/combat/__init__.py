"""ComBat with covariates, on voxels or on tables of features: :class:`ComBatHarmonizer`.

Modules: :mod:`~harmonix.combat.estimator` (the estimator: parameters, covariate design,
the fitted model it reads, ``site_agreement``), its parts mixed into it: ``_fit`` (design,
regressions, site effects shrunk by empirical Bayes), ``_transform`` (each site's effects
chosen and removed, image by image or row by row), ``_site_check`` (does a labelled group
agree with its training site?), ``_unseen`` (the effects of a site unseen in fit), and
below them ``_voxels`` (per-image voxel access, the brain rim) and ``_math`` (the numerical
core, neuroHarmonize's steps).
"""

from harmonix.combat.estimator import ComBatHarmonizer

__all__ = ["ComBatHarmonizer"]
