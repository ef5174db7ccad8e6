"""The raw T1 chain with deepbet on a real head: Colin27 from Debian's mricron-data.

The head and its brain (``ch2.nii.gz``, ``ch2bet.nii.gz``) are fetched by ``.ci/run``
(``apt-get download mricron-data``) into ``$HARMONIX_TEST_DATA`` (default
``~/.cache/harmonix-test-data``); without them, or without ``harmonix[preprocess]``, these
tests are skipped. Both files lie in MNI space, so the head is moved first (rotation,
shift, another voxel size, permuted and flipped axes) and the gold mask with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonix.preprocessing import T1Preprocessor, move_scan, rigid_matrix, to_native
from harmonix.preprocessing.qc import qc_numbers
from harmonix.preprocessing.template import FSL_AFFINE, FSL_SHAPE, load_template, resample

DATA = Path(os.environ.get("HARMONIX_TEST_DATA", Path.home() / ".cache" / "harmonix-test-data"))
MOVE = rigid_matrix((10.0, -7.0, 12.0), (15.0, -12.0, 8.0))
GRID = {"zooms": (1.2, 1.0, 1.1), "axcodes": ("P", "I", "R")}


@pytest.fixture(scope="module")
def ch2():
    pytest.importorskip("SimpleITK")
    pytest.importorskip("deepbet")
    if not (DATA / "ch2.nii.gz").is_file() or not (DATA / "ch2bet.nii.gz").is_file():
        pytest.skip(
            f"Colin27 test head not found in {DATA}: run `apt-get download mricron-data && "
            "dpkg -x mricron-data_*.deb x` and copy x/usr/share/mricron/templates/ch2*.nii.gz "
            "there (or set HARMONIX_TEST_DATA); .ci/run does it."
        )
    head, bet = nib.load(DATA / "ch2.nii.gz"), nib.load(DATA / "ch2bet.nii.gz")
    gold = nib.Nifti1Image((bet.get_fdata() > 0).astype(np.float32), bet.affine)
    moved = move_scan(head, MOVE, **GRID)
    moved_gold = move_scan(gold, MOVE, order=1, **GRID).get_fdata() > 0.5
    result = T1Preprocessor().run(moved)
    return moved, moved_gold, bet, result


def test_native_mask_matches_the_moved_bet_brain(ch2):
    moved, gold, _, result = ch2
    mask = result.native_mask.get_fdata() > 0
    assert result.native_mask.shape == moved.shape
    np.testing.assert_allclose(result.native_mask.affine, moved.affine)
    dice = 2 * (mask & gold).sum() / (mask.sum() + gold.sum())
    assert dice >= 0.93, dice


def test_output_is_iguane_ready_and_registered(ch2):
    _, _, bet, result = ch2
    assert result.image.shape == (160, 192, 160)
    np.testing.assert_allclose(result.image.affine[:3, :3], FSL_AFFINE[:3, :3])
    brain = np.asarray(result.mask.dataobj) > 0
    assert np.median(result.image.get_fdata()[brain]) == pytest.approx(500.0, rel=1e-3)
    template = load_template()
    in_place = resample(bet.get_fdata(dtype=np.float32), bet.affine, FSL_AFFINE, FSL_SHAPE)
    reference = qc_numbers(in_place, in_place > 0, template, 0.0)["template_ncc"]
    assert result.qc["template_ncc"] >= 0.9 * reference, (result.qc, reference)
    assert result.qc["flags"] == []
    # Colin27 sits close to ICBM152 2009a: template -> native is close to the move
    pts = np.argwhere(template.mask)[::50]
    pts = FSL_AFFINE @ np.c_[pts, np.ones(len(pts))].T
    error = np.linalg.norm((result.transform.matrix @ pts - MOVE @ pts)[:3], axis=0)
    assert error.mean() < 3.0, error.mean()


def test_way_back_matches_the_skull_stripped_input(ch2):
    moved, _, _, result = ch2
    back = to_native(result.image, result.transform, mask=result.native_mask).get_fdata()
    inside = (result.native_mask.get_fdata() > 0) & (back > 0)
    r = np.corrcoef(back[inside], moved.get_fdata()[inside])[0, 1]
    assert r >= 0.95, r


@pytest.mark.slow
def test_noise_volume_is_refused_or_flagged(ch2):
    moved = ch2[0]
    noise = nib.Nifti1Image(
        np.random.default_rng(0).random(moved.shape).astype(np.float32) * 100, moved.affine
    )
    try:
        result = T1Preprocessor().run(noise)
    except ValueError as exc:
        assert "No brain found" in str(exc)
    else:
        assert result.qc["flags"], result.qc
