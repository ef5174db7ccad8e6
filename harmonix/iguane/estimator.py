"""IGUANeHarmonizer: the scikit-learn-style facade over IGUANe training and inference."""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.utils.validation import check_is_fitted

from harmonix._digest import ImageDigest
from harmonix._docs import fill_doc
from harmonix._labels import check_sites
from harmonix._version import __version__
from harmonix.base import BaseHarmonizer
from harmonix.covariates import categorical_strata
from harmonix.iguane import _paramdocs  # noqa: F401  (the shared parameter docs)
from harmonix.iguane.checkpoints import atomic_torch_save, load_torch_file
from harmonix.iguane.config import TrainConfig, check_cpu_threads, size_triple
from harmonix.iguane.data import (
    NETWORK_SCALE,
    SIZE_MULTIPLE,
    PreparedVolume,
    VolumeLoader,
    brain_median,
    from_network_scale,
    prepare_volume,
)
from harmonix.iguane.devices import autocast_dtype, resolve_device
from harmonix.iguane.guard import (
    ContrastProfile,
    check_ood,
    correction_threshold,
    evenly,
    profile_threshold,
)
from harmonix.iguane.inference import harmonize_volume
from harmonix.iguane.losses import CYCLE_WEIGHT, IDENTITY_WEIGHT
from harmonix.iguane.networks import Generator3D
from harmonix.iguane.normalization import (
    InputNormalizer,
    check_kind,
    correction_size,
    image_landmarks,
)
from harmonix.iguane.training import train
from harmonix.io import ImageCollection, as_collection
from harmonix.persistence import to_plain
from harmonix.preprocessing import IGUANE_SHAPE
from harmonix.site_check import act_on_agreements, agreement_frame, check_policy

__all__ = ["IGUANeHarmonizer", "OutOfDistributionWarning"]


class OutOfDistributionWarning(UserWarning):
    """An image lies outside what an IGUANe model saw in training."""


_MODEL_FORMAT = "harmonix.IGUANeHarmonizer/1"
#: Reference site of the published IGUANe model.
OFFICIAL_REFERENCE_SITE = "SALD"


@fill_doc
class IGUANeHarmonizer(BaseHarmonizer):
    """IGUANe: a 3-D many-to-one CycleGAN that maps images of any site to a reference site.

    Training (:meth:`fit`) learns one *forward* generator shared by all source sites,
    together with one backward generator and two discriminators per source site (Roca et
    al., Medical Image Analysis 2025). :meth:`transform` uses the forward generator only,
    so it harmonizes images of any site, including sites never seen in training. The
    defaults are the published settings (meant for a GPU); for CPU use, lower
    ``base_width`` (e.g. 4) and train on patches (``patch_size=32``).

    Parameters
    ----------
    reference_site : hashable, default=None
        Target site; None picks the site with the most images.
    %(iguane_n_epochs)s
    %(iguane_steps_per_epoch)s
    %(iguane_base_width)s
    %(iguane_disc_base_width)s
    %(iguane_patch_size)s
    %(iguane_batch_size)s
    learning_rate, final_learning_rate : float, default=2e-4, 2e-5
        Adam learning rate at the start and at the end of the schedule.
    %(iguane_lr_schedule)s
    beta1 : float, default=0.9
        Adam's first-moment decay (0.9 in the original, 0.5 in CycleGAN practice).
    %(iguane_warmup_steps)s
    cycle_weight, identity_weight : float, default=30, 15
        Weights of the cycle-consistency and identity losses.
    %(iguane_augment)s
    %(iguane_rotation_degrees)s
    %(iguane_shift_mm)s
    voxel_size : float or tuple of 3 float, default=None
        Voxel size (mm) of array images, which carry none: recorded in ``grid_`` (so
        :meth:`transform` can refuse images of another voxel size) and used by every
        millimetre option (``shift_mm``). NIfTI images take theirs from their headers
        (a different ``voxel_size`` is refused). Arrays without it have an unknown voxel
        size, refused while ``shift_mm`` is in use; for
        :func:`~harmonix.datasets.make_multisite` data pass ``voxel_size=ds.resolution``.
    %(iguane_identity_init)s
    %(iguane_age_bin_width)s
    %(iguane_val_fraction)s
    %(iguane_val_every)s
    checkpoint_dir : str or path-like, default=None
        Folder for a training checkpoint (atomic writes); None: no checkpoint.
    %(iguane_checkpoint_every)s
    resume : bool, default=False
        Continue an interrupted training from the checkpoint in ``checkpoint_dir`` (with
        the same parameters and data); starts from scratch if there is none. A checkpoint
        of other parameters, sites, ages or images (or the same images in another order:
        a digest of them is stored) is refused with a ValueError.
    input_shape : tuple of 3 int, default=None
        None: every image is zero-padded to a multiple of 16 per axis. Otherwise images are
        cropped/padded to this shape without cutting brain voxels (the published network
        uses (160, 192, 160) on 1 mm MNI images). Outputs are always on the input grid.
    cache_size : int, default=8
        Prepared training volumes kept in memory when images are files.
    device : {"auto", "cpu", "cuda"}, default="auto"
        Where the networks run ("auto": CUDA if available). "cuda" without CUDA raises a
        ValueError.
    %(iguane_mixed_precision)s
    %(iguane_cpu_threads)s
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the held-out split, initialization, sampling and augmentation (local
        generators; global seeds are never touched). Runs are reproducible on CPU to the
        last bit, idle or busy (unless ``cpu_threads="auto"``).
    verbose : int, default=0
        Show a progress bar with running losses during fit.
    distributed : bool or None, default=None
        Data-parallel training over several processes (GPUs, nodes), see Notes. None: when
        the script runs under ``torchrun`` with several processes (or in an initialized
        :mod:`torch.distributed` process group); False: never; True: required.
    input_normalization : {"median", "histogram"}, default="median"
        How images are normalized before the networks. "median": brain median to 500, as
        the original. "histogram": first mapped onto the reference site's histogram
        landmarks (Nyúl–Udupa, as :class:`~harmonix.HistogramMatchingHarmonizer`), so the
        generator learns only what histogram matching leaves and an identity generator
        returns the histogram-matched image. One map per site (from the site's mean
        landmarks), so differences between a site's subjects are kept: pass ``sites`` to
        :meth:`transform` for images of sites unseen in fit (without labels each image
        is mapped by its own landmarks). See :mod:`harmonix.iguane.normalization` and
        "Site labels" in the Notes.
    max_steps : int, default=None
        Stop after this many steps (warm-up included) and keep the model reached; with
        ``checkpoint_dir`` and ``resume=True`` a later :meth:`fit` goes on from there.
    ood_action : {"warn", "fallback", "ignore"}, default="warn"
        What :meth:`transform` does with an image whose :meth:`distribution_distance`
        exceeds ``ood_threshold_``: warn (:class:`OutOfDistributionWarning`), also return
        it without the generator's correction (the normalized input: the
        histogram-matched image with ``input_normalization="histogram"``), or nothing.
    ood_threshold : float, default=None
        Distance above which an image is out of distribution; None: 1.5 times the largest
        distance of the held-out and sampled training images, set in :meth:`fit`.
    site_check : {"refit", "warn", "error"}, default="refit"
        What :meth:`transform` does with a labelled group whose label names a training
        site but whose images disagree with that site's stored intensity map (see
        :meth:`site_agreement` and "Site labels" in the Notes): warn
        (:class:`~harmonix.exceptions.SiteMismatchWarning`, naming the site and the size
        of the mismatch) and map the group from its own images as a new site
        ("refit"), warn and use the stored map anyway ("warn"), or raise
        :class:`~harmonix.exceptions.SiteMismatchError` ("error"). Groups that agree
        use the stored map, as without the check.
    scoring : callable, default=None
        ``scoring(harmonize, volumes, sites) -> float`` (higher is better) selects the
        returned generator among the validation checkpoints; None: the default score of
        :mod:`harmonix.iguane.selection` (intensity distribution and regional profile
        distance to the reference site). Not saved by :meth:`save`.
    %(grid_mismatch)s
        A mismatch is another voxel size (by more than 5 %) or orientation (axis codes);
        for arrays, whose voxel size is unknown, a brain with more than 2.5 times more or
        fewer voxels than the training images'. Shapes may differ.

    Attributes
    ----------
    reference_site_ : str
        The reference site (its label as text).
    sites_ : ndarray of str
        Sites seen in fit (labels as text).
    n_images_ : int
        Number of training images.
    generator_ : Generator3D
        The selected forward generator, on CPU, in eval mode.
    reference_median_ : float
        Median over the reference site's training images of their brain-median intensity;
        harmonized images are returned on this intensity scale.
    input_normalization_ : dict
        The fitted input normalization (kind and, for "histogram", the standard
        landmarks, the training sites and their landmarks).
    training_corrections_ : ndarray
        Sizes of the generator's corrections of held-out (and up to 32 other) source-site
        training images, on the network scale; they calibrate the guard.
    typical_correction_ : float
        Their median: :meth:`distribution_distance` is relative to it.
    ood_threshold_ : float
        Distance above which :meth:`transform` flags an image.
    reference_profile_ : ndarray of shape (24, 24, 24)
        Mean local contrast pattern of the reference site's training images (see
        :class:`harmonix.iguane.guard.ContrastProfile`; NaN where they have no brain).
    training_profile_correlations_ : ndarray
        Correlations of the guard's training images' profiles with it.
    profile_threshold_ : float
        Profile correlation below which :meth:`transform` flags an image:
        ``1 - 1.5 * (1 - min(training_profile_correlations_))``.
    input_shape_ : tuple of 3 int or None
        ``input_shape`` at fit, used by :meth:`transform`.
    %(grid_)s
        ``voxel_size`` comes from the NIfTI headers or the ``voxel_size`` parameter;
        ``brain_voxels`` is the training images' median number of brain voxels.
    history_ : dict
        Per-step mean losses over source sites (``loss_discriminator``,
        ``loss_adversarial``, ``loss_cycle``, ``loss_identity``, ``loss_generator``),
        validation steps and scores (``val_step``, ``val_score``, ``val_baseline``,
        ``best_step``, ``best_score``), ``selected_below_baseline`` (True when the
        selected generator scores below the unharmonized held-out images, with a
        :class:`~harmonix.exceptions.ModelSelectionWarning`; None without validation)
        and the held-out image indices (``val_indices``).

    See Also
    --------
    harmonix.iguane.training.train : the training loop, usable on its own.

    Notes
    -----
    **Inputs.** Skull-stripped T1-weighted images with background 0, ideally rigidly
    registered to MNI space at 1 mm and N4-corrected, like the images IGUANe was designed
    for. Each image is median-normalized (brain median 500) and mapped to the network
    scale ``x / 500 - 1`` internally; images of different shapes are allowed.

    **Voxel size.** A network learns structures of a given size in voxels, so a model
    is specific to the voxel size of its training images (and to their orientation):
    :meth:`transform` refuses images of another voxel size (``grid_mismatch``), e.g. the
    shipped 4 mm model (:func:`harmonix.iguane.pretrained.load_demo_model`) on the 1 mm
    images ``harmonix preprocess`` writes; resample them to the model's voxel size first.

    **Parameters read by transform.** ``ood_action``, ``grid_mismatch`` and
    ``site_check`` (policies), ``device`` and ``mixed_precision`` (how to compute: outputs
    differ at the level of float rounding, bfloat16's with ``mixed_precision``) apply at
    once when changed with ``set_params`` after fit. Every other parameter acts through
    fit.

    **Output scale.** The forward generator's output ``y`` is mapped back with
    ``(y + 1) * 500`` (IGUANe's median-500 scale) and then multiplied by
    ``reference_median_ / 500``, i.e. ``(y + 1) * reference_median_``: a harmonized image
    has the intensity scale of the reference site's images. Background stays 0 and
    intensities are clamped at 0.

    **Validation.** The selected generator is the best-scoring one on the held-out images
    (``scoring``; by default the closest to the reference site in intensity distribution
    and regional intensity profile, see :mod:`harmonix.iguane.selection`); ties go to the
    later checkpoint. A ``scoring`` that returns NaN raises a ValueError; a selected
    generator that scores below the unharmonized held-out images gives a
    :class:`~harmonix.exceptions.ModelSelectionWarning`
    (``history_["selected_below_baseline"]``).

    **Out-of-distribution guard.** A generator trained on a few sites may change an
    image of an unlike site in unlike ways. :meth:`distribution_distance` compares the
    size of the generator's correction of an image with its corrections of held-out
    training images, and :meth:`profile_correlation` the image's regional intensity
    profile with the reference site's (it catches another contrast, which the generator
    may change no more than a T1); :meth:`transform` warns about images above
    ``ood_threshold_`` or below ``profile_threshold_`` (see ``ood_action``).
    :meth:`guard_report` sums both up per labelled group, so a site that is off shows at
    once.

    **Site labels.** To a fitted model with ``input_normalization="histogram"`` a site
    label names an intensity map: the images of a training site's label are mapped with
    the map stored for that site (from its training images), those of any other label
    with a map fitted on the images of that label in the call, and images without a
    label each with its own landmarks. A label is only a name: before applying a stored
    map, :meth:`transform` checks that the group's images agree with it (their mean
    landmarks against the site's, with the spread of the training images around their
    site's landmarks as the yardstick and the group size taken into account:
    :mod:`harmonix.iguane.site_agreement`); a group that disagrees is another scanner
    with the same name and is handled by ``site_check``. Give new data labels the model
    did not see in fit unless the images really come from a training site (new scans
    of a training scanner then get its stored map, bit for bit). A model saved before
    the check existed has no yardstick and trusts its labels; :meth:`fit_site_check`
    gives it one from its training images. With ``input_normalization="median"`` labels
    do not matter to :meth:`transform`.

    **Covariates.** Training pairs are balanced: each (source, reference) pair is drawn
    from one age bin (with ``ages`` or an ``age`` covariate) and one combination of the
    categorical covariates (e.g. sex and diagnosis), with the distribution the two sites
    share, so that the discriminators learn the site difference rather than a difference
    of age, sex or diagnosis between the sites (:class:`harmonix.iguane.data.SitePairSampler`).
    Other continuous covariates are checked and not used; :meth:`transform` needs no
    covariates.

    **Training on a CPU.** :data:`harmonix.iguane.CPU_RECIPE` holds parameters for whole
    4 mm volumes on 2 cores (``IGUANeHarmonizer(reference_site=..., **CPU_RECIPE)``);
    such a model is a small model of its training data, not the published 1 mm model
    (:meth:`from_keras_weights`).

    **Devices.** Training and inference run on ``device``; ``generator_`` is kept on CPU
    and copied to the GPU for :meth:`transform`. Checkpoint-and-resume is exact on CPU.

    **Several GPUs or nodes.** Run the fitting script with ``torchrun`` (e.g.
    ``torchrun --nproc_per_node=4 fit.py``) and give every process the same arguments:
    each process trains on its share of every batch (``batch_size`` pairs per process, so
    ``4 * batch_size`` per update), gradients are averaged with
    :class:`~torch.nn.parallel.DistributedDataParallel`, and every process ends with the
    same fitted model (save it from process 0, ``torch.distributed.get_rank() == 0``). It
    is the same training as one process with ``batch_size=4 * batch_size``; see
    :mod:`harmonix.iguane.distributed`.

    **Persistence.** :meth:`save` writes parameters, fitted values, the harmonix version
    and the generator weights with :func:`torch.save` (plain tensors and values only) and
    :meth:`load` reads them with ``torch.load(weights_only=True)``; a ``random_state``
    that is a numpy Generator is saved as None. Pickling (joblib) also works.

    Examples
    --------
    >>> from harmonix import IGUANeHarmonizer
    >>> from harmonix.datasets import make_multisite
    >>> ds = make_multisite(n_subjects=4, n_sites=3, resolution=4, random_state=0)
    >>> h = IGUANeHarmonizer(n_epochs=1, steps_per_epoch=1, base_width=2, random_state=0,
    ...                      voxel_size=ds.resolution)  # arrays carry no voxel size
    >>> h.fit(ds.imgs, ds.sites, ds.ages).transform(ds.imgs[:1]).shape
    (1, 46, 55, 46)
    """

    _needs_sites: ClassVar[bool] = False
    _fixed_shape: ClassVar[bool] = False
    _grid_check: ClassVar[str] = "voxel"
    _transform_params: ClassVar[tuple[str, ...]] = (
        "ood_action",
        "grid_mismatch",
        "site_check",
        "device",
        "mixed_precision",
    )

    def __init__(
        self,
        reference_site: Any = None,
        n_epochs: int = 100,
        steps_per_epoch: int = 200,
        base_width: int = 16,
        disc_base_width: int | None = None,
        patch_size: int | tuple[int, int, int] | None = None,
        batch_size: int = 1,
        learning_rate: float = 2e-4,
        final_learning_rate: float = 2e-5,
        lr_schedule: str = "linear",
        beta1: float = 0.9,
        warmup_steps: int = 0,
        cycle_weight: float = CYCLE_WEIGHT,
        identity_weight: float = IDENTITY_WEIGHT,
        augment: bool = True,
        rotation_degrees: float = 10.0,
        shift_mm: float = 5.0,
        voxel_size: float | tuple[float, float, float] | None = None,
        identity_init: bool = False,
        age_bin_width: float = 5.0,
        val_fraction: float = 0.1,
        val_every: int = 1000,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 200,
        resume: bool = False,
        input_shape: tuple[int, int, int] | None = None,
        cache_size: int = 8,
        device: str = "auto",
        mixed_precision: bool | None = None,
        cpu_threads: int | str | None = None,
        random_state: int | np.random.Generator | None = None,
        verbose: int = 0,
        distributed: bool | None = None,
        input_normalization: str = "median",
        max_steps: int | None = None,
        ood_action: str = "warn",
        ood_threshold: float | None = None,
        site_check: str = "refit",
        scoring: Any = None,
        grid_mismatch: str = "error",
    ):
        self.reference_site = reference_site
        self.n_epochs = n_epochs
        self.steps_per_epoch = steps_per_epoch
        self.base_width = base_width
        self.disc_base_width = disc_base_width
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.final_learning_rate = final_learning_rate
        self.lr_schedule = lr_schedule
        self.beta1 = beta1
        self.warmup_steps = warmup_steps
        self.cycle_weight = cycle_weight
        self.identity_weight = identity_weight
        self.augment = augment
        self.rotation_degrees = rotation_degrees
        self.shift_mm = shift_mm
        self.voxel_size = voxel_size
        self.identity_init = identity_init
        self.age_bin_width = age_bin_width
        self.val_fraction = val_fraction
        self.val_every = val_every
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.input_shape = input_shape
        self.cache_size = cache_size
        self.device = device
        self.mixed_precision = mixed_precision
        self.cpu_threads = cpu_threads
        self.random_state = random_state
        self.verbose = verbose
        self.distributed = distributed
        self.input_normalization = input_normalization
        self.max_steps = max_steps
        self.ood_action = ood_action
        self.ood_threshold = ood_threshold
        self.site_check = site_check
        self.scoring = scoring
        self.grid_mismatch = grid_mismatch

    # -- fit -------------------------------------------------------------------------------
    def _complete_loaded(self) -> None:
        super()._complete_loaded()
        if not hasattr(self, "input_shape_"):  # saved before transform stopped reading it
            self.input_shape_ = _check_input_shape(self.input_shape)

    def _train_config(self, voxel_size: tuple[float, float, float] | None) -> TrainConfig:
        """The :class:`TrainConfig` of this estimator's parameters (it validates them)."""
        params = self.get_params(deep=False)
        names = [f.name for f in dataclasses.fields(TrainConfig) if f.name in params]
        shared = {name: params[name] for name in names}
        shared.update(
            voxel_size=voxel_size,
            augment=bool(self.augment),
            identity_init=bool(self.identity_init),
        )
        return TrainConfig(**shared)

    def _fit(
        self,
        imgs: ImageCollection,
        sites: np.ndarray,
        ages: np.ndarray | None,
        covariates: pd.DataFrame | None,
    ) -> None:
        # validates them; the voxel size of the grid recorded by fit (headers or voxel_size)
        voxel = self.grid_["voxel_size"]
        config = self._train_config(None if voxel is None else tuple(voxel))
        device = resolve_device(self.device)
        input_shape = _check_input_shape(self.input_shape)
        check_ood(self.ood_action, self.ood_threshold)
        check_policy(self.site_check)
        if isinstance(self.cache_size, bool) or not isinstance(self.cache_size, int | np.integer):
            raise ValueError(f"cache_size must be an integer >= 0, got {self.cache_size!r}.")
        histogram = self.input_normalization == "histogram"
        check_kind(self.input_normalization)
        medians = np.empty(len(imgs))
        n_brain = np.empty(len(imgs))
        landmarks = []
        digest = ImageDigest()  # of the images in order: a resume on others is refused
        for i, (data, brain) in enumerate(self._iter_brains(imgs)):
            digest.update(data)
            try:
                medians[i] = brain_median(data, brain)
            except ValueError as exc:
                raise ValueError(f"Image {i}: {exc}") from None
            n_brain[i] = np.count_nonzero(brain)
            if histogram:
                landmarks.append(image_landmarks(data))
        reference = np.flatnonzero(sites == self.reference_site_)
        normalizer = InputNormalizer.fit(
            self.input_normalization,
            np.stack(landmarks) if histogram else None,
            sites,
            self.reference_site_,
        )
        site_lm = normalizer.site_landmarks_of(sites, landmarks.__getitem__)
        if histogram:
            medians[:] = normalizer.median

        def normalized(index: int) -> np.ndarray:
            return normalizer(imgs[index], site_lm[index] if histogram else None)[0]

        loader = VolumeLoader(
            normalized,
            medians,
            input_shape=input_shape,
            cache_size=int(self.cache_size) if imgs.kind == "nifti" else 0,
        )
        result = train(
            loader,
            sites,
            self.reference_site_,
            ages,
            config,
            strata=categorical_strata(covariates, self.covariate_levels_),
            checkpoint_dir=self.checkpoint_dir,
            resume=bool(self.resume),
            max_steps=self.max_steps,
            device=device,
            random_state=self.random_state,
            verbose=self.verbose,
            distributed=self.distributed,
            scoring=self.scoring,
            data_digest=digest.hexdigest(),
            input_normalization=self.input_normalization,
        )
        self.generator_ = result.generator
        self.input_shape_ = input_shape
        self.grid_["brain_voxels"] = float(np.median(n_brain))
        self.input_normalization_ = normalizer.to_dict()
        self.reference_median_ = float(np.median(medians[reference]))
        self.history_ = {**result.history, "val_indices": list(result.val_indices)}
        # the guard: corrections on held-out images (and a sample of training images)
        held = list(result.val_indices)
        skip = set(held)
        rest = evenly([i for i in np.flatnonzero(sites != self.reference_site_) if i not in skip])
        amp = autocast_dtype(self.mixed_precision, device)
        profile = ContrastProfile().fit(loader[i] for i in evenly(reference))
        sizes, corr = [], []
        for i in held + rest:  # one volume at a time
            volume = loader[i]
            forward = _forward(self.generator_, volume, amp, config.cpu_threads)
            sizes.append(correction_size(*forward))
            corr.append(profile.correlation(*volume))
        self._set_guard(profile, sizes, corr)

    def _set_guard(
        self, profile: ContrastProfile, sizes: Sequence[float], correlations: Sequence[float]
    ) -> None:
        """The guard's fitted attributes from its calibration images (see
        :mod:`harmonix.iguane.guard`)."""
        self.training_corrections_ = np.asarray(sizes, dtype=np.float64)
        self.typical_correction_, self.ood_threshold_ = correction_threshold(
            sizes, self.ood_threshold
        )
        self.reference_profile_ = np.asarray(profile.reference, dtype=np.float64)
        self.training_profile_correlations_, self.profile_threshold_ = profile_threshold(
            correlations
        )

    def _contrast_profile(self) -> ContrastProfile | None:
        reference = getattr(self, "reference_profile_", None)
        if reference is None:
            return None
        profile = ContrastProfile()
        profile.reference = np.asarray(reference, dtype=np.float64)
        return profile

    # -- transform -------------------------------------------------------------------------
    def _normalizer(self) -> InputNormalizer:
        values = getattr(self, "input_normalization_", None)
        return InputNormalizer() if values is None else InputNormalizer.from_dict(values)

    def _check_metadata(
        self,
        sites: np.ndarray | None,
        covariates: pd.DataFrame | None,
        prepared: frozenset = frozenset(),
    ) -> None:
        check_policy(self.site_check)

    def _site_statistics(
        self,
        imgs: ImageCollection,
        sites: np.ndarray,
        ages: np.ndarray | None,
        covariates: pd.DataFrame | None,
    ) -> dict[str, Any]:
        """Per site of ``sites`` ("histogram" normalization): the mean landmarks of a site
        unseen in fit; for a training site, None (its stored map) once its images passed
        the site check, or their mean landmarks when they disagree with it and
        ``site_check="refit"`` (see :meth:`site_agreement`)."""
        return self._checked_statistics(imgs, sites)[0]

    def _site_check(
        self, imgs: ImageCollection, sites: np.ndarray | None
    ) -> tuple[list, Callable[[int], np.ndarray]]:
        """The site agreements of the training labels, and the images' landmarks (cached)."""
        cache: dict[int, np.ndarray] = {}

        def landmarks(i: int) -> np.ndarray:
            if i not in cache:
                cache[i] = image_landmarks(imgs[i])
            return cache[i]

        return self._normalizer().check_sites(sites, landmarks), landmarks

    def _checked_statistics(
        self, imgs: ImageCollection, sites: np.ndarray | None
    ) -> tuple[dict[str, Any], list]:
        """:meth:`_site_statistics` after the site check (which may warn or raise), and
        the agreements."""
        agreements, landmarks = self._site_check(imgs, sites)
        new = act_on_agreements(
            agreements,
            check_policy(self.site_check),
            what="intensity map",
            as_new="its intensity map is fitted from its own images",
        )
        pooled = self._normalizer().pooled_landmarks(sites, landmarks, also=new)
        checked = {a.site for a in agreements}
        stats: dict[str, Any] = {}
        for site in dict.fromkeys([] if sites is None else sites.tolist()):
            if site in pooled:
                stats[site] = pooled[site]
            elif site in checked:
                stats[site] = None  # the stored map, checked
        return stats, agreements

    def _network_inputs(
        self,
        imgs: ImageCollection,
        sites: np.ndarray | None = None,
        stats: dict[str, Any] | None = None,
    ) -> Iterator[tuple[PreparedVolume, np.ndarray, np.ndarray]]:
        """Yield (prepared volume, brain mask, network input with background 0) per image,
        normalized as in :meth:`transform` (``stats``: :meth:`site_statistics` of some
        sites)."""
        input_shape = _check_input_shape(self.input_shape_)
        normalizer = self._normalizer()
        site_lm = normalizer.site_landmarks_of(
            sites, lambda i: image_landmarks(imgs[i]), pooled=stats
        )
        for i, (data, brain) in enumerate(self._iter_brains(imgs)):  # one image at a time
            normalized, median = normalizer(data, site_lm[i] if site_lm else None)
            prepared = prepare_volume(normalized, median, input_shape=input_shape)
            yield prepared, brain, np.where(prepared.mask, prepared.x, np.float32(0.0))

    def _harmonize_all(
        self,
        imgs: ImageCollection,
        sites: np.ndarray | None = None,
        stats: dict[str, Any] | None = None,
    ) -> Iterator[tuple[np.ndarray, Callable[[], np.ndarray], float, float]]:
        """Yield (harmonized image, normalized input on demand, distance, profile
        correlation) per image."""
        device = resolve_device(self.device)
        generator = self.generator_
        if device.type != "cpu":
            generator = copy.deepcopy(generator).to(device)
        generator.eval()
        amp_dtype = autocast_dtype(self.mixed_precision, device)
        threads = check_cpu_threads(getattr(self, "cpu_threads", None))
        scale = float(self.reference_median_)
        typical = getattr(self, "typical_correction_", 0.0)
        profile = self._contrast_profile()
        for prepared, brain, x in self._network_inputs(imgs, sites, stats):
            corr = float("nan") if profile is None else profile.correlation(x, prepared.mask)
            y = harmonize_volume(generator, x, amp_dtype=amp_dtype, num_threads=threads)
            size = correction_size(x, y, prepared.mask)
            distance = size / typical if typical > 0 else float("nan")
            result = prepared.change.invert(from_network_scale(y, prepared.mask, scale))
            result[~brain] = 0.0

            def plain(x=x, prepared=prepared, brain=brain) -> np.ndarray:
                out = prepared.change.invert(from_network_scale(x, prepared.mask, scale))
                out[~brain] = 0.0
                return out

            yield result, plain, distance, corr

    def _transform(
        self,
        imgs: ImageCollection,
        sites: np.ndarray | None,
        ages: np.ndarray | None,
        covariates: pd.DataFrame | None,
        stats: dict[str, Any],
    ) -> list[np.ndarray]:
        check_ood(self.ood_action, None)  # ood_threshold acts through fit (ood_threshold_)
        threshold = getattr(self, "ood_threshold_", float("inf"))
        min_corr = getattr(self, "profile_threshold_", -float("inf"))
        out, flagged = [], []
        for i, (result, plain, distance, corr) in enumerate(
            self._harmonize_all(imgs, sites, stats)
        ):
            if distance > threshold or corr < min_corr:
                flagged.append(i)
                if self.ood_action == "fallback":
                    result = plain()
            out.append(result)
        if flagged and self.ood_action != "ignore":
            what = (
                "returned without the generator's correction"
                if self.ood_action == "fallback"
                else "check them"
            )
            by_site = ""
            if sites is not None:
                labels, counts = np.unique(sites[flagged], return_counts=True)
                total = {s: int(np.sum(sites == s)) for s in labels.tolist()}
                by_site = " by site: " + ", ".join(
                    f"{s!r} {c} of {total[s]}" for s, c in zip(labels.tolist(), counts)
                )
                by_site = f";{by_site}"
            warnings.warn(
                f"{len(flagged)} of {len(out)} image(s) (indices {flagged[:20]}{by_site}) "
                "lie outside "
                f"what the model saw in training: the generator changed them more than "
                f"{threshold:.2f} times its typical correction on held-out training images, "
                f"or their regional intensity profile correlates less than "
                f"{min_corr:.2f} with the reference site's (another contrast, or not "
                f"registered); {what} (see distribution_distance, profile_correlation and "
                f"ood_action).",
                OutOfDistributionWarning,
                stacklevel=3,
            )
        return out

    def _fitted_inputs(self, imgs: Any, sites: Any) -> tuple[ImageCollection, np.ndarray | None]:
        """Check the model is fitted; the images as a collection and the checked sites."""
        check_is_fitted(self)
        collection = as_collection(imgs)
        sites, _, _ = self.check_transform_metadata(len(collection), sites)
        return collection, sites

    @fill_doc
    def distribution_distance(self, imgs: Any, sites: Any = None) -> np.ndarray:
        """How far each image lies from what the model saw in training.

        The size of the forward generator's correction of the image (mean absolute
        change inside the brain, :func:`harmonix.iguane.normalization.correction_size`)
        divided by its median correction of held-out training images
        (``typical_correction_``): about 1 for images like the training ones. Images above
        ``ood_threshold_`` get a warning from :meth:`transform` (or, with
        ``ood_action="fallback"``, are returned without the correction).

        %(iguane_guard_images)s
            NaN for a model without held-out corrections (e.g. official weights).
        """
        collection, sites = self._fitted_inputs(imgs, sites)
        stats, _ = self._checked_statistics(collection, sites)
        return np.array([d for _, _, d, _ in self._harmonize_all(collection, sites, stats)])

    @fill_doc
    def profile_correlation(self, imgs: Any, sites: Any = None) -> np.ndarray:
        """Correlation of each image's regional intensity profile with the reference site's.

        The second half of the guard (:class:`harmonix.iguane.guard.ContrastProfile`):
        the normalized network input is averaged in the cells of a 24-per-axis grid, the
        log of the cell means is high-passed (smooth bias fields and global contrast
        removed), and the pattern is correlated with the reference site's mean pattern
        (``reference_profile_``): about 0.6-0.95 for a T1-weighted image registered like
        the training images, whatever its site, and about -0.8 for an inverted (T2-like)
        contrast, which the size of the generator's correction does not reveal. Images
        below ``profile_threshold_`` are flagged by :meth:`transform`.

        %(iguane_guard_images)s
            NaN for a model fitted without the profile (e.g. official weights, or a model
            saved before the profile guard existed).
        """
        collection, sites = self._fitted_inputs(imgs, sites)
        profile = self._contrast_profile()
        if profile is None:
            return np.full(len(collection), np.nan)
        stats, _ = self._checked_statistics(collection, sites)
        return np.array(
            [
                profile.correlation(x, prepared.mask)
                for prepared, _, x in self._network_inputs(collection, sites, stats)
            ]
        )

    def site_agreement(self, imgs: Any, sites: Any) -> pd.DataFrame:
        """How each labelled group of a training site agrees with the site's stored map.

        The check :meth:`transform` runs before applying a stored intensity map (see
        ``site_check`` and "Site labels" in the Notes; no warning here, no generator).

        Parameters
        ----------
        imgs : 4-D array, list of 3-D arrays, or list of NIfTI paths / images
            Images as for :meth:`transform`.
        sites : array-like of shape (n_images,)
            Their site labels.

        Returns
        -------
        pandas.DataFrame
            One row per label of a training site among ``sites``: ``site``, ``n_images``,
            ``statistic`` (of order 1 or below for new images of the same site, whatever
            their number), ``threshold``, ``agrees`` and ``mismatch`` (in words). Empty
            for a model with ``input_normalization="median"`` or without the check's
            yardstick (see :meth:`fit_site_check`).
        """
        collection, sites = self._fitted_inputs(imgs, sites)
        if sites is None:
            raise ValueError("site_agreement needs the site labels: pass sites=[...].")
        agreements, _ = self._site_check(collection, sites)
        return agreement_frame(agreements)

    def guard_report(self, imgs: Any, sites: Any = None) -> pd.DataFrame:
        """The guard and the site check summed up per labelled group.

        Runs what :meth:`transform` runs (site check included, with its warnings) without
        returning images, and summarises :meth:`distribution_distance` and
        :meth:`profile_correlation` per site, so a site that is off shows at once.

        Parameters
        ----------
        imgs : 4-D array, list of 3-D arrays, or list of NIfTI paths / images
            Images as for :meth:`transform`.
        sites : array-like of shape (n_images,), default=None
            Site labels; None: one row for all images.

        Returns
        -------
        pandas.DataFrame
            One row per label, in order of appearance, with columns ``site`` (None
            without labels), ``n_images``; ``site_map``: how the group is normalized
            ("stored": the training site's map, "refit": a training label whose images
            disagree, mapped as a new site, "stored (disagrees)": the same kept by
            ``site_check="warn"``, "new site": a label unseen in fit, "per image": no
            label, "median": a median-normalized model); ``agreement`` and
            ``agreement_threshold`` (the site check's statistic and threshold, NaN where
            not checked); ``distance_median``, ``distance_max``, ``profile_median``,
            ``profile_min``; ``n_flagged``: images :meth:`transform` flags.
        """
        collection, sites = self._fitted_inputs(imgs, sites)
        stats, agreements = self._checked_statistics(collection, sites)
        threshold = getattr(self, "ood_threshold_", float("inf"))
        min_corr = getattr(self, "profile_threshold_", -float("inf"))
        scores = np.array([(d, c) for _, _, d, c in self._harmonize_all(collection, sites, stats)])
        dist, corr = scores.reshape(-1, 2).T
        flagged = (dist > threshold) | (corr < min_corr)
        labels = [None] * len(collection) if sites is None else sites.tolist()
        normalizer = self._normalizer()
        checked = {a.site: a for a in agreements}
        rows = []
        for label in dict.fromkeys(labels):
            idx = np.array([lab == label for lab in labels])
            if normalizer.kind == "median":
                how = "median"
            elif label is None:
                how = "per image"
            elif normalizer.known_landmarks(label) is None:
                how = "new site"
            elif stats.get(label) is not None:
                how = "refit"
            elif label in checked and not checked[label].agrees:
                how = "stored (disagrees)"
            else:
                how = "stored"
            agreement = checked.get(label)
            rows.append(
                {
                    "site": label,
                    "n_images": int(idx.sum()),
                    "site_map": how,
                    "agreement": np.nan if agreement is None else agreement.statistic,
                    "agreement_threshold": np.nan if agreement is None else agreement.threshold,
                    "distance_median": float(np.median(dist[idx])),
                    "distance_max": float(np.max(dist[idx])),
                    "profile_median": float(np.median(corr[idx])),
                    "profile_min": float(np.min(corr[idx])),
                    "n_flagged": int(flagged[idx].sum()),
                }
            )
        return pd.DataFrame(rows)

    def fit_site_check(self, imgs: Any, sites: Any) -> IGUANeHarmonizer:
        """Give a model fitted before the site check its yardstick, from its training images.

        :meth:`fit` measures how the training images scatter around their site's
        landmarks (the yardstick of the site check, see "Site labels" in the Notes); a
        model saved by an older harmonix lacks it and trusts every label. Passing the
        images and labels it was fitted on (verified: each site's mean landmarks must
        equal the stored ones) adds it, as :meth:`fit` would have; the generator and
        everything else stay as they are. Save the model again to keep it.

        Parameters
        ----------
        imgs : 4-D array, list of 3-D arrays, or list of NIfTI paths / images
            The training images.
        sites : array-like of shape (n_images,)
            Their site labels.

        Returns
        -------
        self : IGUANeHarmonizer

        Raises
        ------
        ValueError
            If the model does not use ``input_normalization="histogram"``, or the images
            are not its training images.
        """
        check_is_fitted(self)
        collection = as_collection(imgs)
        sites = check_sites(sites, len(collection))
        landmarks = np.stack([image_landmarks(data) for data, _ in self._iter_brains(collection)])
        normalizer = self._normalizer().with_spread(landmarks, sites)
        self.input_normalization_ = normalizer.to_dict()
        return self

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted harmonizer (parameters, fitted values, generator weights).

        The file is written with :func:`torch.save` and holds only plain values and
        tensors; it is written to a temporary name and renamed, so an existing file is
        never left half-written. ``.pt`` is a good suffix.

        Parameters
        ----------
        path : str or path-like
            Destination file (used as given).
        """
        check_is_fitted(self)
        params = {
            k: to_plain(v, f"parameter {k!r}", target="torch")
            for k, v in self.get_params(deep=False).items()
        }
        fitted = {
            k: to_plain(v, f"fitted attribute {k!r}", target="torch")
            for k, v in vars(self).items()
            if k.endswith("_") and not k.startswith("_") and k != "generator_"
        }
        gen = self.generator_
        payload = {
            "format": _MODEL_FORMAT,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "version": __version__,
            "params": params,
            "fitted": fitted,
            "array_attrs": [k for k, v in vars(self).items() if isinstance(v, np.ndarray)],
            "generator": {
                "base_width": int(gen.base_width),
                "in_channels": int(gen.in_channels),
                "state_dict": {
                    k: v.detach().to("cpu", copy=True) for k, v in gen.state_dict().items()
                },
            },
        }
        atomic_torch_save(payload, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> IGUANeHarmonizer:
        """Load a harmonizer written by :meth:`save` (``torch.load(weights_only=True)``).

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        IGUANeHarmonizer
            The fitted harmonizer, ``generator_`` on CPU in eval mode.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Model file not found: '{path}'.")
        payload = load_torch_file(
            path,
            _MODEL_FORMAT,
            "the model",
            "an IGUANe model saved by harmonix",
            "save models with IGUANeHarmonizer.save()",
        )
        est = cls(**payload["params"])
        arrays = set(payload.get("array_attrs", []))
        for name, value in payload["fitted"].items():
            setattr(est, name, np.asarray(value) if name in arrays else value)
        spec = payload["generator"]
        est.generator_ = _new_generator(spec["base_width"], spec["in_channels"])
        est.generator_.load_state_dict(spec["state_dict"])
        est.generator_.eval()
        est._saved_version = payload["version"]
        est._complete_loaded()
        return est

    @classmethod
    def from_keras_weights(
        cls,
        path: str | os.PathLike,
        reference_median: float = NETWORK_SCALE,
        **params: Any,
    ) -> IGUANeHarmonizer:
        """A ready-to-use harmonizer from the official IGUANe weights (``iguane_weights.h5``).

        The authors publish the forward generator trained with SALD as the reference site
        and 10 other sites: download ``harmonization/iguane_weights.h5`` from
        https://github.com/RocaVincent/iguane_harmonization. Inputs must be prepared like
        the original's: skull-stripped, N4 bias-corrected T1-weighted images rigidly
        registered to MNI space at 1 mm; harmonix does the brain-median normalization and
        the crop/pad to 160×192×160 (:func:`harmonix.preprocessing.crop_or_pad`, undone on
        output).

        Parameters
        ----------
        path : str or path-like
            The Keras 2 HDF5 weights file (needs ``h5py``).
        reference_median : float, default=500
            Intensity of the brain median in the outputs; 500 keeps IGUANe's own scale.
        **params
            Other constructor parameters (e.g. ``device="cuda"``); ``input_shape``
            defaults to (160, 192, 160).

        Returns
        -------
        IGUANeHarmonizer
            A fitted harmonizer (``reference_site_="SALD"``); call :meth:`transform`.
        """
        from harmonix.iguane.keras_weights import load_keras_generator_weights

        if not (np.isfinite(reference_median) and reference_median > 0):
            raise ValueError(
                f"reference_median must be a positive number, got {reference_median!r}."
            )
        params = {"input_shape": IGUANE_SHAPE, **params}
        if params.get("base_width", 16) != 16:
            raise ValueError("The official IGUANe generator has base_width=16.")
        params["base_width"] = 16
        est = cls(**params)
        generator = load_keras_generator_weights(path, _new_generator(16, 1))
        est.generator_ = generator.to("cpu").eval()
        est.reference_site_ = OFFICIAL_REFERENCE_SITE
        est.sites_ = np.asarray([OFFICIAL_REFERENCE_SITE])
        est.n_images_ = 0
        est.mask_ = None
        est.image_shape_ = None
        est.input_shape_ = _check_input_shape(est.input_shape)
        # the published model: 1 mm MNI images (orientation and brain size not published)
        est.grid_ = {
            "voxel_size": [1.0, 1.0, 1.0],
            "shape": None,
            "affine": None,
            "orientation": None,
            "brain_voxels": None,
        }
        est.reference_median_ = float(reference_median)
        est.history_ = {}
        return est


def _new_generator(base_width: int, in_channels: int = 1) -> Generator3D:
    with torch.random.fork_rng(devices=[]):  # keep the global RNG untouched
        return Generator3D(int(base_width), int(in_channels))


def _forward(
    generator: Generator3D,
    volume: tuple[np.ndarray, np.ndarray],
    amp_dtype: torch.dtype | None,
    num_threads: int | str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, mask)``: a prepared volume (background 0), its harmonization and mask."""
    x, mask = volume
    x = np.where(mask, x, np.float32(0.0))
    y = harmonize_volume(generator, x, amp_dtype=amp_dtype, num_threads=num_threads)
    return x, y, mask


def _check_input_shape(shape: Any) -> tuple[int, int, int] | None:
    if shape is None:
        return None
    out = size_triple(shape)
    if out is None:
        raise ValueError(
            f"input_shape must be None or 3 multiples of {SIZE_MULTIPLE}, e.g. (160, 192, 160); "
            f"got {shape!r}."
        )
    return out
