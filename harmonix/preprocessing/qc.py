"""Quality control of the preprocessing chain: numbers, flags and a figure per scan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from harmonix.io import atomic_write

__all__ = ["QC_LIMITS", "flags", "flag_outliers", "qc_numbers", "save_qc_png"]

#: Absolute limits of the QC numbers; a scan outside them is flagged.
QC_LIMITS: dict[str, tuple[float, float]] = {
    "mask_volume_ml": (800.0, 2300.0),  # adult brains with cerebellum: ~1000-2000 ml
    # Colin27 registered to ICBM152 2009a: 0.63 (deepbet mask), 0.56 (its BET brain)
    "template_ncc": (0.45, 1.0),
    "template_dice": (0.85, 1.0),  # brain mask against the template's brain mask
}
#: Robust z-score (median / MAD) beyond which a scan is an outlier of its batch.
OUTLIER_Z = 3.5


def qc_numbers(
    image: np.ndarray, mask: np.ndarray, template: Any, mask_volume_ml: float
) -> dict[str, Any]:
    """QC numbers of a registered brain on the template grid.

    Parameters
    ----------
    image : ndarray of shape (182, 218, 182)
        The registered brain (background 0).
    mask : ndarray of bool, same shape
        Its brain mask.
    template : harmonix.preprocessing.template.Template
        The registration target.
    mask_volume_ml : float
        Brain mask volume in the scan's own space.

    Returns
    -------
    dict
        ``mask_volume_ml``, ``template_ncc`` (normalized cross-correlation with the
        template inside the template's brain mask) and ``template_dice``.
    """
    inside = template.mask
    a = image[inside].astype(np.float64)
    b = template.data[inside].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    ncc = float((a * b).sum() / denom) if denom > 0 else 0.0
    dice = 2.0 * float((mask & inside).sum()) / float(mask.sum() + inside.sum())
    return {
        "mask_volume_ml": round(float(mask_volume_ml), 1),
        "template_ncc": round(ncc, 4),
        "template_dice": round(dice, 4),
    }


def flags(
    numbers: dict[str, Any], limits: dict[str, tuple[float, float]] | None = None
) -> list[str]:
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


def flag_outliers(table: pd.DataFrame, z: float = OUTLIER_Z) -> pd.DataFrame:
    """Add batch outliers to a QC table's ``flags`` column.

    A scan whose QC number lies more than ``z`` robust standard deviations (1.4826 × MAD)
    from the batch median is flagged ``"<name> outlier"``, on top of the absolute limits.
    Needs at least 5 scans.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per scan with the :data:`QC_LIMITS` columns and a ``flags`` column
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
        for name in QC_LIMITS:
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
