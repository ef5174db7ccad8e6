"""The BIDS entities harmonix knows, in file-name order (private).

Kept apart from :mod:`harmonix.bids` so that :mod:`harmonix.io` (which :mod:`harmonix.bids`
builds on) can tell entity columns of a manifest from covariates without importing it.
"""

from __future__ import annotations

__all__ = ["ENTITIES"]

#: The entities a T1w image or its derivatives may carry, as (pybids name, file-name key),
#: in the order BIDS file names use (the specification's entity table).
ENTITIES: tuple[tuple[str, str], ...] = (
    ("subject", "sub"),
    ("session", "ses"),
    ("task", "task"),
    ("acquisition", "acq"),
    ("ceagent", "ce"),
    ("reconstruction", "rec"),
    ("direction", "dir"),
    ("run", "run"),
    ("echo", "echo"),
    ("flip", "flip"),
    ("inv", "inv"),
    ("mt", "mt"),
    ("part", "part"),
    ("proc", "proc"),
    ("space", "space"),
    ("chunk", "chunk"),
    ("res", "res"),
    ("den", "den"),
    ("desc", "desc"),
)
