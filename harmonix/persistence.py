"""Saving and loading fitted harmonizers without pickle.

A model file is an ``.npz`` archive: numeric fitted arrays are stored as arrays, every
other fitted attribute and the constructor parameters as JSON, together with the class
name and the harmonix version. Loading uses ``allow_pickle=False``, so a model file can
never execute code.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from harmonix._version import __version__
from harmonix.io import atomic_write

__all__ = [
    "load_estimator",
    "load_model",
    "model_file",
    "read_model_info",
    "save_estimator",
    "to_plain",
]

#: Suffixes ``save`` gives model files (``.npz`` baselines, ``.pt`` IGUANe), tried in this
#: order by :func:`load_model` for a name given without one.
MODEL_SUFFIXES = (".npz", ".pt")

_META = "__harmonix__"
_ARRAY_PREFIX = "array:"


def to_plain(value: Any, what: str = "a value", *, target: str = "json") -> Any:
    """``value`` made of str/int/float/bool/None, lists, tuples and dicts only.

    The one serializer of model files: :func:`save_estimator` stores its result as JSON,
    :meth:`harmonix.IGUANeHarmonizer.save` in a :func:`torch.save` file read back with
    ``weights_only=True``. NumPy scalars become Python numbers, paths become strings,
    dict keys strings.

    Parameters
    ----------
    value : object
        The value to convert.
    what : str, default="a value"
        What the value is, for the error message (e.g. ``"parameter 'mask'"``).
    target : {"json", "torch"}, default="json"
        ``"json"``: arrays become ``{"__ndarray_list__": [...]}`` (restored as arrays by
        loading), and random generators or callables are refused. ``"torch"``: arrays
        become plain lists (the caller records which attributes were arrays), and random
        generators and callables (scoring functions) become None: they are not saved.

    Returns
    -------
    object
        The plain value.

    Raises
    ------
    TypeError
        If ``value`` holds something that cannot be saved without pickle.
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if target == "torch" else {"__ndarray_list__": value.tolist()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v, what, target=target) for v in value)
    if isinstance(value, dict):
        return {str(k): to_plain(v, what, target=target) for k, v in value.items()}
    if target == "torch" and (
        isinstance(value, (np.random.Generator, np.random.RandomState)) or callable(value)
    ):
        return None
    raise TypeError(f"Cannot save {what} of type {type(value).__name__} without pickle.")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray_list__" in value:
            return np.asarray(value["__ndarray_list__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _is_plain_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "biufUS"


def save_estimator(estimator: Any, path: str | os.PathLike) -> Path:
    """Write a fitted estimator's parameters and fitted attributes to ``path`` (``.npz``).

    Parameters
    ----------
    estimator : BaseHarmonizer
        A fitted harmonizer whose fitted attributes are arrays or JSON-able values.
    path : str or path-like
        Destination; ``.npz`` is appended if missing. Written atomically.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays: dict[str, np.ndarray] = {}
    params: dict[str, Any] = {}
    for name, value in estimator.get_params(deep=False).items():
        if _is_plain_array(value):
            arrays[f"param:{name}"] = value
        else:
            params[name] = to_plain(value, f"parameter {name!r}")
    fitted: dict[str, Any] = {}
    for name, value in vars(estimator).items():
        if not name.endswith("_") or name.startswith("_"):
            continue
        if _is_plain_array(value):
            arrays[_ARRAY_PREFIX + name] = value
        else:
            fitted[name] = to_plain(value, f"fitted attribute {name!r}")
    cls = type(estimator)
    meta = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "version": __version__,
        "params": params,
        "fitted": fitted,
    }
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_write(path) as tmp:
        np.savez(tmp, **arrays)
    return path


def read_model_info(path: str | os.PathLike) -> dict[str, Any]:
    """Read the class name, harmonix version and parameters stored in a model file.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    dict
        Keys ``class``, ``version``, ``params``, ``fitted``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file not found: '{path}'.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(bytes(data[_META]).decode())
    except (KeyError, ValueError, OSError) as exc:
        raise ValueError(
            f"'{path}' is not a harmonix model file ({exc}); save models with .save()."
        ) from exc


def load_estimator(path: str | os.PathLike, expected: type | None = None) -> Any:
    """Load an estimator written by :func:`save_estimator`.

    Parameters
    ----------
    path : str or path-like
    expected : type, optional
        Raise a ValueError unless the stored estimator is an instance of this class.

    Returns
    -------
    BaseHarmonizer
        The fitted estimator.
    """
    meta = read_model_info(path)
    cls = _harmonix_class(meta["class"], path)
    cls_name = cls.__name__
    if expected is not None and not issubclass(cls, expected):
        raise ValueError(
            f"'{path}' holds a {cls_name}, not a {expected.__name__}; "
            f"load it with {cls_name}.load()."
        )
    params = {k: _from_json(v) for k, v in meta["params"].items()}
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != _META}
    for key, value in arrays.items():
        if key.startswith("param:"):
            params[key[len("param:") :]] = value
    est = cls(**params)
    for name, value in meta["fitted"].items():
        setattr(est, name, _from_json(value))
    for key, value in arrays.items():
        if key.startswith(_ARRAY_PREFIX):
            setattr(est, key[len(_ARRAY_PREFIX) :], value)
    est._saved_version = meta["version"]
    est._complete_loaded()
    return est


def model_file(path: str | os.PathLike) -> Path:
    """The model file a name refers to: the name itself, or completed with ``.npz`` or ``.pt``.

    Parameters
    ----------
    path : str or path-like
        A model file, or a name without suffix as given to ``harmonix fit --out``.

    Returns
    -------
    pathlib.Path
        The existing file.

    Raises
    ------
    FileNotFoundError
        If no model file is found.
    ValueError
        If a name without suffix matches both a ``.npz`` and a ``.pt`` file.
    """
    path = Path(path)
    if not path.is_file() and path.suffix == "":
        found = [path.with_suffix(s) for s in MODEL_SUFFIXES if path.with_suffix(s).is_file()]
        if len(found) > 1:
            raise ValueError(
                f"Both {found[0]} and {found[1]} exist; name the model file with its suffix."
            )
        path = found[0] if found else path
    if not path.is_file():
        raise FileNotFoundError(f"Model file not found: '{path}'.")
    return path


def load_model(path: str | os.PathLike) -> Any:
    """Load any harmonizer saved with its ``save`` method (``.npz`` baselines or IGUANe).

    This is the loader to use when the kind of model is not known in advance (the
    ``harmonix transform`` command uses it).

    Parameters
    ----------
    path : str or path-like
        The model file. A name without suffix, as given to ``harmonix fit --out``, is
        completed with ``.npz`` or ``.pt``, whichever exists.

    Returns
    -------
    BaseHarmonizer
        The fitted harmonizer.

    Raises
    ------
    FileNotFoundError
        If no model file is found.
    ValueError
        If a name without suffix matches both a ``.npz`` and a ``.pt`` file, or the file
        is not a harmonix model.
    """
    path = model_file(path)
    if path.suffix == ".npz":
        try:
            read_model_info(path)
        except ValueError:  # not an npz model: maybe a torch model saved under .npz
            pass
        else:
            return load_estimator(path)
    return _harmonix_class(_torch_model_class(path), path).load(path)


#: harmonix's harmonizer classes by name (:class:`~harmonix.base.BaseHarmonizer` registers
#: its subclasses): how a file written before its class's module moved finds the class.
_CLASSES: dict[str, type] = {}


def register_class(cls: type) -> None:
    """Record a harmonix harmonizer class under its name (the first one of a name stays)."""
    if cls.__module__.startswith("harmonix."):
        _CLASSES.setdefault(cls.__name__, cls)


def _harmonix_class(name: str, path: Path | str | os.PathLike) -> type:
    """The harmonix class a model file names (``module.Class``), imported by its name;
    a file written before its module moved (``harmonix.histogram_matching``, now in
    :mod:`harmonix.intensity`) finds it by its name among the registered harmonizers."""
    module_name, _, cls_name = str(name).rpartition(".")
    if not module_name.startswith("harmonix."):
        raise ValueError(f"'{path}' names class {name!r}, which is not harmonix's.")
    try:
        return getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        if cls_name in _CLASSES:
            return _CLASSES[cls_name]
        raise ValueError(
            f"'{path}' names class {name!r}, which this harmonix {__version__} does not have."
        ) from exc


def _torch_model_class(path: Path) -> str:
    """The class name stored in a model file written with :func:`torch.save`.

    The file is memory-mapped, so the weights are not read here (the class's own ``load``
    reads them).
    """
    import torch  # a baseline-only session never needs torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ValueError(
            f"'{path}' is not a harmonix model file ({reason}); save models with .save()."
        ) from exc
    name = payload.get("class") if isinstance(payload, dict) else None
    if not isinstance(name, str):
        raise ValueError(
            f"'{path}' is not a harmonix model file (no class name stored); "
            "save models with .save()."
        )
    return name
