"""A small IGUANe model shipped with harmonix, for the demo, tutorials and comparisons.

``harmonix/data/iguane_cpu_demo.pt`` is an :class:`~harmonix.IGUANeHarmonizer` trained
with :data:`harmonix.iguane.CPU_RECIPE` on 4 mm synthetic data: sites ``site0``
(reference) to ``site3`` of ``make_multisite(n_subjects=8, n_sites=5, resolution=4,
random_state=0, style="legacy")``, by ``benchmarks/train_demo_model.py`` (seed 0 of
``benchmarks/bench_iguane_learning.py``), which anyone can re-run to rebuild it. In the
model those sites are labelled ``demo-train-site0`` ... ``demo-train-site3``
(:data:`DEMO_SITE_PREFIX`), names no user's data carries, so every site label a user
passes to ``transform`` is new to it: the images of each label get an intensity map of
their own. Data sets made with another ``random_state`` have other sites and subjects too
(``harmonix demo`` uses seed 1). It is a small model of synthetic 4 mm data, not the
published 1 mm model (:meth:`~harmonix.IGUANeHarmonizer.from_keras_weights` loads that
one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harmonix.base import BaseHarmonizer
from harmonix.inputs._reading import Inputs

__all__ = ["DEMO_MODEL_PATH", "DEMO_SITE_PREFIX", "PretrainedIGUANe", "load_demo_model"]

#: The shipped CPU model (inside the installed package; never downloaded).
DEMO_MODEL_PATH = Path(__file__).resolve().parents[1] / "data" / "iguane_cpu_demo.pt"
#: Prefix of the shipped model's training site labels (``demo-train-site0``...).
DEMO_SITE_PREFIX = "demo-train-"


def load_demo_model() -> Any:
    """The shipped 4 mm CPU IGUANe model (a fitted :class:`~harmonix.IGUANeHarmonizer`).

    The model ``harmonix demo`` and the CPU tutorial apply. Its training sites are
    labelled ``demo-train-site0`` (the reference) to ``demo-train-site3``, so every site
    of a user's data is new to it, whatever its label (``make_multisite``'s ``site0``...
    included): :meth:`~harmonix.IGUANeHarmonizer.transform` with ``sites=`` fits one
    intensity map per label from the images of that label, and without ``sites`` maps
    each image by its own landmarks.

    Returns
    -------
    IGUANeHarmonizer

    Raises
    ------
    FileNotFoundError
        If the package was installed without its data file.
    """
    from harmonix.iguane.estimator import IGUANeHarmonizer

    if not DEMO_MODEL_PATH.is_file():
        raise FileNotFoundError(
            f"The shipped IGUANe demo model is missing ({DEMO_MODEL_PATH.name}); reinstall "
            "harmonix, or rebuild it with benchmarks/train_demo_model.py."
        )
    return IGUANeHarmonizer.load(DEMO_MODEL_PATH)


class PretrainedIGUANe(BaseHarmonizer):
    """An already trained IGUANe model behind the fit/transform contract.

    :meth:`fit` does not train: it checks the images and loads the model, so the model can
    sit in :func:`harmonix.benchmark.run_benchmark` beside methods that are fitted on the
    benchmark's data. Every site is then one the model never saw in its own training:
    site labels given to :meth:`transform` group images for the per-site histogram map
    even when they equal the names of the model's training sites.

    Parameters
    ----------
    model_path : str or path-like, default=None
        A model saved by :meth:`harmonix.IGUANeHarmonizer.save`; None: the shipped demo
        model (:func:`load_demo_model`).
    reference_site : hashable, default=None
        Only checked against the sites passed to :meth:`fit` (the model keeps its own
        target appearance).
    grid_mismatch : {"error", "warn", "ignore"}, default="error"
        What :meth:`fit` and :meth:`transform` do with images whose grid differs from the
        model's training grid (``model_.grid_``: another voxel size or orientation, see
        :class:`~harmonix.IGUANeHarmonizer`): raise a ValueError, warn, or go on. The
        shipped model is a 4 mm model. Read at transform time.

    Attributes
    ----------
    model_ : IGUANeHarmonizer
        The loaded model.
    """

    _needs_sites: ClassVar[bool] = False
    _fixed_shape: ClassVar[bool] = False
    _transform_params: ClassVar[tuple[str, ...]] = ("grid_mismatch",)

    def __init__(
        self, model_path: Any = None, reference_site: Any = None, grid_mismatch: str = "error"
    ):
        self.model_path = model_path
        self.reference_site = reference_site
        self.grid_mismatch = grid_mismatch

    def _model(self) -> Any:
        """``model_`` with this wrapper's ``grid_mismatch``."""
        return self.model_.set_params(grid_mismatch=self._grid_action())

    def _fit(self, data: Inputs) -> None:
        from harmonix.iguane.estimator import IGUANeHarmonizer

        if self.model_path is None:
            model = load_demo_model()
        else:
            model = IGUANeHarmonizer.load(self.model_path)
        self.model_ = model
        model = self._model()
        model.check_grid(data.imgs)  # the model's voxel size and orientation
        for _ in model._iter_brains(data.imgs):  # validates every image (and its brain's size)
            pass

    def _site_statistics(self, data: Inputs) -> dict[str, Any]:
        stats = self.model_._site_statistics(_as_new(data))
        return {key[len(_NEW) :]: value for key, value in stats.items()}

    def _transform(self, data: Inputs, stats: dict[str, Any]) -> list[np.ndarray]:
        # the caller's sites are never the model's training sites, even when their labels
        # coincide ("site1" of another data set): keep them apart from the stored ones
        new_stats = {_NEW + key: value for key, value in stats.items()}
        model = self._model()
        model.check_grid(data.imgs)
        return model._transform(_as_new(data), new_stats)


#: Prefix that keeps the caller's site labels apart from the model's training sites.
_NEW = "(new) "


def _as_new(data: Inputs) -> Inputs:
    """The inputs with each site label prefixed by ``_NEW`` (and no covariates: the
    model has none)."""
    sites = data.sites
    new = None if sites is None else np.asarray([_NEW + s for s in sites.tolist()])
    return Inputs(data.imgs, new, data.ages)
