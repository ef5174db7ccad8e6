"""Subcommands that make or list data: ``harmonix make-dataset`` (a synthetic dataset) and
``harmonix bids-manifest`` (the T1w images of a BIDS dataset as a manifest)."""

from __future__ import annotations

import argparse
import logging
import sys

from harmonix.cli._options import CLIError, names, out_or_bids, subcommand

logger = logging.getLogger("harmonix")


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from harmonix.datasets import make_multisite, write_nifti_dataset

    prevalence = None
    if args.diagnosis_prevalence is not None:
        try:
            values = [float(v) for v in names(args.diagnosis_prevalence)]
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


@subcommand("make-dataset", _cmd_make_dataset, help="write a synthetic NIfTI dataset and manifest")
def add_make_dataset(p: argparse.ArgumentParser) -> None:
    out_or_bids(
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


@subcommand(
    "bids-manifest",
    _cmd_bids_manifest,
    help="list a BIDS dataset's T1w images as a manifest (needs harmonix[bids])",
)
def add_bids_manifest(p: argparse.ArgumentParser) -> None:
    """Write a manifest of the T1w images of a BIDS dataset (path, site, subject, session,
    run... and covariates) that preprocess, fit, transform and benchmark read. The site is
    a participants.tsv/sessions.tsv column (--site-column) or the scanner named by sidecar
    fields (--site-from; metadata inherited as BIDS defines it)."""
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
