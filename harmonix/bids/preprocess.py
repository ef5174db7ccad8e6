"""``preprocess --bids-out``: the raw T1 chain writing a BIDS derivatives dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from harmonix.bids.derivatives import DerivativeDataset, check_distinct, preprocessed_paths
from harmonix.bids.manifest import manifest_entities
from harmonix.io import atomic_write, read_manifest
from harmonix.preprocessing.template import TEMPLATE_SPACE

__all__ = ["PREPROC_MANIFEST", "PREPROC_QC", "preprocess_to_bids"]

#: Names of the dataset-level files ``preprocess --bids-out`` writes.
PREPROC_QC = "desc-preproc_qc.tsv"
PREPROC_MANIFEST = "desc-preproc_manifest.csv"


def preprocess_to_bids(
    manifest: str | os.PathLike,
    bids_out: str | os.PathLike,
    **kwargs: Any,
) -> tuple[Path, pd.DataFrame]:
    """Preprocess the scans of a manifest into a BIDS derivatives folder.

    The BIDS counterpart of :func:`harmonix.preprocessing.preprocess_manifest`: the same
    chain, resumable the same way, with the files named as :func:`preprocessed_paths`
    says, ``desc-preproc_qc.tsv`` (the QC table, one row per scan, sources as BIDS URIs)
    and ``desc-preproc_manifest.csv`` (the preprocessed images of the scans that did not
    fail, every column of the input manifest kept, ``space`` and ``desc`` set) at the top.

    Parameters
    ----------
    manifest : str or path-like
        A manifest with BIDS entity columns (e.g. from ``harmonix bids-manifest``).
    bids_out : str or path-like
        The derivatives folder (not a raw dataset).
    **kwargs
        Passed to :func:`harmonix.preprocessing.preprocess_files` (``preprocessor``,
        ``n_jobs``, ``overwrite``, ``qc_png``, ``verbose``).

    Returns
    -------
    manifest : pathlib.Path
        The written ``desc-preproc_manifest.csv``.
    qc : pandas.DataFrame
        The QC table (as :func:`~harmonix.preprocessing.preprocess_files` returns it, with
        the ``site`` column).
    """
    from harmonix.preprocessing import preprocess_files

    man = read_manifest(manifest)
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    rows.columns = [str(c).strip().lower() for c in rows.columns]
    ents = manifest_entities(rows)
    dataset = DerivativeDataset(bids_out)
    files = [preprocessed_paths(e) for e in ents]
    check_distinct([f["image"] for f in files], man.paths)
    sources = [dataset.source(p) for p in man.paths]
    metadata = [
        {
            "json": {
                "Description": "T1w image skull-stripped (deepbet), N4-corrected, rigidly "
                f"registered to {TEMPLATE_SPACE} (1 mm), brain median scaled to 500 and "
                "cropped by harmonix preprocess.",
                "Sources": [src],
                "SkullStripped": True,
            },
            "mask_json": {
                "Description": "Brain mask on the grid of the source T1w image.",
                "Type": "Brain",
                "Sources": [src],
            },
        }
        for src in sources
    ]
    table = preprocess_files(
        man.paths,
        dataset.root,
        outputs=[{k: Path(v) for k, v in f.items()} for f in files],
        metadata=metadata,
        **kwargs,
    )
    table.insert(2, "site", man.sites)
    dataset.write_description()
    ok = (table["status"] != "failed").to_numpy()
    out_rows = rows.copy()
    out_rows["path"] = [f["image"].as_posix() for f in files]
    out_rows["space"] = TEMPLATE_SPACE
    out_rows["desc"] = "preproc"
    out_rows = out_rows[ok]
    tsv = table.drop(columns=["stem"]).copy()
    tsv.insert(0, "filename", [f["image"].as_posix() for f in files])
    tsv["source"] = sources
    with atomic_write(dataset.root / PREPROC_QC) as tmp:
        tsv.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    out = dataset.root / PREPROC_MANIFEST
    with atomic_write(out) as tmp:
        out_rows.to_csv(tmp, index=False)
    return out, table
