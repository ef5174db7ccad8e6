"""What several subcommands share: how one is declared, the user error they raise,
comma-separated options and the ``--out`` / ``--bids-out`` choice."""

from __future__ import annotations

import argparse
from collections.abc import Callable

#: Adds a subcommand to the ``harmonix`` parser's subparsers.
AddSubcommand = Callable[[argparse._SubParsersAction], None]


class CLIError(Exception):
    """A user error: reported as one line, exit code 1."""


def subcommand(
    name: str, run: Callable[[argparse.Namespace], int], help: str
) -> Callable[[Callable[[argparse.ArgumentParser], None]], AddSubcommand]:
    """Declare the subcommand ``harmonix NAME``, listed with the one-line ``help``.

    The decorated function adds the subcommand's options to its parser; its docstring, if
    it has one, is the description that ``harmonix NAME --help`` shows. ``run`` takes the
    parsed arguments and returns the exit code. The result adds the subcommand to the
    parser's subparsers (:func:`harmonix.cli.parser.build_parser` calls it).
    """

    def declare(options: Callable[[argparse.ArgumentParser], None]) -> AddSubcommand:
        def add(sub: argparse._SubParsersAction) -> None:
            doc = options.__doc__
            p = sub.add_parser(name, help=help, description=" ".join(doc.split()) if doc else None)
            options(p)
            p.set_defaults(func=run)

        add.__name__, add.__qualname__ = options.__name__, options.__qualname__
        add.__doc__ = f"Add the ``harmonix {name}`` subcommand and its options to ``sub``."
        return add

    return declare


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
