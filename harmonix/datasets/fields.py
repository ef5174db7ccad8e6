"""Smooth random fields: tensor-product cubic B-splines on a coarse control grid.

They deform the subjects (:mod:`~harmonix.datasets.subjects`) and make the bias fields of
the sites and scans (:mod:`~harmonix.datasets.sites`).
"""

from __future__ import annotations

import functools

import numpy as np

from harmonix.datasets.anatomy import _readonly


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    out = np.zeros_like(t)
    near = t < 1
    far = (t >= 1) & (t < 2)
    out[near] = 2.0 / 3.0 - t[near] ** 2 + 0.5 * t[near] ** 3
    out[far] = (2.0 - t[far]) ** 3 / 6.0
    return out


@functools.lru_cache(maxsize=16)
def _bspline_basis(n: int, n_control: int) -> np.ndarray:
    """(n, n_control) cubic B-spline weights with control points spanning the axis."""
    pos = np.linspace(0.0, n_control - 1.0, n)
    basis = _cubic_bspline(pos[:, None] - np.arange(n_control)[None, :])
    return _readonly(basis.astype(np.float32))


def _bspline_field(coef: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Evaluate a tensor-product cubic B-spline with coefficients ``coef`` (c, c, c)."""
    bx, by, bz = (_bspline_basis(n, coef.shape[d]) for d, n in enumerate(shape))
    out = np.tensordot(coef.astype(np.float32), bz, axes=([2], [1]))  # (cx, cy, k)
    out = np.tensordot(by, out, axes=([1], [1]))  # (j, cx, k)
    out = np.tensordot(bx, out, axes=([1], [1]))  # (i, j, k)
    return out
