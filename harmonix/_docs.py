"""Shared parameter and attribute documentation (nilearn's ``fill_doc`` idea).

A parameter that several classes or functions accept is documented once, in
:data:`docdict`, and docstrings name it with a ``%(name)s`` placeholder on a line of its
own, indented like the entry should be::

    @fill_doc
    class MyHarmonizer(BaseHarmonizer):
        \"\"\"...

        Parameters
        ----------
        %(reference_site)s
        %(mask)s
        \"\"\"

:func:`fill_doc` replaces every placeholder by the entry, each line indented like the
placeholder, so the same text renders in methods (8 spaces) and classes (4 spaces).
``docdict`` is a plain module-level dict: modules add their own shared entries to it
before decorating.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

__all__ = ["docdict", "fill_doc"]

T = TypeVar("T", bound=Callable)

docdict: dict[str, str] = {}

docdict["mask"] = """\
mask : ndarray, path or nibabel image, default=None
    Brain mask, of the images' shape; only non-zero voxels inside it are used and
    harmonized, and every voxel outside it is set to 0."""

docdict["brain"] = """\
brain : ndarray of bool of shape (i, j, k), default=None
    Brain voxels; ``data != 0`` when None."""

docdict["reference_site"] = """\
reference_site : hashable, default=None
    Site whose intensity scale the outputs land on; None picks the site with the most
    training images. Compared with the site labels as text (``1`` names site ``"1"``)."""

docdict["random_state"] = """\
random_state : int, numpy.random.Generator or None, default=None
    Seed or generator of every random draw (local generators only; global seeds are
    never touched). The same integer gives the same result."""

docdict["reference_site_"] = """\
reference_site_ : str
    The reference site used (its label as text)."""

docdict["sites_"] = """\
sites_ : ndarray of str
    Sites seen in fit (labels as text, surrounding spaces stripped; sorted)."""

docdict["n_images_"] = """\
n_images_ : int
    Number of training images."""

docdict["mask_"] = """\
mask_ : ndarray of bool or None
    The brain mask used."""

docdict["affine_"] = """\
affine_ : ndarray of shape (4, 4) or None
    With a ``mask``: the voxel-to-world affine of the NIfTI training images (or of a
    NIfTI mask); NIfTI images with another affine are refused. None otherwise."""

docdict["grid_"] = """\
grid_ : dict
    The training images' grid: ``voxel_size`` (mm), ``shape``, ``affine``,
    ``orientation`` (axis codes) and ``brain_voxels``, each None where not known or not
    shared by every training image (see :mod:`harmonix.inputs.grids`)."""

docdict["reference_attributes"] = "\n".join(
    docdict[key] for key in ("reference_site_", "sites_", "n_images_", "mask_", "affine_", "grid_")
)

docdict["grid_mismatch"] = """\
grid_mismatch : {"error", "warn", "ignore"}, default="error"
    What :meth:`transform` does with images whose voxel size or orientation differs from
    the training images' (``grid_``, see :mod:`harmonix.inputs.grids`): raise a ValueError,
    warn (:class:`~harmonix.exceptions.GridMismatchWarning`) and harmonize them anyway,
    or harmonize them silently. :meth:`fit` treats training images that differ among
    themselves alike. Read at transform time: ``set_params(grid_mismatch="warn")`` on a
    fitted model applies at once."""

docdict["covariates"] = """\
covariates : pandas.DataFrame or mapping of str to array-like, default=None
    Per-image biology to keep (one row per image, matched by position): continuous
    columns (numbers) and categorical ones (strings, booleans, pandas categoricals), e.g.
    ``age``, ``sex``, ``diagnosis``. ``ages`` is the short form of an ``age`` column
    (giving both is an error). Missing values, constant columns and columns that the sites
    determine are refused (:mod:`harmonix.inputs.covariates`). Methods that model covariates
    (ComBat) keep their effects; the others document what they do with them."""

docdict["fit_params"] = "\n".join(
    [
        "imgs : 4-D ndarray (n_images, i, j, k), list of 3-D arrays, or list of paths/images",
        "    Skull-stripped images (background 0). Paths are loaded one at a time.",
        "sites : array-like of shape (n_images,)",
        "    Site (scanner) label of each image; at least two distinct sites.",
        "ages : array-like of shape (n_images,), default=None",
        "    Age of each subject, used by methods that keep age effects (the short form",
        "    of an ``age`` covariate).",
        docdict["covariates"],
    ]
)

docdict["covariates_transform"] = """\
covariates : pandas.DataFrame or mapping of str to array-like, default=None
    Covariates of these images, with the columns given to :meth:`fit` (columns the fit
    did not see are ignored); needed by methods that model them (ComBat). A category
    unseen in fit is refused."""

# the "Grid:" note of methods that map each image from its own intensity distribution
docdict["any_grid"] = (
    "images of any grid are harmonized alike; the training grid is recorded (``grid_``) "
    "but never checked."
)

docdict["ignores_covariates"] = """\
**Covariates.** ``ages`` and ``covariates`` are checked like every harmonizer's (same
errors) and otherwise ignored: each image is mapped from its own intensities, which
changes no covariate effect it holds, and transform needs none of them."""

_BLOCK = re.compile(r"^([ \t]*)%\((\w+)\)s[ \t]*$", re.MULTILINE)
_INLINE = re.compile(r"%\((\w+)\)s")


def _entry(name: str, owner: str) -> str:
    try:
        return docdict[name]
    except KeyError:
        raise KeyError(
            f"{owner}'s docstring names %({name})s, which is not in harmonix._docs.docdict; "
            f"add it there or fix the name (known: {sorted(docdict)})."
        ) from None


def fill_doc(obj: T) -> T:
    """Replace the ``%(name)s`` placeholders of ``obj``'s docstring by :data:`docdict` entries.

    A placeholder alone on its line becomes the whole entry, every line indented like the
    placeholder; a placeholder inside a line becomes the entry's text as is.

    Parameters
    ----------
    obj : class or function
        The object to document; its ``__doc__`` is rewritten in place.

    Returns
    -------
    class or function
        ``obj`` itself, so this works as a decorator.

    Raises
    ------
    KeyError
        If a placeholder names no entry of :data:`docdict`.
    """
    doc = obj.__doc__
    if not doc:
        return obj
    owner = getattr(obj, "__qualname__", repr(obj))

    def block(match: re.Match) -> str:
        indent = match.group(1)
        return "\n".join(
            indent + line if line else line for line in _entry(match.group(2), owner).splitlines()
        )

    doc = _BLOCK.sub(block, doc)
    obj.__doc__ = _INLINE.sub(lambda m: _entry(m.group(1), owner), doc)
    return obj
