"""Preprocessing: grid and intensity helpers, and the raw T1 → IGUANe-ready chain.

:mod:`harmonix.preprocessing.grid` holds the light helpers IGUANe uses on images that are
already in MNI space (median normalization, crop/pad with an exact inverse). The chain
that starts from a raw scanner T1 lives in :mod:`harmonix.preprocessing.chain`
(:class:`T1Preprocessor`, one scan), :mod:`harmonix.preprocessing.files` (many scans,
:func:`preprocess_manifest`) and :mod:`harmonix.preprocessing.outputs` (what it returns, and
:func:`to_native` for the way back); it needs the optional dependencies of
``pip install "harmonix[preprocess]"`` (deepbet, SimpleITK), imported only when a chain
runs.
"""

from harmonix.preprocessing import grid
from harmonix.preprocessing.chain import T1Preprocessor
from harmonix.preprocessing.files import preprocess_files, preprocess_manifest
from harmonix.preprocessing.grid import *  # noqa: F403 (grid.__all__, handed on below)
from harmonix.preprocessing.outputs import PreprocessResult, TemplateTransform, to_native
from harmonix.preprocessing.qc import QCFailedError
from harmonix.preprocessing.simulate import move_scan, rigid_matrix

__all__ = [
    *grid.__all__,  # grid and intensity helpers
    # the raw T1 chain and the way back
    "T1Preprocessor",
    "PreprocessResult",
    "TemplateTransform",
    "to_native",
    "QCFailedError",
    "preprocess_files",
    "preprocess_manifest",
    "move_scan",
    "rigid_matrix",
]
