"""Support shared by the IGUANe training tests, their torchrun worker (tests/ddp_worker.py)
and benchmarks/check_bf16_training.py."""

from __future__ import annotations

import numpy as np
import torch

from harmonix.iguane.inputs import volumes as D
from harmonix.iguane.model.networks import Generator3D
from harmonix.iguane.training import loop as T
from harmonix.iguane.training.config import TrainConfig

#: A training of a few seconds: 4 steps of width-2 networks, validation every 2 steps and a
#: checkpoint every step.
TINY_TRAINING = dict(
    n_epochs=1,
    steps_per_epoch=4,
    base_width=2,
    disc_pairs=1,
    val_every=2,
    checkpoint_every=1,
)


def blob_volumes(n_per_site=3, sites=("ref", "a"), shape=(16, 16, 16), seed=0):
    """Network-ready blobs: per-site contrast, background -1."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    brain = radius < 0.85
    vols, labels, ages = [], [], []
    for k, site in enumerate(sites):
        for j in range(n_per_site):
            img = (1 + 0.5 * np.cos(4 * radius + j)) ** (1 + 0.3 * k) + 0.05 * rng.random(shape)
            prepared = D.prepare_volume(np.where(brain, img, 0).astype(np.float32))
            vols.append((prepared.x, prepared.mask))
            labels.append(site)
            ages.append(20.0 + 10 * j)
    return vols, np.array(labels), np.array(ages)


def random_generator(base_width=4, in_channels=1, dtype=torch.float32) -> Generator3D:
    """A generator in eval mode with random biases and norm parameters (the defaults are 0
    and 1), drawn from the global generator (seed it first)."""
    g = Generator3D(base_width=base_width, in_channels=in_channels)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2)
    return g.to(dtype).eval()


def bf16_short_training(steps=2) -> T.TrainResult:
    """The 2-step bfloat16 training of issue 26's NaN (width-2 networks on 16^3 blobs,
    seed 0): the discriminator's last convolution sees 2x2x2 maps."""
    vols, sites, _ = blob_volumes()
    config = TrainConfig(
        **{**TINY_TRAINING, "steps_per_epoch": steps, "val_every": steps},
        mixed_precision=True,
        amp_dtype="bfloat16",
    )
    return T.train(vols, sites, "ref", config=config, random_state=0)


def fill_freed_memory_with_nan() -> None:
    """Allocate blocks of many sizes filled with 0xFF bytes (NaN in bfloat16 and float32)
    and free them: the allocator hands this memory out again, so a kernel that reads
    outside its tensors reads NaN."""
    blocks = []
    for n in (8, 24, 64, 200, 512, 1500, 4096, 12000, 32768, 100000, 262144):
        blocks += [torch.full((n,), -1, dtype=torch.int16) for _ in range(24)]
    del blocks
