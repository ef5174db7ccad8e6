"""Training recipes: explicit IGUANeHarmonizer parameters for a given budget.

``IGUANeHarmonizer()``'s defaults are the published GPU training (1 mm images, width 16,
20,000 steps). :data:`CPU_RECIPE` is a training that fits on a 2-core CPU in well under
half an hour on 4 mm images (e.g. ``make_multisite(resolution=4)``), found by the
experiments of ``benchmarks/bench_iguane_learning.py`` (results in
``benchmarks/results/iguane_learning.md``)::

    from harmonix import IGUANeHarmonizer
    from harmonix.iguane import CPU_RECIPE
    h = IGUANeHarmonizer(reference_site="site0", **CPU_RECIPE).fit(imgs, sites, ages)

A 4 mm CPU model is a small model of the data it was trained on, not the published 1 mm
model (load that one with :meth:`IGUANeHarmonizer.from_keras_weights`).
"""

from __future__ import annotations

__all__ = ["CPU_RECIPE"]

#: Whole 4 mm volumes on 2 CPU cores: narrow generators (width 4) starting as the identity
#: on inputs histogram-matched per site, wider discriminators (16) trained alone for 100
#: steps first (warm-up), then 200 steps with CycleGAN's Adam (beta1 0.5) and schedule
#: (constant, then linear decay to 0), lighter cycle/identity terms (10/5), no
#: augmentation, validation every 50 steps.
CPU_RECIPE: dict = {
    "n_epochs": 1,
    "steps_per_epoch": 200,
    "warmup_steps": 100,
    "base_width": 4,
    "disc_base_width": 16,
    "patch_size": None,
    "learning_rate": 5e-4,
    "final_learning_rate": 0.0,
    "lr_schedule": "constant_then_linear",
    "beta1": 0.5,
    "cycle_weight": 10.0,
    "identity_weight": 5.0,
    "augment": False,
    "identity_init": True,
    "input_normalization": "histogram",
    "val_every": 50,
}
