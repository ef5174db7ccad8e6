"""Image input/output: loading, lazy image collections, atomic saving and manifests.

Every harmonizer accepts the same kinds of image collections (see
:class:`ImageCollection`); this package turns them into one lazy, validated view and
turns results back into the same kind the user passed in.

- :mod:`harmonix.io.files`: reading and writing NIfTI images (``load_img``,
  ``save_imgs``, ``atomic_write``...);
- :mod:`harmonix.io.collection`: :class:`ImageCollection` and :func:`as_collection`;
- :mod:`harmonix.io.manifest`: manifest CSV files (:func:`read_manifest`).
"""

from harmonix.io.collection import ImageCollection, as_collection
from harmonix.io.files import (
    atomic_write,
    load_img,
    load_imgs,
    save_img,
    save_imgs,
    set_display_range,
)
from harmonix.io.manifest import Manifest, read_manifest

__all__ = [
    "ImageCollection",
    "Manifest",
    "as_collection",
    "atomic_write",
    "load_img",
    "load_imgs",
    "read_manifest",
    "save_img",
    "save_imgs",
    "set_display_range",
]
