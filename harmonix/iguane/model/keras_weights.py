"""Load the official IGUANe generator weights, saved by Keras 2, into :class:`Generator3D`.

The authors of IGUANe publish the weights of their forward ("universal") generator as
``iguane_weights.h5``, written by Keras 2 ``Model.save_weights`` in the legacy HDF5 layout:

- the root group (or its ``model_weights`` group, for a file written by ``Model.save``)
  has an attribute ``layer_names`` listing the model's layers in order (long lists are split
  over ``layer_names0``, ``layer_names1``, ...);
- each layer has a group of that name, whose attribute ``weight_names`` lists its weights in
  order (e.g. ``conv3d/kernel:0``); each weight is a dataset at that path in the group. A
  nested ``Sequential`` block stores the weights of all its sublayers in its own group.

The weights are matched to the PyTorch modules by order, every name and shape being checked:
a Keras ``Conv3D`` kernel ``(kd, kh, kw, in, out)`` becomes a torch ``Conv3d`` weight
``(out, in, kd, kh, kw)``, a ``Conv3DTranspose`` kernel ``(kd, kh, kw, out, in)`` a torch
``ConvTranspose3d`` weight ``(in, out, kd, kh, kw)`` (same axis permutation, no flip), and
the ``scale``/``offset`` of the original's instance normalization become the
``weight``/``bias`` of :class:`~harmonix.iguane.model.networks.MADInstanceNorm3d`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from harmonix.iguane.model.networks import Generator3D, MADInstanceNorm3d

__all__ = ["load_keras_generator_weights"]

# Keras kernel (kd, kh, kw, a, b) -> torch (b, a, kd, kh, kw) for Conv3D and Conv3DTranspose.
_KERAS_TO_TORCH = (4, 3, 0, 1, 2)
# torch weight shape -> Keras kernel shape.
_TORCH_TO_KERAS = (2, 3, 4, 1, 0)


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Reading Keras .h5 weights needs h5py: install it with `pip install h5py`."
        ) from exc
    return h5py


def _read_str_list_attr(group: Any, name: str) -> list[str] | None:
    """Read a list-of-strings attribute, possibly split into ``name0``, ``name1``, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    elif f"{name}0" in group.attrs:
        values = []
        chunk = 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _read_keras_weights(path: str, h5py: Any) -> list[tuple[str, np.ndarray]]:
    """All weights of a Keras 2 legacy HDF5 file, as ``(name, array)`` in layer order."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path!r} is not a readable HDF5 file: {exc}") from exc
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        layer_names = _read_str_list_attr(root, "layer_names")
        if layer_names is None:
            hint = ""
            if "layers" in root or "vars" in root:
                hint = (
                    " It looks like a Keras 3 '.weights.h5' file; only the Keras 2 legacy "
                    "HDF5 layout (the official iguane_weights.h5) is supported."
                )
            raise ValueError(
                f"{path!r} is not a Keras 2 HDF5 weights file: its root group has no "
                f"'layer_names' attribute.{hint}"
            )
        weights = []
        for layer in layer_names:
            if layer not in root:
                raise ValueError(f"{path!r}: layer {layer!r} is listed but has no group.")
            group = root[layer]
            for name in _read_str_list_attr(group, "weight_names") or []:
                if name not in group:
                    raise ValueError(
                        f"{path!r}: weight {name!r} of layer {layer!r} is listed but missing."
                    )
                weights.append((f"{layer}/{name}", np.asarray(group[name])))
    return weights


def _expected_params(generator: Generator3D) -> list[tuple[str, nn.Parameter, tuple[int, ...]]]:
    """``(keras role, torch parameter, keras shape)`` for every parameter, in Keras order."""
    expected = []
    for module in generator.layers_in_order():
        if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
            kernel_shape = tuple(module.weight.shape[i] for i in _TORCH_TO_KERAS)
            expected.append(("kernel", module.weight, kernel_shape))
            if module.bias is not None:
                expected.append(("bias", module.bias, tuple(module.bias.shape)))
        elif isinstance(module, MADInstanceNorm3d):
            expected.append(("scale", module.weight, tuple(module.weight.shape)))
            expected.append(("offset", module.bias, tuple(module.bias.shape)))
    return expected


def _role(name: str) -> str:
    """``'sequential/conv3d/kernel:0'`` -> ``'kernel'``."""
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def load_keras_generator_weights(
    path: str | os.PathLike[str], generator: Generator3D | None = None
) -> Generator3D:
    """Load IGUANe generator weights saved by Keras 2 (``iguane_weights.h5``).

    Parameters
    ----------
    path : str or os.PathLike
        A Keras 2 legacy HDF5 weights file of the IGUANe generator (``Model.save_weights``
        with a ``.h5`` name, or ``Model.save``), such as the official
        ``iguane_weights.h5``.
    generator : Generator3D, optional
        The network to fill. By default a new ``Generator3D()`` (``base_width=16``, the
        published architecture). Its parameters are overwritten in place only once the whole
        file has been checked.

    Returns
    -------
    Generator3D
        ``generator`` (or the new network) holding the Keras weights, on its original device
        and dtype.

    Raises
    ------
    ImportError
        If h5py is not installed.
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a Keras 2 HDF5 weights file, or holds a number, kind or shape of
        weights that does not match ``generator``; the message says what was expected.

    Notes
    -----
    Weights are matched by layer order; every weight's role (``kernel``, ``bias``,
    ``scale``, ``offset``, read from its name) and shape is checked. The Keras network runs
    on ``NDHWC`` tensors and :class:`Generator3D` on ``NCDHW`` ones: move the channel axis
    when comparing outputs.

    Examples
    --------
    >>> gen = load_keras_generator_weights("iguane_weights.h5")  # doctest: +SKIP
    """
    h5py = _import_h5py()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No Keras weights file at {path!r}.")
    if generator is None:
        generator = Generator3D()
    elif not isinstance(generator, Generator3D):
        raise TypeError(f"generator must be a Generator3D, got {type(generator).__name__}.")

    weights = _read_keras_weights(path, h5py)
    expected = _expected_params(generator)
    n_conv = sum(role == "kernel" for role, _, _ in expected)
    n_norm = sum(role == "scale" for role, _, _ in expected)
    if len(weights) != len(expected):
        raise ValueError(
            f"{path!r} holds {len(weights)} weight arrays, but Generator3D("
            f"base_width={generator.base_width}, in_channels={generator.in_channels}) expects "
            f"{len(expected)}: {n_conv} convolution kernels with their biases and {n_norm} "
            "instance norms with scale and offset. Is it the IGUANe forward generator?"
        )

    tensors = []
    for i, ((name, array), (role, _, shape)) in enumerate(zip(weights, expected)):
        found = _role(name)
        if found in {"kernel", "bias", "scale", "offset"} and found != role:
            raise ValueError(
                f"{path!r}: weight #{i} ({name!r}) should be a {role!r}, found a {found!r}."
            )
        if tuple(array.shape) != shape:
            raise ValueError(
                f"{path!r}: weight #{i} ({name!r}) should be a {role} of shape {shape}, "
                f"found shape {tuple(array.shape)}."
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"{path!r}: weight #{i} ({name!r}) should hold floats, found {array.dtype}."
            )
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if role == "kernel":
            tensor = tensor.permute(_KERAS_TO_TORCH)
        tensors.append(tensor)

    with torch.no_grad():
        for (_, param, _), tensor in zip(expected, tensors):
            param.copy_(tensor)
    return generator
