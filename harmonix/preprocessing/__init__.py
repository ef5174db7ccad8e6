"""Preprocessing: grid and intensity helpers, and the raw T1 → IGUANe-ready chain.

:mod:`harmonix.preprocessing.grid` holds the light helpers IGUANe uses on images that are
already in MNI space (median normalization, crop/pad with an exact inverse). The chain
that starts from a raw scanner T1 lives in :mod:`harmonix.preprocessing.chain`; it needs
the optional dependencies of ``pip install "harmonix[preprocess]"`` (deepbet, SimpleITK),
imported only when a chain runs.
"""

from harmonix.preprocessing.grid import (
    IGUANE_FALLBACK_SHAPE,
    IGUANE_SHAPE,
    GridChange,
    crop_or_pad,
    median_normalize,
    pad_to_multiple,
    restore_grid,
)

__all__ = [
    "IGUANE_SHAPE",
    "IGUANE_FALLBACK_SHAPE",
    "GridChange",
    "crop_or_pad",
    "median_normalize",
    "pad_to_multiple",
    "restore_grid",
]
