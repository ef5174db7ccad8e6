"""One process of the distributed IGUANe training of tests/test_iguane_distributed.py.

Run as ``torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT_DIR``. The
networks are built in float64 (``torch.set_default_dtype``), so that the comparison with a
single-process run is limited by float64 rounding, not by float32 rounding amplified by
GAN training. Every process writes what it got to ``OUT_DIR/rank{R}_*``; process 0 keeps a
copy of the step-2 checkpoint in ``OUT_DIR/ckpt_step2``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from _iguane_helpers import TINY_TRAINING

from harmonix.iguane.inputs import volumes as D
from harmonix.iguane.training import loop as T
from harmonix.iguane.training.config import TrainConfig

#: Per-process batch of the distributed run; the single-process equivalent doubles it.
CONFIG = {**TINY_TRAINING, "batch_size": 1, "val_fraction": 0.25, "augment": True}
SEED = 3
REFERENCE = "site0"


def volumes() -> tuple[list, np.ndarray, np.ndarray]:
    """Network-ready tiny volumes of three sites (one shape, so splits are equivalent)."""
    from _helpers import make_tiny_images

    imgs, sites, ages, _ = make_tiny_images(shape=(16, 16, 16), n_subjects=4, n_sites=3)
    vols = []
    for img in imgs:
        prepared = D.prepare_volume(img)
        vols.append((prepared.x, prepared.mask))
    return vols, sites, ages


def _save(result: T.TrainResult, path: Path) -> None:
    torch.save({"state": result.generator.state_dict(), "history": result.history}, path)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    vols, sites, ages = volumes()
    config = TrainConfig(**CONFIG)
    ckpt = out / "ckpt"
    rank = int(os.environ["RANK"])
    # 1. two steps, then stop; train creates the process group
    kwargs = dict(random_state=SEED, device="cpu", checkpoint_dir=ckpt)
    result = T.train(vols, sites, REFERENCE, ages, config, max_steps=2, **kwargs)
    assert dist.is_initialized() and dist.get_world_size() == 2
    _save(result, out / f"rank{rank}_step2.pt")
    if rank == 0:
        shutil.copytree(ckpt, out / "ckpt_step2")
    dist.barrier()
    # 2. resume to the end, in the same process group
    result = T.train(vols, sites, REFERENCE, ages, config, resume=True, **kwargs)
    _save(result, out / f"rank{rank}_step4.pt")
    # 3. processes given different data fail together, with a clear error
    wrong = sites.copy()
    if rank == 1:
        wrong[-1] = "site1"
    try:
        T.train(vols, wrong, REFERENCE, ages, config, random_state=SEED, device="cpu")
    except ValueError as exc:
        (out / f"rank{rank}_mismatch.txt").write_text(str(exc))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
