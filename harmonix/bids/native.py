"""``to-native --bids-out``: template-space derivatives back on their raw scans' grids."""

from __future__ import annotations

import json
import os
from pathlib import Path

from harmonix.batch import sidecar_path
from harmonix.bids.derivatives import (
    DerivativeDataset,
    native_path,
    preprocessed_paths,
    read_sidecar,
    without,
)
from harmonix.bids.names import parse_name
from harmonix.io import atomic_write, save_img
from harmonix.preprocessing.template import TEMPLATE_SPACE

__all__ = ["derivatives_to_native", "to_native_bids"]


def _native_target(dataset: DerivativeDataset, img: Path, overwrite: bool) -> Path:
    """Where the native-space version of ``img`` goes; refused before anything is written."""
    entities, suffix, _ = parse_name(img.name)
    if "space" not in entities:
        raise ValueError(
            f"'{img.name}' has no space- entity: to-native maps a template-space image "
            f"(e.g. ..._space-{TEMPLATE_SPACE}_desc-harmonized_T1w.nii.gz) back to its scan."
        )
    out = dataset.root / native_path(entities, suffix)
    if out.exists() and not overwrite:
        raise FileExistsError(f"'{out}' exists; pass overwrite=True (--overwrite) to replace it.")
    return out


def _write_native(
    dataset: DerivativeDataset,
    img: Path,
    transform: str | os.PathLike,
    mask: str | os.PathLike | None,
    rescale: bool,
    out: Path,
) -> Path:
    from harmonix.preprocessing import to_native

    result = to_native(img, transform, mask=mask, rescale=rescale)
    sidecar = {
        "Description": f"{img.name} mapped back onto the grid of its source scan by harmonix.",
        "Sources": [dataset.source(p) for p in (img, transform, mask) if p is not None],
        "SkullStripped": True
        if mask is not None
        else read_sidecar(img).get("SkullStripped", True),
    }
    with atomic_write(sidecar_path(out)) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return save_img(result, out, overwrite=True)


def to_native_bids(
    img: str | os.PathLike,
    transform: str | os.PathLike,
    bids_out: str | os.PathLike,
    *,
    mask: str | os.PathLike | None = None,
    rescale: bool = False,
    overwrite: bool = False,
) -> Path:
    """Map a template-space BIDS derivative back onto its raw scan's grid, BIDS-named.

    ``sub-01_space-MNI152NLin2009aSym_desc-harmonized_T1w.nii.gz`` becomes
    ``sub-01_desc-harmonized_T1w.nii.gz`` (no ``space-``: the source scan's space) in
    ``bids_out``, with a sidecar whose ``Sources`` name the image, the transform and the
    mask. :func:`derivatives_to_native` does it for every harmonized image of a folder.

    Parameters
    ----------
    img : str or path-like
        A template-space image with a BIDS name (e.g. from ``transform --bids-out``).
    transform : str or path-like
        The scan's preprocessing sidecar (``…_desc-preproc_T1w.json``) or ``*_prep.json``.
    bids_out : str or path-like
        The derivatives folder (not a raw dataset).
    mask : str or path-like, optional
        The native brain mask (``…_desc-brain_mask.nii.gz``); voxels outside become 0.
    rescale : bool, default=False
        Undo the median normalization.
    overwrite : bool, default=False
        Replace an existing output.

    Returns
    -------
    pathlib.Path
        The written image.
    """
    img = Path(img)
    dataset = DerivativeDataset(bids_out)
    out = _native_target(dataset, img, overwrite)
    written = _write_native(dataset, img, transform, mask, rescale, out)
    dataset.write_description()
    return written


def derivatives_to_native(
    bids_dir: str | os.PathLike,
    *,
    desc: str = "harmonized",
    rescale: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Map every template-space ``desc-<desc>`` T1w image of a harmonix derivatives folder
    back onto its raw scan's grid (``to-native --bids-out DIR`` without ``--input``).

    Each ``…_space-MNI152NLin2009aSym_desc-harmonized_T1w.nii.gz`` is mapped with the
    transform in its scan's preprocessing sidecar and masked with its scan's brain mask,
    both found by name in the same folder (``preprocess --bids-out`` wrote them), and
    written as :func:`to_native_bids` does.

    Parameters
    ----------
    bids_dir : str or path-like
        The derivatives folder holding the preprocessed and harmonized images.
    desc : str, default="harmonized"
        Which images to map back.
    rescale : bool, default=False
        Undo the median normalization.
    overwrite : bool, default=False
        Replace existing outputs.

    Returns
    -------
    list of pathlib.Path
        The written images.

    Raises
    ------
    ValueError
        If the folder holds no such image, or an image's preprocessing sidecar or mask is
        missing (all are checked before anything is written).
    """
    dataset = DerivativeDataset(bids_dir)
    pattern = f"sub-*/**/anat/*_space-{TEMPLATE_SPACE}_desc-{desc}_T1w.nii.gz"
    images = sorted(dataset.root.glob(pattern))
    if not images:
        raise ValueError(f"No {pattern.rsplit('/', 1)[-1]} image in '{dataset.root}'.")
    jobs, missing = [], []
    for img in images:
        source = without(parse_name(img.name)[0], "space", "desc")
        files = {k: dataset.root / v for k, v in preprocessed_paths(source).items()}
        absent = [files[k].name for k in ("json", "native_mask") if not files[k].is_file()]
        if absent:
            missing.append(f"{img.name} (no {', '.join(absent)})")
        jobs.append((img, files["json"], files["native_mask"]))
    if missing:
        raise ValueError(
            f"The preprocessing files of {len(missing)} image(s) are not in '{dataset.root}': "
            f"{'; '.join(missing[:3])}. Run harmonix preprocess --bids-out into that folder, "
            "or map images one at a time with --input, --transform and --mask."
        )
    targets = [_native_target(dataset, img, overwrite) for img, _, _ in jobs]
    written = [
        _write_native(dataset, img, transform, mask, rescale, out)
        for (img, transform, mask), out in zip(jobs, targets)
    ]
    dataset.write_description()
    return written
