"""Import pybids (the ``bids`` extra) with an error naming the install command."""

from __future__ import annotations

from types import ModuleType

__all__ = ["require_pybids"]


def require_pybids(purpose: str) -> ModuleType:
    """Import :mod:`bids` (pybids) or raise an ImportError naming ``harmonix[bids]``.

    Parameters
    ----------
    purpose : str
        What needs it, quoted in the error (e.g. ``"harmonix bids-manifest"``).

    Returns
    -------
    module
        The :mod:`bids` package.
    """
    try:
        import bids
    except ImportError as exc:
        raise ImportError(
            f"{purpose} reads BIDS datasets with pybids, which is not installed: "
            'pip install "harmonix[bids]"'
        ) from exc
    return bids
