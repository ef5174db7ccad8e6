"""Old names of :mod:`harmonix.iguane` kept importable, with a deprecation warning."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["deprecated_names"]


def deprecated_names(module: str, renamed: dict[str, tuple[str, Any]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves renamed objects under their old names.

    Parameters
    ----------
    module : str
        The module's ``__name__``.
    renamed : dict
        ``{old name: (new dotted name, object)}``.

    Returns
    -------
    callable
        ``__getattr__(name)``: the object, with a :class:`DeprecationWarning` naming the new
        name; :class:`AttributeError` for any other name.
    """

    def __getattr__(name: str) -> Any:
        if name not in renamed:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new, obj = renamed[name]
        warnings.warn(
            f"{module}.{name} is deprecated; use {new}.", DeprecationWarning, stacklevel=2
        )
        return obj

    return __getattr__
