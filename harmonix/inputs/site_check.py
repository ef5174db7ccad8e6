"""Is a labelled group of images the site of that name the model was fitted on?

A fitted model that stores per-site parameters (IGUANe's per-site intensity maps,
ComBat's per-site effects) applies them to every image whose site label equals a
training label. A label is only a name: another study's ``"site1"``, a renamed site or
an upgraded scanner collide with it, and the stored parameters of another scanner then
damage every image of the group without a sign. So :meth:`transform` first asks each
labelled group whether its images agree with what the model stored for that name, with
the spread of the training images as the yardstick and a test that accounts for the
group size (each method computes its own statistic: :mod:`harmonix.iguane.inputs.site_agreement`,
:meth:`harmonix.ComBatHarmonizer.site_agreement`), and acts on a disagreement by its
``site_check`` policy:

- ``"refit"``: a :class:`~harmonix.exceptions.SiteMismatchWarning` naming the site and
  the size of the mismatch, and the group is treated as a new site (its parameters are
  estimated from its own images);
- ``"warn"``: the warning, and the stored parameters are used anyway;
- ``"error"``: a :class:`~harmonix.exceptions.SiteMismatchError` (a ValueError).

A group that agrees uses the stored parameters, exactly as without the check.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn

from harmonix.exceptions import SiteMismatchError, SiteMismatchWarning

__all__ = [
    "SITE_CHECKS",
    "SiteAgreement",
    "act_on_agreements",
    "agreement_frame",
    "check_policy",
    "describe_mismatches",
]

#: Accepted values of the ``site_check`` parameter.
SITE_CHECKS = ("refit", "warn", "error")


@dataclass(frozen=True)
class SiteAgreement:
    """How far a labelled group of images lies from the stored site of that name.

    Attributes
    ----------
    site : hashable
        The label (one seen in fit).
    n_images : int
        Images of the group.
    statistic : float
        The method's disagreement statistic (of order 1 or below for new images of the
        same site, whatever the group size; NaN when it cannot be computed).
    threshold : float
        Statistic above which the group disagrees.
    mismatch : str
        The size of the mismatch in the method's own units, for messages.
    """

    site: Any
    n_images: int
    statistic: float
    threshold: float
    mismatch: str

    @property
    def agrees(self) -> bool:
        """False when the statistic exceeds the threshold (NaN agrees: nothing to say)."""
        return not self.statistic > self.threshold


def check_policy(value: Any) -> str:
    """Validate a ``site_check`` parameter."""
    if not isinstance(value, str) or value not in SITE_CHECKS:
        raise ValueError(f"site_check must be one of {list(SITE_CHECKS)}; got {value!r}.")
    return value


def describe_mismatches(agreements: Sequence[SiteAgreement], what: str) -> str:
    """One sentence naming the groups that disagree and the size of each mismatch."""
    lines = [
        f"{a.site!r} ({a.n_images} image(s)): {a.mismatch} (disagreement {a.statistic:.3g}, "
        f"threshold {a.threshold:.3g})"
        for a in agreements
        if not a.agrees
    ]
    return (
        "These labelled groups do not look like the training site of the same name, whose "
        f"stored {what} would be applied to them (another scanner with the same label?): "
        + "; ".join(lines)
        + "."
    )


_RELABEL = "give such images a label the model did not see in fit (a new site)"
_INTERNAL = (
    str(Path(__file__).resolve().parents[1]) + os.sep,  # the harmonix package
    str(Path(sklearn.__file__).resolve().parent) + os.sep,
)


def _caller_level() -> int:
    """``stacklevel`` of a warning issued here that points at the first frame outside
    harmonix and scikit-learn (which wraps ``transform``): the user's call."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


def act_on_agreements(
    agreements: Sequence[SiteAgreement],
    policy: str,
    *,
    what: str,
    as_new: str,
) -> set:
    """Warn about or refuse the groups that disagree; return the labels to treat as new.

    Parameters
    ----------
    agreements : sequence of SiteAgreement
        One per labelled group of a training site.
    policy : {"refit", "warn", "error"}
    what : str
        What the model stored per site, for messages (e.g. "intensity map").
    as_new : str
        What happens to a group treated as a new site, for the warning.

    Returns
    -------
    set
        Labels whose groups are to be treated as new sites (``policy="refit"`` only).

    Raises
    ------
    SiteMismatchError
        With ``policy="error"`` when a group disagrees.
    """
    check_policy(policy)
    bad = [a for a in agreements if not a.agrees]
    if not bad:
        return set()
    head = describe_mismatches(bad, what)
    if policy == "error":
        raise SiteMismatchError(
            f"{head} Fix: {_RELABEL}, or pass site_check='refit' (treat them as new sites) "
            "or 'warn' (apply the stored parameters anyway)."
        )
    if policy == "refit":
        action = f"Each is treated as a new site: {as_new} (site_check='refit')."
    else:
        action = f"The stored {what} is applied anyway (site_check='warn')."
    warnings.warn(
        f"{head} {action} To silence this, {_RELABEL}.",
        SiteMismatchWarning,
        stacklevel=_caller_level(),
    )
    return {a.site for a in bad} if policy == "refit" else set()


def agreement_frame(agreements: Sequence[SiteAgreement]) -> pd.DataFrame:
    """One row per group: ``site``, ``n_images``, ``statistic``, ``threshold``, ``agrees``,
    ``mismatch``."""
    return pd.DataFrame(
        {
            "site": [a.site for a in agreements],
            "n_images": np.array([a.n_images for a in agreements], dtype=int),
            "statistic": np.array([a.statistic for a in agreements], dtype=float),
            "threshold": np.array([a.threshold for a in agreements], dtype=float),
            "agrees": np.array([a.agrees for a in agreements], dtype=bool),
            "mismatch": [a.mismatch for a in agreements],
        }
    )
