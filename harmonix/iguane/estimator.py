"""IGUANeHarmonizer: the scikit-learn-style facade over IGUANe training and inference."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

import harmonix.iguane._paramdocs  # noqa: F401  (registers the shared parameter docs)
from harmonix._docs import fill_doc
from harmonix.base import BaseHarmonizer
from harmonix.iguane import _fitting, _harmonizing, _model_file
from harmonix.iguane.inputs.normalization import image_landmarks
from harmonix.iguane.inputs.volumes import NETWORK_SCALE, check_input_shape
from harmonix.iguane.model.losses import CYCLE_WEIGHT, IDENTITY_WEIGHT
from harmonix.inputs._reading import Inputs
from harmonix.inputs.labels import check_sites
from harmonix.inputs.site_check import agreement_frame, check_policy
from harmonix.io import as_collection

__all__ = ["IGUANeHarmonizer"]


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
    %(iguane_length_and_size)s
    %(iguane_disc_instance_norm)s
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
        is mapped by its own landmarks). See :mod:`harmonix.iguane.inputs.normalization` and
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
        :mod:`harmonix.iguane.training.selection` (intensity distribution and regional profile
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
    harmonix.iguane.train : the training loop, usable on its own.

    Notes
    -----
    **Inputs.** Skull-stripped T1-weighted images with background 0, ideally rigidly
    registered to MNI space at 1 mm and N4-corrected, like the images IGUANe was designed
    for. Each image is median-normalized (brain median 500) and mapped to the network
    scale ``x / 500 - 1`` internally; images of different shapes are allowed.

    **Voxel size.** A network learns structures of a given size in voxels, so a model
    is specific to the voxel size of its training images (and to their orientation):
    :meth:`transform` refuses images of another voxel size (``grid_mismatch``), e.g. the
    shipped 4 mm model (:func:`harmonix.iguane.load_demo_model`) on the 1 mm
    images ``harmonix preprocess`` writes; resample them to the model's voxel size first.

    **Parameters read by transform.** ``ood_action``, ``grid_mismatch`` and
    ``site_check`` (policies), ``device`` and ``mixed_precision`` (how to compute: outputs
    differ at the level of float rounding, bfloat16's with ``mixed_precision``) apply at
    once when changed with ``set_params`` after fit. Every other parameter acts through
    fit.

    **Output scale.** The forward generator's output ``y`` is mapped back with
    ``(y + 1) * reference_median_``: a harmonized image has the intensity scale of the
    reference site's images. Background stays 0 and intensities are clamped at 0.

    **Validation and the guard.** The selected generator is the best-scoring one on the
    held-out images (``scoring``; ties go to the later checkpoint; see ``history_``).
    :meth:`transform` flags images whose correction is unusually large
    (:meth:`distribution_distance`) or whose regional intensity profile is unlike the
    reference site's (:meth:`profile_correlation`; another contrast); :meth:`guard_report`
    sums both up per labelled group (see ``ood_action`` and :mod:`harmonix.iguane.guard`).

    **Site labels.** To a fitted model with ``input_normalization="histogram"`` a site
    label names an intensity map: a training site's label gets the map stored for that
    site, any other label a map fitted on its images in the call, images without a label
    each their own landmarks. Before applying a stored map, :meth:`transform` checks that
    the group's images agree with it (:mod:`harmonix.iguane.inputs.site_agreement`); a
    group that disagrees is another scanner with the same name, handled by
    ``site_check``. A model saved before the check existed trusts its labels until
    :meth:`fit_site_check` gives it the check's yardstick. With
    ``input_normalization="median"`` labels do not matter to :meth:`transform`.

    **Covariates.** Each training pair is drawn from one age bin and one combination of
    the categorical covariates, with the distribution the two sites share, so that the
    discriminators learn the site difference rather than a difference of age, sex or
    diagnosis (:class:`harmonix.iguane.training.sampling.SitePairSampler`). Other
    continuous covariates are checked and not used; :meth:`transform` needs none.

    **Training on a CPU.** :data:`harmonix.iguane.CPU_RECIPE` holds parameters for whole
    4 mm volumes on 2 cores (``IGUANeHarmonizer(reference_site=..., **CPU_RECIPE)``): a
    small model of its training data, not the published 1 mm model
    (:meth:`from_keras_weights`).

    **Devices.** Training and inference run on ``device``; ``generator_`` is kept on CPU.
    Checkpoint-and-resume is exact on CPU. Under ``torchrun`` with ``W`` processes, each
    trains on ``batch_size`` pairs of every update, which is the same training as one
    process with ``batch_size=W * batch_size``; every process ends with the same model
    (save it from process 0; :mod:`harmonix.iguane.training.distributed`).

    **Persistence.** :meth:`save` and :meth:`load` (plain values and tensors,
    ``torch.load(weights_only=True)``); a ``random_state`` that is a numpy Generator is
    saved as None. Pickling (joblib) also works.

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

    _checked_params = {"input_shape_": ("input_shape", check_input_shape)}

    def __init__(
        self,
        reference_site: Any = None,
        n_epochs: int = 100,
        steps_per_epoch: int = 200,
        base_width: int = 16,
        disc_base_width: int | None = None,
        disc_instance_norm: bool = True,
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
        self.disc_instance_norm = disc_instance_norm
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
    def _fit(self, data: Inputs) -> None:
        _fitting.fit_estimator(self, data.imgs, data.sites, data.ages, data.covariates)

    # -- transform -------------------------------------------------------------------------
    def _check_metadata(self, sites: np.ndarray | None, prepared: frozenset) -> None:
        check_policy(self.site_check)

    def _site_statistics(self, data: Inputs) -> dict[str, Any]:
        """See :func:`harmonix.iguane._harmonizing.checked_statistics`."""
        return _harmonizing.checked_statistics(self, data.imgs, data.sites)[0]

    def _transform(self, data: Inputs, stats: dict[str, Any]) -> list[np.ndarray]:
        return _harmonizing.transform_images(self, data.imgs, data.sites, stats)

    @fill_doc
    def distribution_distance(self, imgs: Any, sites: Any = None) -> np.ndarray:
        """How far each image lies from what the model saw in training.

        The size of the forward generator's correction of the image (mean absolute
        change inside the brain, :func:`harmonix.iguane.inputs.normalization.correction_size`)
        divided by its median correction of held-out training images
        (``typical_correction_``): about 1 for images like the training ones. Images above
        ``ood_threshold_`` get a warning from :meth:`transform` (or, with
        ``ood_action="fallback"``, are returned without the correction).

        %(iguane_guard_images)s
            NaN for a model without held-out corrections (e.g. official weights).
        """
        collection, sites = _harmonizing.fitted_inputs(self, imgs, sites)
        stats, _ = _harmonizing.checked_statistics(self, collection, sites)
        harmonized = _harmonizing.harmonize_all(self, collection, sites, stats)
        return np.array([d for _, _, d, _ in harmonized])

    @fill_doc
    def profile_correlation(self, imgs: Any, sites: Any = None) -> np.ndarray:
        """Correlation of each image's regional intensity profile with the reference site's.

        The second half of the guard (:class:`harmonix.iguane.guard.ContrastProfile`): the
        image's local contrast pattern correlated with the reference site's
        (``reference_profile_``): high for T1-weighted images registered like the training
        images whatever their site, negative for an inverted (T2-like) contrast, which the
        size of the generator's correction does not reveal (measured in
        ``benchmarks/results/iguane_learning.md``). Images below ``profile_threshold_``
        are flagged by :meth:`transform`.

        %(iguane_guard_images)s
            NaN for a model fitted without the profile (e.g. official weights, or a model
            saved before the profile guard existed).
        """
        collection, sites = _harmonizing.fitted_inputs(self, imgs, sites)
        profile = _harmonizing.contrast_profile(self)
        if profile is None:
            return np.full(len(collection), np.nan)
        stats, _ = _harmonizing.checked_statistics(self, collection, sites)
        inputs = _harmonizing.network_inputs(self, collection, sites, stats)
        return np.array([profile.correlation(x, prepared.mask) for prepared, _, x in inputs])

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
        collection, sites = _harmonizing.fitted_inputs(self, imgs, sites)
        if sites is None:
            raise ValueError("site_agreement needs the site labels: pass sites=[...].")
        agreements, _ = _harmonizing.site_check(self, collection, sites)
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
        collection, sites = _harmonizing.fitted_inputs(self, imgs, sites)
        return _harmonizing.guard_table(self, collection, sites)

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
        normalizer = _harmonizing.normalizer(self).with_spread(landmarks, sites)
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
        _model_file.write_model(self, path)

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
        return _model_file.read_model(cls, path)

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
        return _model_file.official_model(cls, path, reference_median, params)
