"""Settings of IGUANe training: the frozen :class:`TrainConfig`, its validation, and recipes.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import harmonix.iguane._paramdocs  # noqa: F401  (registers the shared parameter docs)
from harmonix._docs import fill_doc
from harmonix.iguane.model.losses import CYCLE_WEIGHT, IDENTITY_WEIGHT
from harmonix.iguane.model.networks import SIZE_MULTIPLE, size_triple
from harmonix.inputs.grids import check_voxel_size

__all__ = [
    "CPU_RECIPE",
    "LR_SCHEDULES",
    "TrainConfig",
    "check_cpu_threads",
    "check_int",
]

#: Learning-rate schedules of :class:`TrainConfig`.
LR_SCHEDULES = ("linear", "constant_then_linear")


@fill_doc
@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of IGUANe training; defaults are the published settings.

    Parameters
    ----------
    %(iguane_length_and_size)s
    %(iguane_disc_instance_norm)s
    disc_pairs : int, default=2
        See ``batch_size`` (2 in the original).
    learning_rate, final_learning_rate : float, default=2e-4, 2e-5
        Start and end of the learning-rate schedule (``final_learning_rate`` may be 0).
    %(iguane_lr_schedule)s
    beta1, beta2, adam_eps : float, default=0.9, 0.999, 1e-7
        Adam parameters (CycleGAN practice is ``beta1=0.5``).
    %(iguane_warmup_steps)s
    cycle_weight, identity_weight : float, default=30, 15
        Loss weights.
    %(iguane_augment)s
    %(iguane_rotation_degrees)s
    %(iguane_shift_mm)s
    voxel_size : float, tuple of 3 float or None, default=(1, 1, 1)
        Voxel size of the training volumes in mm (converts ``shift_mm`` to voxels). None:
        not known, which is refused while shifts are on (``augment`` and ``shift_mm > 0``).
    %(iguane_identity_init)s
    %(iguane_age_bin_width)s
    %(iguane_val_fraction)s
    %(iguane_val_every)s
    %(iguane_checkpoint_every)s
    %(iguane_mixed_precision)s
    amp_dtype : {"float16", "bfloat16"}, default=None
        Autocast dtype; None means float16 on CUDA (with loss scaling) and bfloat16 on CPU.
    %(iguane_cpu_threads)s
    """

    n_epochs: int = 100
    steps_per_epoch: int = 200
    base_width: int = 16
    disc_base_width: int | None = None
    disc_instance_norm: bool = True
    patch_size: int | tuple[int, int, int] | None = None
    batch_size: int = 1
    disc_pairs: int = 2
    learning_rate: float = 2e-4
    final_learning_rate: float = 2e-5
    lr_schedule: str = "linear"
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-7
    cycle_weight: float = CYCLE_WEIGHT
    identity_weight: float = IDENTITY_WEIGHT
    warmup_steps: int = 0
    augment: bool = True
    rotation_degrees: float = 10.0
    shift_mm: float = 5.0
    voxel_size: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    identity_init: bool = False
    age_bin_width: float = 5.0
    val_fraction: float = 0.1
    val_every: int = 1000
    checkpoint_every: int = 200
    mixed_precision: bool | None = None
    amp_dtype: str | None = None
    cpu_threads: int | str | None = None

    def __post_init__(self) -> None:
        for name in (
            "n_epochs",
            "steps_per_epoch",
            "base_width",
            "batch_size",
            "disc_pairs",
            "val_every",
            "checkpoint_every",
        ):
            check_int(getattr(self, name), name, 1)
        check_int(self.warmup_steps, "warmup_steps", 0)
        if not isinstance(self.disc_instance_norm, bool | np.bool_):
            raise ValueError(
                f"disc_instance_norm must be True or False, got {self.disc_instance_norm!r}."
            )
        object.__setattr__(self, "disc_instance_norm", bool(self.disc_instance_norm))
        check_cpu_threads(self.cpu_threads)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}."
            )
        for name in ("rotation_degrees", "shift_mm"):
            _check_number(getattr(self, name), name, positive=False)
        object.__setattr__(self, "voxel_size", check_voxel_size(self.voxel_size))
        if self.voxel_size is None and self.augment and self.shift_mm > 0:
            raise ValueError(
                f"shift_mm={self.shift_mm:g} (with augment=True) shifts the images by "
                "millimetres, but their voxel size is not known: arrays carry none (and "
                "images of several voxel sizes share none). Pass voxel_size=<mm> (for "
                "make_multisite data: voxel_size=ds.resolution), or NIfTI images (their "
                "headers give it), or turn shifts off (shift_mm=0 or augment=False)."
            )
        if self.disc_base_width is not None:
            check_int(self.disc_base_width, "disc_base_width", 1)
        if self.patch_size is not None:
            patch = size_triple(self.patch_size, allow_int=True)
            if patch is None:
                raise ValueError(
                    f"patch_size must be None, an int or 3 ints, each a multiple of "
                    f"{SIZE_MULTIPLE} (e.g. 32 or 64), got {self.patch_size!r}."
                )
            object.__setattr__(self, "patch_size", patch)
        for name in ("learning_rate", "adam_eps", "age_bin_width"):
            _check_number(getattr(self, name), name, positive=True)
        _check_number(self.final_learning_rate, "final_learning_rate", positive=False)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value < 1):
                raise ValueError(f"{name} must be in [0, 1), got {value!r}.")
        for name in ("cycle_weight", "identity_weight"):
            _check_number(getattr(self, name), name, positive=False)
        if not (isinstance(self.val_fraction, int | float) and 0 <= self.val_fraction < 1):
            raise ValueError(
                f"val_fraction must be in [0, 1) (0 disables validation), "
                f"got {self.val_fraction!r}."
            )
        if self.amp_dtype not in (None, "float16", "bfloat16"):
            raise ValueError(
                f"amp_dtype must be None, 'float16' or 'bfloat16', got {self.amp_dtype!r}."
            )

    @property
    def n_steps(self) -> int:
        """Number of training steps with generator updates (warm-up excluded)."""
        return self.n_epochs * self.steps_per_epoch

    @property
    def total_steps(self) -> int:
        """All steps: discriminator warm-up, then ``n_steps``."""
        return self.warmup_steps + self.n_steps

    @property
    def max_shift_voxels(self) -> tuple[int, int, int]:
        """``shift_mm`` in whole voxels along each axis (0 without augmentation)."""
        if not self.augment or self.shift_mm == 0:
            return (0, 0, 0)
        return tuple(int(math.floor(self.shift_mm / v + 1e-9)) for v in self.voxel_size)

    @property
    def discriminator_width(self) -> int:
        """Resolved ``disc_base_width``."""
        return 4 * self.base_width if self.disc_base_width is None else self.disc_base_width


def check_int(value: Any, name: str, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def check_cpu_threads(value: Any) -> int | str | None:
    """``value`` if it is a valid ``cpu_threads`` (None, "auto" or an integer >= 1).

    Raises
    ------
    ValueError
        Otherwise, naming the accepted values.
    """
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"cpu_threads must be None, 'auto' or an integer >= 1, got {value!r}.")
    return int(value)


def _check_number(value: Any, name: str, *, positive: bool) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number, ``> 0`` or ``>= 0``."""
    ok = isinstance(value, int | float) and math.isfinite(value)
    if positive and not (ok and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    if not (ok and value >= 0):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}.")


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

#: 2 mm volumes on 2 CPU cores (``benchmarks/results/iguane_learning_2mm.md``):
#: :data:`CPU_RECIPE` on 48×64×48-voxel patches, with discriminators without instance
#: normalization (they tell 2 mm sites apart by each volume's blur and noise level, which
#: the normalization divides away) trained alone for 1500 steps first: with 100-200 steps,
#: or with the normalization, they stay at chance and the generators at the identity.
#: Then 600 generator steps (the gain rose from 200 to 600 and not further at 1000; about
#: 30 min in all with 2 source sites), and no held-out images: the held-out selection
#: score compares histograms, which the per-site maps already match, so it cannot see
#: what is learned at 2 mm (blur, noise) and would pick an earlier step; the last step
#: is kept. The cycle and identity terms are half of CPU_RECIPE's (5/2.5), so that the
#: generators move further from their input: over two trainings per data seed, +0.0107
#: traveling SSIM above histogram matching on an unseen site against +0.0096 with 10/5
#: (E15 and E13 there).
CPU_RECIPE_2MM: dict = {
    **CPU_RECIPE,
    "patch_size": (48, 64, 48),
    "steps_per_epoch": 600,
    "warmup_steps": 1500,
    "disc_instance_norm": False,
    "val_fraction": 0.0,
    "cycle_weight": 5.0,
    "identity_weight": 2.5,
}
