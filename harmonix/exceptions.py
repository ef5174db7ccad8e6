"""Exceptions that callers may want to catch by type."""

from __future__ import annotations

__all__ = ["UnseenSiteError"]


class UnseenSiteError(ValueError):
    """A method was asked to transform images of sites it did not see in ``fit``.

    Raised by methods that hold per-site parameters and cannot serve a new site (e.g.
    :class:`harmonix.ComBatHarmonizer` with ``unseen_site="error"``). It is a
    :class:`ValueError`, so code that catches ``ValueError`` keeps working; the benchmark
    catches it by type to report "cannot harmonize unseen sites".
    """
