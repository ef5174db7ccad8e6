"""The ``harmonix`` command line: demo, make-dataset, bids-manifest, preprocess, to-native, fit,
transform, benchmark.

Every subcommand returns an exit code (0 success, 1 bad input or failure, 2 usage
error) and prints a one-line error message instead of a traceback for user errors.
"""

from __future__ import annotations

import argparse
import ast
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmonix._version import __version__
from harmonix.persistence import load_model  # importable from here as before

__all__ = ["main", "METHODS", "load_model", "make_harmonizer"]

logger = logging.getLogger("harmonix")

#: Method names accepted by ``--method`` / ``--methods`` and their classes.
METHODS = {
    "none": "IdentityHarmonizer",
    "hm": "HistogramMatchingHarmonizer",
    "ws": "WhiteStripeHarmonizer",
    "combat": "ComBatHarmonizer",
    "iguane": "IGUANeHarmonizer",
}

#: A CPU-sized IGUANe configuration for the demo and the benchmark (about a minute).
IGUANE_CPU_PARAMS: dict[str, Any] = {
    "n_epochs": 1,
    "steps_per_epoch": 8,
    "base_width": 4,
    "patch_size": 32,
    "identity_init": True,
    "augment": False,
}


class CLIError(Exception):
    """A user error: reported as one line, exit code 1."""


def _harmonizer_class(method: str) -> type:
    import harmonix

    key = method.lower()
    if key not in METHODS:
        raise CLIError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if not hasattr(harmonix, METHODS[key]):
        raise CLIError(f"method {method!r} is not available in this installation")
    return getattr(harmonix, METHODS[key])


#: Parameters whose value is a site label: kept as the text given, as manifest sites are.
SITE_PARAMS = frozenset({"reference_site"})


def _parse_params(items: Sequence[str] | None) -> dict[str, Any]:
    """``--param key=value`` items as a dict: values are Python literals (numbers, True,
    None, tuples, quoted text...) or text; site labels (:data:`SITE_PARAMS`) stay text
    (or None), like the manifest's site column, so ``reference_site=1`` names the
    manifest's site ``1`` (``reference_site="'1'"`` too)."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"--param expects key=value, got {item!r}")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value.strip()
        if key in SITE_PARAMS and parsed is not None and not isinstance(parsed, str):
            parsed = value.strip()  # reference_site=1: the site "1", as in the manifest
        params[key] = parsed
    return params


def make_harmonizer(method: str, params: dict[str, Any] | None = None) -> Any:
    """Build a harmonizer from a method name and keyword parameters.

    Parameters
    ----------
    method : {"none", "hm", "ws", "combat", "iguane"}
    params : dict, optional
        Constructor parameters; unknown names raise an error listing the valid ones.

    Returns
    -------
    BaseHarmonizer
    """
    cls = _harmonizer_class(method)
    params = dict(params or {})
    valid = cls().get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise CLIError(
            f"unknown parameter(s) {unknown} for {cls.__name__}; valid: {sorted(valid)}"
        )
    return cls(**params)


def _default_model_suffix(method: str) -> str:
    return ".pt" if method == "iguane" else ".npz"


# -- subcommands --------------------------------------------------------------------------
def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from harmonix.datasets import make_multisite, write_nifti_dataset

    prevalence = None
    if args.diagnosis_prevalence is not None:
        try:
            values = [float(v) for v in _names(args.diagnosis_prevalence)]
        except ValueError:
            raise CLIError(
                f"--diagnosis-prevalence takes numbers, e.g. 0.3 or 0.1,0.7,0.4 (one per site); "
                f"got {args.diagnosis_prevalence!r}"
            ) from None
        prevalence = values[0] if len(values) == 1 else values
    ds = make_multisite(
        n_subjects=args.n_subjects,
        n_sites=args.n_sites,
        resolution=args.resolution,
        random_state=args.seed,
        style=args.style,
        diagnosis_prevalence=prevalence,
        traveling=not args.no_traveling,
    )
    if args.bids:
        from harmonix.bids import write_bids_dataset

        written = write_bids_dataset(ds, args.bids)
        logger.info("wrote the BIDS dataset %s", written)
    else:
        written = write_nifti_dataset(ds, args.out)
        logger.info("wrote %d images and %s", len(ds), written)
    sys.stdout.write(f"{written}\n")
    return 0


def _cmd_bids_manifest(args: argparse.Namespace) -> int:
    from harmonix.bids import write_bids_manifest

    try:
        out = write_bids_manifest(
            args.bids_dir,
            args.out,
            site_column=args.site_column,
            site_from=args.site_from,
            covariates=args.covariates,
            session=args.session,
            acquisition=args.acq,
            run=args.run,
            overwrite=args.overwrite,
        )
    except ImportError as exc:
        raise CLIError(str(exc)) from exc
    logger.info("listed the T1w images of %s", args.bids_dir)
    sys.stdout.write(f"{out}\n")
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    try:
        from harmonix.preprocessing import T1Preprocessor, preprocess_manifest
        from harmonix.preprocessing._optional import require

        require("SimpleITK", "harmonix preprocess")
        require("deepbet", "harmonix preprocess")
    except ImportError as exc:
        raise CLIError(str(exc)) from exc
    if args.n_jobs == 0:
        raise CLIError("--n-jobs must be a positive number of workers, or -1 for all cores")
    run, out = preprocess_manifest, args.out
    if args.bids_out:
        from harmonix.bids import preprocess_to_bids as run

        out = args.bids_out
    manifest, qc = run(
        args.manifest,
        out,
        preprocessor=T1Preprocessor(n4=not args.no_n4, assume_orientation=args.assume_orientation),
        n_jobs=args.n_jobs,
        overwrite=args.overwrite,
        qc_png=not args.no_qc_png,
        verbose=not args.quiet,
    )
    counts = qc["status"].value_counts()
    logger.info(
        "preprocessed %d, skipped %d (already done), failed %d; QC table in %s",
        counts.get("done", 0),
        counts.get("skipped", 0),
        counts.get("failed", 0),
        out,
    )
    for row in qc[qc["flagged"]].itertuples():
        sys.stdout.write(f"QC flagged: {row.source}: {row.flags}\n")
    for row in qc[qc["status"] == "failed"].itertuples():
        sys.stdout.write(f"failed: {row.source}: {row.error}\n")
    sys.stdout.write(f"{manifest}\n")
    return 1 if counts.get("failed", 0) else 0


def _orientation(value: str) -> str:
    """``--assume-orientation``: three axis letters such as LAS (checked before any work)."""
    from harmonix.preprocessing.chain import orientation_codes

    try:
        return "".join(orientation_codes(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("assume_orientation", "it")) from exc


def _cmd_to_native(args: argparse.Namespace) -> int:
    from harmonix.io import save_img
    from harmonix.preprocessing import to_native

    if args.input is None:
        if not args.bids_out or args.transform or args.mask:
            raise CLIError(
                "give --input and --transform, or --bids-out DIR alone (every harmonized "
                "image of DIR)"
            )
        from harmonix.bids import derivatives_to_native

        written = derivatives_to_native(
            args.bids_out, rescale=args.rescale, overwrite=args.overwrite
        )
        sys.stdout.write("".join(f"{p}\n" for p in written))
        return 0
    if args.transform is None:
        raise CLIError("--transform is required with --input (the scan's preprocessing JSON)")
    if args.bids_out:
        from harmonix.bids import to_native_bids

        written = to_native_bids(
            args.input,
            args.transform,
            args.bids_out,
            mask=args.mask,
            rescale=args.rescale,
            overwrite=args.overwrite,
        )
        sys.stdout.write(f"{written}\n")
        return 0
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CLIError(f"{out} exists; pass --overwrite to replace it")
    img = to_native(args.input, args.transform, mask=args.mask, rescale=args.rescale)
    save_img(img, out, overwrite=args.overwrite)
    sys.stdout.write(f"{out}\n")
    return 0


def _read_manifest(path: str) -> Any:
    from harmonix.io import read_manifest

    return read_manifest(path)


def _names(value: str | None) -> list[str]:
    """A comma-separated option as a list of names."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _cmd_fit(args: argparse.Namespace) -> int:
    if (args.manifest is None) == (args.table is None):
        raise CLIError("give either --manifest (images) or --table (a CSV of features)")
    if args.table is not None and args.method != "combat":
        raise CLIError(
            f"--table needs --method combat (got {args.method}): only ComBat "
            "harmonizes tables of features"
        )
    if args.id_columns and args.table is None:
        raise CLIError("--id-columns applies to --table")
    est = make_harmonizer(args.method, _parse_params(args.param))
    if args.method == "iguane" and not args.quiet and "verbose" in est.get_params():
        est.set_params(verbose=1)
    out = Path(args.out)
    if out.suffix == "":
        out = out.with_suffix(_default_model_suffix(args.method))
    if out.exists() and not args.overwrite:
        raise CLIError(f"{out} exists; pass --overwrite to replace it")
    covariates = _names(args.covariates)
    start = time.perf_counter()
    if args.table is not None:
        from harmonix.tables import read_feature_csv

        data = read_feature_csv(
            args.table, covariates=covariates, id_columns=_names(args.id_columns)
        )
        est.fit(data.features, data.sites, None, data.covariates)
        n = len(data.sites)
    else:
        man = _read_manifest(args.manifest)
        est.fit([str(p) for p in man.paths], man.sites, man.ages, man.covariates(covariates))
        n = len(man)
    if _process_rank() != 0:  # under torchrun every process holds the same model
        return 0
    est.save(out)
    logger.info(
        "fitted %s on %d %s in %.1f s",
        type(est).__name__,
        n,
        "rows" if args.table is not None else "images",
        time.perf_counter() - start,
    )
    sys.stdout.write(f"{out}\n")
    return 0


def _process_rank() -> int:
    from harmonix.iguane.distributed import process_rank

    return process_rank()


def _model_covariates(model: Any) -> list[str]:
    """The covariate columns a fitted model needs at transform (none for most methods)."""
    if not getattr(model, "_needs_covariates", False):
        return []
    return list(model._fitted_covariate_levels())


def _cmd_transform(args: argparse.Namespace) -> int:
    from harmonix.batch import transform_files
    from harmonix.exceptions import OutputExistsError

    model = load_model(args.model)
    if args.grid_mismatch is not None:
        if "grid_mismatch" in model.get_params():
            model.set_params(grid_mismatch=args.grid_mismatch)
        else:
            logger.info("%s accepts images of any grid", type(model).__name__)
    if args.table is not None:
        return _transform_table(model, args)
    needed = _model_covariates(model)
    covariates = None
    if args.manifest:
        man = _read_manifest(args.manifest)
        paths, sites, ages = man.paths, list(man.sites), man.ages
        covariates = man.covariates(needed)
    else:
        paths = [Path(p) for p in args.input]
        sites = [args.site] * len(paths) if args.site is not None else None
        ages = [args.age] * len(paths) if args.age is not None else None
        other = [c for c in needed if c != "age"]
        if other:
            raise CLIError(
                f"{type(model).__name__} was fitted with covariates {needed}: give them as "
                "columns of a --manifest"
            )
    if getattr(model, "_needs_sites", False) and sites is None:
        raise CLIError(f"{type(model).__name__} needs each image's site: use --manifest or --site")
    if args.overwrite and args.skip_existing:
        raise CLIError("--overwrite and --skip-existing exclude each other; choose one")
    if args.mixed_precision:
        if "mixed_precision" not in model.get_params(deep=False):
            raise CLIError(
                f"--mixed-precision applies to IGUANe models only, not to "
                f"{type(model).__name__}; drop the flag"
            )
        model.set_params(mixed_precision=True)
    common = {
        "sites": sites,
        "ages": ages,
        "covariates": covariates,
        "n_jobs": args.n_jobs,
        "overwrite": args.overwrite,
        "skip_existing": args.skip_existing,
        "verbose": not args.quiet,
    }
    try:
        if args.bids_out:
            from harmonix.bids import manifest_entities, transform_to_bids

            entities = manifest_entities(args.manifest) if args.manifest else None
            written = transform_to_bids(
                model, paths, args.bids_out, entities=entities, model_path=args.model, **common
            )
        else:
            written = transform_files(
                model,
                paths,
                args.out,
                suffix=args.suffix,
                overwrite_inputs=args.overwrite_inputs,
                **common,
            )
    except OutputExistsError as exc:
        raise CLIError(exc.describe(lambda name: "--" + name.replace("_", "-"))) from exc
    logger.info("%d harmonized images in %s", len(written), args.bids_out or args.out)
    return 0


def _transform_table(model: Any, args: argparse.Namespace) -> int:
    """``harmonix transform --table``: harmonize a CSV of features into another CSV."""
    from harmonix.tables import read_feature_csv, write_feature_csv

    names = getattr(model, "feature_names_in_", None)
    if names is None:
        raise CLIError(
            f"{args.model} was not fitted on a table of named features (harmonix fit "
            "--table); it cannot transform --table"
        )
    if args.out is None:
        raise CLIError("--table writes a CSV: give it as --out (not --bids-out)")
    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise CLIError(f"--out must name a .csv file with --table, got {out}")
    if out.resolve() == Path(args.table).resolve():
        raise CLIError(f"{out} would overwrite the input table; write to another file")
    if out.exists() and not args.overwrite:
        raise CLIError(f"{out} exists; pass --overwrite to replace it")
    data = read_feature_csv(
        args.table, covariates=_model_covariates(model), features=[str(n) for n in names]
    )
    harmonized = model.transform(data.features, data.sites, None, data.covariates)
    write_feature_csv(data, harmonized, out, overwrite=args.overwrite)
    logger.info("wrote %d harmonized rows to %s", len(harmonized), out)
    sys.stdout.write(f"{out}\n")
    return 0


def _dataset_from_manifest(path: str) -> Any:
    from harmonix.benchmark.runner import dataset_from_manifest

    return dataset_from_manifest(_read_manifest(path))


def _run_and_report(
    ds: Any,
    methods: Sequence[str],
    out: Path,
    test_sites: Any,
    seed: int,
    quiet: bool,
    pretrained_iguane: bool = False,
    oracle: bool = False,
    n_boot: int = 1000,
) -> int:
    from harmonix.benchmark import plot_metrics, run_benchmark, to_markdown

    harmonizers = {}
    for m in methods:
        if m == "iguane" and pretrained_iguane:
            from harmonix.iguane.pretrained import PretrainedIGUANe

            harmonizers[m] = PretrainedIGUANe()
            continue
        params = dict(IGUANE_CPU_PARAMS, random_state=seed) if m == "iguane" else {}
        harmonizers[m] = make_harmonizer(m, params)
    df = run_benchmark(
        harmonizers,
        ds,
        test_sites=test_sites,
        random_state=seed,
        oracle=oracle,
        n_boot=n_boot,
        verbose=not quiet,
    )
    out.mkdir(parents=True, exist_ok=True)
    table = to_markdown(df)
    (out / "benchmark.md").write_text(table + "\n")
    df.to_csv(out / "benchmark.csv", index=False)
    plot_metrics(df, out / "metrics.png")
    sys.stdout.write(f"{table}\n")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        _harmonizer_class(m)
    ds = _dataset_from_manifest(args.manifest)
    test_sites = args.test_sites.split(",") if args.test_sites else None
    return _run_and_report(ds, methods, Path(args.out), test_sites, args.seed, args.quiet)


def _cmd_demo(args: argparse.Namespace) -> int:
    from harmonix.datasets import make_multisite

    start = time.perf_counter()
    ds = make_multisite(
        n_subjects=args.n_subjects, n_sites=5, resolution=args.resolution, random_state=args.seed
    )
    test_site = [s for s in np.unique(ds.sites) if s != ds.reference_site][-1]
    logger.info(
        "demo: %d synthetic images from 5 sites; %s held out as an unseen site", len(ds), test_site
    )
    methods = [m for m in METHODS if m != "iguane" or not args.no_iguane]
    pretrained = args.resolution == 4.0
    if "iguane" in methods and pretrained and args.seed == 0:
        logger.warning(
            "demo: seed 0's sites 0-3 are the shipped IGUANe model's training "
            "sites; use another seed to see it on new sites"
        )
    if "iguane" in methods:
        logger.info(
            "demo: IGUANe is %s",
            "the shipped 4 mm CPU model (trained on other synthetic sites, so every demo "
            "site is new to it)"
            if pretrained
            else "a tiny training (the shipped model is for 4 mm images)",
        )
    # the oracle row (each subject's reference-site scan) gives the ceiling of every metric;
    # 200 bootstrap samples keep the demo's intervals cheap
    code = _run_and_report(
        ds,
        methods,
        Path(args.out),
        [test_site],
        args.seed,
        args.quiet,
        pretrained_iguane=pretrained,
        oracle=True,
        n_boot=200,
    )
    logger.info("demo finished in %.0f s; results in %s", time.perf_counter() - start, args.out)
    return code


# -- parser -------------------------------------------------------------------------------
def _out_or_bids(
    p: argparse.ArgumentParser, out_help: str, bids_help: str, flag: str = "--bids-out"
) -> None:
    """``--out`` or a BIDS folder (``--bids-out DIR``), one of them required."""
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help=out_help)
    dest.add_argument(flag, metavar="DIR", help=bids_help)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``harmonix`` command."""
    parser = argparse.ArgumentParser(
        prog="harmonix", description="Harmonize multi-site structural brain MR images."
    )
    parser.add_argument("--version", action="version", version=f"harmonix {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    # the global options are accepted after the subcommand too (harmonix demo --quiet)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress output",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser

    def with_common(*a: Any, **kw: Any) -> argparse.ArgumentParser:
        return add_parser(*a, parents=[common], **kw)

    sub.add_parser = with_common  # type: ignore[method-assign]

    p = sub.add_parser("demo", help="benchmark every method on synthetic data (~1 min on CPU)")
    p.add_argument("--out", default="harmonix-demo", help="output folder")
    p.add_argument("--n-subjects", type=int, default=8)
    p.add_argument("--resolution", type=float, default=4.0, choices=[1.0, 2.0, 4.0])
    p.add_argument(
        "--seed",
        type=int,
        default=1,
        help="data seed (the shipped IGUANe model was trained on seed 0's sites)",
    )
    p.add_argument("--no-iguane", action="store_true", help="skip IGUANe training")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "preprocess",
        help="raw T1 scans -> IGUANe-ready images (needs harmonix[preprocess])",
        description="Reorient, skull-strip (deepbet), N4-correct, rigidly register to MNI "
        "(ICBM152 2009a, 1 mm), normalize (brain median 500) and crop to 160x192x160 every "
        "scan of a manifest. Writes per scan NAME_prep.nii.gz, NAME_native_mask.nii.gz, "
        "NAME_prep.json (transform, QC) and NAME_qc.png, then qc.csv and manifest.csv "
        "(for harmonix fit/transform). Scans beyond a hard QC limit (noise, phantoms, "
        "failed registrations) are reported as failed, left out of manifest.csv, and the "
        "command exits with status 1. Finished scans are skipped: rerun to resume.",
    )
    p.add_argument("--manifest", required=True, help="CSV with path,site[,age,subject]")
    _out_or_bids(
        p,
        "output folder (a .csv file with --table)",
        "write a BIDS derivatives folder instead: sub-X/[ses-Y/]anat/"
        "..._space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz with sidecars, "
        "desc-preproc_qc.tsv and desc-preproc_manifest.csv (needs BIDS entity "
        "columns in the manifest: harmonix bids-manifest)",
    )
    p.add_argument(
        "--n-jobs",
        type=int,
        default=1,
        help="scans processed at once (joblib; one thread each, same outputs as serial)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo finished scans")
    p.add_argument("--no-n4", action="store_true", help="skip N4 bias correction")
    p.add_argument(
        "--assume-orientation",
        metavar="AXES",
        type=_orientation,
        help="voxel axis directions (e.g. LAS) of scans stored without orientation "
        "(NIfTI sform_code = qform_code = 0), which are refused otherwise",
    )
    p.add_argument("--no-qc-png", action="store_true", help="skip the QC figures")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser(
        "to-native",
        help="map a template-space (e.g. harmonized) image back onto its raw scan's grid",
    )
    p.add_argument(
        "--input",
        help="image in template space (NIfTI); leave out with --bids-out DIR to map every "
        "harmonized image of DIR back with the preprocessing files beside it",
    )
    p.add_argument(
        "--transform",
        help="the scan's NAME_prep.json (or ..._desc-preproc_T1w.json; not the image)",
    )
    p.add_argument("--mask", help="the scan's NAME_native_mask.nii.gz (zero outside)")
    p.add_argument(
        "--rescale",
        action="store_true",
        help="undo the median normalization (bias-corrected scan's scale)",
    )
    _out_or_bids(
        p,
        "output NIfTI file",
        "write into this BIDS derivatives folder, named after --input without its "
        "space- entity (e.g. sub-01_desc-harmonized_T1w.nii.gz), with a sidecar",
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_to_native)

    p = sub.add_parser(
        "bids-manifest",
        help="list a BIDS dataset's T1w images as a manifest (needs harmonix[bids])",
        description="Write a manifest of the T1w images of a BIDS dataset (path, site, "
        "subject, session, run... and covariates) that preprocess, fit, transform and "
        "benchmark read. The site is a participants.tsv/sessions.tsv column "
        "(--site-column) or the scanner named by sidecar fields (--site-from; metadata "
        "inherited as BIDS defines it).",
    )
    p.add_argument("bids_dir", metavar="BIDS_DIR", help="the dataset's top folder")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    site = p.add_mutually_exclusive_group()
    site.add_argument(
        "--site-column", help="participants.tsv / sessions.tsv column holding the site"
    )
    site.add_argument(
        "--site-from",
        metavar="FIELDS",
        help="comma-separated sidecar fields naming the site (default: "
        "Manufacturer,ManufacturersModelName,MagneticFieldStrength)",
    )
    p.add_argument(
        "--covariates",
        metavar="COLUMNS",
        help="comma-separated participants.tsv / sessions.tsv columns, e.g. age,sex,diagnosis",
    )
    p.add_argument("--session", help="keep these sessions (comma-separated labels)")
    p.add_argument("--acq", help="keep these acquisitions (comma-separated labels)")
    p.add_argument("--run", help="keep these runs (comma-separated)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    p.set_defaults(func=_cmd_bids_manifest)

    p = sub.add_parser("make-dataset", help="write a synthetic NIfTI dataset and manifest")
    _out_or_bids(
        p,
        "output folder (NIfTI files and manifest.csv)",
        "write a BIDS dataset instead: sessions (one per site) for half the subjects, "
        "one site for the others, two runs for the last one, a scanner per site in the "
        "sidecars, participants.tsv",
        flag="--bids",
    )
    p.add_argument("--n-subjects", type=int, default=10)
    p.add_argument("--n-sites", type=int, default=4)
    p.add_argument("--resolution", type=float, default=2.0, choices=[1.0, 2.0, 4.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--style",
        default="preprocessed",
        choices=["preprocessed", "legacy"],
        help="site effects of preprocessed scans (default) or the older "
        "simulation (see harmonix.datasets.make_multisite)",
    )
    p.add_argument(
        "--diagnosis-prevalence",
        metavar="P",
        help="simulate sex and a diagnosis (AD/CN) with this fraction of patients, or one "
        "fraction per site (comma-separated; needs --no-traveling): the manifest gets sex "
        "and diagnosis columns",
    )
    p.add_argument(
        "--no-traveling",
        action="store_true",
        help="every site scans subjects of its own instead of the same traveling subjects",
    )
    p.set_defaults(func=_cmd_make_dataset)

    p = sub.add_parser(
        "fit",
        help="fit a harmonizer on a manifest and save it",
        description="Fit a harmonizer on a manifest and save it. IGUANe trains data-parallel "
        "on several processes (GPUs, nodes) when started by torchrun, e.g. `torchrun "
        "--nproc_per_node=4 -m harmonix fit --method iguane ...`; process 0 saves the model.",
    )
    p.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    p.add_argument(
        "--manifest", help="images: CSV with path,site[,age,subject] and covariate columns"
    )
    p.add_argument(
        "--table",
        help="features (combat): CSV with a site column, the --covariates columns and one "
        "column per feature (e.g. ROI volumes); every other column is a feature unless "
        "named by --id-columns",
    )
    p.add_argument(
        "--covariates",
        metavar="NAMES",
        help="comma-separated covariate columns of the manifest or table to keep, e.g. "
        "age,sex,diagnosis (a manifest's age column is always used)",
    )
    p.add_argument(
        "--id-columns",
        metavar="NAMES",
        help="comma-separated table columns that are neither features nor covariates",
    )
    p.add_argument("--out", required=True, help="model file (.npz; .pt for iguane)")
    p.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="constructor parameter, repeatable (e.g. --param reference_site=A)",
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser(
        "transform",
        help="harmonize NIfTI files (or a CSV of features) with a saved model",
        description="Harmonize NIfTI files, or a table of features, with a saved model. "
        "Images are taken site by site "
        "(the manifest's site column, or --site), so the result equals the model's "
        "transform of all of them at once: methods that pool a site's images (ComBat with "
        "unseen_site=fit, IGUANe's histogram map of a new site) see every image of the "
        "site. Outputs are written atomically: after an interruption, rerun with "
        "--skip-existing to do the rest. Covariates the model was fitted with are read "
        "from the manifest's (or table's) columns of the same names.",
    )
    p.add_argument("--model", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="CSV with path,site[,age] and covariate columns")
    src.add_argument("--input", nargs="+", help="NIfTI files")
    src.add_argument(
        "--table",
        help="CSV of features with site and covariate columns (a model fitted with --table); "
        "--out is then the output CSV: the same table, features harmonized",
    )
    p.add_argument("--site", help="site of every --input file (ComBat)")
    p.add_argument("--age", type=float, help="age of every --input file (ComBat with ages)")
    _out_or_bids(
        p,
        "output folder (a .csv file with --table)",
        "write a BIDS derivatives folder instead: <source entities>_desc-harmonized"
        "_T1w.nii.gz with a sidecar (Sources, method, model hash and parameters); the "
        "entities come from the manifest (harmonix bids-manifest) or the --input names",
    )
    p.add_argument("--suffix", default="_harmonized", help="added to output file names")
    p.add_argument("--n-jobs", type=int, default=1, help="parallel workers (joblib)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep existing outputs and harmonize the other files (resume an interrupted run)",
    )
    p.add_argument(
        "--overwrite-inputs", action="store_true", help="allow an output to replace its input file"
    )
    p.add_argument(
        "--grid-mismatch",
        choices=["error", "warn", "ignore"],
        help="images whose voxel size or orientation differs from the training images' "
        "(IGUANe): refuse them (the model's default), warn, or go on",
    )
    p.add_argument(
        "--mixed-precision",
        action="store_true",
        help="IGUANe: bfloat16 on CPU (faster on CPUs with AVX512-BF16 or AMX, emulated and "
        "slow elsewhere; outputs within ~1e-3 of float32, the default), float16 on CUDA",
    )
    p.set_defaults(func=_cmd_transform)

    p = sub.add_parser("benchmark", help="score methods on a manifest with common metrics")
    p.add_argument("--manifest", required=True, help="CSV with path,site,age,subject")
    p.add_argument(
        "--methods",
        default="none,hm,ws,combat",
        help=f"comma-separated, from {', '.join(METHODS)}",
    )
    p.add_argument(
        "--test-sites",
        help="comma-separated sites held out as unseen (default: with 3 sites or more, one "
        "site other than the reference, drawn with --seed)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``harmonix`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit code: 0 on success, 1 on bad input or failure, 2 on usage errors.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help / usage errors
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s"
    )
    try:
        return int(args.func(args))
    except (CLIError, ValueError, TypeError, FileNotFoundError, FileExistsError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception says
        sys.stderr.write(f"harmonix {args.command}: error: {message}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
