"""Training of IGUANe: the many-to-one CycleGAN loop, validation, checkpoints and resume.

:func:`train` wires the networks of :mod:`harmonix.iguane.networks`, the losses of
:mod:`harmonix.iguane.losses` and the sampling of :mod:`harmonix.iguane.data` the way the
original implementation does:

- one forward generator shared by all source sites; per source site a backward generator
  and two discriminators (one judging reference images against forward(source), one
  judging source images against backward(reference));
- Adam (``beta1=0.9``, ``beta2=0.999``, ``eps=1e-7``) per network with a learning rate
  decayed linearly from ``learning_rate`` to ``final_learning_rate``; the forward generator
  is stepped once per site per step, so its schedule is ``n_sources`` times longer;
- one step visits the source sites in a shuffled order; for each site: one update of its
  two discriminators (``disc_pairs * batch_size`` real and as many generated volumes
  each, from pairs not shared between the two), then one joint update of the forward and
  the site's backward generator on fresh pairs.

Validation (checkpoint selection)
    A fraction ``val_fraction`` of every source site's images is held out of training.
    Every ``val_every`` steps and at the end, the forward generator harmonizes each
    held-out image (whole volume, no augmentation) and is scored, higher being better (see
    :mod:`harmonix.iguane.selection`: by default minus the distance of the harmonized
    images to the reference site's intensity distribution and regional intensity profile;
    or a ``scoring`` callable). The best-scoring forward generator is returned, ties going
    to the later one. ``history["val_baseline"]`` holds the score of the unharmonized
    held-out images. Without held-out images the last weights are returned.

Checkpoints and resume
    With ``checkpoint_dir``, the whole training state (all weights, optimizer, scheduler and
    loss-scaler states, step, history, best weights, held-out split and the states of all
    random generators) is written every ``checkpoint_every`` steps and at the end to
    ``checkpoint_dir/iguane_checkpoint.pt``, through a temporary file renamed over the old
    one, so an interruption never corrupts the last good checkpoint. ``resume=True``
    continues from it exactly (on the same device type; bit-for-bit on CPU) and refuses a
    checkpoint made with another configuration or other data. Checkpoints are written with
    :func:`torch.save` (plain tensors, numbers, strings, lists and dicts) and read with
    ``torch.load(weights_only=True)``.

Several processes (GPUs, nodes)
    Started by ``torchrun``, training is data-parallel with
    :class:`~torch.nn.parallel.DistributedDataParallel`: ``W`` processes with
    ``batch_size=b`` run the same training as one process with ``batch_size=W * b``. See
    :mod:`harmonix.iguane.distributed`.

Randomness
    Every (source, reference) pair comes with its own seed, drawn with the pair from the
    sampling generator; the pair's augmentation and patch position are drawn from that
    seed, so a pair is prepared identically whichever process trains on it.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import os
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harmonix._version import __version__
from harmonix.iguane.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    atomic_torch_save,
    fingerprint,
    load_checkpoint,
    read_resume_state,
)
from harmonix.iguane.config import TrainConfig, check_int
from harmonix.iguane.data import (
    SitePairSampler,
    augment,
    crop_patch,
    network_input,
    random_brain_voxel,
)
from harmonix.iguane.devices import autocast_dtype, resolve_device
from harmonix.iguane.distributed import DistributedContext, setup_distributed
from harmonix.iguane.networks import Generator3D, PatchDiscriminator3D
from harmonix.iguane.selection import QUANTILE_LEVELS, Scoring, SiteDistance
from harmonix.iguane.updates import DiscriminatorStep, GeneratorStep, masked

__all__ = [
    "CHECKPOINT_NAME",
    "QUANTILE_LEVELS",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "resolve_device",
    "train",
]

logger = logging.getLogger(__name__)

Volumes = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    generator : Generator3D
        The selected forward generator (lowest validation score, or the last one), on CPU,
        in eval mode.
    history : dict
        Per-step mean losses over source sites (``loss_discriminator``,
        ``loss_adversarial``, ``loss_cycle``, ``loss_identity``, ``loss_generator``; lists
        of float), validation steps and scores (``val_step``, ``val_score``),
        ``val_baseline`` (score before harmonization, or None), ``best_step`` and
        ``best_score`` (None without validation).
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


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
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


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Glorot-uniform weights and zero biases for every convolution, drawn from ``generator``.

    The same initialization as the networks' own, but from a local random generator.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            with torch.no_grad():
                nn.init.xavier_uniform_(m.weight, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()


def lr_factor(schedule: str, total: int, ratio: float) -> Callable[[int], float]:
    """Learning-rate multiplier at each scheduler step.

    Parameters
    ----------
    schedule : {"linear", "constant_then_linear"}
        See :class:`TrainConfig`.
    total : int
        Scheduler steps of the whole training.
    ratio : float
        ``final_learning_rate / learning_rate``: the multiplier reached at ``total``.

    Returns
    -------
    callable
        ``factor(step)``, 1 at step 0 and ``ratio`` from ``total`` on.
    """
    total = max(1, int(total))
    start = total // 2 if schedule == "constant_then_linear" else 0

    def factor(step: int) -> float:
        done = min(max(step - start, 0), total - start) / max(total - start, 1)
        return 1.0 + (ratio - 1.0) * done

    return factor


def _validation_split(
    sites: np.ndarray, reference_site: Hashable, fraction: float, rng: np.random.Generator
) -> list[int]:
    """Held-out images: ``round(fraction * n)`` of each source site, keeping one to train."""
    if fraction <= 0:
        return []
    held: list[int] = []
    sizes = {}
    for site in sorted(set(sites.tolist()) - {reference_site}, key=lambda s: (str(type(s)), s)):
        idx = np.flatnonzero(sites == site)
        sizes[site] = idx
        n_val = min(int(round(fraction * len(idx))), len(idx) - 1)
        if n_val > 0:
            held.extend(rng.permutation(idx)[:n_val].tolist())
    if not held:  # tiny data: hold out one image of the largest site that can spare one
        site = max(sizes, key=lambda s: len(sizes[s]))
        if len(sizes[site]) >= 2:
            held.append(int(rng.choice(sizes[site])))
    return sorted(int(i) for i in held)


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------
class _Trainer:
    """All networks, optimizers and states of one IGUANe training."""

    def __init__(
        self,
        config: TrainConfig,
        volumes: Volumes,
        sampler: SitePairSampler,
        device: torch.device,
        seeds: np.random.SeedSequence,
        context: DistributedContext | None = None,
        scoring: Scoring | None = None,
    ) -> None:
        self.config = config
        self.context = context
        self.scoring = scoring
        self.site_distance = SiteDistance()
        self.volumes = volumes
        self.sampler = sampler
        self.sources = list(sampler.source_sites)
        self.device = device
        n = len(self.sources)
        init_seed, sample_seed = seeds.spawn(2)
        self.torch_rng = torch.Generator().manual_seed(
            int(init_seed.generate_state(1, np.uint64)[0] >> np.uint64(1))
        )
        self.rng = np.random.default_rng(sample_seed)

        with torch.random.fork_rng(devices=[]):  # constructors draw from the global RNG
            self.forward = Generator3D(config.base_width)
            self.backward = nn.ModuleList(Generator3D(config.base_width) for _ in range(n))
            dw = config.discriminator_width
            self.disc_ref = nn.ModuleList(PatchDiscriminator3D(dw) for _ in range(n))
            self.disc_src = nn.ModuleList(PatchDiscriminator3D(dw) for _ in range(n))
        for module in (self.forward, self.backward, self.disc_ref, self.disc_src):
            init_weights(module, self.torch_rng)
            module.to(device)
        #: Volumes are fed in the networks' dtype: float32, or float64 when the networks
        #: were built under torch.set_default_dtype(torch.float64) (exactness checks).
        self.dtype = next(self.forward.parameters()).dtype
        if config.identity_init:
            with torch.no_grad():
                for gen in (self.forward, *self.backward):
                    gen.out_conv.weight.zero_()
                    gen.out_conv.bias.zero_()
        self.disc_steps: list[nn.Module] = [
            DiscriminatorStep(dr, ds) for dr, ds in zip(self.disc_ref, self.disc_src)
        ]
        self.gen_steps: list[nn.Module] = [
            GeneratorStep(self.forward, bwd, dr, ds, config.cycle_weight, config.identity_weight)
            for bwd, dr, ds in zip(self.backward, self.disc_ref, self.disc_src)
        ]
        if context is not None:
            self.disc_steps = [context.wrap(m, device) for m in self.disc_steps]
            self.gen_steps = [context.wrap(m, device) for m in self.gen_steps]

        adam = {
            "lr": config.learning_rate,
            "betas": (config.beta1, config.beta2),
            "eps": config.adam_eps,
        }
        ratio = config.final_learning_rate / config.learning_rate
        self.opt_forward = torch.optim.Adam(self.forward.parameters(), **adam)
        self.opt_backward = [torch.optim.Adam(g.parameters(), **adam) for g in self.backward]
        self.opt_disc = [
            torch.optim.Adam([*dr.parameters(), *ds.parameters()], **adam)
            for dr, ds in zip(self.disc_ref, self.disc_src)
        ]
        steps, kind = config.n_steps, config.lr_schedule
        self.sched_forward = torch.optim.lr_scheduler.LambdaLR(
            self.opt_forward, lr_factor(kind, steps * n, ratio)
        )
        self.sched_backward = [
            torch.optim.lr_scheduler.LambdaLR(o, lr_factor(kind, steps, ratio))
            for o in self.opt_backward
        ]
        self.sched_disc = [
            torch.optim.lr_scheduler.LambdaLR(o, lr_factor(kind, steps, ratio))
            for o in self.opt_disc
        ]

        #: The autocast dtype, None for full precision.
        self.amp_dtype = autocast_dtype(config.mixed_precision, device, config.amp_dtype)
        scale = self.amp_dtype == torch.float16
        self.scaler_disc = torch.amp.GradScaler(device.type, enabled=scale)
        self.scaler_gen = torch.amp.GradScaler(device.type, enabled=scale)

        self.step = 0
        self.history: dict[str, Any] = {
            "loss_discriminator": [],
            "loss_adversarial": [],
            "loss_cycle": [],
            "loss_identity": [],
            "loss_generator": [],
            "val_step": [],
            "val_score": [],
            "val_baseline": None,
            "best_step": None,
            "best_score": None,
        }
        self.best_state: dict[str, torch.Tensor] | None = None

    def release_wrappers(self) -> None:
        """Free the DistributedDataParallel wrappers (and their gradient buckets) now.

        Left to the garbage collector, they may outlive the process group and be
        destroyed at interpreter exit, when their communication threads can no longer
        be shut down cleanly.
        """
        self.disc_steps, self.gen_steps = [], []
        gc.collect()

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "forward": self.forward.state_dict(),
            "backward": [g.state_dict() for g in self.backward],
            "disc_ref": [d.state_dict() for d in self.disc_ref],
            "disc_src": [d.state_dict() for d in self.disc_src],
            "opt_forward": self.opt_forward.state_dict(),
            "opt_backward": [o.state_dict() for o in self.opt_backward],
            "opt_disc": [o.state_dict() for o in self.opt_disc],
            "sched_forward": self.sched_forward.state_dict(),
            "sched_backward": [s.state_dict() for s in self.sched_backward],
            "sched_disc": [s.state_dict() for s in self.sched_disc],
            "scaler_disc": self.scaler_disc.state_dict(),
            "scaler_gen": self.scaler_gen.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": self.torch_rng.get_state(),
            "history": self.history,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.forward.load_state_dict(state["forward"])
        for module, key in (
            (self.backward, "backward"),
            (self.disc_ref, "disc_ref"),
            (self.disc_src, "disc_src"),
        ):
            for m, s in zip(module, state[key], strict=True):
                m.load_state_dict(s)
        self.opt_forward.load_state_dict(state["opt_forward"])
        for objs, key in (
            (self.opt_backward, "opt_backward"),
            (self.opt_disc, "opt_disc"),
            (self.sched_backward, "sched_backward"),
            (self.sched_disc, "sched_disc"),
        ):
            for o, s in zip(objs, state[key], strict=True):
                o.load_state_dict(s)
        self.sched_forward.load_state_dict(state["sched_forward"])
        for scaler, key in ((self.scaler_disc, "scaler_disc"), (self.scaler_gen, "scaler_gen")):
            if scaler.is_enabled() and state[key]:
                scaler.load_state_dict(state[key])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.torch_rng.set_state(state["torch_rng"])
        self.history = state["history"]
        self.best_state = state["best_state"]

    # -- data ----------------------------------------------------------------------------
    def _volume(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = self.volumes[index]
        x_t = torch.as_tensor(np.asarray(x), dtype=self.dtype, device=self.device)
        m_t = torch.as_tensor(np.asarray(mask, dtype=bool), device=self.device)
        config = self.config
        if config.augment:
            x_t, m_t = augment(
                x_t,
                m_t,
                rng,
                rotation_probability=0.5 if config.rotation_degrees > 0 else 0.0,
                max_angle=config.rotation_degrees,
                max_shift=config.max_shift_voxels,
            )
        return x_t, m_t

    def _draw(self, site: Hashable, n: int) -> list[tuple[tuple[int, int], int]]:
        """``n`` pairs per process for ``site`` with their seeds; this process's block.

        Every process draws the pairs of all processes (the sampling generator stays the
        same everywhere) and keeps its own block of ``n``.
        """
        world = 1 if self.context is None else self.context.world_size
        drawn = []
        for _ in range(n * world):
            pair = self.sampler.sample(site, self.rng)
            drawn.append((pair, int(self.rng.integers(2**63))))
        return drawn if self.context is None else self.context.block(drawn, n)

    def _batch(self, pairs: Sequence[tuple[tuple[int, int], int]]) -> tuple[torch.Tensor, ...]:
        """Load seeded pairs as (source x, source mask, reference x, reference mask)."""
        src, ref = [], []
        for (s_idx, r_idx), seed in pairs:
            rng = np.random.default_rng(seed)
            xs, ms = self._volume(s_idx, rng)
            xr, mr = self._volume(r_idx, rng)
            patch = self.config.patch_size
            if patch is not None:
                # one position per pair: a random source brain voxel, at the same relative
                # position in the reference volume
                center = random_brain_voxel(ms, rng)
                ref_center = [
                    int(round(c * nr / ns)) for c, nr, ns in zip(center, xr.shape, xs.shape)
                ]
                xs, ms = crop_patch(xs, ms, patch, center)
                xr, mr = crop_patch(xr, mr, patch, ref_center)
            src.append((xs, ms))
            ref.append((xr, mr))
        return (*_stack(src), *_stack(ref))

    # -- one step ------------------------------------------------------------------------
    def _autocast(self) -> Any:
        amp = self.amp_dtype
        enabled = amp is not None
        return torch.autocast(self.device.type, dtype=amp or torch.bfloat16, enabled=enabled)

    def _update_discriminators(self, k: int, site: Hashable) -> torch.Tensor:
        n = self.config.disc_pairs * self.config.batch_size
        xs, ms, xr, mr = self._batch(self._draw(site, n))  # for the source discriminator
        xs2, ms2, xr2, mr2 = self._batch(self._draw(site, n))  # for the reference one
        src_in, ref_in = network_input(xs, ms), network_input(xr, mr)
        src2_in, ref2_in = network_input(xs2, ms2), network_input(xr2, mr2)
        with torch.no_grad(), self._autocast():
            fake_src = masked(self.backward[k](ref_in), mr)
            fake_ref = masked(self.forward(src2_in), ms2)
        with self._autocast():
            loss = self.disc_steps[k](src_in, fake_src, ref2_in, fake_ref)
        opt = self.opt_disc[k]
        opt.zero_grad(set_to_none=True)
        self.scaler_disc.scale(loss).backward()
        self.scaler_disc.step(opt)
        self.scaler_disc.update()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    def _update_generators(self, k: int, site: Hashable) -> tuple[torch.Tensor, ...]:
        xs, ms, xr, mr = self._batch(self._draw(site, self.config.batch_size))
        src, ref = network_input(xs, ms), network_input(xr, mr)
        discs = (self.disc_ref[k], self.disc_src[k])
        for d in discs:
            d.requires_grad_(False)
        try:
            with self._autocast():
                loss, adv, cyc, ident = self.gen_steps[k](src, ms, ref, mr)
            self.opt_forward.zero_grad(set_to_none=True)
            self.opt_backward[k].zero_grad(set_to_none=True)
            self.scaler_gen.scale(loss).backward()
            self.scaler_gen.step(self.opt_forward)
            self.scaler_gen.step(self.opt_backward[k])
            self.scaler_gen.update()
            self.opt_forward.zero_grad(set_to_none=True)
            self.opt_backward[k].zero_grad(set_to_none=True)
        finally:
            for d in discs:
                d.requires_grad_(True)
        return adv.detach(), cyc.detach(), ident.detach(), loss.detach()

    @property
    def warming_up(self) -> bool:
        """Whether the next step is a discriminator warm-up step."""
        return self.step < self.config.warmup_steps

    def train_step(self) -> dict[str, float]:
        """One step: every source site once, in a shuffled order.

        During warm-up (the first ``config.warmup_steps`` steps) only the discriminators
        are updated; generator losses are recorded as NaN.
        """
        for module in (self.forward, self.backward, self.disc_ref, self.disc_src):
            module.train()
        warmup = self.warming_up
        order = self.rng.permutation(len(self.sources))
        losses = []
        for k in order.tolist():
            site = self.sources[k]
            d_loss = self._update_discriminators(k, site)
            if warmup:
                nan = torch.full((4,), float("nan"), dtype=d_loss.dtype, device=d_loss.device)
                losses.append(torch.cat([d_loss.reshape(1), nan]))
                continue
            losses.append(torch.stack([d_loss, *self._update_generators(k, site)]))
            with warnings.catch_warnings():
                # a step skipped by the loss scaler (float16 overflow) makes torch warn
                warnings.filterwarnings(
                    "ignore", "Detected call of `lr_scheduler.step", UserWarning
                )
                self.sched_forward.step()
                self.sched_backward[k].step()
                self.sched_disc[k].step()
        mean = torch.stack(losses).double().mean(0).cpu().numpy()
        if self.context is not None:  # each process's losses are means over its block
            mean = self.context.sum(mean) / self.context.world_size
        mean = mean.tolist()
        names = (
            "loss_discriminator",
            "loss_adversarial",
            "loss_cycle",
            "loss_identity",
            "loss_generator",
        )
        out = dict(zip(names, mean))
        for name, value in out.items():
            self.history[name].append(float(value))
        self.step += 1
        return out

    # -- validation ----------------------------------------------------------------------
    def _total(self, values: np.ndarray) -> np.ndarray:
        """Sum of ``values`` over processes (``values`` itself in a single process)."""
        return values if self.context is None else self.context.sum(values)

    def _mine(self, indices: Sequence[int]) -> list[int]:
        """The images this process scores (all of them in a single process)."""
        return list(indices) if self.context is None else self.context.shard(list(indices))

    def fit_reference(self, indices: Sequence[int]) -> None:
        """Reference statistics of the default score from the images ``indices``."""
        sums = self.site_distance.sums([self.volumes[i] for i in self._mine(indices)])
        self.site_distance.fit_sums(self._total(sums))

    def _harmonizer(self, harmonize: bool) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """``f(x, mask) -> y`` on the network scale (background -1), numpy in and out."""

        def forward(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
            if not harmonize:
                return np.asarray(x)
            x_t = torch.as_tensor(np.asarray(x), dtype=self.dtype, device=self.device)
            m_t = torch.as_tensor(np.asarray(mask, dtype=bool), device=self.device)
            with torch.inference_mode(), self._autocast():
                y = self.forward(network_input(x_t, m_t)[None, None])[0, 0]
            y = torch.where(m_t, y.to(self.dtype), -torch.ones((), dtype=self.dtype))
            return y.cpu().numpy()

        return forward

    def score(self, indices: Sequence[int], sites: np.ndarray, harmonize: bool) -> float:
        """Score (higher is better) of the forward generator on the held-out ``indices``.

        With ``harmonize=False``, the score of the unharmonized images.
        """
        self.forward.eval()
        try:
            fn = self._harmonizer(harmonize)
            if self.scoring is not None:
                volumes = [self.volumes[i] for i in indices]
                return float(self.scoring(fn, volumes, [sites[i] for i in indices]))
            dists = [
                self.site_distance.distance(fn(*self.volumes[i]), self.volumes[i][1])
                for i in self._mine(indices)
            ]
            total = self._total(np.array([float(np.sum(dists))]))[0]
            return -float(total) / len(indices)
        finally:
            self.forward.train()


def _stack(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch volumes as (N, 1, D, H, W), padding to a common shape with background."""
    shape = tuple(max(x.shape[d] for x, _ in items) for d in range(3))
    xs, ms = [], []
    for x, m in items:
        pad = []
        for d in reversed(range(3)):
            pad += [0, shape[d] - x.shape[d]]
        if any(pad):
            x = torch.nn.functional.pad(x, pad, value=-1.0)
            m = torch.nn.functional.pad(m, pad, value=False)
        xs.append(x)
        ms.append(m)
    return torch.stack(xs)[:, None], torch.stack(ms)[:, None]


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------
def train(
    volumes: Volumes,
    sites: Sequence[Hashable],
    reference_site: Hashable,
    ages: Sequence[float] | None = None,
    config: TrainConfig | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    device: str | torch.device = "auto",
    random_state: int | np.random.Generator | None = None,
    verbose: int = 0,
    distributed: bool | None = None,
    scoring: Scoring | None = None,
) -> TrainResult:
    """Train IGUANe's generators and discriminators; return the selected forward generator.

    Parameters
    ----------
    volumes : sequence of (x, mask)
        ``volumes[i]`` is image ``i`` on the network scale: a float32 array (background -1,
        every size a multiple of 16) and its bool brain mask; e.g. a
        :class:`harmonix.iguane.data.VolumeLoader`, which loads files on demand.
    sites : sequence of hashable, length n_images
        Site of each image.
    reference_site : hashable
        Target site of the forward generator.
    ages : sequence of float, default=None
        With ages, training pairs are age-balanced
        (:class:`harmonix.iguane.data.SitePairSampler`).
    config : TrainConfig, default=None
        Hyper-parameters; ``TrainConfig()`` (the published ones) by default.
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
        Data-parallel training over processes (:mod:`harmonix.iguane.distributed`).
        None: when launched by ``torchrun`` with several processes or inside an
        initialized process group; False: never (e.g. independent trainings per process);
        True: required. Every process must call :func:`train` with the same arguments;
        all of them return the same result.
    scoring : callable, default=None
        ``scoring(harmonize, volumes, sites) -> float``, higher is better: the score of
        the forward generator on the held-out images, used to select the returned
        generator (see :mod:`harmonix.iguane.selection`). None: the default
        :class:`~harmonix.iguane.selection.SiteDistance` score, which sees intensity
        distributions and regional (spatial) differences to the reference site.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        For inconsistent inputs or settings, a checkpoint of another training, processes
        of one distributed training given different data, or ``distributed=True``
        without several processes.
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
    return _train(
        volumes,
        sites_arr,
        reference_site,
        ages_arr,
        config,
        seeds,
        context,
        dev,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        max_steps=max_steps,
        verbose=verbose,
        scoring=scoring,
    )


def _train(
    volumes: Volumes,
    sites_arr: np.ndarray,
    reference_site: Hashable,
    ages_arr: np.ndarray | None,
    config: TrainConfig,
    seeds: np.random.SeedSequence,
    context: DistributedContext | None,
    dev: torch.device,
    *,
    checkpoint_dir: str | os.PathLike | None,
    resume: bool,
    max_steps: int | None,
    verbose: int,
    scoring: Scoring | None = None,
) -> TrainResult:
    """:func:`train` after argument checks, in one process of ``context`` (or alone)."""
    n_images = len(volumes)
    main = context is None or context.is_main
    world = 1 if context is None else context.world_size
    split_seed, trainer_seed = seeds.spawn(2)
    val_indices = _validation_split(
        sites_arr, reference_site, config.val_fraction, np.random.default_rng(split_seed)
    )
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    run_id = fingerprint(config, sites_arr, reference_site, ages_arr, world)
    if context is not None:
        context.check_same(f"{run_id}|{n_images}|{val_indices}", "data or settings")
    saved = read_resume_state(ckpt_path, run_id, context) if resume else None
    if saved is not None:
        val_indices = [int(i) for i in saved["val_indices"]]
    elif resume and main:
        logger.info("No checkpoint to resume from; training from scratch.")

    held = set(val_indices)
    train_indices = [i for i in range(n_images) if i not in held]
    sampler = SitePairSampler(
        sites_arr,
        reference_site,
        ages_arr,
        indices=train_indices,
        age_bin_width=config.age_bin_width,
    )
    trainer = _Trainer(config, volumes, sampler, dev, trainer_seed, context, scoring)
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
        logger.info("Resumed IGUANe training at step %d from '%s'.", trainer.step, ckpt_path)
        del saved

    validating = bool(val_indices)
    if validating:
        if scoring is None:
            ref_idx = [i for i in train_indices if sites_arr[i] == reference_site]
            trainer.fit_reference(ref_idx)
        if trainer.history["val_baseline"] is None:
            trainer.history["val_baseline"] = trainer.score(val_indices, sites_arr, False)

    def checkpoint() -> None:
        if ckpt_path is None or not main:
            return
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "harmonix_version": __version__,
                "fingerprint": run_id,
                "val_indices": list(val_indices),
                "trainer": trainer.state_dict(),
            },
            ckpt_path,
        )

    def validate() -> None:
        score = trainer.score(val_indices, sites_arr, True)
        hist = trainer.history
        hist["val_step"].append(trainer.step)
        hist["val_score"].append(score)
        best = hist["best_score"]
        if (best is None and not math.isnan(score)) or (best is not None and score >= best):
            hist["best_score"], hist["best_step"] = score, trainer.step
            trainer.best_state = _clone_state(trainer.forward)
        log = logger.info if verbose and main else logger.debug
        log(
            "step %d: validation score %.4f (before harmonization %.4f, best %.4f at step %d)",
            trainer.step,
            score,
            hist["val_baseline"],
            hist["best_score"],
            hist["best_step"],
        )

    total, warmup = config.total_steps, config.warmup_steps
    stop = total if max_steps is None else min(total, max_steps)
    progress = _progress(total, trainer.step, verbose if main else 0)
    recent: dict[str, list[float]] = {}
    try:
        while trainer.step < stop:
            losses = trainer.train_step()
            done = trainer.step - warmup  # steps with generator updates
            due = done > 0 and (done % config.val_every == 0 or trainer.step == total)
            if validating and due:
                validate()
            if trainer.step % config.checkpoint_every == 0 or trainer.step in (stop, total):
                checkpoint()
            if progress is not None:
                for name, value in losses.items():
                    recent.setdefault(name, []).append(value)
                    del recent[name][:-20]
                postfix = {
                    n.replace("loss_", "")[:5]: f"{np.mean(v):.3f}" for n, v in recent.items()
                }
                if trainer.history["val_score"]:
                    postfix["val"] = f"{trainer.history['val_score'][-1]:.4f}"
                progress.set_postfix(postfix, refresh=False)
                progress.update(1)
    finally:
        if progress is not None:
            progress.close()
    if context is not None:
        trainer.release_wrappers()
        context.barrier()  # the last checkpoint is written before any process returns

    with torch.random.fork_rng(devices=[]):
        generator = Generator3D(config.base_width)
    if trainer.best_state is not None:
        generator.load_state_dict(trainer.best_state)
    else:
        generator.load_state_dict(_clone_state(trainer.forward))
    generator.eval()
    return TrainResult(
        generator=generator,
        history=copy.deepcopy(trainer.history),
        step=trainer.step,
        completed=trainer.step >= total,
        val_indices=list(val_indices),
        device=str(dev),
    )


def _progress(total: int, initial: int, verbose: int) -> Any:
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="IGUANe training", unit="step")
