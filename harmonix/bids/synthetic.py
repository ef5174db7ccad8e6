"""The synthetic traveling-subject data as a BIDS dataset (no download needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from harmonix._version import __version__
from harmonix.bids.names import relative_path
from harmonix.io import atomic_write, save_img

__all__ = ["SCANNERS", "write_bids_dataset"]

#: Scanners given to the synthetic sites in turn: (Manufacturer, ManufacturersModelName,
#: MagneticFieldStrength). Past the last one, the model name gets a number.
SCANNERS: tuple[tuple[str, str, float], ...] = (
    ("Siemens", "Prisma", 3.0),
    ("GE", "DISCOVERY MR750", 3.0),
    ("Philips", "Achieva", 1.5),
    ("Siemens", "TrioTim", 3.0),
    ("Philips", "Ingenia", 3.0),
    ("GE", "Signa HDxt", 1.5),
    ("Siemens", "Avanto", 1.5),
    ("Canon", "Vantage Galan", 3.0),
)


def _scanner(index: int, params: dict[str, Any]) -> dict[str, Any]:
    maker, model, field = SCANNERS[index % len(SCANNERS)]
    if index >= len(SCANNERS):
        model = f"{model} {index // len(SCANNERS) + 1}"
    out: dict[str, Any] = {
        "Manufacturer": maker,
        "ManufacturersModelName": model,
        "MagneticFieldStrength": field,
    }
    if "slice_thickness_mm" in params:
        out["SliceThickness"] = round(float(params["slice_thickness_mm"]), 2)
    return out


def _write_json(path: Path, values: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(values, indent=2) + "\n")


def _write_tsv(path: Path, table: pd.DataFrame) -> None:
    with atomic_write(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a")


def _rescan(img: np.ndarray, snr: float, rng: np.random.Generator) -> np.ndarray:
    """A second run: the same scan with fresh noise at the site's SNR (integer values,
    brain voxels >= 1, background 0)."""
    brain = img > 0
    sigma = float(np.median(img[brain])) / snr
    out = np.where(brain, np.rint(img + rng.normal(0.0, sigma, img.shape)), 0.0)
    out[brain] = np.maximum(out[brain], 1.0)
    return out.astype(np.float32)


def write_bids_dataset(
    dataset: Any,
    out_dir: str | os.PathLike,
    *,
    n_traveling: int | None = None,
    random_state: int = 0,
) -> Path:
    """Write a synthetic data set as a BIDS dataset: a multi-site study with traveling subjects.

    Layout (``n`` subjects, ``S`` sites of :func:`harmonix.datasets.make_multisite`):

    - the first ``n_traveling`` subjects are scanned at every site, one session per site:
      ``sub-<label>/ses-<s>/anat/sub-<label>_ses-<s>_T1w.nii.gz`` (``s`` = 1..S), with a
      ``sub-<label>_sessions.tsv`` giving each session's ``site``;
    - the other subjects are scanned at one site (subject ``j`` at site ``j mod S``), with
      no session level: ``sub-<label>/anat/sub-<label>_T1w.nii.gz``;
    - the last subject has two runs (``run-1``, ``run-2``) of its first scan; run 2 is
      run 1 with fresh noise at the site's SNR;
    - each site is a scanner (:data:`SCANNERS`): the traveling subjects' sidecars are per
      image, the others' per subject (``sub-<label>/sub-<label>_T1w.json``, inherited by
      their images), and a top-level ``T1w.json`` applies to all;
    - ``participants.tsv`` holds ``participant_id``, ``age`` (and ``sex``, ``diagnosis``
      when the data set has them) and ``site`` for the single-site subjects (``n/a`` for
      the traveling ones); ``dataset_description.json`` and a ``README`` complete it.

    Parameters
    ----------
    dataset : MultisiteDataset
        From :func:`harmonix.datasets.make_multisite` (every subject at every site).
    out_dir : str or path-like
        The dataset's folder, created if needed; files in it are replaced.
    n_traveling : int, optional
        Subjects scanned at every site (default: half of them, at least one).
    random_state : int, default=0
        Seed of run 2's noise.

    Returns
    -------
    pathlib.Path
        The dataset's folder.

    Examples
    --------
    >>> from harmonix.datasets import make_multisite
    >>> from harmonix.bids import write_bids_dataset
    >>> ds = make_multisite(n_subjects=4, n_sites=3, resolution=4, random_state=0)
    >>> write_bids_dataset(ds, "bids-demo")  # doctest: +SKIP
    """
    names = list(dataset.site_names)
    subjects = list(dict.fromkeys(np.asarray(dataset.subjects).tolist()))
    n_subjects, n_sites = len(subjects), len(names)
    if len(dataset) != n_subjects * n_sites:
        raise ValueError(
            "write_bids_dataset needs every subject scanned at every site, as "
            "make_multisite makes them."
        )
    if n_traveling is None:
        n_traveling = max(1, n_subjects // 2)
    if not 1 <= int(n_traveling) <= n_subjects:
        raise ValueError(f"n_traveling must be between 1 and {n_subjects}, got {n_traveling}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(random_state)
    scanners = [_scanner(s, p) for s, p in enumerate(dataset.site_params)]
    covariates = getattr(dataset, "covariates", None)

    def image(subject_index: int, site: int) -> np.ndarray:
        return np.asarray(dataset.imgs[site * n_subjects + subject_index], dtype=np.float32)

    def save(data: np.ndarray, entities: dict[str, str]) -> None:
        img = nib.Nifti1Image(data, dataset.affine)
        img.header.set_xyzt_units("mm")
        save_img(img, out / relative_path(entities, "T1w", ".nii.gz"), overwrite=True)

    participants = []
    for j, subject in enumerate(subjects):
        label = subject.removeprefix("sub-").replace("-", "").replace("_", "")
        two_runs = j == n_subjects - 1
        if j < n_traveling:
            site_of = {s: names[s] for s in range(n_sites)}
            for s in range(n_sites):
                entities = {"subject": label, "session": str(s + 1)}
                runs = ["1", "2"] if two_runs and s == 0 else [None]
                for run in runs:
                    ents = {**entities, "run": run} if run else entities
                    _write_json(out / relative_path(ents, "T1w", ".json"), scanners[s])
                    data = image(j, s)
                    if run == "2":
                        data = _rescan(data, dataset.site_params[s].get("snr_grid", 50.0), rng)
                    save(data, ents)
            sessions = pd.DataFrame(
                {"session_id": [f"ses-{s + 1}" for s in site_of], "site": list(site_of.values())}
            )
            _write_tsv(out / f"sub-{label}" / f"sub-{label}_sessions.tsv", sessions)
            site = None
        else:
            s = j % n_sites
            site = names[s]
            _write_json(out / f"sub-{label}" / f"sub-{label}_T1w.json", scanners[s])
            for run in ["1", "2"] if two_runs else [None]:
                data = image(j, s)
                if run == "2":
                    data = _rescan(data, dataset.site_params[s].get("snr_grid", 50.0), rng)
                save(data, {"subject": label, "run": run})
        row: dict[str, Any] = {"participant_id": f"sub-{label}", "age": float(dataset.ages[j])}
        if covariates is not None:
            for column in ("sex", "diagnosis"):
                if column in covariates.columns:
                    row[column] = covariates[column].iloc[j]
        row["site"] = site
        participants.append(row)
    _write_tsv(out / "participants.tsv", pd.DataFrame(participants).round({"age": 2}))
    columns = {
        "age": {"Description": "Age at scanning", "Units": "year"},
        "site": {"Description": "Site of single-site participants (sessions.tsv: the others)"},
    }
    _write_json(out / "participants.json", columns)
    _write_json(out / "T1w.json", {"MRAcquisitionType": "3D"})
    _write_json(
        out / "dataset_description.json",
        {
            "Name": "harmonix synthetic traveling subjects",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "GeneratedBy": [{"Name": "harmonix", "Version": __version__}],
        },
    )
    with atomic_write(out / "README") as tmp:
        tmp.write_text(
            "Synthetic multi-site T1w images made by harmonix (harmonix.datasets."
            "make_multisite): subjects rendered from the ICBM152 2009a template, scanned at "
            f"{n_sites} simulated sites; {n_traveling} of {n_subjects} subjects travel to "
            "every site.\n"
        )
    return out
