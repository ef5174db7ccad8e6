"""The Python code blocks of the user guide run as written.

Every ``.. code-block:: python`` of ``docs/user_guide/*.rst`` and ``docs/index.rst`` is
executed, the blocks of one page one after the other in one namespace (like a session),
in a temporary folder. The namespace starts with harmonix's public names and small data
under the names the pages use (``imgs``, ``sites``, ``ages``, ``subjects``, ``new_imgs``,
``new_sites``, ``new_ages``, ``h``, and for covariates ``sexes``, ``diagnoses``,
``covariates``, ``new_covariates``, ``rois``: a table of regional volumes). A block that
cannot run here (a GPU, hours of training) is preceded by a comment
``.. untested: <reason>``, which this test reads. What a page's shell steps would have
left in the folder (bids.rst: a BIDS dataset ``ds/`` with harmonized derivatives;
covariates.rst: ``aseg_volumes.csv``) is made first (``SETUP``).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn

import harmonix

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = [*sorted((DOCS / "user_guide").glob("*.rst")), DOCS / "index.rst"]
_DIRECTIVE = re.compile(r"^\.\. code-block:: python\s*$")
_UNTESTED = re.compile(r"^\.\. untested: (.+)$")


def code_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """``(line number, code, reason it is not run or None)`` of each Python block."""
    lines = page.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if not _DIRECTIVE.match(line):
            continue
        before = [x for x in lines[:i] if x.strip()]
        untested = _UNTESTED.match(before[-1]) if before else None
        j = i + 1
        while j < len(lines) and lines[j].strip().startswith(":"):  # directive options
            j += 1
        body = []
        while j < len(lines) and (not lines[j].strip() or lines[j].startswith("   ")):
            body.append(lines[j])
            j += 1
        code = textwrap.dedent("\n".join(body)).strip("\n")
        blocks.append((i + 1, code, untested.group(1) if untested else None))
    return blocks


def _namespace() -> dict:
    ds = harmonix.make_multisite(n_subjects=5, n_sites=3, resolution=4, random_state=0)
    new = ds.sites == "site2"
    names = {name: getattr(harmonix, name) for name in harmonix.__all__}
    # not functions of the subject (its 5 ages at every site), so a smooth age fits too
    sexes = np.array(list("FMFFMMFMFFFFMMF")).astype(str)
    diagnoses = np.array(["CN", "AD"])[[0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 1, 0]]
    covariates = pd.DataFrame({"age": ds.ages, "sex": sexes, "diagnosis": diagnoses})
    return {
        "sexes": sexes,
        "diagnoses": diagnoses,
        "covariates": covariates,
        "new_covariates": covariates[new][:2],
        "rois": _rois(len(ds.sites)),
        **names,
        "imgs": ds.imgs,
        "sites": ds.sites,
        "ages": ds.ages,
        "subjects": ds.subjects,
        "new_imgs": ds.imgs[new][:2],
        "new_sites": ds.sites[new][:2],
        "new_ages": ds.ages[new][:2],
        "h": harmonix.HistogramMatchingHarmonizer(),
    }


def _rois(n: int) -> pd.DataFrame:
    """A small table of regional volumes (mL), one row per subject of the namespace."""
    rng = np.random.default_rng(0)
    values = rng.normal([4.0, 4.1, 1.2, 1.3], 0.3, size=(n, 4))
    names = ["Left-Hippocampus", "Right-Hippocampus", "Left-Amygdala", "Right-Amygdala"]
    return pd.DataFrame(values, columns=names, index=pd.Index(range(n), name="subject"))


def _roi_table() -> None:
    """``aseg_volumes.csv`` as covariates.rst reads it (features only, a subject index)."""
    _rois(15).to_csv("aseg_volumes.csv")


def _bids_dataset() -> None:
    """``ds/`` as the shell steps of bids.rst leave it: a BIDS dataset (4 mm, synthetic)
    with harmonized derivatives in ``ds/derivatives/harmonix``."""
    bids = pytest.importorskip("bids", reason="bids.rst needs pybids (harmonix[bids])")
    del bids
    from harmonix.bids import transform_manifest_to_bids, write_bids_manifest
    from harmonix.bids.synthetic import write_bids_dataset
    from harmonix.io import read_manifest

    ds = harmonix.make_multisite(n_subjects=3, n_sites=2, resolution=4, random_state=0)
    raw = write_bids_dataset(ds, "ds", n_traveling=1)
    manifest = write_bids_manifest(raw, "manifest.csv", covariates="age")
    man = read_manifest(manifest)
    model = harmonix.HistogramMatchingHarmonizer().fit([str(p) for p in man.paths], man.sites)
    transform_manifest_to_bids(model, manifest, raw / "derivatives" / "harmonix", verbose=False)


#: what a page's earlier steps (shell commands, not run here) leave in the folder
SETUP = {"bids.rst": _bids_dataset, "covariates.rst": _roi_table}


def test_the_pages_have_python_blocks():
    counts = {page.name: len(code_blocks(page)) for page in PAGES}
    assert counts["api_conventions.rst"] >= 3 and sum(counts.values()) >= 10, counts
    untested = [r for page in PAGES for _, _, r in code_blocks(page) if r]
    assert len(untested) <= 3, untested  # a block not run needs a reason, and few do


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_user_guide_code_runs(page, tmp_path, monkeypatch):
    blocks = [b for b in code_blocks(page) if b[2] is None]
    if not blocks:
        pytest.skip(f"{page.name} has no Python block to run")
    monkeypatch.chdir(tmp_path)
    SETUP.get(page.name, lambda: None)()
    namespace = _namespace()
    with sklearn.config_context(), np.errstate(all="ignore"):  # set_config is undone
        for line, code, _ in blocks:
            try:
                exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(
                    f"the code block at {page.name}:{line} fails: {exc!r}\n{code}"
                ) from exc
