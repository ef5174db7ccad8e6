"""Import the optional dependencies of the preprocessing chain with a clear error."""

from __future__ import annotations

import importlib
from types import ModuleType

#: What ``pip install "harmonix[preprocess]"`` brings, by import name.
EXTRA_PACKAGES = {"deepbet": "deepbet", "SimpleITK": "SimpleITK"}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError naming the ``preprocess`` extra.

    Parameters
    ----------
    module : str
        Import name (``"deepbet"``, ``"SimpleITK"``).
    purpose : str
        What it is needed for, quoted in the error.

    Returns
    -------
    module
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = EXTRA_PACKAGES.get(module, module)
        raise ImportError(
            f"{purpose} needs the optional package {package!r}, which is not installed: "
            'pip install "harmonix[preprocess]"'
        ) from exc
