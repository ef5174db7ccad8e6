"""Run the raw T1 chain over many files: parallel, resumable, with a QC table and manifest."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from harmonix.io import atomic_write, read_manifest
from harmonix.preprocessing.chain import T1Preprocessor
from harmonix.preprocessing.outputs import output_paths
from harmonix.preprocessing.qc import QC_LIMITS, QCFailedError, flag_outliers

__all__ = ["preprocess_files", "preprocess_manifest"]

_SUFFIXES = (".nii.gz", ".nii")


def _stem(path: Path) -> str:
    for suffix in _SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    raise ValueError(f"'{path}' must end with .nii or .nii.gz.")


def _done(paths: Mapping[str, Path]) -> dict[str, Any] | None:
    """The saved QC of a finished scan, or None if it must be (re)done."""
    if not (
        paths["image"].is_file() and paths["json"].is_file() and paths["native_mask"].is_file()
    ):
        return None
    try:
        return json.loads(paths["json"].read_text()).get("qc", {})
    except (json.JSONDecodeError, OSError):
        return None


def _one(
    preprocessor: T1Preprocessor,
    src: Path,
    paths: Mapping[str, Path],
    stem: str,
    qc_png: bool,
    metadata: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, Any]:
    try:
        result = preprocessor.run(src)
    except QCFailedError as exc:  # beyond a hard QC limit: the numbers say why
        return {"status": "failed", "error": " ".join(str(exc).split()), **exc.qc}
    except ValueError as exc:  # a bad scan: recorded, the batch goes on
        return {"status": "failed", "error": " ".join(str(exc).split())}
    result.save_to(paths, qc_png=qc_png, metadata=metadata, title=stem)
    return {"status": "done", "seconds": round(sum(result.timings.values()), 1), **result.qc}


def preprocess_files(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    preprocessor: T1Preprocessor | None = None,
    n_jobs: int = 1,
    overwrite: bool = False,
    qc_png: bool = True,
    verbose: bool = True,
    outputs: Sequence[Mapping[str, str | os.PathLike]] | None = None,
    metadata: Sequence[Mapping[str, Mapping[str, Any]]] | None = None,
) -> pd.DataFrame:
    """Preprocess raw T1 files into ``out_dir``; finished scans are skipped.

    For each input ``NAME.nii.gz`` the folder receives ``NAME_prep.nii.gz`` (the
    IGUANe-ready image), ``NAME_native_mask.nii.gz``, ``NAME_prep.json`` (transform to
    template space, QC numbers) and ``NAME_qc.png``, each written atomically; the image
    is written last, so a scan whose image exists is complete and is skipped on the next
    run (resume after an interruption by running the same command again).

    Parameters
    ----------
    paths : sequence of str or path-like
        Raw ``.nii`` / ``.nii.gz`` scans with distinct file names.
    out_dir : str or path-like
        Output folder (created if needed).
    preprocessor : T1Preprocessor, optional
        The chain (default ``T1Preprocessor()``).
    n_jobs : int, default=1
        Scans processed at once (joblib). With the chain's default of one thread per
        scan the outputs are the same bytes whatever ``n_jobs``; a chain with
        ``n_threads=None`` gets the cores shared out between the jobs.
    overwrite : bool, default=False
        Redo finished scans.
    qc_png : bool, default=True
        Draw a QC figure per scan.
    verbose : bool, default=True
        Show a progress bar.
    outputs : sequence of dict, optional
        Per scan, the files to write instead of the ``NAME_*`` ones: ``image``,
        ``native_mask``, ``json``, ``png`` and any file of ``metadata`` (relative paths
        are under ``out_dir``; e.g. BIDS derivative names, see :mod:`harmonix.bids`).
    metadata : sequence of dict, optional
        Per scan, extra JSON content (see :meth:`PreprocessResult.save_to`).

    Returns
    -------
    pandas.DataFrame
        One row per input, in input order: ``source``, ``stem``, ``status``
        (``"done"``, ``"skipped"`` -- finished before -- or ``"failed"``: refused, with
        the reason in ``error`` and, for a scan beyond a hard QC limit, its QC numbers),
        ``seconds``, the QC numbers, ``flags`` (``;``-separated, batch outliers
        included) and ``flagged``.
    """
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Input file(s) not found: {missing[:3]}")
    stems = [_stem(p) for p in paths]
    out_dir = Path(out_dir)
    if outputs is None:
        if len(set(stems)) != len(stems):
            dup = sorted({s for s in stems if stems.count(s) > 1})
            raise ValueError(
                f"Several inputs share the file name(s) {dup[:3]}; rename them so "
                "each output name is distinct."
            )
        files = [output_paths(out_dir, stem) for stem in stems]
    else:
        if len(outputs) != len(paths):
            raise ValueError(f"Got {len(paths)} files but {len(outputs)} outputs.")
        files = [{k: out_dir / v for k, v in names.items()} for names in outputs]
        images = [names["image"] for names in files]
        if len(set(images)) != len(images):
            raise ValueError("Several inputs have the same output image; give distinct names.")
    if metadata is not None and len(metadata) != len(paths):
        raise ValueError(f"Got {len(paths)} files but {len(metadata)} metadata entries.")
    out_dir.mkdir(parents=True, exist_ok=True)
    preprocessor = T1Preprocessor() if preprocessor is None else preprocessor
    if n_jobs != 1 and preprocessor.n_threads is None:
        workers = (os.cpu_count() or 1) if n_jobs < 0 else n_jobs
        preprocessor = copy.copy(preprocessor)
        preprocessor.n_threads = max(1, (os.cpu_count() or 1) // workers)
    rows: list[dict[str, Any] | None] = [None] * len(paths)
    todo = []
    for i in range(len(paths)):
        saved = None if overwrite else _done(files[i])
        if saved is not None:
            rows[i] = {"status": "skipped", **saved}
        else:
            todo.append(i)
    jobs = (
        delayed(_one)(
            preprocessor,
            paths[i],
            files[i],
            stems[i],
            qc_png,
            None if metadata is None else metadata[i],
        )
        for i in todo
    )
    with tqdm(
        total=len(paths),
        initial=len(paths) - len(todo),
        desc="preprocessing",
        unit="scan",
        disable=not verbose,
    ) as bar:
        for i, row in zip(todo, Parallel(n_jobs=n_jobs, return_as="generator")(jobs)):
            rows[i] = row
            bar.update()
    table = pd.DataFrame(
        [{"source": str(p), "stem": s, **(r or {})} for p, s, r in zip(paths, stems, rows)]
    )
    for column in ("error", *QC_LIMITS):
        if column not in table.columns:
            table[column] = None
    table["flags"] = [
        ";".join(f) if isinstance(f, list) else ("" if pd.isna(f) else str(f))
        for f in table.get("flags", [""] * len(table))
    ]
    ok = table["status"] != "failed"
    table.loc[ok] = flag_outliers(table.loc[ok]).drop(columns="flagged")
    table["flagged"] = ok & (table["flags"] != "")
    return table


def preprocess_manifest(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    **kwargs: Any,
) -> tuple[Path, pd.DataFrame]:
    """Preprocess every scan of a manifest and write a manifest of the outputs.

    Parameters
    ----------
    manifest : str or path-like
        CSV with columns ``path, site[, age, subject]`` (see
        :func:`harmonix.io.read_manifest`) listing raw scans.
    out_dir : str or path-like
        Output folder; receives the files of :func:`preprocess_files`, ``qc.csv`` (one row
        per scan) and ``manifest.csv`` (the preprocessed images of the scans that did not
        fail, same columns as the input), usable by ``harmonix fit`` / ``transform``.
    **kwargs
        Passed to :func:`preprocess_files`.

    Returns
    -------
    manifest : pathlib.Path
        The written ``manifest.csv``.
    qc : pandas.DataFrame
        The QC table (also in ``qc.csv``).
    """
    man = read_manifest(manifest)
    out_dir = Path(out_dir)
    table = preprocess_files(man.paths, out_dir, **kwargs)
    table.insert(2, "site", man.sites)
    columns: dict[str, Any] = {
        "path": [f"{stem}_prep.nii.gz" for stem in table["stem"]],
        "site": man.sites,
    }
    if man.ages is not None:
        columns["age"] = man.ages
        table.insert(3, "age", man.ages)
    if man.subjects is not None:
        columns["subject"] = man.subjects
    rows = pd.DataFrame(columns)[(table["status"] != "failed").to_numpy()]
    with atomic_write(out_dir / "qc.csv") as tmp:
        table.to_csv(tmp, index=False)
    out = out_dir / "manifest.csv"
    with atomic_write(out) as tmp:
        rows.to_csv(tmp, index=False)
    return out, table
