"""IGUANe training checkpoints: atomic writes, safe reads, and the check that a checkpoint
belongs to the training being resumed.

A checkpoint is a :func:`torch.save` file of plain tensors, numbers, strings, lists and
dicts, read back with ``torch.load(weights_only=True)``; it is written to a temporary file
that is renamed over the old one, so an interruption never corrupts the last good
checkpoint. Its *fingerprint* (the training settings, sites, reference site, ages and a
digest of the training images, :class:`harmonix.inputs._digest.ImageDigest`) must match the
resumed training's; the batch size in it is the global one (per process
× processes, see :mod:`harmonix.iguane.training.distributed`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harmonix.io import atomic_write

if TYPE_CHECKING:
    from harmonix.iguane.training.config import TrainConfig
    from harmonix.iguane.training.distributed import DistributedContext

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "atomic_torch_save",
    "describe_mismatch",
    "fingerprint",
    "load_checkpoint",
    "load_torch_file",
    "read_resume_state",
    "volumes_digest",
]

#: File name of the training checkpoint inside ``checkpoint_dir``.
CHECKPOINT_NAME = "iguane_checkpoint.pt"
#: Format tag stored in every checkpoint.
CHECKPOINT_FORMAT = "harmonix.iguane.training/1"


def fingerprint(
    config: TrainConfig,
    sites: np.ndarray,
    reference_site: Hashable,
    ages: np.ndarray | None,
    world_size: int = 1,
    images: str | None = None,
    strata: np.ndarray | None = None,
    input_normalization: str | None = None,
) -> str:
    """What a checkpoint must share with the training that resumes it, as JSON.

    Parameters
    ----------
    config : TrainConfig
        The settings (``checkpoint_every`` and ``cpu_threads`` are left out: they may
        change between sessions).
    sites : ndarray
        Site of every image.
    reference_site : hashable
    ages : ndarray or None
    world_size : int, default=1
        Processes of the training; the stored batch size is ``batch_size * world_size``.
    images : str, default=None
        Digest of the training images in their order
        (:meth:`harmonix.inputs._digest.ImageDigest.hexdigest`).
    strata : ndarray or None, default=None
        Categorical covariate combination of every image (recorded only when given, so
        the fingerprints of trainings without covariates are unchanged).
    input_normalization : str or None, default=None
        How the images were normalized before training (the estimator's
        ``input_normalization``): the networks see other inputs when it changes. Recorded
        only when given.

    Returns
    -------
    str
    """
    cfg = dataclasses.asdict(config)
    cfg.pop("checkpoint_every")
    cfg.pop("cpu_threads")
    if cfg["disc_instance_norm"]:  # the default: fingerprints of earlier versions unchanged
        del cfg["disc_instance_norm"]
    cfg["batch_size"] = config.batch_size * world_size  # the global batch of one update
    info = {
        "config": cfg,
        "sites": [str(s) for s in sites.tolist()],
        "reference_site": str(reference_site),
        "ages": None if ages is None else [round(float(a), 6) for a in ages],
        "images": images,
    }
    if strata is not None:
        info["strata"] = [str(s) for s in strata.tolist()]
    if input_normalization is not None:
        info["input_normalization"] = str(input_normalization)
    return json.dumps(info, sort_keys=True, default=str)


def volumes_digest(volumes: Any) -> str:
    """Digest of training volumes (``volumes[i]`` is ``(x, mask)``), read one at a time.

    :func:`~harmonix.iguane.training.loop.train` computes it for its checkpoint fingerprint
    when it is not given one (:class:`~harmonix.IGUANeHarmonizer` gives the digest of the
    raw images, computed in the pass that reads them for their medians).
    """
    from harmonix.inputs._digest import ImageDigest

    digest = ImageDigest()
    for i in range(len(volumes)):
        digest.update(volumes[i][0])
    return digest.hexdigest()


def describe_mismatch(saved: str, current: str) -> str:
    """The differences between two :func:`fingerprint` strings, for an error message."""
    try:
        a, b = json.loads(saved), json.loads(current)
    except ValueError:  # pragma: no cover - both are written by _fingerprint
        return "unknown"
    # the fingerprint's batch_size is the global one: per process x processes
    diffs = [
        f"{'global ' if k == 'batch_size' else ''}{k}={a['config'].get(k)!r} "
        f"(now {b['config'].get(k)!r})"
        for k in sorted(set(a["config"]) | set(b["config"]))
        if a["config"].get(k) != b["config"].get(k)
    ]
    for key in ("sites", "reference_site", "ages", "strata"):
        if a.get(key) != b.get(key):
            diffs.append(f"the training {key.replace('_', ' ')}")
    if a.get("input_normalization") != b.get("input_normalization"):
        diffs.append(
            f"input_normalization={a.get('input_normalization')!r} "
            f"(now {b.get('input_normalization')!r})"
        )
    if "images" not in a:
        diffs.append("the checkpoint has no digest of its images (an older harmonix)")
    elif a["images"] != b.get("images"):
        diffs.append("the training images (other images, or the same in another order)")
    return ", ".join(diffs) or "unknown"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write ``obj`` with :func:`torch.save` to a temporary file, then rename it to ``path``."""
    with atomic_write(path, suffix=".tmp", fsync=True) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)`` on the CPU.

    Parameters
    ----------
    path : str or path-like
        A checkpoint file written by :func:`train`.

    Returns
    -------
    dict
    """
    return load_torch_file(
        path,
        CHECKPOINT_FORMAT,
        "the checkpoint",
        "an IGUANe training checkpoint of harmonix",
        "delete it or train with resume=False",
    )


def load_torch_file(
    path: str | os.PathLike, format_tag: str, name: str, what: str, hint: str
) -> dict[str, Any]:
    """Read a file of harmonix's with ``torch.load(weights_only=True)`` and check its tag.

    Parameters
    ----------
    path : str or path-like
    format_tag : str
        The ``"format"`` entry the file's dictionary must hold.
    name, what, hint : str
        For the error messages: "Could not read {name} '{path}'", "'{path}' is not
        {what}", followed by the hint.

    Returns
    -------
    dict

    Raises
    ------
    ValueError
        If the file cannot be read (it is not a torch file, or holds more than plain
        tensors and values) or is not tagged ``format_tag``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ValueError(f"Could not read {name} '{path}' ({reason}); {hint}.") from exc
    if not isinstance(state, dict) or state.get("format") != format_tag:
        raise ValueError(f"'{path}' is not {what}; {hint}.")
    return state


def read_resume_state(
    path: Path | None, fingerprint: str, context: DistributedContext | None
) -> dict[str, Any] | None:
    """The checkpoint to resume from (None if there is none), checked against the run.

    In a distributed training process 0 reads it and sends it to the others; an error
    is raised on every process.
    """
    saved: dict[str, Any] | None = None
    error = None
    if context is None or context.is_main:
        try:
            if path is not None and path.is_file():
                saved = load_checkpoint(path)
                if saved["fingerprint"] != fingerprint:
                    raise ValueError(
                        f"The checkpoint '{path}' was made with other settings or data "
                        f"({describe_mismatch(saved['fingerprint'], fingerprint)}); use the "
                        "same ones, another checkpoint_dir, or resume=False to start over."
                    )
        except ValueError as exc:
            saved, error = None, str(exc)
    if context is not None:
        saved, error = context.broadcast((saved, error))
    if error is not None:
        raise ValueError(error)
    return saved
