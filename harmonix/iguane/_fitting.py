"""The fit of :class:`~harmonix.iguane.estimator.IGUANeHarmonizer`: images in, a calibrated
model out.

:func:`fit_estimator` reads every training image once (brain median, brain size, histogram
landmarks, a digest of the images in order), fits the input normalization
(:mod:`harmonix.iguane.inputs.normalization`), trains the networks on network-scale
volumes (:func:`harmonix.iguane.training.loop.train`) and calibrates the
out-of-distribution guard (:mod:`harmonix.iguane.guard`) on held-out and sampled training
images, setting the estimator's fitted attributes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from harmonix.base import BaseHarmonizer
from harmonix.iguane.devices import autocast_dtype, resolve_device
from harmonix.iguane.guard import (
    ContrastProfile,
    check_ood,
    correction_threshold,
    evenly,
    profile_threshold,
)
from harmonix.iguane.inference import harmonize_volume
from harmonix.iguane.inputs.normalization import (
    InputNormalizer,
    check_kind,
    correction_size,
    image_landmarks,
)
from harmonix.iguane.inputs.volumes import VolumeLoader, brain_median, check_input_shape
from harmonix.iguane.model.networks import Generator3D
from harmonix.iguane.training.config import TrainConfig
from harmonix.iguane.training.loop import train
from harmonix.inputs._digest import ImageDigest
from harmonix.inputs.covariates import categorical_strata
from harmonix.inputs.site_check import check_policy
from harmonix.io import ImageCollection

__all__ = ["fit_estimator", "set_guard", "train_config"]


def train_config(
    est: BaseHarmonizer, voxel_size: tuple[float, float, float] | None
) -> TrainConfig:
    """The :class:`TrainConfig` of the estimator's parameters (it validates them)."""
    params = est.get_params(deep=False)
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name in params]
    shared = {name: params[name] for name in names}
    shared.update(
        voxel_size=voxel_size,
        augment=bool(est.augment),
        identity_init=bool(est.identity_init),
    )
    return TrainConfig(**shared)


def fit_estimator(
    est: BaseHarmonizer,
    imgs: ImageCollection,
    sites: np.ndarray,
    ages: np.ndarray | None,
    covariates: pd.DataFrame | None,
) -> None:
    """Fit ``est`` (its ``_fit``): normalize, train, calibrate the guard."""
    # validates them; the voxel size of the grid recorded by fit (headers or voxel_size)
    voxel = est.grid_["voxel_size"]
    config = train_config(est, None if voxel is None else tuple(voxel))
    device = resolve_device(est.device)
    input_shape = check_input_shape(est.input_shape)
    check_ood(est.ood_action, est.ood_threshold)
    check_policy(est.site_check)
    if isinstance(est.cache_size, bool) or not isinstance(est.cache_size, int | np.integer):
        raise ValueError(f"cache_size must be an integer >= 0, got {est.cache_size!r}.")
    histogram = est.input_normalization == "histogram"
    check_kind(est.input_normalization)
    medians = np.empty(len(imgs))
    n_brain = np.empty(len(imgs))
    landmarks = []
    digest = ImageDigest()  # of the images in order: a resume on others is refused
    for i, (data, brain) in enumerate(est._iter_brains(imgs)):
        digest.update(data)
        try:
            medians[i] = brain_median(data, brain)
        except ValueError as exc:
            raise ValueError(f"Image {i}: {exc}") from None
        n_brain[i] = np.count_nonzero(brain)
        if histogram:
            landmarks.append(image_landmarks(data))
    reference = np.flatnonzero(sites == est.reference_site_)
    normalizer = InputNormalizer.fit(
        est.input_normalization,
        np.stack(landmarks) if histogram else None,
        sites,
        est.reference_site_,
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
        cache_size=int(est.cache_size) if imgs.kind == "nifti" else 0,
    )
    result = train(
        loader,
        sites,
        est.reference_site_,
        ages,
        config,
        strata=categorical_strata(covariates, est.covariate_levels_),
        checkpoint_dir=est.checkpoint_dir,
        resume=bool(est.resume),
        max_steps=est.max_steps,
        device=device,
        random_state=est.random_state,
        verbose=est.verbose,
        distributed=est.distributed,
        scoring=est.scoring,
        data_digest=digest.hexdigest(),
        input_normalization=est.input_normalization,
    )
    est.generator_ = result.generator
    est.input_shape_ = input_shape
    est.grid_["brain_voxels"] = float(np.median(n_brain))
    est.input_normalization_ = normalizer.to_dict()
    est.reference_median_ = float(np.median(medians[reference]))
    est.history_ = {**result.history, "val_indices": list(result.val_indices)}
    # the guard: corrections on held-out images (and a sample of training images)
    held = list(result.val_indices)
    skip = set(held)
    rest = evenly([i for i in np.flatnonzero(sites != est.reference_site_) if i not in skip])
    amp = autocast_dtype(est.mixed_precision, device)
    profile = ContrastProfile().fit(loader[i] for i in evenly(reference))
    sizes, corr = [], []
    for i in held + rest:  # one volume at a time
        volume = loader[i]
        forward = _forward(est.generator_, volume, amp, config.cpu_threads)
        sizes.append(correction_size(*forward))
        corr.append(profile.correlation(*volume))
    set_guard(est, profile, sizes, corr)


def set_guard(
    est: BaseHarmonizer,
    profile: ContrastProfile,
    sizes: Sequence[float],
    correlations: Sequence[float],
) -> None:
    """The guard's fitted attributes from its calibration images (see
    :mod:`harmonix.iguane.guard`)."""
    est.training_corrections_ = np.asarray(sizes, dtype=np.float64)
    est.typical_correction_, est.ood_threshold_ = correction_threshold(sizes, est.ood_threshold)
    est.reference_profile_ = np.asarray(profile.reference, dtype=np.float64)
    est.training_profile_correlations_, est.profile_threshold_ = profile_threshold(correlations)


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
