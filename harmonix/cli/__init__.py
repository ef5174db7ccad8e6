"""The ``harmonix`` command line: demo, make-dataset, bids-manifest, preprocess, to-native, fit,
transform, benchmark.

Every subcommand returns an exit code (0 success, 1 bad input or failure, 2 usage
error) and prints a one-line error message instead of a traceback for user errors.

Modules: :mod:`~harmonix.cli.parser` (the argument parser), one module per concern holding
its subcommands and their options (:mod:`~harmonix.cli.data`: make-dataset, bids-manifest;
:mod:`~harmonix.cli.preprocessing`: preprocess, to-native; :mod:`~harmonix.cli.harmonization`:
fit, transform; :mod:`~harmonix.cli.reports`: benchmark, demo), :mod:`~harmonix.cli.methods`
(method names and :func:`~harmonix.cli.methods.make_harmonizer`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from harmonix.cli._options import CLIError
from harmonix.cli.parser import build_parser

__all__ = ["main"]


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
