"""A cheap digest of a sequence of images: did two calls see the same images, in order?

:class:`ImageDigest` hashes, for each image in turn, its shape, a few statistics and a
strided subsample of its voxels (as float32), so it is computed in the pass that already
reads the images, at a small fraction of that pass's cost. Two sequences of the same
images in the same order give the same digest whether the images came as arrays or as
files; another image, a permutation or an edited voxel among the sampled ones gives
another digest. It is a fingerprint, not a cryptographic proof of identity: an edit of
unsampled voxels that keeps the statistics is not seen.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

__all__ = ["ImageDigest"]

#: Voxels sampled per image (regularly spaced in C order).
SAMPLES_PER_IMAGE = 4096


class ImageDigest:
    """Incremental digest of images (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> a, b = np.zeros((4, 4, 4)), np.ones((4, 4, 4))
    >>> d1, d2 = ImageDigest(), ImageDigest()
    >>> _ = d1.update(a).update(b)
    >>> _ = d2.update(b).update(a)
    >>> d1.hexdigest() == d2.hexdigest()
    False
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.n_images = 0

    def update(self, data: Any) -> ImageDigest:
        """Add one image (any array-like of numbers); returns ``self``."""
        arr = np.asarray(data, dtype=np.float32)
        flat = arr.reshape(-1)
        step = max(1, flat.size // SAMPLES_PER_IMAGE)
        sample = np.ascontiguousarray(flat[::step])
        total = float(flat.sum(dtype=np.float64))
        nonzero = int(np.count_nonzero(flat))
        self._hash.update(f"{arr.shape}|{nonzero}|{total:.9g}|".encode())
        self._hash.update(sample.tobytes())
        self.n_images += 1
        return self

    def update_labels(self, labels: Any) -> ImageDigest:
        """Add a sequence of labels (their text, in order); returns ``self``."""
        text = "\x1f".join(str(v) for v in np.asarray(labels).tolist())
        self._hash.update(f"labels|{text}|".encode())
        return self

    def hexdigest(self) -> str:
        """The digest of the images added so far (16 hexadecimal digits)."""
        return self._hash.copy().hexdigest()[:16]
