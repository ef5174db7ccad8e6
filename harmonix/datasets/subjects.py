"""Subjects: the template deformed (random affine and B-spline displacement) and aged.

A subject is computed once and scanned at every site; with a diagnosis, its disease and
sex effects are applied too (:mod:`~harmonix.datasets.biology`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from harmonix.datasets.anatomy import _ORIGIN, _Anatomy, _grid_mm
from harmonix.datasets.biology import (
    _ATROPHY_MAX,
    _ATROPHY_PACE,
    _ATROPHY_RATE,
    _DISEASE_LOSS,
    _SEX_GM_LOSS,
    _atrophy_weight,
    _disease_weight,
    _sex_weight,
)
from harmonix.datasets.fields import _bspline_field

_N_CONTROL = 7  # control points per axis of the subject deformation
_DISPLACEMENT_RMS_MM = (1.0, 2.5)
_AFFINE_RANGE = 0.03


@dataclass
class _Subject:
    flat: np.ndarray  # flat indices of the subject's brain voxels
    bbox: tuple[slice, slice, slice]
    local: np.ndarray  # flat indices of the brain voxels inside the bbox
    wm: np.ndarray  # values at ``flat`` (float32)
    gm: np.ndarray
    csf: np.ndarray
    texture: np.ndarray
    params: dict[str, Any]


def _draw_subject(
    anat: _Anatomy,
    rng: np.random.Generator,
    age: float,
    sex: str | None = None,
    severity: float = 0.0,
) -> _Subject:
    shape = anat.mask.shape
    res = anat.resolution

    # Deformation: output voxel p samples the template at c + A (p - c) + d(p), with d a
    # cubic B-spline field (separable tensor products on the full grid, in voxels).
    rms_mm = rng.uniform(*_DISPLACEMENT_RMS_MM)
    coef = rng.standard_normal((3, _N_CONTROL, _N_CONTROL, _N_CONTROL))
    disp = np.empty((3, *shape), np.float32)
    for d in range(3):
        disp[d] = _bspline_field(coef[d], shape)
    sq = disp[0] ** 2
    sq += disp[1] ** 2
    sq += disp[2] ** 2
    factor = rms_mm / res / math.sqrt(float(sq.mean(dtype=np.float64)))
    disp *= np.float32(factor)
    max_disp = math.sqrt(float(sq.max())) * factor
    lin = np.eye(3) + rng.uniform(-_AFFINE_RANGE, _AFFINE_RANGE, (3, 3))
    pace = rng.uniform(*_ATROPHY_PACE)

    # Only voxels close enough to the template brain can land inside it.
    max_lin = float(np.linalg.norm(lin - np.eye(3), 2)) * (anat.radius + max_disp + 2.0)
    support = np.flatnonzero(anat.distance.reshape(-1) <= max_disp + max_lin + 2.0)
    c = anat.center.astype(np.float32)[:, None]
    q = lin.astype(np.float32) @ (np.take(anat.coords, support, axis=1) - c)
    q += c
    flat_disp = disp.reshape(3, -1)
    for d in range(3):
        q[d] += np.take(flat_disp[d], support)

    def warp(vol: np.ndarray, coords: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(vol, coords, order=1, mode="constant", prefilter=False)

    # The tissue maps sum to the binary template mask, so WM = warped mask - GM - CSF: warp
    # the mask first, then GM, CSF and texture only where the subject's brain is.
    total = warp(anat.maskf, q)
    inside = total > 0.5
    flat = support[inside]
    total = total[inside]
    q = q[:, inside]
    gm, csf, texture = (warp(v, q) for v in (anat.gm, anat.csf, anat.texture))
    wm = total - gm - csf
    np.maximum(wm, 0.0, out=wm)

    # Ageing: a fraction of GM, weighted by the template position, turns into CSF.
    y_mm = np.float32(_ORIGIN[1]) + np.float32(res) * q[1]
    lost = _atrophy_weight(y_mm)
    lost *= np.float32(_ATROPHY_RATE * pace * (age - 20.0))
    np.clip(lost, 0.0, _ATROPHY_MAX, out=lost)
    lost *= gm
    gm -= lost
    csf += lost
    # Disease and sex (only when drawn): GM turning into CSF with patterns of their own.
    if sex is not None:
        x_mm, _, z_mm = _grid_mm(anat, q)
        for loss, weight in (
            (_DISEASE_LOSS * severity, lambda: _disease_weight(x_mm, y_mm, z_mm)),
            (_SEX_GM_LOSS if sex == "M" else 0.0, lambda: _sex_weight(z_mm)),
        ):
            if loss > 0:
                lost = weight()
                lost *= np.float32(loss)
                np.clip(lost, 0.0, _ATROPHY_MAX, out=lost)
                lost *= gm
                gm -= lost
                csf += lost
    # Renormalise partial volumes so that tissues sum to 1 inside the brain.
    total = wm + gm + csf
    wm /= total
    gm /= total
    csf /= total

    ijk = np.unravel_index(flat, shape)
    bbox = tuple(slice(int(a.min()), int(a.max()) + 1) for a in ijk)
    box_shape = tuple(s.stop - s.start for s in bbox)
    local = np.ravel_multi_index(tuple(a - s.start for a, s in zip(ijk, bbox)), box_shape)
    params = {
        "age": age,
        **({} if sex is None else {"sex": sex, "disease_severity": float(severity)}),
        "atrophy_pace": float(pace),
        "displacement_rms_mm": float(rms_mm),
        "affine": lin.tolist(),
    }
    return _Subject(flat, bbox, local, wm, gm, csf, texture, params)
