"""The raw T1 chain on a synthetic head: geometry, the way back, QC, bad inputs, files.

The head is a skull shell around a ``make_multisite`` brain, moved by a known rigid
transform onto a permuted, flipped, anisotropic grid. A threshold brain extractor stands
in for deepbet (tested on a real head in test_preprocessing_ch2.py), so only SimpleITK is
needed here.
"""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from harmonix.cli import main
from harmonix.datasets import make_multisite
from harmonix.io import read_manifest
from harmonix.preprocessing import (
    PreprocessResult,
    T1Preprocessor,
    TemplateTransform,
    crop_or_pad,
    move_scan,
    preprocess_files,
    restore_grid,
    rigid_matrix,
    to_native,
)
from harmonix.preprocessing._optional import require
from harmonix.preprocessing.qc import (
    QC_FAIL_LIMITS,
    QC_LIMITS,
    QCFailedError,
    failures,
    flag_outliers,
    flags,
)
from harmonix.preprocessing.steps import (
    itk_seed,
    n4_correct,
    register_rigid,
    within_field_of_view,
)
from harmonix.preprocessing.template import FSL_AFFINE, load_template, resample

MOVE = rigid_matrix((8.0, -6.0, 11.0), (12.0, -15.0, 9.0))
GRID = {"zooms": (2.2, 2.0, 2.4), "axcodes": ("P", "I", "R")}


def skull_extractor(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Brain = inside the bright skull shell, not skull, not background."""
    skull = data > 0.6 * data.max()
    inside = ndimage.binary_fill_holes(ndimage.binary_closing(skull, iterations=2))
    brain = inside & ~ndimage.binary_dilation(skull, iterations=1) & (data > 0)
    labels, n = ndimage.label(brain)
    if n == 0:
        return brain
    sizes = ndimage.sum(brain, labels, range(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))


def _synthetic_head(stem_mm: float = 0.0) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """A skull and scalp around a synthetic brain (MNI space, 2 mm voxels).

    ``stem_mm`` extends the brain's lowest slice downwards (a longer brainstem), below
    FSL's field of view (z from -72 mm).
    """
    ds = make_multisite(n_subjects=1, n_sites=2, resolution=2.0, random_state=0)
    pad = 8 + int(stem_mm / 2)
    brain = np.pad(ds.imgs[0], pad).astype(np.float32)
    mask = np.pad(ds.masks[0], pad)
    if stem_mm:
        lowest = int(np.flatnonzero(mask.any(axis=(0, 1)))[0])
        for k in range(lowest - int(stem_mm / 2), lowest):
            mask[..., k] = mask[..., lowest]
            brain[..., k] = brain[..., lowest]
    affine = ds.affine.copy()
    affine[:3, 3] -= ds.affine[:3, :3] @ np.full(3, pad)
    median = float(np.median(brain[mask]))
    dist = ndimage.distance_transform_edt(~mask) * 2.0  # mm
    head = np.where(mask, brain, 0.0)
    head[(dist > 4) & (dist <= 10)] = 2.5 * median  # skull
    head[(dist > 10) & (dist <= 14)] = 0.7 * median  # scalp
    return (
        nib.Nifti1Image(head.astype(np.float32), affine),
        nib.Nifti1Image(mask.astype(np.float32), affine),
    )


#: Background voxels of the moved head set below 0 (as some reconstructions leave them).
NEGATIVE_FRACTION = 0.004


def _with_negative_background(img: nib.Nifti1Image) -> nib.Nifti1Image:
    data = img.get_fdata(dtype=np.float32)
    rng = np.random.default_rng(1)
    picked = (data == 0) & (rng.random(data.shape) < NEGATIVE_FRACTION / np.mean(data == 0))
    data[picked] = -3.0
    return nib.Nifti1Image(data, img.affine)


@pytest.fixture(scope="module")
def moved():
    """The moved head, its moved brain mask (gold) and the chain's result."""
    pytest.importorskip("SimpleITK")
    head, mask = _synthetic_head()
    moved_head = _with_negative_background(move_scan(head, MOVE, **GRID))
    moved_head = nib.Nifti1Image.from_bytes(moved_head.to_bytes())  # as read from a file
    gold = move_scan(mask, MOVE, order=1, **GRID).get_fdata() > 0.5
    with pytest.warns(UserWarning, match=r"0\.4\d\d% negative voxels .* sets them to 0"):
        result = T1Preprocessor(brain_extractor=skull_extractor).run(moved_head)
    return moved_head, gold, result


# -- the chain on a moved synthetic head ---------------------------------------------------
def test_output_grid_intensities_and_qc(moved):
    _, _, result = moved
    img = result.image
    assert img.shape == (160, 192, 160)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine[:3, :3], FSL_AFFINE[:3, :3])
    # the crop is a whole-voxel shift of the FSL grid
    offset = np.linalg.solve(FSL_AFFINE, img.affine)[:3, 3]
    np.testing.assert_allclose(offset, np.round(offset), atol=1e-9)
    data = img.get_fdata()
    brain = np.asarray(result.mask.dataobj) > 0
    assert np.median(data[brain]) == pytest.approx(500.0, rel=1e-3)
    assert (data[~brain] == 0).all() and (data >= 0).all()
    # the window is centred on the brain
    box = [
        np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)
    ]
    for n, idx in zip(img.shape, box):
        assert abs((idx[0] + idx[-1] + 1) / 2 - n / 2) <= 1
    assert result.qc["flags"] == []
    assert result.qc["template_dice"] > 0.9
    assert result.qc["negative_fraction"] == pytest.approx(NEGATIVE_FRACTION, rel=0.1)
    assert result.qc["output_shape"] == "160x192x160"
    assert set(result.timings) == {
        "reorient",
        "brain_extraction",
        "n4",
        "registration",
        "resample",
    }


def test_registration_recovers_the_move(moved):
    _, _, result = moved
    # the synthetic brain lies in MNI space: template -> native is the move itself
    brain = np.argwhere(np.asarray(result.mask.dataobj) > 0)[::20]
    points = result.image.affine @ np.c_[brain, np.ones(len(brain))].T
    error = np.linalg.norm((result.transform.matrix @ points - MOVE @ points)[:3], axis=0)
    assert error.mean() < 1.5, error.mean()  # mm; the subject differs from the template
    assert error.max() < 3.0, error.max()


def test_native_mask_lies_on_the_input_grid(moved):
    head, gold, result = moved
    native = result.native_mask
    assert native.shape == head.shape
    np.testing.assert_allclose(native.affine, head.affine)
    mask = native.get_fdata() > 0
    dice = 2 * (mask & gold).sum() / (mask.sum() + gold.sum())
    assert dice > 0.95, dice
    assert result.qc["mask_volume_ml"] == pytest.approx(
        mask.sum() * np.prod(GRID["zooms"]) / 1000, rel=1e-3
    )


def test_way_back_to_native_space(moved, tmp_path):
    head, _, result = moved
    back = to_native(result.image, result.transform, mask=result.native_mask)
    assert back.shape == head.shape
    np.testing.assert_allclose(back.affine, head.affine)
    inside = (result.native_mask.get_fdata() > 0) & (back.get_fdata() > 0)
    r = np.corrcoef(back.get_fdata()[inside], head.get_fdata()[inside])[0, 1]
    assert r >= 0.95, r
    outside = result.native_mask.get_fdata() == 0
    assert (back.get_fdata()[outside] == 0).all()
    rescaled = result.transform.to_native(result.image, rescale=True)
    # N4's field is normalized inside the brain: the raw scan's scale comes back
    raw = head.get_fdata()
    ratio = rescaled.get_fdata()[inside & (raw > 0)] / raw[inside & (raw > 0)]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.02), np.median(ratio)
    np.testing.assert_allclose(
        rescaled.get_fdata() * result.transform.scale,
        result.transform.to_native(result.image).get_fdata(),
        rtol=1e-4,
        atol=1e-3,
    )
    # from files, as the CLI writes them
    paths = result.save(tmp_path, "sub")
    again = to_native(paths["image"], paths["json"], mask=paths["native_mask"])
    np.testing.assert_allclose(again.get_fdata(), back.get_fdata(), atol=1e-3)


def test_to_template_inverts_to_native(moved):
    head, _, result = moved
    there = result.transform.to_template(head)
    assert there.shape == result.image.shape
    brain = np.asarray(result.mask.dataobj) > 0
    r = np.corrcoef(there.get_fdata()[brain], result.image.get_fdata()[brain])[0, 1]
    assert r > 0.95, r
    with pytest.raises(ValueError, match="native_mask"):
        result.transform.to_native(result.image, mask=result.mask)


def test_save_writes_every_file_and_the_transform_round_trips(moved, tmp_path):
    _, _, result = moved
    paths = result.save(tmp_path / "out", "sub-01")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["sub-01_prep.nii.gz", "sub-01_native_mask.nii.gz", "sub-01_prep.json", "sub-01_qc.png"]
    )
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(paths["json"].read_text())
    assert saved["qc"] == result.qc
    assert set(saved) == {"transform", "qc"}  # no seconds: the same result, the same bytes
    back = TemplateTransform.load(paths["json"])
    np.testing.assert_allclose(back.matrix, result.transform.matrix)
    assert back == TemplateTransform.from_dict(result.transform.to_dict())
    assert nib.load(paths["image"]).shape == (160, 192, 160)


# -- registration: any head orientation, the same result every run -------------------------
@pytest.fixture(scope="module")
def brain_2mm():
    """The synthetic brain (MNI space), the template on a 2 mm grid (a fast registration
    target) and the brain's registration in place (the reference of the errors below)."""
    pytest.importorskip("SimpleITK")
    ds = make_multisite(n_subjects=1, n_sites=2, resolution=2.0, random_state=0)
    brain = nib.Nifti1Image(np.where(ds.masks[0], ds.imgs[0], 0).astype(np.float32), ds.affine)
    template = load_template()
    affine = template.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    fixed = resample(template.data, template.affine, affine, (91, 109, 91))
    in_place = register_rigid(brain.get_fdata(dtype=np.float32), brain.affine, fixed, affine)
    return brain, fixed, affine, in_place


def _mean_error_mm(matrix: np.ndarray, truth: np.ndarray) -> float:
    template = load_template()
    points = np.argwhere(template.mask)[::50]
    points = template.affine @ np.c_[points, np.ones(len(points))].T
    return float(np.linalg.norm((matrix @ points - truth @ points)[:3], axis=0).mean())


@pytest.mark.parametrize(
    ("rotation", "shift"),
    [((30.0, 0.0, 15.0), (20.0, 0.0, 0.0)), ((0.0, -45.0, 0.0), (-40.0, 0.0, 25.0))],
    ids=["30-0-15deg-20mm", "yaw-45deg-47mm"],
)
def test_registration_finds_tilted_heads(brain_2mm, rotation, shift):
    brain, fixed, affine, in_place = brain_2mm
    move = rigid_matrix(rotation, shift)
    moved = move_scan(brain, move, **GRID)
    matrix = register_rigid(moved.get_fdata(dtype=np.float32), moved.affine, fixed, affine)
    assert _mean_error_mm(matrix, move @ in_place) < 0.5  # goal 1 mm


def test_registration_without_pose_search_fails_on_tilted_heads(brain_2mm):
    """What the pose search is for: from the centres of mass alone, 30 degrees is too far."""
    brain, fixed, affine, in_place = brain_2mm
    move = rigid_matrix((30.0, 0.0, 15.0), (20.0, 0.0, 0.0))
    moved = move_scan(brain, move, **GRID)
    data = moved.get_fdata(dtype=np.float32)
    matrix = register_rigid(data, moved.affine, fixed, affine, pose_search=False)
    assert _mean_error_mm(matrix, move @ in_place) > 10.0


def test_registration_and_n4_are_reproducible(brain_2mm):
    brain, fixed, affine, _ = brain_2mm
    data = brain.get_fdata(dtype=np.float32)
    runs = [register_rigid(data, brain.affine, fixed, affine, random_state=3) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    other = register_rigid(data, brain.affine, fixed, affine, random_state=4)
    assert not np.array_equal(other, runs[0])  # the seed drives the sampling
    assert _mean_error_mm(other, runs[0]) < 0.2
    mask = data > 0
    field = np.exp(np.linspace(-0.3, 0.3, data.shape[0]))[:, None, None]
    corrected = [n4_correct(data * field, brain.affine, mask) for _ in range(2)]
    np.testing.assert_array_equal(corrected[0], corrected[1])
    # the field is normalized inside the mask: the brain keeps its scale
    assert np.median(corrected[0][mask]) == pytest.approx(np.median(data[mask]), rel=0.03)


def test_itk_seed_is_never_the_wall_clock():
    assert itk_seed(0) == 1 and itk_seed(41) == 42
    with pytest.raises(TypeError, match="int"):
        itk_seed(1.5)
    with pytest.raises(ValueError, match="random_state"):
        itk_seed(-1)


# -- orientation, grid, QC refusals --------------------------------------------------------
class StopChain(Exception):
    """Raised by a brain extractor that records what the chain gave it."""


def _recording_extractor(seen: dict):
    def extractor(data, affine):
        seen["data"], seen["affine"] = data, affine
        raise StopChain

    return extractor


def test_orientation_less_scans_are_refused_or_assumed(tmp_path):
    data = np.random.default_rng(0).random((30, 32, 34)).astype(np.float32)
    img = nib.Nifti1Image(data, None)
    img.header.set_zooms((1.0, 1.2, 1.4))
    assert int(img.header["sform_code"]) == int(img.header["qform_code"]) == 0
    with pytest.raises(ValueError, match="no orientation .*assume_orientation"):
        T1Preprocessor(brain_extractor=skull_extractor).run(img)
    path = tmp_path / "flat.nii.gz"
    nib.save(img, path)
    with pytest.raises(ValueError, match=r"'.*flat.nii.gz' has no orientation \(NIfTI sform"):
        T1Preprocessor(brain_extractor=skull_extractor).run(path)
    seen: dict = {}
    chain = T1Preprocessor(brain_extractor=_recording_extractor(seen), assume_orientation="las")
    with pytest.raises(StopChain):
        chain.run(path)
    # LAS: the first voxel axis points left, so the standard (RAS) image is flipped along it
    np.testing.assert_array_equal(seen["data"], data[::-1])
    np.testing.assert_allclose(np.diag(seen["affine"])[:3], [1.0, 1.2, 1.4])
    for bad in ("RRS", "LA", "XYZ"):
        with pytest.raises(ValueError, match="assume_orientation must name one direction"):
            T1Preprocessor(assume_orientation=bad).run(path)
    # a scan with an orientation keeps it
    seen.clear()
    oriented = nib.Nifti1Image(data, np.diag([-1.0, 1.2, 1.4, 1.0]))
    with pytest.raises(StopChain):
        chain.run(oriented)
    np.testing.assert_array_equal(seen["data"], data[::-1])


def test_brain_beyond_the_fsl_grid_is_kept_and_fallback_flagged(moved, monkeypatch, caplog):
    """A brainstem 16 mm longer: below FSL's field of view and too tall for 160 voxels."""
    import harmonix.preprocessing.chain as chain_module

    head, mask = (move_scan(img, MOVE, **GRID) for img in _synthetic_head(stem_mm=16.0))
    gold = nib.as_closest_canonical(mask).get_fdata() > 0.5  # as the extractor sees it
    matrix = moved[2].transform.matrix  # the same anatomy above the stem
    monkeypatch.setattr(chain_module, "register_rigid", lambda *a, **k: matrix)
    chain = T1Preprocessor(brain_extractor=lambda data, affine: gold, n4=False)
    with caplog.at_level("WARNING", logger="harmonix.preprocessing.chain"):
        result = chain.run(head)
    assert result.image.shape == (176, 208, 176)
    assert result.qc["output_shape"] == "176x208x176"
    assert "fallback_grid" in result.qc["flags"]
    assert "does not fit 160x192x160" in caplog.text
    brain = np.argwhere(np.asarray(result.mask.dataobj) > 0)
    lowest = (result.image.affine @ np.r_[brain[:, 2].min() * np.eye(3)[2], 1.0])[2]
    assert lowest < -72 - 10  # FSL's grid starts at z = -72 mm: the stem is kept
    assert len(brain) / 1000 == pytest.approx(result.qc["mask_volume_ml"], rel=0.01)
    np.testing.assert_allclose(result.image.affine[:3, :3], FSL_AFFINE[:3, :3])


def test_within_field_of_view_drops_made_up_brain_only():
    """Mask voxels more than reach_mm from any signal go; sulci and partial volumes stay."""
    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # 2 mm along k
    data = np.zeros((30, 30, 30), np.float32)
    data[5:25, 5:25, 10:25] = 100.0  # acquired slices: k = 10..24
    data[14:16, 5:25, 12:25] = 0.0  # a 2-voxel zero slit (a stripped sulcus)
    mask = np.zeros(data.shape, bool)
    mask[8:22, 8:22, 2:22] = True  # reaches 8 slices (16 mm) below the first one
    out = within_field_of_view(mask, data, affine, reach_mm=2.0)
    np.testing.assert_array_equal(out[..., 9:], mask[..., 9:])  # 1 slice = 2 mm kept
    assert not out[..., :9].any()
    np.testing.assert_array_equal(out[14:16, 8:22, 12:22], True)  # the slit: 1 mm from data
    wide = within_field_of_view(mask, data, affine, reach_mm=4.0)
    assert wide[..., 8].all() == mask[..., 8].all() and not wide[..., :8].any()
    np.testing.assert_array_equal(within_field_of_view(mask, data + 1.0, affine), mask)
    assert not within_field_of_view(mask, np.zeros_like(data), affine).any()
    with pytest.raises(ValueError, match="reach_mm must be >= 0"):
        within_field_of_view(mask, data, affine, reach_mm=-1.0)


def test_brain_beyond_the_field_of_view_is_dropped_but_a_real_one_is_refused(moved, monkeypatch):
    """A mask with a 40 mm brainstem below the template grid's margin: refused when the
    scan shows it (a failed extraction or registration), kept without the stem when the
    scan's field of view ends above it (zeros: nothing was measured there), as deepbet
    does on a tilted scan resliced to the scanner's axes."""
    import harmonix.preprocessing.chain as chain_module

    head, mask = (move_scan(img, MOVE, **GRID) for img in _synthetic_head(stem_mm=40.0))
    gold = nib.as_closest_canonical(mask).get_fdata() > 0.5
    matrix = moved[2].transform.matrix  # the same anatomy above the stem
    monkeypatch.setattr(chain_module, "register_rigid", lambda *a, **k: matrix)
    chain = T1Preprocessor(brain_extractor=lambda data, affine: gold, n4=False)
    with pytest.raises(ValueError, match="reaches the edge of the template grid"):
        chain.run(head)

    # the field of view ends at the stem's top: an oblique plane in the scan's voxels
    cut = -70.0  # mm, template world (z): the unmoved brain ends at -68, the stem at -108
    ijk = np.indices(head.shape).reshape(3, -1)
    world = np.linalg.inv(MOVE) @ head.affine @ np.r_[ijk, np.ones((1, ijk.shape[1]))]
    data = head.get_fdata(dtype=np.float32)
    data[(world[2] < cut).reshape(head.shape)] = 0.0
    result = chain.run(nib.Nifti1Image(data, head.affine))
    brain = np.argwhere(np.asarray(result.mask.dataobj) > 0)
    lowest = (result.image.affine @ np.r_[brain[:, 2].min() * np.eye(3)[2], 1.0])[2]
    assert cut - 2.0 - 2.4 - 1.0 <= lowest < cut  # 2 mm reach, a voxel, resampling
    native = np.asarray(result.native_mask.dataobj) > 0
    assert native.sum() < gold.sum()


def _sphere(radius_mm: float = 70.0, voxel: float = 2.0) -> nib.Nifti1Image:
    """A water sphere in a shell (a phantom), with noise."""
    n = int((2 * radius_mm + 40) / voxel)
    dist = np.sqrt(((np.indices((n, n, n)) - (n - 1) / 2) ** 2).sum(axis=0)) * voxel
    rng = np.random.default_rng(0)
    data = np.where(dist <= radius_mm, 800.0, 0.0) + np.abs(rng.normal(0, 20, dist.shape))
    data[(dist > radius_mm + 4) & (dist <= radius_mm + 10)] = 2000.0  # a bright shell
    return nib.Nifti1Image(data.astype(np.float32), np.diag([voxel, voxel, voxel, 1.0]))


def test_phantom_fails_qc_and_is_left_out(tmp_path):
    path = tmp_path / "phantom.nii.gz"
    nib.save(_sphere(), path)
    chain = T1Preprocessor(brain_extractor=skull_extractor, n4=False)
    table = preprocess_files([path], tmp_path / "out", preprocessor=chain, verbose=False)
    row = table.loc[0]
    assert row["status"] == "failed"
    assert row["error"].startswith("QC failed (template_ncc<")
    low = QC_FAIL_LIMITS["template_ncc"][0]
    assert row["template_ncc"] < low
    # its volume (1437 ml, plus the rim the extractor keeps) does not refuse it by itself
    volume_low, volume_high = QC_FAIL_LIMITS["mask_volume_ml"]
    assert 1300 < row["mask_volume_ml"] < 1700 and volume_low < 1300 < 1700 < volume_high
    assert list((tmp_path / "out").iterdir()) == []


# -- the same bytes, whatever the route ------------------------------------------------------
def test_outputs_are_byte_identical_api_and_parallel(moved, tmp_path):
    head, _, result = moved
    nib.save(head, tmp_path / "sub.nii.gz")
    api = result.save(tmp_path / "api", "sub")
    chain = T1Preprocessor(brain_extractor=skull_extractor)
    table = preprocess_files(
        [tmp_path / "sub.nii.gz"],
        tmp_path / "parallel",
        preprocessor=chain,
        n_jobs=2,
        verbose=False,
    )
    assert table["status"].tolist() == ["done"]
    for name, path in api.items():
        other = tmp_path / "parallel" / path.name
        assert other.read_bytes() == path.read_bytes(), name


# -- bad input ---------------------------------------------------------------------------
def _img(data: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.diag([2.0, 2, 2, 1]))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.ones((40, 40)), "a 2-D image"),
        (np.ones((40, 40, 40, 2)), "3-D"),
        (np.zeros((40, 40, 40)), "empty"),
        (np.full((40, 40, 40), 7.0), "constant"),
        (np.ones((40, 40, 3)), "at least 16"),
        (np.where(np.eye(40, dtype=bool)[..., None], np.nan, 1.0) * np.ones((40, 40, 40)), "NaN"),
        (np.random.default_rng(0).random((48, 48, 48)), "No brain found"),
    ],
    ids=["2d", "4d", "empty", "constant", "tiny", "nan", "noise"],
)
def test_bad_scans_raise_clear_errors(data, match, tmp_path):
    chain = T1Preprocessor(brain_extractor=skull_extractor)
    with pytest.raises(ValueError, match=match):
        chain.run(_img(data))
    path = tmp_path / "scan.nii.gz"
    nib.save(_img(data), path)
    table = preprocess_files([path], tmp_path / "out", preprocessor=chain, verbose=False)
    assert table.loc[0, "status"] == "failed"
    assert match.lower() in table.loc[0, "error"].lower()
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written


def test_single_volume_4d_is_accepted():
    data = np.zeros((40, 40, 40, 1), np.float32)
    with pytest.raises(ValueError, match="No brain found"):  # got past the shape check
        T1Preprocessor(brain_extractor=skull_extractor).run(
            _img(data + 1.0 + (np.arange(40)[:, None, None, None] > 20))
        )


def test_bad_brain_extractor():
    img = _img(np.random.default_rng(0).random((32, 32, 32)) + 1)
    with pytest.raises(ValueError, match="mask of the image's shape"):
        T1Preprocessor(brain_extractor=lambda d, a: np.ones((2, 2, 2), bool)).run(img)
    with pytest.raises(ValueError, match="'deepbet' or a callable"):
        T1Preprocessor(brain_extractor="bet").run(img)


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(ImportError, match=r'pip install "harmonix\[preprocess\]"'):
        require("SimpleITK", "Rigid registration")


# -- QC ----------------------------------------------------------------------------------
def test_flags_use_the_limits():
    good = {
        "mask_volume_ml": 1400.0,
        "template_ncc": 0.6,
        "template_dice": 0.95,
        "negative_fraction": 0.0,
    }
    assert flags(good) == [] and failures(good) == []
    assert flags({**good, "mask_volume_ml": 700.0}) == ["mask_volume_ml<800"]
    assert flags({**good, "template_ncc": 0.4}) == ["template_ncc<0.45"]
    assert flags({**good, "negative_fraction": 0.02}) == ["negative_fraction>0.01"]
    assert set(QC_LIMITS) == set(good)
    # the hard limits: beyond them a scan fails; each lies beyond the soft one
    assert failures({**good, "template_ncc": 0.4}) == []
    for name, (low, high) in QC_FAIL_LIMITS.items():
        soft_low, soft_high = QC_LIMITS[name]
        assert low < soft_low and high >= soft_high
        assert failures({**good, name: low - 0.01}) == [f"{name}<{low:g}"]


def test_batch_outliers_are_flagged():
    table = pd.DataFrame(
        {
            "mask_volume_ml": [1400, 1420, 1380, 1410, 1390, 1405, 2000],
            "template_ncc": [0.60, 0.61, 0.62, 0.60, 0.59, 0.61, 0.60],
            "template_dice": [0.95] * 7,
            "flags": [""] * 6 + ["x"],
        }
    )
    out = flag_outliers(table)
    assert out["flagged"].tolist() == [False] * 6 + [True]
    assert out.loc[6, "flags"] == "x;mask_volume_ml outlier"
    assert not flag_outliers(table.iloc[:4])["flagged"].any()  # too few to judge


def test_crop_centred_on_brain():
    img = np.zeros((182, 218, 182), np.float32)
    img[10:110, 30:150, 40:120] = 1.0
    out, change = crop_or_pad(img, center="brain")
    assert out.shape == (160, 192, 160) and out.sum() == img.sum()
    assert change.offsets == (-20, -6, 0)
    np.testing.assert_array_equal(restore_grid(out, change), img)
    with pytest.raises(ValueError, match="center"):
        crop_or_pad(img, center="middle")


# -- files and the CLI (a fake chain: the plumbing, not the images) -----------------------
class FakePreprocessor(T1Preprocessor):
    """Returns the scan itself as the result; empty scans fail."""

    calls = 0
    last = None

    def run(self, img):
        FakePreprocessor.calls += 1
        FakePreprocessor.last = self
        img = nib.load(img)
        data = img.get_fdata(dtype=np.float32)
        if data.max() == 0:
            raise ValueError("The scan is empty (no positive voxel); check the file.")
        mask = nib.Nifti1Image((data > 0).astype(np.uint8), img.affine)
        qc = {"mask_volume_ml": float(data.sum()), "template_ncc": 0.6, "template_dice": 0.95}
        qc["flags"] = flags(qc)
        eye = np.eye(4)
        return PreprocessResult(
            nib.Nifti1Image(data, img.affine),
            mask,
            mask,
            TemplateTransform(eye, data.shape, img.affine, data.shape, img.affine, 1.0),
            qc,
            {"all": 0.0},
        )


def _raw_dataset(tmp_path, volumes=(1400, 1410, 1390, 1405, 1395, 3000), empty=1):
    rows = []
    for i, volume in enumerate(volumes):
        data = np.zeros((20, 20, 20), np.float32)
        data[5:15, 5:15, 5:15] = volume / 1000.0
        nib.save(_img(data), tmp_path / f"sub-{i}.nii.gz")
        rows.append((f"sub-{i}.nii.gz", "A" if i % 2 else "B", 20.0 + i))
    for j in range(empty):
        nib.save(_img(np.zeros((20, 20, 20))), tmp_path / f"bad-{j}.nii")
        rows.append((f"bad-{j}.nii", "A", 50.0))
    pd.DataFrame(rows, columns=["path", "site", "age"]).to_csv(tmp_path / "raw.csv", index=False)
    return tmp_path / "raw.csv"


@pytest.fixture
def fake_chain(monkeypatch):
    import harmonix.preprocessing as prep
    import harmonix.preprocessing._optional as optional

    monkeypatch.setattr(prep, "T1Preprocessor", FakePreprocessor)
    monkeypatch.setattr(optional, "require", lambda module, purpose: None)
    FakePreprocessor.calls = 0


def test_cli_preprocess_writes_outputs_prints_flags_and_resumes(fake_chain, tmp_path, capsys):
    raw = _raw_dataset(tmp_path)
    out = tmp_path / "prep"
    assert main(["preprocess", "--manifest", str(raw), "--out", str(out), "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "QC flagged:" in printed and "sub-5.nii.gz: mask_volume_ml>2300" in printed
    assert "failed:" in printed and "bad-0.nii: The scan is empty" in printed
    assert "sub-0.nii.gz" not in printed
    man = read_manifest(out / "manifest.csv")
    assert [p.name for p in man.paths] == [f"sub-{i}_prep.nii.gz" for i in range(6)]
    assert man.sites.tolist() == ["B", "A", "B", "A", "B", "A"]
    np.testing.assert_allclose(man.ages, 20.0 + np.arange(6))
    qc = pd.read_csv(out / "qc.csv")
    assert qc["status"].tolist() == ["done"] * 6 + ["failed"]
    assert not any(p.name.startswith("bad-0") for p in out.iterdir())
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary left
    assert FakePreprocessor.calls == 7
    # resume: finished scans are skipped, the failed one is tried again
    stamp = (out / "sub-0_prep.nii.gz").stat().st_mtime_ns
    assert main(["preprocess", "--manifest", str(raw), "--out", str(out), "-q"]) == 1
    assert FakePreprocessor.calls == 8
    assert (out / "sub-0_prep.nii.gz").stat().st_mtime_ns == stamp
    qc = pd.read_csv(out / "qc.csv")
    assert qc["status"].tolist() == ["skipped"] * 6 + ["failed"]
    assert qc.loc[5, "flagged"]  # flags survive a resume
    assert "QC flagged:" in capsys.readouterr().out
    # an interrupted scan (no image yet) is redone
    (out / "sub-1_prep.nii.gz").unlink()
    main(["preprocess", "--manifest", str(raw), "--out", str(out), "-q"])
    assert pd.read_csv(out / "qc.csv").loc[1, "status"] == "done"


def test_cli_preprocess_parallel_and_overwrite(fake_chain, tmp_path):
    raw = _raw_dataset(tmp_path, volumes=(1400, 1500), empty=0)
    out = tmp_path / "prep"
    assert (
        main(
            [
                "preprocess",
                "--manifest",
                str(raw),
                "--out",
                str(out),
                "-q",
                "--n-jobs",
                "2",
                "--no-qc-png",
            ]
        )
        == 0
    )
    assert not list(out.glob("*.png"))
    assert (
        main(["preprocess", "--manifest", str(raw), "--out", str(out), "-q", "--overwrite"]) == 0
    )
    assert pd.read_csv(out / "qc.csv")["status"].tolist() == ["done", "done"]
    assert len(list(out.glob("*_qc.png"))) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--manifest", "{tmp}/absent.csv"], "Manifest not found"),
        (["--manifest", "{tmp}/nosite.csv"], "lacks column"),
        (["--manifest", "{tmp}/raw.csv", "--n-jobs", "0"], "--n-jobs"),
    ],
    ids=["missing-manifest", "no-site-column", "zero-jobs"],
)
def test_cli_preprocess_errors(fake_chain, tmp_path, capsys, args, message):
    _raw_dataset(tmp_path, volumes=(1400,), empty=0)
    pd.DataFrame({"path": ["sub-0.nii.gz"]}).to_csv(tmp_path / "nosite.csv", index=False)
    argv = ["preprocess", "--out", str(tmp_path / "prep")]
    argv += [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("harmonix preprocess: error:") and message in err


def test_cli_refuses_scans_without_orientation(tmp_path, capsys):
    """The real chain: the refusal comes before any heavy step."""
    pytest.importorskip("deepbet")
    data = np.random.default_rng(0).random((30, 32, 34)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, None), tmp_path / "flat.nii.gz")
    pd.DataFrame({"path": ["flat.nii.gz"], "site": ["A"]}).to_csv(tmp_path / "raw.csv")
    out = tmp_path / "prep"
    argv = ["-q", "preprocess", "--manifest", str(tmp_path / "raw.csv"), "--out", str(out)]
    assert main(argv) == 1
    assert "flat.nii.gz' has no orientation" in capsys.readouterr().out
    qc = pd.read_csv(out / "qc.csv")
    assert qc["status"].tolist() == ["failed"]
    assert "--assume-orientation LAS" in qc.loc[0, "error"]
    assert pd.read_csv(out / "manifest.csv").empty
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "qc.csv"]
    assert main(argv + ["--assume-orientation", "LRS"]) == 2  # a usage error, up front
    assert "one direction per axis" in capsys.readouterr().err


def test_cli_preprocess_passes_the_orientation(fake_chain, tmp_path):
    raw = _raw_dataset(tmp_path, volumes=(1400,), empty=0)
    out = tmp_path / "prep"
    argv = ["-q", "preprocess", "--manifest", str(raw), "--out", str(out)]
    assert main(argv + ["--assume-orientation", "lpi"]) == 0
    assert FakePreprocessor.last.assume_orientation == "LPI"
    assert main(argv + ["--overwrite"]) == 0
    assert FakePreprocessor.last.assume_orientation is None


def test_cli_preprocess_without_the_extra(tmp_path, capsys, monkeypatch):
    raw = _raw_dataset(tmp_path, volumes=(1400,), empty=0)
    monkeypatch.setitem(sys.modules, "deepbet", None)
    assert main(["preprocess", "--manifest", str(raw), "--out", str(tmp_path / "p")]) == 1
    assert 'pip install "harmonix[preprocess]"' in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_cli_to_native(moved, tmp_path, capsys):
    head, _, result = moved
    paths = result.save(tmp_path / "prep", "sub", qc_png=False)
    out = tmp_path / "native.nii.gz"
    argv = [
        "to-native",
        "--input",
        str(paths["image"]),
        "--transform",
        str(paths["json"]),
        "--mask",
        str(paths["native_mask"]),
        "--out",
        str(out),
    ]
    assert main(argv + ["--rescale"]) == 0
    img = nib.load(out)
    assert img.shape == head.shape
    np.testing.assert_allclose(img.affine, head.affine, atol=1e-5)
    expected = to_native(result.image, result.transform, mask=result.native_mask, rescale=True)
    np.testing.assert_allclose(img.get_fdata(), expected.get_fdata(), atol=1e-3)
    assert main(argv) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    bad = argv[:3] + ["--transform", str(tmp_path / "absent.json")] + argv[5:]
    bad[-1] = str(tmp_path / "other.nii.gz")
    assert main(bad) == 1
    assert "Transform file not found" in capsys.readouterr().err
    assert not (tmp_path / "other.nii.gz").exists()
    (tmp_path / "notjson.json").write_text("{")
    bad[4] = str(tmp_path / "notjson.json")
    assert main(bad) == 1
    assert "not a JSON transform" in capsys.readouterr().err


def test_implausible_masks_are_refused():
    img = _img(np.random.default_rng(0).random((160, 160, 160)) + 1)  # 2 mm voxels
    whole = T1Preprocessor(brain_extractor=lambda d, a: np.ones(d.shape, bool))
    low, high = QC_FAIL_LIMITS["mask_volume_ml"]
    with pytest.raises(QCFailedError, match=rf"No brain found .*32768 ml, expected {low:.0f}-"):
        whole.run(img)

    def cube(data, affine):  # 10x10x10 voxels of 2 mm: 8 ml
        mask = np.zeros(data.shape, bool)
        mask[70:80, 70:80, 70:80] = True
        return mask

    with pytest.raises(QCFailedError, match=r"No brain found .*\(brain mask 8 ml") as err:
        T1Preprocessor(brain_extractor=cube).run(img)
    assert err.value.qc == {"mask_volume_ml": 8.0}
