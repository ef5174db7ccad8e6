"""Per-image voxel helpers of :class:`~harmonix.combat.ComBatHarmonizer`: reading the
modelled voxels from C- or F-ordered volumes, the output stack, and the brain rim (brain
voxels outside ``voxel_mask_``), mapped by a least-squares line."""

from __future__ import annotations

import numpy as np


def _c_to_f_index(flat_c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Fortran-order flat indices of the voxels with C-order flat indices ``flat_c``."""
    rest = flat_c.astype(np.int64)
    out = np.zeros_like(rest)
    f_stride = int(np.prod(shape[:-1]))
    for axis in range(len(shape) - 1, -1, -1):  # last axis first (C's fastest)
        rest, coord = np.divmod(rest, shape[axis])
        out += coord * f_stride
        f_stride //= shape[axis - 1] if axis else 1
    return out


class FlatIndex:
    """Voxels given by C-order flat indices, read from C- or F-ordered volumes without
    copying them (NIfTI data is usually F-ordered)."""

    def __init__(self, flat_c: np.ndarray, shape: tuple[int, ...]):
        self.c = flat_c
        self.shape = shape
        self._f: np.ndarray | None = None

    def view(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A 1-D view of ``arr`` (a copy if it is neither C- nor F-contiguous) and the
        matching indices."""
        if arr.flags.c_contiguous:
            return arr.reshape(-1), self.c
        if arr.flags.f_contiguous:
            if self._f is None:
                self._f = _c_to_f_index(self.c, self.shape)
            return arr.ravel(order="F"), self._f
        return np.ascontiguousarray(arr).reshape(-1), self.c

    def take(self, arr: np.ndarray, select: np.ndarray | None = None) -> np.ndarray:
        flat, idx = self.view(arr)
        return flat[idx if select is None else idx[select]]


#: Values converted to float64 at a time by :func:`line_fit` (a small reused buffer).
LINE_FIT_CHUNK = 1 << 16


def line_fit(y: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``z`` on ``y`` over the voxels where
    ``y != 0`` (``z`` is 0 where ``y`` is); slope 1 and a mean shift when ``y`` is constant
    there. Sums in float64, over all voxels (the absent ones add 0), chunk by chunk."""
    n = 0
    sy = sz = syy = syz = 0.0
    a, b = np.empty(LINE_FIT_CHUNK), np.empty(LINE_FIT_CHUNK)
    for start in range(0, y.size, LINE_FIT_CHUNK):
        stop = min(start + LINE_FIT_CHUNK, y.size)
        ya, za = a[: stop - start], b[: stop - start]
        ya[...] = y[start:stop]
        za[...] = z[start:stop]
        n += int(np.count_nonzero(ya))
        sy += float(ya.sum())
        sz += float(za.sum())
        syy += float(np.dot(ya, ya))
        syz += float(np.dot(ya, za))
    if n == 0:
        return 1.0, 0.0
    var = syy - sy * sy / n
    if not var > 1e-12 * syy:
        return 1.0, (sz - sy) / n
    slope = (syz - sy * sz / n) / var
    return slope, (sz - slope * sy) / n


def empty_stack(n: int, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
    """Uninitialized float32 ``(n, *shape)`` array whose items are C- or F-contiguous."""
    if not fortran:
        return np.empty((n, *shape), dtype=np.float32)
    return np.empty((n, *shape[::-1]), dtype=np.float32).transpose(0, *range(len(shape), 0, -1))


def harmonize_rim(
    data: np.ndarray,
    brain: np.ndarray,
    voxel_mask: np.ndarray,
    result: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
) -> None:
    """Map the image's brain voxels outside ``voxel_mask`` (the rim) into ``result``
    with the straight line that best fits (least squares) ComBat's map of the image's
    own ``voxel_mask`` voxels: inputs ``y``, outputs ``z`` (0 outside its brain)."""
    rim = np.greater(brain, voxel_mask)  # brain and not voxel_mask
    if not rim.any():
        return
    slope, intercept = line_fit(y, z)
    values = data[rim]
    values *= values.dtype.type(slope)  # a copy: the caller's data is not changed
    values += values.dtype.type(intercept)
    result[rim] = values
