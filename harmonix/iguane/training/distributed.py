"""Data-parallel IGUANe training over several processes with :mod:`torch.distributed`.

:func:`harmonix.iguane.training.loop.train` (and so :meth:`IGUANeHarmonizer.fit
<harmonix.IGUANeHarmonizer.fit>`) runs data-parallel when it is started by ``torchrun``
(or inside a process group the caller initialized): every process holds all networks,
each network update is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`,
and gradients are averaged over processes before every optimizer step, so all replicas
stay identical.

How the work is split
    All processes draw the *same* (source, reference) pairs and per-pair random seeds from
    the shared sampling generator; process ``r`` of ``W`` trains on the ``r``-th block of
    ``batch_size`` of them (``disc_pairs * batch_size`` for discriminator updates). One
    update therefore uses ``W * batch_size`` pairs, and a run on ``W`` processes with
    ``batch_size=b`` is the same training as a single-process run with
    ``batch_size=W * b`` -- same pairs, same augmentations, same averaged gradients --
    up to floating-point summation order, provided the training volumes (or patches)
    share one shape (batches of volumes of different shapes are padded to the largest,
    which depends on the batch's composition). Held-out validation images and the
    reference quantiles are split over processes too and their sums all-reduced.

Checkpoints
    Only process 0 writes the checkpoint; on resume it reads it and broadcasts it, so
    ``checkpoint_dir`` need not be shared between nodes. The checkpoint stores the global
    batch (``W * batch_size``), so a training may be resumed with another split, e.g. a
    2-process checkpoint in one process with twice the batch size.

Process group
    A process group harmonix creates (under ``torchrun``) is kept for later trainings of
    the process and destroyed at exit, after the processes meet at a barrier (gloo: a
    monitored barrier that gives up after 60 s if a process died), so that no process
    tears down its connections while another still uses them. A group the caller created
    is the caller's to destroy.

Launch
    ``torchrun --nproc_per_node=4 my_training.py`` (one process per GPU; ``cuda`` devices
    are taken from ``LOCAL_RANK``, NCCL is used on GPUs and gloo on CPUs), or
    ``torchrun --nproc_per_node=4 -m harmonix fit --method iguane ...``.
"""

from __future__ import annotations

import atexit
import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistributedContext", "launched_by_torchrun", "setup_distributed"]

_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    if not all(name in os.environ for name in _LAUNCH_VARIABLES):
        return False
    try:
        return int(os.environ["WORLD_SIZE"]) > 1
    except ValueError:
        return False


def process_rank() -> int:
    """This process's rank in the current (or launching) process group; 0 when alone."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


@dataclass(frozen=True)
class DistributedContext:
    """One process's place in a data-parallel training.

    Attributes
    ----------
    rank, world_size, local_rank : int
        This process's rank, the number of processes and the rank on this node.
    device : torch.device
        Device of the collective operations (the CUDA device with NCCL, else the CPU).
    owns_group : bool
        Whether :func:`setup_distributed` created the process group. It is then kept for
        later trainings of the process (destroying and re-creating a group in one process
        can deadlock its rendezvous) and destroyed at exit.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        """Whether this is process 0 (the one that logs and writes checkpoints)."""
        return self.rank == 0

    def block(self, items: list[Any], per_process: int) -> list[Any]:
        """This process's block of ``per_process`` items out of ``world_size`` blocks."""
        return items[self.rank * per_process : (self.rank + 1) * per_process]

    def shard(self, items: list[Any]) -> list[Any]:
        """Every ``world_size``-th item, starting at this process's rank."""
        return items[self.rank :: self.world_size]

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum of ``values`` over all processes (float64)."""
        tensor = torch.as_tensor(np.asarray(values, dtype=np.float64), device=self.device)
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def broadcast(self, obj: Any) -> Any:
        """Process 0's ``obj`` on every process (sent with pickle between the processes)."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def check_same(self, text: str, what: str) -> None:
        """Raise on every process if ``text`` differs between processes."""
        digest = hashlib.sha256(text.encode()).hexdigest()
        digests: list[Any] = [None] * self.world_size
        dist.all_gather_object(digests, digest)
        differing = [r for r, d in enumerate(digests) if d != digests[0]]
        if differing:
            raise ValueError(
                f"The processes of this distributed training got different {what} "
                f"(ranks {differing} differ from rank 0); every process must be given the "
                "same images, sites, ages and parameters."
            )

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel`."""
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            module,
            device_ids=[device] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,
        )

    def barrier(self) -> None:
        """Wait for every process."""
        dist.barrier()


#: Longest wait at exit for the other processes (seconds).
EXIT_BARRIER_TIMEOUT_S = 60


def _destroy_at_exit() -> None:
    """Destroy the process group harmonix created, all processes together.

    The processes first wait for each other (gloo: a monitored barrier that gives up
    after ``EXIT_BARRIER_TIMEOUT_S``, e.g. when another process died), so that no
    process tears down its connections while another one still uses them.
    """
    if not dist.is_initialized():
        return
    if dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=EXIT_BARRIER_TIMEOUT_S))
        except RuntimeError:  # another process is gone or stuck: leave anyway
            pass
    dist.destroy_process_group()


def setup_distributed(
    distributed: bool | None, device: torch.device
) -> tuple[DistributedContext | None, torch.device]:
    """Join (or start) the process group of a data-parallel training.

    Parameters
    ----------
    distributed : bool or None
        None: data-parallel when a process group of more than one process is initialized
        or the process was launched by ``torchrun``; False: never; True: required.
    device : torch.device
        The requested device; a CUDA device without index becomes ``cuda:LOCAL_RANK``.

    Returns
    -------
    context : DistributedContext or None
        None for a single-process training.
    device : torch.device
        The device this process trains on.

    Raises
    ------
    ValueError
        If ``distributed=True`` but there is no process group and no ``torchrun`` launch.
    """
    if distributed is False:
        return None, device
    initialized = dist.is_available() and dist.is_initialized()
    if not initialized and not (dist.is_available() and launched_by_torchrun()):
        if distributed:
            raise ValueError(
                "distributed=True needs several processes: launch the script with torchrun "
                "(e.g. `torchrun --nproc_per_node=2 train.py`) or call "
                "torch.distributed.init_process_group first."
            )
        return None, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not initialized:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy_at_exit)
        owns = True
    if dist.get_world_size() == 1:
        return None, device
    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    context = DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=comm,
        owns_group=owns,
    )
    return context, device
