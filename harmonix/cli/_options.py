"""What several subcommands share: the user error they raise, comma-separated options and
the ``--out`` / ``--bids-out`` choice."""

from __future__ import annotations

import argparse


class CLIError(Exception):
    """A user error: reported as one line, exit code 1."""


def names(value: str | None) -> list[str]:
    """A comma-separated option as a list of names."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def out_or_bids(
    p: argparse.ArgumentParser, out_help: str, bids_help: str, flag: str = "--bids-out"
) -> None:
    """``--out`` or a BIDS folder (``--bids-out DIR``), one of them required."""
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help=out_help)
    dest.add_argument(flag, metavar="DIR", help=bids_help)
