"""Quality control of the preprocessing chain: numbers, flags and a figure per scan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from harmonix.io import atomic_write

__all__ = [
    "QC_FAIL_LIMITS",
    "QC_LIMITS",
    "QCFailedError",
    "failures",
    "flags",
    "flag_outliers",
    "qc_numbers",
    "save_qc_png",
]

#: Limits of QC numbers: ``name -> (low, high)``.
Limits = dict[str, tuple[float, float]]

#: Soft limits of the QC numbers: a scan outside them is flagged (and still processed).
QC_LIMITS: Limits = {
    "mask_volume_ml": (800.0, 2300.0),  # adult brains with cerebellum: ~1000-2000 ml
    # Colin27 registered to ICBM152 2009a: 0.62 (0.59 at 0.9x its size, 0.46 at 0.82x)
    "template_ncc": (0.45, 1.0),
    "template_dice": (0.85, 1.0),  # brain mask against the template's brain mask
    "negative_fraction": (0.0, 0.01),  # voxels below 0 in the scan, set to 0
}
#: Hard limits: a scan outside them is reported as failed (no output, not in the
#: manifest). Calibrated in ``benchmarks/results/preprocess_qc.md``: good scans (brains
#: 0.55-1.26x Colin27's volume, tilted, noisy, biased, thick slices, other T1 contrasts)
#: lie well inside, noise, phantoms and inverted contrast outside.
QC_FAIL_LIMITS: Limits = {
    "mask_volume_ml": (300.0, 3000.0),
    "template_ncc": (0.3, 1.0),
    "template_dice": (0.7, 1.0),
}
#: Robust z-score (median / MAD) beyond which a scan is an outlier of its batch.
OUTLIER_Z = 3.5
#: The QC numbers compared with the batch by :func:`flag_outliers`.
OUTLIER_NUMBERS = ("mask_volume_ml", "template_ncc", "template_dice")


class QCFailedError(ValueError):
    """A scan whose QC numbers lie beyond the hard limits (:data:`QC_FAIL_LIMITS`).

    Attributes
    ----------
    qc : dict
        The QC numbers measured before the refusal.
    """

    def __init__(self, message: str, qc: dict[str, Any]) -> None:
        super().__init__(message)
        self.qc = dict(qc)


#: Range of the brain-size factor the QC compares the template at.
SCALE_RANGE = (0.7, 1.3)


def qc_numbers(
    image: np.ndarray,
    mask: np.ndarray,
    template: Any,
    mask_volume_ml: float,
    *,
    at_brain_size: bool = True,
) -> dict[str, Any]:
    """QC numbers of a registered brain on the template grid, whatever the brain's size.

    The registration is rigid, so a brain smaller or larger than the template's keeps its
    size: compared with the template as is, a normal brain of 1,100 ml (the template's is
    1,880 ml) would look half-misregistered (correlation 0.32 instead of 0.64 for the same
    head at the template's size). The template is therefore compared at the brain's size:
    scaled about its brain's centre by ``template_scale``, the cube root of the volume
    ratio (within 0.7-1.3). Pose errors are not scaled away: a brain rotated or shifted
    off its registration still correlates poorly.

    Parameters
    ----------
    image : ndarray of shape (i, j, k)
        The registered brain (background 0) on ``template``'s grid.
    mask : ndarray of bool, same shape
        Its brain mask.
    template : harmonix.preprocessing.template.Template
        The registration target, on the same grid.
    mask_volume_ml : float
        Brain mask volume in the scan's own space.
    at_brain_size : bool, default=True
        Compare the template at the brain's size (False: as it is, ``template_scale``
        1; the former definition, kept to show the difference).

    Returns
    -------
    dict
        ``mask_volume_ml``, ``template_scale``, ``template_ncc`` (normalized
        cross-correlation with the template inside the template's brain mask) and
        ``template_dice`` (Dice overlap of the masks), both at the brain's size.
    """
    inside = template.mask
    ratio = float(mask.sum()) / max(float(inside.sum()), 1.0)
    scale = float(np.clip(ratio ** (1 / 3), *SCALE_RANGE)) if at_brain_size else 1.0
    points = np.argwhere(inside).T.astype(np.float64)  # template voxels ...
    centre = points.mean(axis=1, keepdims=True)
    there = centre + scale * (points - centre)  # ... and where they lie at the brain's size
    a = ndimage.map_coordinates(np.asarray(image, np.float32), there, order=1, cval=0.0)
    a = a.astype(np.float64)
    b = template.data[inside].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    ncc = float((a * b).sum() / denom) if denom > 0 else 0.0
    both = ndimage.map_coordinates(mask.astype(np.float32), there, order=1, cval=0.0) > 0.5
    # Dice in the template's frame: the brain's volume shrinks by scale**3 there
    dice = 2.0 * float(both.sum()) / (float(mask.sum()) / scale**3 + float(inside.sum()))
    return {
        "mask_volume_ml": round(float(mask_volume_ml), 1),
        "template_scale": round(scale, 3),
        "template_ncc": round(ncc, 4),
        "template_dice": round(dice, 4),
    }


def flags(numbers: dict[str, Any], limits: Limits | None = None) -> list[str]:
    """Names of the QC numbers outside their limits (:data:`QC_LIMITS`).

    Parameters
    ----------
    numbers : dict
        Output of :func:`qc_numbers`.
    limits : dict, optional
        ``name -> (low, high)``; default :data:`QC_LIMITS`.

    Returns
    -------
    list of str
        E.g. ``["template_ncc<0.8"]``; empty when every number is within its limits.
    """
    out = []
    for name, (low, high) in (QC_LIMITS if limits is None else limits).items():
        value = numbers.get(name)
        if value is None:
            continue
        if value < low:
            out.append(f"{name}<{low:g}")
        elif value > high:
            out.append(f"{name}>{high:g}")
    return out


def failures(numbers: dict[str, Any], limits: Limits | None = None) -> list[str]:
    """Names of the QC numbers beyond the hard limits (:data:`QC_FAIL_LIMITS`).

    Parameters
    ----------
    numbers : dict
        Output of :func:`qc_numbers`.
    limits : dict, optional
        ``name -> (low, high)`` replacing those of :data:`QC_FAIL_LIMITS`.

    Returns
    -------
    list of str
        E.g. ``["template_ncc<0.3"]``; empty for a scan that passes.
    """
    return flags(numbers, {**QC_FAIL_LIMITS, **(limits or {})})


def flag_outliers(table: pd.DataFrame, z: float = OUTLIER_Z) -> pd.DataFrame:
    """Add batch outliers to a QC table's ``flags`` column.

    A scan whose QC number lies more than ``z`` robust standard deviations (1.4826 × MAD)
    from the batch median is flagged ``"<name> outlier"``, on top of the absolute limits.
    Needs at least 5 scans.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per scan with the :data:`OUTLIER_NUMBERS` columns and a ``flags`` column
        (``;``-separated strings).
    z : float, default=3.5

    Returns
    -------
    pandas.DataFrame
        A copy with the updated ``flags`` and a boolean ``flagged`` column.
    """
    table = table.copy()
    if "flags" not in table.columns:
        table["flags"] = ""
    table["flags"] = table["flags"].fillna("").astype(str)
    if len(table) >= 5:
        for name in OUTLIER_NUMBERS:
            if name not in table.columns:
                continue
            values = pd.to_numeric(table[name], errors="coerce")
            center = values.median()
            spread = 1.4826 * (values - center).abs().median()
            if not np.isfinite(spread) or spread <= 0:
                continue
            far = ((values - center).abs() / spread > z).fillna(False)
            table.loc[far, "flags"] = [
                ";".join([f for f in old.split(";") if f] + [f"{name} outlier"])
                for old in table.loc[far, "flags"]
            ]
    table["flagged"] = table["flags"] != ""
    return table


def _edges(data: np.ndarray) -> np.ndarray:
    """Strong intensity edges of a slice (top 10 % of the gradient magnitude)."""
    grad = np.hypot(ndimage.sobel(data, 0), ndimage.sobel(data, 1))
    inside = grad[data > 0]
    if inside.size == 0:
        return np.zeros(data.shape, dtype=bool)
    return grad > np.percentile(inside, 90)


def save_qc_png(
    image: nib.Nifti1Image, mask: nib.Nifti1Image, path: str | Path, *, title: str = ""
) -> Path:
    """Draw three slices of a preprocessed image with its mask outline and template edges.

    Red: the brain mask's outline. Cyan: strong edges of the ICBM152 template at the same
    place; on a good registration they follow the image's own tissue boundaries.

    Parameters
    ----------
    image, mask : nibabel.Nifti1Image
        The chain's ``image`` and ``mask`` (template grid).
    path : str or path-like
        The PNG to write (atomically).
    title : str, optional

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    from harmonix.preprocessing.template import load_template, resample

    template = load_template()
    tdata = resample(template.data, template.affine, image.affine, image.shape)
    data = np.asarray(image.dataobj, dtype=np.float32)
    brain = np.asarray(mask.dataobj) > 0
    center = (
        [int(round(c)) for c in ndimage.center_of_mass(brain)]
        if brain.any()
        else [n // 2 for n in data.shape]
    )
    vmax = float(np.percentile(data[brain], 99)) if brain.any() else 1.0
    fig = Figure(figsize=(9, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    for col, axis in enumerate((2, 1, 0)):  # axial, coronal, sagittal
        index = [slice(None)] * 3
        index[axis] = center[axis]
        ax = fig.add_subplot(1, 3, col + 1)
        ax.imshow(np.rot90(data[tuple(index)]), cmap="gray", vmin=0, vmax=vmax)
        edges = np.ma.masked_where(
            ~np.rot90(_edges(tdata[tuple(index)])), np.ones(np.rot90(data[tuple(index)]).shape)
        )
        ax.imshow(edges, cmap=ListedColormap(["cyan"]), alpha=0.6, interpolation="nearest")
        ax.contour(
            np.rot90(brain[tuple(index)].astype(float)), levels=[0.5], colors="red", linewidths=1.2
        )
        ax.set_axis_off()
    fig.suptitle(title or "preprocessing QC", fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
