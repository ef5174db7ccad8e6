"""The argument parser of the ``harmonix`` command: its global options and its subcommands,
in the order ``harmonix --help`` lists them (each registered by the module that runs it)."""

from __future__ import annotations

import argparse
from typing import Any

from harmonix._version import __version__
from harmonix.cli import data, harmonization, preprocessing, reports

__all__ = ["build_parser"]


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

    reports.add_demo(sub)
    preprocessing.add_preprocess(sub)
    preprocessing.add_to_native(sub)
    data.add_bids_manifest(sub)
    data.add_make_dataset(sub)
    harmonization.add_fit(sub)
    harmonization.add_transform(sub)
    reports.add_benchmark(sub)
    return parser
