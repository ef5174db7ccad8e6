"""IGUANe: a 3-D many-to-one CycleGAN for multi-site brain MRI harmonization.

Most users need only :class:`harmonix.IGUANeHarmonizer`; this package also hands out the
networks, the training loop and the inference pass for use without the estimator (the
names in ``__all__``). Where things live:

``estimator``
    :class:`~harmonix.IGUANeHarmonizer`, the scikit-learn-style facade, and the three
    private modules that carry out its methods: ``_fitting`` (fit: normalize, train,
    calibrate the guard), ``_harmonizing`` (transform: site check, generator, guard) and
    ``_model_file`` (save/load, the official weights). Their functions take the estimator
    as ``est`` (typed :class:`~harmonix.base.BaseHarmonizer`: ``estimator`` imports them,
    not the other way round). ``_paramdocs``: parameter texts shared with
    :class:`TrainConfig`.
``model/``
    What IGUANe is: ``networks`` (:class:`Generator3D`, :class:`PatchDiscriminator3D`,
    :class:`MADInstanceNorm3d`), ``losses`` (LSGAN, cycle, identity) and
    ``keras_weights`` (:func:`load_keras_generator_weights`: the official weights).
``inputs/``
    What the networks see: ``normalization`` (median or per-site histogram input
    normalization), ``site_agreement`` (do a label's images fit its stored map?) and
    ``volumes`` (the network scale and grid, on-demand loading).
``training/``
    How the networks learn: ``config`` (:class:`TrainConfig`, :data:`CPU_RECIPE`,
    :data:`CPU_RECIPE_2MM`), ``loop`` (:func:`train`: validation, checkpoints, resume),
    ``trainer`` (the networks, optimizers and one step), ``updates`` (the discriminator
    and generator updates), ``sampling`` (site-paired, age-balanced pairs),
    ``augmentation`` (rotations, shifts, patches), ``selection`` (validation split and
    score), ``checkpoints`` (files, fingerprints, :func:`load_checkpoint`) and
    ``distributed`` (``torchrun``).
``inference``
    :func:`harmonize_volume`: one volume through the forward generator, fast.
``guard``
    The out-of-distribution guard of ``transform`` (:class:`OutOfDistributionWarning`).
``devices``
    Device and mixed-precision choice (:class:`EmulatedBFloat16Warning`).
``pretrained``
    The 4 mm model shipped with harmonix (:func:`load_demo_model`, :class:`PretrainedIGUANe`).
``_kernels/``
    The CPU speed tricks, private: ``fused_inference`` (the fused, slab-wise inference
    pass), ``conv_backward`` (oneDNN convolution gradients), ``norm_autograd`` (the MAD
    norm as one autograd node) and ``reduced_precision`` (float32 where bfloat16 kernels
    fail). The thread policy they share with preprocessing is :mod:`harmonix._threads`.
"""

from harmonix.iguane.devices import EmulatedBFloat16Warning
from harmonix.iguane.guard import OutOfDistributionWarning
from harmonix.iguane.inference import harmonize_volume
from harmonix.iguane.model.keras_weights import load_keras_generator_weights
from harmonix.iguane.model.networks import Generator3D, MADInstanceNorm3d, PatchDiscriminator3D
from harmonix.iguane.pretrained import PretrainedIGUANe, load_demo_model
from harmonix.iguane.training.checkpoints import load_checkpoint
from harmonix.iguane.training.config import CPU_RECIPE, CPU_RECIPE_2MM, TrainConfig
from harmonix.iguane.training.loop import TrainResult, train

__all__ = [
    "CPU_RECIPE",
    "CPU_RECIPE_2MM",
    "EmulatedBFloat16Warning",
    "Generator3D",
    "MADInstanceNorm3d",
    "OutOfDistributionWarning",
    "PatchDiscriminator3D",
    "PretrainedIGUANe",
    "TrainConfig",
    "TrainResult",
    "harmonize_volume",
    "load_checkpoint",
    "load_demo_model",
    "load_keras_generator_weights",
    "train",
]
