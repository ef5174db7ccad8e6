"""Sphinx directive ``.. cli-help:: [subcommand]``: the ``harmonix`` command's ``--help``.

The text is produced at build time by running ``harmonix.cli.main([..., "--help"])``, so
the CLI reference can never drift from the parser.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import TYPE_CHECKING, Any

from docutils import nodes
from docutils.parsers.rst import Directive

if TYPE_CHECKING:
    from sphinx.application import Sphinx

_WIDTH = "90"


def cli_help_text(args: list[str]) -> str:
    """Return the help text that ``harmonix <args> --help`` prints."""
    from harmonix.cli import main

    buf = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _WIDTH  # argparse wraps to the terminal width
    try:
        with contextlib.redirect_stdout(buf):
            main([*args, "--help"])
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return buf.getvalue().rstrip()


class CliHelp(Directive):
    """Insert the ``--help`` text of ``harmonix`` or one of its subcommands."""

    optional_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        text = cli_help_text(list(self.arguments))
        if not text:
            raise self.error(f"harmonix {' '.join(self.arguments)} --help printed nothing")
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the ``cli-help`` directive (Sphinx extension entry point)."""
    app.add_directive("cli-help", CliHelp)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
