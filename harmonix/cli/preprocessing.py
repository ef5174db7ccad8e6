"""Preprocessing subcommands: ``harmonix preprocess`` (raw T1 scans to IGUANe-ready images)
and ``harmonix to-native`` (template-space images back onto their raw scans' grids)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from harmonix.cli._options import CLIError, out_or_bids, subcommand

logger = logging.getLogger("harmonix")


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


@subcommand(
    "preprocess",
    _cmd_preprocess,
    help="raw T1 scans -> IGUANe-ready images (needs harmonix[preprocess])",
)
def add_preprocess(p: argparse.ArgumentParser) -> None:
    """Reorient, skull-strip (deepbet), N4-correct, rigidly register to MNI (ICBM152 2009a,
    1 mm), normalize (brain median 500) and crop to 160x192x160 every scan of a manifest.
    Writes per scan NAME_prep.nii.gz, NAME_native_mask.nii.gz, NAME_prep.json (transform,
    QC) and NAME_qc.png, then qc.csv and manifest.csv (for harmonix fit/transform). Scans
    beyond a hard QC limit (noise, phantoms, failed registrations) are reported as failed,
    left out of manifest.csv, and the command exits with status 1. Finished scans are
    skipped: rerun to resume."""
    p.add_argument("--manifest", required=True, help="CSV with path,site[,age,subject]")
    out_or_bids(
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


@subcommand(
    "to-native",
    _cmd_to_native,
    help="map a template-space (e.g. harmonized) image back onto its raw scan's grid",
)
def add_to_native(p: argparse.ArgumentParser) -> None:
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
    out_or_bids(
        p,
        "output NIfTI file",
        "write into this BIDS derivatives folder, named after --input without its "
        "space- entity (e.g. sub-01_desc-harmonized_T1w.nii.gz), with a sidecar",
    )
    p.add_argument("--overwrite", action="store_true")
