"""Training of IGUANe: the many-to-one CycleGAN loop, validation, checkpoints and resume.

:func:`train` wires the networks of :mod:`harmonix.iguane.model.networks`, the losses of
:mod:`harmonix.iguane.model.losses` and the sampling of
:mod:`harmonix.iguane.training.sampling` the way the original implementation does:

- one generator *to the reference* site shared by all source sites; per source site a
  generator *to the source* site and two discriminators (one judging reference images
  against to_reference(source), one judging source images against to_source(reference));
- Adam (``beta1=0.9``, ``beta2=0.999``, ``eps=1e-7``) per network with a learning rate
  decayed linearly from ``learning_rate`` to ``final_learning_rate``; the generator to the
  reference is stepped once per site per step, so its schedule is ``n_sources`` times
  longer;
- one step visits the source sites in a shuffled order; for each site: one update of its
  two discriminators (``disc_pairs * batch_size`` real and as many generated volumes
  each, from pairs not shared between the two), then one joint update of the generator to
  the reference and the site's generator to the source on fresh pairs.

The settings are a :class:`~harmonix.iguane.training.config.TrainConfig`; the networks,
optimizers and the update step are held by :class:`harmonix.iguane.training.trainer.Trainer`;
this module holds the loop: validation, checkpoints and the result.

Validation (checkpoint selection)
    A fraction ``val_fraction`` of every source site's images is held out of training.
    Every ``val_every`` steps and at the end, the generator to the reference harmonizes each
    held-out image (whole volume, no augmentation) and is scored, higher being better (see
    :mod:`harmonix.iguane.training.selection`: by default minus the distance of the harmonized
    images to the reference site's intensity distribution and regional intensity profile;
    or a ``scoring`` callable, which must return finite numbers: a NaN or an infinite
    score raises a ValueError). The best-scoring generator is returned, ties going
    to the later one. ``history["val_baseline"]`` holds the score of the unharmonized
    held-out images; when the selected generator scores below it,
    ``history["selected_below_baseline"]`` is True and a
    :class:`~harmonix.exceptions.ModelSelectionWarning` says so. Without held-out images
    the last weights are returned.

Checkpoints and resume
    With ``checkpoint_dir``, the whole training state (all weights, optimizer, scheduler and
    loss-scaler states, step, history, best weights, held-out split and the states of all
    random generators) is written every ``checkpoint_every`` steps and at the end to
    ``checkpoint_dir/iguane_checkpoint.pt``, through a temporary file renamed over the old
    one, so an interruption never corrupts the last good checkpoint. ``resume=True``
    continues from it exactly (on the same device type; bit-for-bit on CPU) and refuses a
    checkpoint made with another configuration or other data: other sites, ages, or
    images (a digest of the training images, in their order, is part of the checkpoint's
    fingerprint; see ``data_digest``). Checkpoints are written with
    :func:`torch.save` (plain tensors, numbers, strings, lists and dicts) and read with
    ``torch.load(weights_only=True)``.

Several processes (GPUs, nodes)
    Started by ``torchrun``, training is data-parallel with
    :class:`~torch.nn.parallel.DistributedDataParallel`: ``W`` processes with
    ``batch_size=b`` run the same training as one process with ``batch_size=W * b``. See
    :mod:`harmonix.iguane.training.distributed`.

Randomness
    Every (source, reference) pair comes with its own seed, drawn with the pair from the
    sampling generator; the pair's augmentation and patch position are drawn from that
    seed, so a pair is prepared identically whichever process trains on it.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonix._version import __version__
from harmonix.exceptions import ModelSelectionWarning
from harmonix.iguane.devices import resolve_device
from harmonix.iguane.model.networks import Generator3D
from harmonix.iguane.training.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    atomic_torch_save,
    fingerprint,
    read_resume_state,
    volumes_digest,
)
from harmonix.iguane.training.config import TrainConfig, check_int
from harmonix.iguane.training.distributed import DistributedContext, setup_distributed
from harmonix.iguane.training.sampling import SitePairSampler
from harmonix.iguane.training.selection import (
    CheckpointSelection,
    Scoring,
    record_score,
    validation_split,
)
from harmonix.iguane.training.trainer import Trainer, clone_state

__all__ = ["TrainResult", "train"]

logger = logging.getLogger(__name__)

Volumes = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    generator : Generator3D
        The selected generator to the reference site (best validation score, or the last
        one), on CPU, in eval mode.
    history : dict
        Per-step mean losses over source sites (``loss_discriminator``,
        ``loss_adversarial``, ``loss_cycle``, ``loss_identity``, ``loss_generator``; lists
        of float), validation steps and scores (``val_step``, ``val_score``),
        ``val_baseline`` (score before harmonization, or None), ``best_step`` and
        ``best_score`` (None without validation), ``selected_below_baseline`` (whether
        ``best_score < val_baseline``; None without validation).
    step : int
        Steps done, warm-up included (``config.total_steps`` unless stopped by
        ``max_steps``).
    completed : bool
        Whether all ``config.total_steps`` steps are done.
    val_indices : list of int
        Held-out images.
    device : str
        Device used.
    """

    generator: Generator3D
    history: dict[str, Any]
    step: int
    completed: bool
    val_indices: list[int] = field(default_factory=list)
    device: str = "cpu"


def _seed_sequence(random_state: Any) -> np.random.SeedSequence:
    if isinstance(random_state, np.random.SeedSequence):
        return random_state
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(2**63)))
    if random_state is None or isinstance(random_state, int | np.integer):
        return np.random.SeedSequence(None if random_state is None else int(random_state))
    raise ValueError(
        f"random_state must be None, an int or a numpy Generator, got {random_state!r}."
    )


def train(
    volumes: Volumes,
    sites: Sequence[Hashable],
    reference_site: Hashable,
    ages: Sequence[float] | None = None,
    config: TrainConfig | None = None,
    *,
    strata: Sequence[Hashable] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    device: str | torch.device = "auto",
    random_state: int | np.random.Generator | None = None,
    verbose: int = 0,
    distributed: bool | None = None,
    scoring: Scoring | None = None,
    data_digest: str | None = None,
    input_normalization: str | None = None,
) -> TrainResult:
    """Train IGUANe's generators and discriminators; return the selected generator.

    Parameters
    ----------
    volumes : sequence of (x, mask)
        ``volumes[i]`` is image ``i`` on the network scale: a float32 array (background -1,
        every size a multiple of 16) and its bool brain mask; e.g. a
        :class:`harmonix.iguane.inputs.volumes.VolumeLoader`, which loads files on demand.
    sites : sequence of hashable, length n_images
        Site of each image.
    reference_site : hashable
        Target site of the forward generator.
    ages : sequence of float, default=None
        With ages, training pairs are age-balanced
        (:class:`harmonix.iguane.training.sampling.SitePairSampler`).
    config : TrainConfig, default=None
        Hyper-parameters; ``TrainConfig()`` (the published ones) by default.
    strata : sequence of hashable, length n_images, default=None
        A categorical label of each image (e.g. its sex and diagnosis, see
        :func:`harmonix.inputs.covariates.categorical_strata`); pairs are then balanced over
        these labels too.
    checkpoint_dir : str or path-like, default=None
        Folder for the checkpoint (see the module notes); no checkpoint when None.
    resume : bool, default=False
        Continue from the checkpoint in ``checkpoint_dir`` if there is one (otherwise start
        from scratch). Without resume an existing checkpoint is overwritten.
    max_steps : int, default=None
        Stop (after checkpointing) once this many steps are done in total, to split a long
        training over several sessions with ``resume=True``.
    device : {"auto", "cpu", "cuda"} or torch.device, default="auto"
        "auto" uses CUDA when available. In a distributed training "cuda" means
        ``cuda:LOCAL_RANK``.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the held-out split, the weight initialization, the sampling and the
        augmentation (local generators only; global seeds are never touched). In a
        distributed training process 0's seed is used by all.
    verbose : int, default=0
        Show a progress bar with running losses, and log validation scores (process 0
        only in a distributed training).
    distributed : bool or None, default=None
        Data-parallel training over processes (:mod:`harmonix.iguane.training.distributed`).
        None: when launched by ``torchrun`` with several processes or inside an
        initialized process group; False: never (e.g. independent trainings per process);
        True: required. Every process must call :func:`train` with the same arguments;
        all of them return the same result.
    scoring : callable, default=None
        ``scoring(harmonize, volumes, sites) -> float``, higher is better: the score of
        the generator to the reference on the held-out images, used to select the returned
        generator (see :mod:`harmonix.iguane.training.selection`). None: the default
        :class:`~harmonix.iguane.training.selection.SiteDistance` score, which sees intensity
        distributions and regional (spatial) differences to the reference site. It must
        return a finite number.
    data_digest : str, default=None
        A digest of the training images in their order, stored in the checkpoint's
        fingerprint so that a resume on other images (or the same in another order) is
        refused (:class:`~harmonix.IGUANeHarmonizer` passes the digest of the raw
        images). None: with ``checkpoint_dir``, computed from ``volumes`` in one extra
        pass over them (:func:`~harmonix.iguane.training.checkpoints.volumes_digest`).
    input_normalization : str, default=None
        How ``volumes`` were normalized (:class:`~harmonix.IGUANeHarmonizer` passes its
        ``input_normalization``), stored in the fingerprint so that a resume after
        changing it is refused.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        For inconsistent inputs or settings, a checkpoint of another training (other
        settings, sites, ages or images), processes of one distributed training given
        different data, ``distributed=True`` without several processes, or a
        ``scoring`` that returns NaN or an infinite value.

    Warns
    -----
    ModelSelectionWarning
        When the selected generator scores below the unharmonized held-out images
        (``history["selected_below_baseline"]`` is then True).
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}.")
    dev = resolve_device(device)
    sites_arr = np.asarray(list(sites))
    n_images = len(volumes)
    if len(sites_arr) != n_images:
        raise ValueError(f"Got {n_images} volumes but {len(sites_arr)} sites.")
    ages_arr = None if ages is None else np.asarray(ages, dtype=float)
    if ages_arr is not None and len(ages_arr) != n_images:
        raise ValueError(f"Got {n_images} volumes but {len(ages_arr)} ages.")
    strata_arr = None if strata is None else np.asarray(list(strata))
    if strata_arr is not None and len(strata_arr) != n_images:
        raise ValueError(f"Got {n_images} volumes but {len(strata_arr)} strata.")
    if reference_site not in set(sites_arr.tolist()):
        raise ValueError(f"reference_site {reference_site!r} is not among the sites.")
    if len(set(sites_arr.tolist())) < 2:
        raise ValueError("Training needs images of at least 2 sites.")
    if max_steps is not None:
        check_int(max_steps, "max_steps", 1)
    if distributed not in (None, True, False):
        raise ValueError(f"distributed must be None, True or False, got {distributed!r}.")
    seeds = _seed_sequence(random_state)
    context, dev = setup_distributed(distributed, dev)
    if context is not None:  # one seed for all processes: process 0's
        entropy, spawn_key = context.broadcast((seeds.entropy, seeds.spawn_key))
        seeds = np.random.SeedSequence(entropy, spawn_key=spawn_key)
    run = _start(
        volumes,
        sites_arr,
        reference_site,
        ages_arr,
        config,
        seeds,
        context,
        dev,
        strata_arr=strata_arr,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        verbose=verbose,
        scoring=scoring,
        data_digest=data_digest,
        input_normalization=input_normalization,
    )
    run.loop(config.total_steps if max_steps is None else min(config.total_steps, max_steps))
    return run.result()


@dataclass
class _Run:
    """One process's training: the trainer, the checkpoint selection and the checkpoint."""

    trainer: Trainer
    selection: CheckpointSelection
    checkpoint_path: Path | None
    run_id: str
    context: DistributedContext | None
    verbose: int

    @property
    def main(self) -> bool:
        """Whether this is the process that writes checkpoints and reports progress."""
        return self.context is None or self.context.is_main

    def checkpoint(self) -> None:
        """Write the whole training state (process 0 only)."""
        if self.checkpoint_path is None or not self.main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "harmonix_version": __version__,
            "fingerprint": self.run_id,
            "val_indices": list(self.selection.indices),
            "trainer": self.trainer.state_dict(),
        }
        atomic_torch_save(state, self.checkpoint_path)

    def score(self, harmonize: bool) -> float:
        """Score of the generator to the reference (or of the unharmonized images).

        Raises a ValueError for a score that is not a finite number: a NaN would never be
        the best, and the last weights would be returned without a word.
        """
        generator = self.trainer.to_reference
        generator.eval()
        try:
            value = self.selection.score(self.trainer.harmonizer() if harmonize else None)
        finally:
            generator.train()
        if not math.isfinite(value):
            what = (
                f"the generator at step {self.trainer.step}"
                if harmonize
                else "the unharmonized held-out images (the baseline)"
            )
            source = "the scoring callable" if self.selection.scoring is not None else "scoring"
            raise ValueError(
                f"Checkpoint selection: {source} returned {value!r} for {what}; a score must "
                "be a finite number, higher is better. Fix the scoring function (e.g. for "
                "empty masks or constant images), or pass scoring=None for the default score."
            )
        return value

    def validate(self) -> None:
        """Score the generator, record the score and keep the weights if they are the best."""
        trainer, hist = self.trainer, self.trainer.history
        score = self.score(True)
        if record_score(hist, trainer.step, score):
            trainer.best_state = clone_state(trainer.to_reference)
        log = logger.info if self.verbose and self.main else logger.debug
        log(
            "step %d: validation score %.4f (before harmonization %.4f, best %.4f at step %d)",
            trainer.step,
            score,
            hist["val_baseline"],
            hist["best_score"],
            hist["best_step"],
        )

    def loop(self, stop: int) -> None:
        """Train until step ``stop``, validating and checkpointing when due."""
        trainer, config = self.trainer, self.trainer.config
        total, warmup = config.total_steps, config.warmup_steps
        validating = bool(self.selection.indices)
        with _Progress(total, trainer.step, self.verbose if self.main else 0) as progress:
            while trainer.step < stop:
                losses = trainer.train_step()
                done = trainer.step - warmup  # steps with generator updates
                due = done > 0 and (done % config.val_every == 0 or trainer.step == total)
                if validating and due:
                    self.validate()
                if trainer.step % config.checkpoint_every == 0 or trainer.step in (stop, total):
                    self.checkpoint()
                progress.update(losses, trainer.history["val_score"])
        if self.context is not None:
            trainer.release_wrappers()
            self.context.barrier()  # the last checkpoint is written before any process returns

    def result(self) -> TrainResult:
        """The selected generator (the best one, or the last) and the history."""
        trainer = self.trainer
        with torch.random.fork_rng(devices=[]):
            generator = Generator3D(trainer.config.base_width)
        best = trainer.best_state
        generator.load_state_dict(best if best is not None else clone_state(trainer.to_reference))
        generator.eval()
        history = copy.deepcopy(trainer.history)
        history["selected_below_baseline"] = _below_baseline(history)
        if history["selected_below_baseline"] and self.main:
            warnings.warn(
                f"The selected IGUANe generator (step {history['best_step']}) scores "
                f"{history['best_score']:.4g} on the held-out images, below the "
                f"unharmonized images ({history['val_baseline']:.4g}): by the selection "
                "score, every checkpoint moved the images away from the reference site. "
                "history['selected_below_baseline'] is True. Train longer or with other "
                "settings (learning rate, identity_init), check the scoring, or do not "
                "use this model.",
                ModelSelectionWarning,
                stacklevel=3,
            )
        return TrainResult(
            generator=generator,
            history=history,
            step=trainer.step,
            completed=trainer.step >= trainer.config.total_steps,
            val_indices=list(self.selection.indices),
            device=str(trainer.device),
        )


def _start(
    volumes: Volumes,
    sites_arr: np.ndarray,
    reference_site: Hashable,
    ages_arr: np.ndarray | None,
    config: TrainConfig,
    seeds: np.random.SeedSequence,
    context: DistributedContext | None,
    dev: torch.device,
    *,
    strata_arr: np.ndarray | None = None,
    checkpoint_dir: str | os.PathLike | None,
    resume: bool,
    verbose: int,
    scoring: Scoring | None = None,
    data_digest: str | None = None,
    input_normalization: str | None = None,
) -> _Run:
    """:func:`train` after argument checks, up to the first step, in one process.

    Holds out the validation images, builds the trainer (from the checkpoint when resuming)
    and scores the unharmonized held-out images.
    """
    n_images = len(volumes)
    split_seed, trainer_seed = seeds.spawn(2)
    val_indices = validation_split(
        sites_arr, reference_site, config.val_fraction, np.random.default_rng(split_seed)
    )
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    if data_digest is None and ckpt_path is not None:
        data_digest = volumes_digest(volumes)
    run_id = fingerprint(
        config,
        sites_arr,
        reference_site,
        ages_arr,
        _world_size(context),
        data_digest,
        strata_arr,
        input_normalization,
    )
    if context is not None:
        context.check_same(f"{run_id}|{n_images}|{val_indices}", "data or settings")
    saved = read_resume_state(ckpt_path, run_id, context) if resume else None
    if saved is not None:
        val_indices = [int(i) for i in saved["val_indices"]]
    elif resume and (context is None or context.is_main):
        logger.info("No checkpoint to resume from; training from scratch.")

    held = set(val_indices)
    train_indices = [i for i in range(n_images) if i not in held]
    sampler = SitePairSampler(
        sites_arr,
        reference_site,
        ages_arr,
        indices=train_indices,
        age_bin_width=config.age_bin_width,
        strata=strata_arr,
    )
    trainer = Trainer(config, volumes, sampler, dev, trainer_seed, context)
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
        logger.info("Resumed IGUANe training at step %d from '%s'.", trainer.step, ckpt_path)
        del saved
    selection = CheckpointSelection(volumes, sites_arr, val_indices, scoring, context)
    run = _Run(trainer, selection, ckpt_path, run_id, context, verbose)
    if val_indices:
        if scoring is None:
            selection.fit_reference([i for i in train_indices if sites_arr[i] == reference_site])
        if trainer.history["val_baseline"] is None:
            trainer.history["val_baseline"] = run.score(False)
    return run


def _below_baseline(history: dict[str, Any]) -> bool | None:
    """Whether the selected generator scores below the unharmonized held-out images (None
    without validation)."""
    best, baseline = history.get("best_score"), history.get("val_baseline")
    if best is None or baseline is None:
        return None
    return bool(best < baseline)


def _world_size(context: DistributedContext | None) -> int:
    return 1 if context is None else context.world_size


class _Progress:
    """A progress bar with running losses (a no-op unless ``verbose``)."""

    def __init__(self, total: int, initial: int, verbose: int) -> None:
        self.bar = None
        self.recent: dict[str, list[float]] = {}
        if verbose:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="IGUANe training", unit="step")

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, losses: dict[str, float], val_scores: Sequence[float]) -> None:
        """One step done: show the means of the last 20 losses and the last score."""
        if self.bar is None:
            return
        for name, value in losses.items():
            self.recent.setdefault(name, []).append(value)
            del self.recent[name][:-20]
        postfix = {n.replace("loss_", "")[:5]: f"{np.mean(v):.3f}" for n, v in self.recent.items()}
        if val_scores:
            postfix["val"] = f"{val_scores[-1]:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)
