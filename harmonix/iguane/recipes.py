"""Training recipes: explicit IGUANeHarmonizer parameters for a given budget.

``IGUANeHarmonizer()``'s defaults are the published GPU training (1 mm images, width 16,
20,000 steps). :data:`CPU_RECIPE` is a training that fits on a 2-core CPU in well under
half an hour on 4 mm images (e.g. ``make_multisite(resolution=4)``), found by the
experiments of ``benchmarks/bench_iguane_learning.py`` (results in
``benchmarks/results/iguane_learning.md``)::

    from harmonix import IGUANeHarmonizer
    from harmonix.iguane import CPU_RECIPE
    h = IGUANeHarmonizer(reference_site="site0", **CPU_RECIPE, voxel_size=4)
    h.fit(imgs, sites, ages)  # 4 mm arrays (NIfTI images give their voxel size)

A 4 mm CPU model is a small model of the data it was trained on, not the published 1 mm
model (load that one with :meth:`IGUANeHarmonizer.from_keras_weights`).

The recipe itself lives in :mod:`harmonix.iguane.config`; it is importable from here and
from :mod:`harmonix.iguane`.
"""

from __future__ import annotations

from harmonix.iguane.config import CPU_RECIPE

__all__ = ["CPU_RECIPE"]
