"""The methods the command line knows (``--method`` / ``--methods``) and how it builds
them from ``--param key=value`` options."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from harmonix.cli._options import CLIError

__all__ = ["METHODS", "IGUANE_CPU_PARAMS", "make_harmonizer", "parse_params"]

#: Method names accepted by ``--method`` / ``--methods`` and their classes.
METHODS = {
    "none": "IdentityHarmonizer",
    "hm": "HistogramMatchingHarmonizer",
    "ws": "WhiteStripeHarmonizer",
    "combat": "ComBatHarmonizer",
    "iguane": "IGUANeHarmonizer",
}

#: A CPU-sized IGUANe configuration for the demo and the benchmark (about a minute).
IGUANE_CPU_PARAMS: dict[str, Any] = {
    "n_epochs": 1,
    "steps_per_epoch": 8,
    "base_width": 4,
    "patch_size": 32,
    "identity_init": True,
    "augment": False,
}


def harmonizer_class(method: str) -> type:
    """The harmonizer class of a method name (case-insensitive), or a :class:`CLIError`."""
    import harmonix

    key = method.lower()
    if key not in METHODS:
        raise CLIError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if not hasattr(harmonix, METHODS[key]):
        raise CLIError(f"method {method!r} is not available in this installation")
    return getattr(harmonix, METHODS[key])


#: Parameters whose value is a site label: kept as the text given, as manifest sites are.
SITE_PARAMS = frozenset({"reference_site"})


def parse_params(items: Sequence[str] | None) -> dict[str, Any]:
    """``--param key=value`` items as a dict: values are Python literals (numbers, True,
    None, tuples, quoted text...) or text; site labels (:data:`SITE_PARAMS`) stay text
    (or None), like the manifest's site column, so ``reference_site=1`` names the
    manifest's site ``1`` (``reference_site="'1'"`` too)."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"--param expects key=value, got {item!r}")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value.strip()
        if key in SITE_PARAMS and parsed is not None and not isinstance(parsed, str):
            parsed = value.strip()  # reference_site=1: the site "1", as in the manifest
        params[key] = parsed
    return params


def make_harmonizer(method: str, params: dict[str, Any] | None = None) -> Any:
    """Build a harmonizer from a method name and keyword parameters.

    Parameters
    ----------
    method : {"none", "hm", "ws", "combat", "iguane"}
    params : dict, optional
        Constructor parameters; unknown names raise an error listing the valid ones.

    Returns
    -------
    BaseHarmonizer
    """
    cls = harmonizer_class(method)
    params = dict(params or {})
    valid = cls().get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise CLIError(
            f"unknown parameter(s) {unknown} for {cls.__name__}; valid: {sorted(valid)}"
        )
    return cls(**params)
