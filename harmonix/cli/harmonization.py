"""Harmonization subcommands: ``harmonix fit`` (fit a method on a manifest of images or a
table of features, save the model) and ``harmonix transform`` (harmonize images or a table
with a saved model)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from harmonix.batch import _model_covariates
from harmonix.cli._options import CLIError, names, out_or_bids, subcommand
from harmonix.cli.methods import METHODS, make_harmonizer, parse_params
from harmonix.io import read_manifest
from harmonix.persistence import load_model

logger = logging.getLogger("harmonix")


def _default_model_suffix(method: str) -> str:
    return ".pt" if method == "iguane" else ".npz"


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
    est = make_harmonizer(args.method, parse_params(args.param))
    if args.method == "iguane" and not args.quiet and "verbose" in est.get_params():
        est.set_params(verbose=1)
    out = Path(args.out)
    if out.suffix == "":
        out = out.with_suffix(_default_model_suffix(args.method))
    if out.exists() and not args.overwrite:
        raise CLIError(f"{out} exists; pass --overwrite to replace it")
    covariates = names(args.covariates)
    start = time.perf_counter()
    if args.table is not None:
        from harmonix.inputs.tables import read_feature_csv

        data = read_feature_csv(
            args.table, covariates=covariates, id_columns=names(args.id_columns)
        )
        est.fit(data.features, data.sites, None, data.covariates)
        n = len(data.sites)
    else:
        man = read_manifest(args.manifest)
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
    from harmonix.iguane.training.distributed import process_rank

    return process_rank()


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
        man = read_manifest(args.manifest)
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
    from harmonix.inputs.tables import read_feature_csv, write_feature_csv

    feature_names = getattr(model, "feature_names_in_", None)
    if feature_names is None:
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
        args.table, covariates=_model_covariates(model), features=[str(n) for n in feature_names]
    )
    harmonized = model.transform(data.features, data.sites, None, data.covariates)
    write_feature_csv(data, harmonized, out, overwrite=args.overwrite)
    logger.info("wrote %d harmonized rows to %s", len(harmonized), out)
    sys.stdout.write(f"{out}\n")
    return 0


@subcommand("fit", _cmd_fit, help="fit a harmonizer on a manifest and save it")
def add_fit(p: argparse.ArgumentParser) -> None:
    """Fit a harmonizer on a manifest and save it. IGUANe trains data-parallel on several
    processes (GPUs, nodes) when started by torchrun, e.g. `torchrun --nproc_per_node=4 -m
    harmonix fit --method iguane ...`; process 0 saves the model."""
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


@subcommand(
    "transform",
    _cmd_transform,
    help="harmonize NIfTI files (or a CSV of features) with a saved model",
)
def add_transform(p: argparse.ArgumentParser) -> None:
    """Harmonize NIfTI files, or a table of features, with a saved model. Images are taken
    site by site (the manifest's site column, or --site), so the result equals the model's
    transform of all of them at once: methods that pool a site's images (ComBat with
    unseen_site=fit, IGUANe's histogram map of a new site) see every image of the site.
    Outputs are written atomically: after an interruption, rerun with --skip-existing to do
    the rest. Covariates the model was fitted with are read from the manifest's (or table's)
    columns of the same names."""
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
    out_or_bids(
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
