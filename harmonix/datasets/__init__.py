"""Synthetic multi-site data (this commit moves the module; the next splits it)."""

from harmonix.datasets import multisite as _multisite
from harmonix.datasets.multisite import *  # noqa: F403

__all__ = _multisite.__all__


def __getattr__(name):  # private names, until the split gives them their homes
    return getattr(_multisite, name)
