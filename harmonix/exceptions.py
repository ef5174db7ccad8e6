"""Exceptions and warnings that callers may want to catch or filter by type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "BackgroundWarning",
    "BenchmarkWarning",
    "GridMismatchWarning",
    "ModelSelectionWarning",
    "OutputExistsError",
    "SiteMismatchError",
    "SiteMismatchWarning",
    "UnseenSiteError",
]


class UnseenSiteError(ValueError):
    """A method was asked to transform images of sites it did not see in ``fit``.

    Raised by methods that hold per-site parameters and cannot serve a new site (e.g.
    :class:`harmonix.ComBatHarmonizer` with ``unseen_site="error"``). It is a
    :class:`ValueError`, so code that catches ``ValueError`` keeps working; the benchmark
    catches it by type to report "cannot harmonize unseen sites".
    """


class OutputExistsError(FileExistsError):
    """An output file exists, or would replace an input, and nothing allows replacing it.

    Raised by :func:`harmonix.batch.transform_files` before anything is written.

    Parameters
    ----------
    path : pathlib.Path
        The output in the way.
    reason : str
        What is wrong (e.g. ``"exists"``).
    options : dict of str to str
        Keyword argument -> what setting it to True does (the command line names the
        matching flags: ``skip_existing`` -> ``--skip-existing``).
    """

    def __init__(self, path: Any, reason: str, options: dict[str, str]):
        self.path = path
        self.reason = reason
        self.options = dict(options)
        super().__init__(self.describe(lambda name: f"{name}=True"))

    def describe(self, spell: Callable[[str], str]) -> str:
        """The message, with each option written by ``spell`` (e.g. as a CLI flag)."""
        fixes = ", or ".join(
            f"pass {spell(name)} to {what}" for name, what in self.options.items()
        )
        return f"{self.path} {self.reason}; {fixes}."


class SiteMismatchWarning(UserWarning):
    """Images carry the label of a training site but do not look like that site.

    Issued by :meth:`transform` of methods that store per-site parameters
    (:class:`harmonix.IGUANeHarmonizer`, :class:`harmonix.ComBatHarmonizer`) when the
    images of a labelled group disagree with what the model stored for the site of that
    name: two studies that both call a scanner ``"site1"``, a renamed site, a scanner
    upgrade. See :mod:`harmonix.inputs.site_check`.
    """


class SiteMismatchError(ValueError):
    """Like :class:`SiteMismatchWarning`, raised with ``site_check="error"``."""


class GridMismatchWarning(UserWarning):
    """Images whose voxel size or orientation differs from the training grid.

    Issued instead of a :class:`ValueError` when an estimator's ``grid_mismatch`` is
    ``"warn"`` (see :mod:`harmonix.inputs.grids`).
    """


class BackgroundWarning(UserWarning):
    """Images whose "brain" (non-zero voxels) fills nearly the whole volume.

    harmonix takes the voxels equal to 0 as background; a background of small non-zero
    values (1e-6, -1e-3, noise) is then harmonized as if it were tissue and shifts every
    intensity statistic of the brain. See :func:`harmonix.inputs.background.check_background`.
    """


class BenchmarkWarning(UserWarning):
    """Benchmark numbers that may mislead: check the inputs the warning names.

    Warned when a cross-validated metric is given no subject ``groups`` (a subject's
    images could then fall in both training and test folds) and when one subject label
    has different ages or sexes at different sites (site-local subject IDs pair images of
    different people as traveling subjects).
    """


class ModelSelectionWarning(UserWarning):
    """A trained model was selected although it scores below doing nothing.

    Warned by IGUANe training when the best checkpoint's validation score is below the
    score of the unharmonized held-out images (``history["val_baseline"]``); the
    estimator's ``history_["selected_below_baseline"]`` is then True.
    """
