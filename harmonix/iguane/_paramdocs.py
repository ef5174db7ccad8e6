"""Documentation of the training parameters shared by ``IGUANeHarmonizer`` and ``TrainConfig``.

Each entry is added to :data:`harmonix._docs.docdict` as ``iguane_<name>`` and named in
both docstrings by a placeholder of that name (:func:`harmonix._docs.fill_doc`),
so a parameter of the training is described once.
"""

from __future__ import annotations

from harmonix._docs import docdict

__all__: list[str] = []

docdict["iguane_n_epochs"] = """\
n_epochs : int, default=100"""

docdict["iguane_steps_per_epoch"] = """\
steps_per_epoch : int, default=200
    One step updates every source site once (see
    :func:`harmonix.iguane.training.loop.train`)."""

docdict["iguane_base_width"] = """\
base_width : int, default=16
    Channels of the generators' first level (16: the published 6.5 M-parameter
    network). Smaller widths (4-8) make CPU training practical."""

docdict["iguane_disc_base_width"] = """\
disc_base_width : int, default=None
    Channels of the discriminators' first convolution; None means ``4 * base_width``
    (64, the published discriminator, for ``base_width=16``)."""

docdict["iguane_disc_instance_norm"] = """\
disc_instance_norm : bool, default=True
    The discriminators' two MAD instance normalizations (the published network). False
    leaves them out: the discriminators then also see each volume's contrast, blur and
    noise level, which is what tells 2 mm sites apart once their histograms are matched
    (:data:`~harmonix.iguane.CPU_RECIPE_2MM`)."""

docdict["iguane_patch_size"] = """\
patch_size : int or tuple of 3 int, default=None
    Train on random crops of this size (multiples of 16, each containing a brain voxel
    at a random position) instead of whole volumes. Inference always uses whole
    volumes (the networks are fully convolutional)."""

docdict["iguane_batch_size"] = """\
batch_size : int, default=1
    Pairs per generator update (discriminators see twice as many)."""

#: the six entries both docstrings list together: how long and how large the training is
docdict["iguane_length_and_size"] = "\n".join(
    docdict[f"iguane_{name}"]
    for name in (
        "n_epochs",
        "steps_per_epoch",
        "base_width",
        "disc_base_width",
        "patch_size",
        "batch_size",
    )
)

docdict["iguane_lr_schedule"] = """\
lr_schedule : {"linear", "constant_then_linear"}, default="linear"
    "linear": decay linearly from ``learning_rate`` to ``final_learning_rate`` over
    the whole training (the original). "constant_then_linear": keep
    ``learning_rate`` for the first half, then decay linearly to
    ``final_learning_rate`` (CycleGAN's schedule, usually with 0 at the end)."""

docdict["iguane_warmup_steps"] = """\
warmup_steps : int, default=0
    Steps of discriminator updates alone (each source site's two discriminators once
    per step, against the initial generators) before the first generator update. They
    come before the ``n_epochs * steps_per_epoch`` steps and do not advance the
    learning-rate schedules."""

docdict["iguane_augment"] = """\
augment : bool, default=True
    Random rotation and shift of training volumes (see
    :func:`harmonix.iguane.training.augmentation.augment`); False turns both off."""

docdict["iguane_rotation_degrees"] = """\
rotation_degrees : float, default=10
    With ``augment``: a rotation (p=0.5) by up to this angle in one random axis plane;
    0 turns rotations off."""

docdict["iguane_shift_mm"] = """\
shift_mm : float, default=5
    With ``augment``: a shift of each axis by a whole number of voxels of at most this
    many millimetres (±5 voxels of 1 mm in the original); 0 turns shifts off."""

docdict["iguane_identity_init"] = """\
identity_init : bool, default=False
    Start every generator as the identity map by zeroing its last (1×1×1)
    convolution, instead of the original's Glorot initialization, whose random
    residual changes images a lot until training has undone it. Helps short trainings
    (e.g. on CPU); the published training does not use it."""

docdict["iguane_age_bin_width"] = """\
age_bin_width : float, default=5
    Years per bin of the age-balanced sampling (used when ages are given)."""

docdict["iguane_val_fraction"] = """\
val_fraction : float, default=0.1
    Fraction of each source site's images held out for validation."""

docdict["iguane_val_every"] = """\
val_every : int, default=1000
    Validate every this many steps (the original: every 5 epochs of 200 steps), and at
    the end."""

docdict["iguane_checkpoint_every"] = """\
checkpoint_every : int, default=200
    Write a checkpoint every this many steps (when a checkpoint folder is given)."""

docdict["iguane_mixed_precision"] = """\
mixed_precision : bool, default=None
    Run the networks under :func:`torch.autocast`; None means on CUDA only (float16 with
    loss scaling). On a CPU, True means bfloat16: faster where the CPU computes it
    natively (AVX512-BF16 or AMX, e.g. AMD Zen 4, Intel Sapphire Rapids), emulated and
    many times slower elsewhere (an ``EmulatedBFloat16Warning`` says so). The norm
    statistics, the final projection and the residual sum stay in float32, and
    convolutions of maps smaller than their kernel run in float32. The default float32
    gives the same outputs on every CPU; bfloat16 moves them slightly (speed and
    accuracy in ``benchmarks/results/iguane_bf16.md``)."""

docdict["iguane_cpu_threads"] = """\
cpu_threads : int, "auto" or None, default=None
    CPU threads of training and inference. None: PyTorch's setting
    (:func:`torch.get_num_threads`, one per physical core unless changed), whatever the
    load, so that a ``random_state`` gives the same model (and a model the same
    outputs) whether the machine is idle or busy: float rounding follows the thread
    count. An int: that many threads. "auto": follow the load, at the price of that
    reproducibility (outputs then differ in the last digits between runs, and trained
    models by more): each training site-step runs on the cores idle when it starts and
    each transform call on more threads than cores next to busy processes (the policy
    of :mod:`harmonix._threads`; what it gains on a shared machine is measured in
    ``benchmarks/results/iguane_training_speed.md`` and ``iguane_inference.md``); on an
    idle machine "auto" and None run the same. ``cpu_threads=1`` is reproducible and
    never waits for a descheduled thread. Not part of a checkpoint's settings."""

docdict["iguane_guard_images"] = """\
Parameters
----------
imgs : 4-D array, list of 3-D arrays, or list of NIfTI paths / images
    Images as for :meth:`transform`.
sites : array-like of shape (n_images,), default=None
    Site labels, as for :meth:`transform`.

Returns
-------
ndarray of shape (n_images,)"""
