"""Intensity normalization baselines: each image mapped on its own to a standard scale.

- :mod:`harmonix.intensity.histogram_matching`: :class:`HistogramMatchingHarmonizer`,
  Nyúl–Udupa piecewise-linear histogram matching;
- :mod:`harmonix.intensity.whitestripe`: :class:`WhiteStripeHarmonizer`, WhiteStripe
  (normal-appearing white matter) standardization;
- :mod:`harmonix.intensity.landmarks`: the percentile landmarks and their map, shared by
  histogram matching and IGUANe's input normalization;
- ``_voxelstats``: exact order statistics of brain voxels, fast.
"""
