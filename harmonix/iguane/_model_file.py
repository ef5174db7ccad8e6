"""Model files of :class:`~harmonix.iguane.estimator.IGUANeHarmonizer`, and the official
weights.

A model file is a :func:`torch.save` payload of plain values and tensors only: the format
tag, the class (``module.Class``, which :func:`harmonix.persistence.load_model` imports),
the harmonix version, the constructor parameters, the fitted attributes (arrays named in
``array_attrs``) and the forward generator (width, input channels, weights). It is read
back with ``torch.load(weights_only=True)``. :func:`official_model` builds a fitted
estimator around the published Keras generator instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonix._version import __version__
from harmonix.base import BaseHarmonizer
from harmonix.iguane.inputs.volumes import check_input_shape
from harmonix.iguane.model.keras_weights import load_keras_generator_weights
from harmonix.iguane.model.networks import Generator3D
from harmonix.iguane.training.checkpoints import atomic_torch_save, load_torch_file
from harmonix.persistence import to_plain
from harmonix.preprocessing import IGUANE_SHAPE

__all__ = [
    "MODEL_FORMAT",
    "OFFICIAL_REFERENCE_SITE",
    "model_payload",
    "new_generator",
    "official_model",
    "read_model",
    "write_model",
]

#: Format tag stored in every model file.
MODEL_FORMAT = "harmonix.IGUANeHarmonizer/1"
#: Reference site of the published IGUANe model.
OFFICIAL_REFERENCE_SITE = "SALD"


def new_generator(base_width: int, in_channels: int = 1) -> Generator3D:
    """A generator to load weights into; the global random generator is left untouched."""
    with torch.random.fork_rng(devices=[]):
        return Generator3D(int(base_width), int(in_channels))


def model_payload(est: BaseHarmonizer) -> dict[str, Any]:
    """What ``save`` writes: parameters, fitted values and the generator, as plain values."""
    params = {
        k: to_plain(v, f"parameter {k!r}", target="torch")
        for k, v in est.get_params(deep=False).items()
    }
    fitted = {
        k: to_plain(v, f"fitted attribute {k!r}", target="torch")
        for k, v in vars(est).items()
        if k.endswith("_") and not k.startswith("_") and k != "generator_"
    }
    gen = est.generator_
    return {
        "format": MODEL_FORMAT,
        "class": f"{type(est).__module__}.{type(est).__qualname__}",
        "version": __version__,
        "params": params,
        "fitted": fitted,
        "array_attrs": [k for k, v in vars(est).items() if isinstance(v, np.ndarray)],
        "generator": {
            "base_width": int(gen.base_width),
            "in_channels": int(gen.in_channels),
            "state_dict": {
                k: v.detach().to("cpu", copy=True) for k, v in gen.state_dict().items()
            },
        },
    }


def write_model(est: BaseHarmonizer, path: str | os.PathLike) -> None:
    """Write :func:`model_payload` to ``path`` (atomically: a temporary file renamed)."""
    atomic_torch_save(model_payload(est), Path(path))


def read_model(cls: type[BaseHarmonizer], path: str | os.PathLike) -> BaseHarmonizer:
    """The fitted estimator of a model file (what ``load`` returns)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file not found: '{path}'.")
    payload = load_torch_file(
        path,
        MODEL_FORMAT,
        "the model",
        "an IGUANe model saved by harmonix",
        "save models with IGUANeHarmonizer.save()",
    )
    est = cls(**payload["params"])
    arrays = set(payload.get("array_attrs", []))
    for name, value in payload["fitted"].items():
        setattr(est, name, np.asarray(value) if name in arrays else value)
    spec = payload["generator"]
    est.generator_ = new_generator(spec["base_width"], spec["in_channels"])
    est.generator_.load_state_dict(spec["state_dict"])
    est.generator_.eval()
    est._saved_version = payload["version"]
    est._complete_loaded()
    return est


def official_model(
    cls: type[BaseHarmonizer],
    path: str | os.PathLike,
    reference_median: float,
    params: dict[str, Any],
) -> BaseHarmonizer:
    """A fitted estimator around the official Keras generator (what
    ``from_keras_weights`` returns)."""
    if not (np.isfinite(reference_median) and reference_median > 0):
        raise ValueError(f"reference_median must be a positive number, got {reference_median!r}.")
    params = {"input_shape": IGUANE_SHAPE, **params}
    if params.get("base_width", 16) != 16:
        raise ValueError("The official IGUANe generator has base_width=16.")
    params["base_width"] = 16
    est = cls(**params)
    generator = load_keras_generator_weights(path, new_generator(16, 1))
    est.generator_ = generator.to("cpu").eval()
    est.reference_site_ = OFFICIAL_REFERENCE_SITE
    est.sites_ = np.asarray([OFFICIAL_REFERENCE_SITE])
    est.n_images_ = 0
    est.mask_ = None
    est.image_shape_ = None
    est.input_shape_ = check_input_shape(est.input_shape)
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
