"""Sphinx configuration of the harmonix documentation.

Build (warnings are errors; the tutorials matching ``plot_*.py`` are executed)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

Add ``-D plot_gallery=0`` to skip running the tutorials (faster, for editing prose).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # document the checkout even when not installed
sys.path.insert(0, str(DOCS / "_ext"))  # local extensions

from harmonix._version import __version__

# -- Project ---------------------------------------------------------------------------
project = "harmonix"
author = "The harmonix developers"
copyright = "2025, The harmonix developers"
version = __version__
release = __version__

# -- Extensions ------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "cli_help",  # docs/_ext/cli_help.py: ``.. cli-help:: fit`` renders `harmonix fit --help`
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "examples",  # gallery sources: read by sphinx-gallery, which writes auto_examples/
    # sphinx-gallery copies the .py sources next to the generated pages
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.json",
    "auto_examples/*.md5",
]
default_role = "py:obj"
root_doc = "index"

# -- autodoc / autosummary / numpydoc --------------------------------------------------
# API pages are generated into docs/generated/ (git-ignored) at every build.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"inherited-members": False}
autodoc_typehints = "none"  # numpydoc's Parameters sections already give the types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False  # the autosummary class template lists methods
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- intersphinx -----------------------------------------------------------------------
# Links to the numpy, scikit-learn, nibabel and torch documentation need their
# ``objects.inv`` inventories. This documentation is built without network access (here
# and in CI), and Sphinx (9.x, sphinx/ext/intersphinx/_load.py) reports an inventory that
# cannot be fetched with ``LOGGER.warning("failed to reach any of the inventories ...")``
# that carries no warning *type*, so ``suppress_warnings`` cannot silence it and ``-W``
# would fail the build. The mapping is therefore enabled only on request:
#
#   HARMONIX_DOCS_INTERSPHINX=1 sphinx-build ...     (needs internet, or local copies)
#
# Local copies are used first when present: docs/_intersphinx/<name>-objects.inv (e.g.
# downloaded once from <url>/objects.inv). When one location of a project works, Sphinx
# only logs the failures of the others at info level. Without the variable the mapping is
# empty: cross-references to those projects render as plain code text, with no warning
# (``nitpicky`` is off).
_INTERSPHINX_URLS = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "sklearn": "https://scikit-learn.org/stable",
    "nibabel": "https://nipy.org/nibabel",
    "torch": "https://docs.pytorch.org/docs/stable",
}


def _intersphinx_mapping() -> dict[str, tuple[str, tuple[str | None, ...]]]:
    if os.environ.get("HARMONIX_DOCS_INTERSPHINX", "0") != "1":
        return {}
    mapping = {}
    for name, url in _INTERSPHINX_URLS.items():
        local = DOCS / "_intersphinx" / f"{name}-objects.inv"
        locations = (str(local), None) if local.is_file() else (None,)
        mapping[name] = (url, locations)
    return mapping


intersphinx_mapping = _intersphinx_mapping()
intersphinx_timeout = 10

# -- sphinx-gallery --------------------------------------------------------------------
# docs/examples/plot_*.py are executed at build time on tiny synthetic data; other .py
# files there (gpu_training.py, keras_weights.py) are rendered but never run.
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": re.escape(os.sep) + "plot_",
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("harmonix",),
    "backreferences_dir": "generated/backreferences",
    "remove_config_comments": True,
    "download_all_examples": False,
    "run_stale_examples": False,
    "min_reported_time": 0,
    "matplotlib_animations": False,
    "show_memory": False,
}

# -- HTML ------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"harmonix {version}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
}
html_show_sourcelink = True
html_last_updated_fmt = None
