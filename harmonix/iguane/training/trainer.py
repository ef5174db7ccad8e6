"""The state of one IGUANe training and its update step.

:class:`Trainer` holds all networks, optimizers, schedulers, loss scalers and random
generators of a training, and performs one step (:meth:`Trainer.train_step`): for every
source site, in a shuffled order, one update of its two discriminators, then one joint
update of the generator *to the reference* (shared by all sites) and the site's generator
*to the source*. :func:`harmonix.iguane.training.loop.train` drives it.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from harmonix import _threads
from harmonix.iguane._kernels.fused_inference import norms_on_call_threads
from harmonix.iguane.devices import autocast_dtype, warn_if_emulated
from harmonix.iguane.inputs.volumes import network_input
from harmonix.iguane.model.networks import Generator3D, PatchDiscriminator3D, glorot_init
from harmonix.iguane.training.augmentation import augment, crop_patch, random_brain_voxel
from harmonix.iguane.training.config import TrainConfig
from harmonix.iguane.training.distributed import DistributedContext
from harmonix.iguane.training.sampling import SitePairSampler
from harmonix.iguane.training.updates import DiscriminatorStep, GeneratorStep, masked

__all__ = ["LOSS_NAMES", "Trainer", "clone_state", "lr_factor"]

Volumes = Sequence[tuple[np.ndarray, np.ndarray]]
#: A training pair of image indices (source, reference) with the seed of its preparation.
SeededPair = tuple[tuple[int, int], int]

#: The per-step losses, in the order of :meth:`Trainer.train_step`'s sums.
LOSS_NAMES = (
    "loss_discriminator",
    "loss_adversarial",
    "loss_cycle",
    "loss_identity",
    "loss_generator",
)

#: Checkpoint keys of the generators, optimizers and schedulers: the file format keeps the
#: names of the first checkpoints ("forward" is the generator to the reference site,
#: "backward" the generators to the source sites).
_STATE_KEYS = {
    "to_reference": "forward",
    "to_source": "backward",
    "opt_to_reference": "opt_forward",
    "opt_to_source": "opt_backward",
    "sched_to_reference": "sched_forward",
    "sched_to_source": "sched_backward",
}


def lr_factor(schedule: str, total: int, ratio: float) -> Callable[[int], float]:
    """Learning-rate multiplier at each scheduler step.

    Parameters
    ----------
    schedule : {"linear", "constant_then_linear"}
        See :class:`~harmonix.iguane.training.config.TrainConfig`.
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


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``module``'s state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


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


class Trainer:
    """All networks, optimizers and states of one IGUANe training.

    Parameters
    ----------
    config : TrainConfig
    volumes : sequence of (x, mask)
        The images on the network scale (see :func:`harmonix.iguane.training.loop.train`).
    sampler : SitePairSampler
        Draws the training pairs (held-out images excluded).
    device : torch.device
    seeds : numpy.random.SeedSequence
        Seeds the weight initialization and the sampling.
    context : DistributedContext, default=None
        The process group of a distributed training.

    Attributes
    ----------
    to_reference : Generator3D
        The generator from any source site to the reference site (the one returned; the
        "forward" generator of the CycleGAN).
    to_source : torch.nn.ModuleList of Generator3D
        Per source site, the generator from the reference site to it (a "backward" one).
    disc_ref, disc_src : torch.nn.ModuleList of PatchDiscriminator3D
        Per source site, the discriminators of reference images (against
        ``to_reference(source)``) and of source images (against ``to_source[k](reference)``).
    step : int
        Steps done, warm-up included.
    history : dict
        See :class:`harmonix.iguane.training.loop.TrainResult`.
    best_state : dict or None
        The state dict of the best-scoring ``to_reference`` so far.
    """

    def __init__(
        self,
        config: TrainConfig,
        volumes: Volumes,
        sampler: SitePairSampler,
        device: torch.device,
        seeds: np.random.SeedSequence,
        context: DistributedContext | None = None,
    ) -> None:
        self.config = config
        self.context = context
        self.volumes = volumes
        self.sampler = sampler
        self.sources = list(sampler.source_sites)
        self.device = device
        init_seed, sample_seed = seeds.spawn(2)
        self.torch_rng = torch.Generator().manual_seed(
            int(init_seed.generate_state(1, np.uint64)[0] >> np.uint64(1))
        )
        self.rng = np.random.default_rng(sample_seed)
        self._build_networks()
        #: Volumes are fed in the networks' dtype: float32, or float64 when the networks
        #: were built under torch.set_default_dtype(torch.float64) (exactness checks).
        self.dtype = next(self.to_reference.parameters()).dtype
        self._build_steps()
        self._build_optimizers()
        #: The autocast dtype, None for full precision.
        self.amp_dtype = autocast_dtype(config.mixed_precision, device, config.amp_dtype)
        warn_if_emulated(self.amp_dtype, device, stacklevel=2)
        scale = self.amp_dtype == torch.float16
        self.scaler_disc = torch.amp.GradScaler(device.type, enabled=scale)
        self.scaler_gen = torch.amp.GradScaler(device.type, enabled=scale)

        self.step = 0
        self.history: dict[str, Any] = {
            **{name: [] for name in LOSS_NAMES},
            "val_step": [],
            "val_score": [],
            "val_baseline": None,
            "best_step": None,
            "best_score": None,
        }
        self.best_state: dict[str, torch.Tensor] | None = None

    # -- construction --------------------------------------------------------------------
    def _build_networks(self) -> None:
        config, n = self.config, len(self.sources)
        with torch.random.fork_rng(devices=[]):  # constructors draw from the global RNG
            self.to_reference = Generator3D(config.base_width)
            self.to_source = nn.ModuleList(Generator3D(config.base_width) for _ in range(n))

            def discriminators() -> nn.ModuleList:
                return nn.ModuleList(
                    PatchDiscriminator3D(
                        config.discriminator_width, instance_norm=config.disc_instance_norm
                    )
                    for _ in range(n)
                )

            self.disc_ref, self.disc_src = discriminators(), discriminators()
        for module in self.networks:
            glorot_init(module, self.torch_rng)
            module.to(self.device)
        if config.identity_init:
            with torch.no_grad():
                for gen in (self.to_reference, *self.to_source):
                    gen.out_conv.weight.zero_()
                    gen.out_conv.bias.zero_()

    def _build_steps(self) -> None:
        """The update modules (wrapped for DistributedDataParallel in a distributed run)."""
        config = self.config
        self.disc_steps: list[nn.Module] = [
            DiscriminatorStep(dr, ds) for dr, ds in zip(self.disc_ref, self.disc_src)
        ]
        self.gen_steps: list[nn.Module] = [
            GeneratorStep(
                self.to_reference, gen, dr, ds, config.cycle_weight, config.identity_weight
            )
            for gen, dr, ds in zip(self.to_source, self.disc_ref, self.disc_src)
        ]
        if self.context is not None:
            self.disc_steps = [self.context.wrap(m, self.device) for m in self.disc_steps]
            self.gen_steps = [self.context.wrap(m, self.device) for m in self.gen_steps]

    def _build_optimizers(self) -> None:
        """Adam per network; ``to_reference`` is stepped once per site, so its schedule is
        ``n_sources`` times longer."""
        config, n = self.config, len(self.sources)
        adam = {
            "lr": config.learning_rate,
            "betas": (config.beta1, config.beta2),
            "eps": config.adam_eps,
        }
        ratio = config.final_learning_rate / config.learning_rate
        self.opt_to_reference = torch.optim.Adam(self.to_reference.parameters(), **adam)
        self.opt_to_source = [torch.optim.Adam(g.parameters(), **adam) for g in self.to_source]
        self.opt_disc = [
            torch.optim.Adam([*dr.parameters(), *ds.parameters()], **adam)
            for dr, ds in zip(self.disc_ref, self.disc_src)
        ]
        steps, kind = config.n_steps, config.lr_schedule

        def schedule(opt: torch.optim.Optimizer, total: int) -> Any:
            return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(kind, total, ratio))

        self.sched_to_reference = schedule(self.opt_to_reference, steps * n)
        self.sched_to_source = [schedule(o, steps) for o in self.opt_to_source]
        self.sched_disc = [schedule(o, steps) for o in self.opt_disc]

    @property
    def networks(self) -> tuple[nn.Module, ...]:
        """The generators and discriminators, in their order of construction."""
        return (self.to_reference, self.to_source, self.disc_ref, self.disc_src)

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
        """Everything a resumed training needs, as plain tensors, numbers, lists and dicts."""

        state: dict[str, Any] = {"step": self.step}
        for attr in (
            "to_reference",
            "to_source",
            "disc_ref",
            "disc_src",
            "opt_to_reference",
            "opt_to_source",
            "opt_disc",
            "sched_to_reference",
            "sched_to_source",
            "sched_disc",
            "scaler_disc",
            "scaler_gen",
        ):
            obj = getattr(self, attr)
            many = isinstance(obj, list | nn.ModuleList)
            saved = [o.state_dict() for o in obj] if many else obj.state_dict()
            state[_STATE_KEYS.get(attr, attr)] = saved
        state.update(
            numpy_rng=self.rng.bit_generator.state,
            torch_rng=self.torch_rng.get_state(),
            history=self.history,
            best_state=self.best_state,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.step = int(state["step"])
        for attr in ("to_reference", "opt_to_reference", "sched_to_reference"):
            getattr(self, attr).load_state_dict(state[_STATE_KEYS[attr]])
        for attr in (
            "to_source",
            "disc_ref",
            "disc_src",
            "opt_to_source",
            "opt_disc",
            "sched_to_source",
            "sched_disc",
        ):
            saved = state[_STATE_KEYS.get(attr, attr)]
            for obj, obj_state in zip(getattr(self, attr), saved, strict=True):
                obj.load_state_dict(obj_state)
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

    def _draw(self, site: Hashable, n: int) -> list[SeededPair]:
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

    def _batch(self, pairs: Sequence[SeededPair]) -> tuple[torch.Tensor, ...]:
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
    def autocast(self) -> Any:
        """The :func:`torch.autocast` context of the networks (disabled in full precision)."""
        amp = self.amp_dtype
        enabled = amp is not None
        return torch.autocast(self.device.type, dtype=amp or torch.bfloat16, enabled=enabled)

    def _update_discriminators(self, k: int, site: Hashable) -> torch.Tensor:
        n = self.config.disc_pairs * self.config.batch_size
        xs, ms, xr, mr = self._batch(self._draw(site, n))  # for the source discriminator
        xs2, ms2, xr2, mr2 = self._batch(self._draw(site, n))  # for the reference one
        src_in, ref_in = network_input(xs, ms), network_input(xr, mr)
        src2_in, ref2_in = network_input(xs2, ms2), network_input(xr2, mr2)
        with torch.no_grad(), self.autocast():
            fake_src = masked(self.to_source[k](ref_in), mr)
            fake_ref = masked(self.to_reference(src2_in), ms2)
        with self.autocast():
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
        optimizers = (self.opt_to_reference, self.opt_to_source[k])
        for d in discs:
            d.requires_grad_(False)
        try:
            with self.autocast():
                loss, adv, cyc, ident = self.gen_steps[k](src, ms, ref, mr)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            self.scaler_gen.scale(loss).backward()
            for opt in optimizers:
                self.scaler_gen.step(opt)
            self.scaler_gen.update()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
        finally:
            for d in discs:
                d.requires_grad_(True)
        return adv.detach(), cyc.detach(), ident.detach(), loss.detach()

    def _step_schedules(self, k: int) -> None:
        with warnings.catch_warnings():
            # a step skipped by the loss scaler (float16 overflow) makes torch warn
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.sched_to_reference.step()
            self.sched_to_source[k].step()
            self.sched_disc[k].step()

    def _site_step_threads(self) -> int | None:
        """CPU threads of the next site-step (``config.cpu_threads``; None: no change;
        "auto": the cores idle now, :func:`harmonix._threads.inference_threads`
        with ``fair_share=False``)."""
        if self.device.type != "cpu" or self.config.cpu_threads is None:
            return None
        if self.config.cpu_threads == "auto":
            return _threads.inference_threads(fair_share=False)
        return int(self.config.cpu_threads)

    @property
    def warming_up(self) -> bool:
        """Whether the next step is a discriminator warm-up step."""
        return self.step < self.config.warmup_steps

    def train_step(self) -> dict[str, float]:
        """One step: every source site once, in a shuffled order.

        During warm-up (the first ``config.warmup_steps`` steps) only the discriminators
        are updated; generator losses are recorded as NaN.

        Returns
        -------
        dict
            The step's losses (:data:`LOSS_NAMES`), means over source sites (and
            processes); also appended to :attr:`history`.
        """
        for module in self.networks:
            module.train()
        warmup = self.warming_up
        order = self.rng.permutation(len(self.sources))
        losses = []
        for k in order.tolist():
            site = self.sources[k]
            # the no-grad generator passes may run their norms on the site-step's threads:
            # the thread count already leaves out the cores of busy neighbours
            with _threads.intraop_threads(self._site_step_threads()), norms_on_call_threads():
                d_loss = self._update_discriminators(k, site)
                if warmup:
                    nan = torch.full((4,), float("nan"), dtype=d_loss.dtype, device=d_loss.device)
                    losses.append(torch.cat([d_loss.reshape(1), nan]))
                    continue
                losses.append(torch.stack([d_loss, *self._update_generators(k, site)]))
            self._step_schedules(k)
        mean = torch.stack(losses).double().mean(0).cpu().numpy()
        if self.context is not None:  # each process's losses are means over its block
            mean = self.context.sum(mean) / self.context.world_size
        out = dict(zip(LOSS_NAMES, mean.tolist()))
        for name, value in out.items():
            self.history[name].append(float(value))
        self.step += 1
        return out

    # -- inference for validation --------------------------------------------------------
    def harmonizer(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """``f(x, mask) -> y``: ``to_reference`` on one volume, network scale (background
        -1), numpy in and out; call it with ``to_reference`` in eval mode."""

        def harmonize(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
            x_t = torch.as_tensor(np.asarray(x), dtype=self.dtype, device=self.device)
            m_t = torch.as_tensor(np.asarray(mask, dtype=bool), device=self.device)
            with torch.inference_mode(), self.autocast():
                y = self.to_reference(network_input(x_t, m_t)[None, None])[0, 0]
            y = torch.where(m_t, y.to(self.dtype), -torch.ones((), dtype=self.dtype))
            return y.cpu().numpy()

        return harmonize
