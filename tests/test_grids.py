"""Training grids: what a fitted model records about its images' voxel size, shape and
orientation, and how transform treats images of another grid (harmonix.inputs.grids)."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from _helpers import make_tiny_images

from harmonix import (
    ComBatHarmonizer,
    HistogramMatchingHarmonizer,
    IGUANeHarmonizer,
    WhiteStripeHarmonizer,
    make_multisite,
)
from harmonix.exceptions import GridMismatchWarning
from harmonix.iguane.pretrained import PretrainedIGUANe, load_demo_model
from harmonix.inputs.grids import check_voxel_size, describe_voxel_size

pytestmark = pytest.mark.usefixtures("one_thread")

#: a tiny IGUANe training whose augmentation shifts (shift_mm=5) are on
TINY = dict(n_epochs=1, steps_per_epoch=2, base_width=2, val_every=1, random_state=0)


def _write(imgs, affine, folder, name="img"):
    paths = []
    for i, img in enumerate(imgs):
        path = folder / f"{name}{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(img, dtype=np.float32), affine), path)
        paths.append(str(path))
    return paths


def _affine(voxel):
    affine = np.diag([float(voxel)] * 3 + [1.0])
    affine[:3, 3] = [-10.0, -12.0, -8.0]
    return affine


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_images()


@pytest.fixture(scope="module")
def demo():
    """The shipped 4 mm model and 4 mm data of sites it never saw."""
    ds = make_multisite(n_subjects=2, n_sites=2, resolution=4, random_state=1)
    return load_demo_model(), ds


# -- what fit records --------------------------------------------------------------------------
def test_fit_records_the_grid_from_nifti_headers_and_from_voxel_size_for_arrays(tiny, tmp_path):
    imgs, sites, ages, _ = tiny
    paths = _write(imgs, _affine(2.0), tmp_path)
    grid = HistogramMatchingHarmonizer().fit(paths, sites).grid_
    assert grid["voxel_size"] == [2.0, 2.0, 2.0]
    assert grid["shape"] == list(imgs.shape[1:]) and grid["orientation"] == "RAS"
    np.testing.assert_allclose(grid["affine"], _affine(2.0))
    arrays = HistogramMatchingHarmonizer().fit(imgs, sites).grid_
    assert (
        arrays
        == {
            "voxel_size": None,  # arrays carry no voxel size, and HM has no voxel_size parameter
            "shape": list(imgs.shape[1:]),
            "affine": None,
            "orientation": None,
            "brain_voxels": None,
        }
    )
    iguane = IGUANeHarmonizer(**TINY, voxel_size=(2, 2, 3)).fit(imgs, sites, ages)
    assert iguane.grid_["voxel_size"] == [2.0, 2.0, 3.0]
    assert iguane.grid_["brain_voxels"] == np.median((imgs != 0).sum(axis=(1, 2, 3)))


def test_the_grid_survives_save_load_and_pickle(tiny, tmp_path):
    imgs, sites, ages, _ = tiny
    paths = _write(imgs, _affine(2.0), tmp_path)
    for est, name in (
        (ComBatHarmonizer().fit(paths, sites), "m.npz"),
        (IGUANeHarmonizer(**TINY).fit(paths, sites, ages), "m.pt"),
    ):
        est.save(tmp_path / name)
        assert type(est).load(tmp_path / name).grid_ == est.grid_


# -- IGUANe: the voxel size is the images' (issue 29, item 7) -------------------------------------
def test_iguane_fit_on_arrays_with_voxel_size_equals_fit_on_nifti(tiny, tmp_path):
    """The same 2 mm data as arrays (voxel_size=2) and as NIfTI files: the same training
    (shift_mm=5 is 2 voxels both ways), so the same generator and outputs."""
    imgs, sites, ages, _ = tiny
    paths = _write(imgs, _affine(2.0), tmp_path)
    from_files = IGUANeHarmonizer(**TINY).fit(paths, sites, ages)
    from_arrays = IGUANeHarmonizer(**TINY, voxel_size=2.0).fit(imgs, sites, ages)
    for key, value in from_files.generator_.state_dict().items():
        assert torch.equal(from_arrays.generator_.state_dict()[key], value), key
    out_files = np.stack([np.asarray(o.dataobj) for o in from_files.transform(paths)])
    np.testing.assert_array_equal(from_arrays.transform(imgs), out_files)
    # taken as 1 mm (before: arrays were), shifts are 5 voxels and the training differs
    as_1mm = IGUANeHarmonizer(**TINY, voxel_size=1.0).fit(imgs, sites, ages)
    assert np.abs(as_1mm.transform(imgs) - out_files).max() > 1e-3


def test_iguane_refuses_arrays_without_voxel_size_while_shifting_in_mm(tiny):
    imgs, sites, ages, _ = tiny
    with pytest.raises(ValueError, match=r"voxel size is not known.*voxel_size=ds\.resolution"):
        IGUANeHarmonizer(**TINY).fit(imgs, sites, ages)
    for off in ({"shift_mm": 0}, {"augment": False}):  # nothing in mm: no voxel size needed
        assert IGUANeHarmonizer(**TINY, **off).fit(imgs, sites).grid_["voxel_size"] is None


def test_iguane_refuses_a_voxel_size_that_contradicts_the_headers(tiny, tmp_path):
    imgs, sites, _, _ = tiny
    paths = _write(imgs, _affine(2.0), tmp_path)
    with pytest.raises(ValueError, match="headers"):
        IGUANeHarmonizer(**TINY, voxel_size=4).fit(paths, sites)


# -- transform on another grid --------------------------------------------------------------------
def test_iguane_refuses_nifti_of_another_voxel_size_or_orientation(tiny, tmp_path):
    imgs, sites, ages, _ = tiny
    est = IGUANeHarmonizer(**TINY).fit(_write(imgs, _affine(2.0), tmp_path), sites, ages)
    other = _write(imgs[:2], _affine(4.0), tmp_path, "four")
    with pytest.raises(ValueError, match=r"voxels of 4 mm, not 2 mm.*grid_mismatch='warn'"):
        est.transform(other)
    flipped = _affine(2.0) @ np.diag([-1.0, 1.0, 1.0, 1.0])  # stored left-right flipped
    with pytest.raises(ValueError, match="orientation LAS, not RAS"):
        est.transform(_write(imgs[:2], flipped, tmp_path, "flip"))
    est.set_params(grid_mismatch="warn")  # a transform-time option: no refit needed
    with pytest.warns(GridMismatchWarning, match="voxels of 4 mm"):
        out = est.transform(other)
    assert len(out) == 2
    est.set_params(grid_mismatch="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridMismatchWarning)
        est.transform(other)
    est.set_params(grid_mismatch="never")
    with pytest.raises(ValueError, match="grid_mismatch must be one of"):
        est.transform(other)


def test_iguane_refuses_arrays_whose_brain_size_means_another_voxel_size(tiny):
    imgs, sites, ages, _ = tiny
    est = IGUANeHarmonizer(**TINY, voxel_size=2.0).fit(imgs, sites, ages)
    finer = imgs[:2].repeat(2, axis=1).repeat(2, axis=2).repeat(2, axis=3)  # 1 mm voxels
    with pytest.raises(ValueError, match=r"8 times the training images'.*about 1 mm"):
        est.transform(finer)
    with pytest.warns(GridMismatchWarning, match="about 1 mm"):
        est.set_params(grid_mismatch="warn").transform(finer)
    # a brain 30 % larger or smaller is anatomy, not another voxel size
    est.set_params(grid_mismatch="error").transform(imgs[:2, 1:-1, 1:-1, 1:-1])


def test_intensity_methods_record_the_grid_but_accept_any(tiny, tmp_path):
    imgs, sites, _, _ = tiny
    paths = _write(imgs, _affine(2.0), tmp_path)
    other = _write(imgs[:2], _affine(4.0) @ np.diag([-1.0, 1.0, 1.0, 1.0]), tmp_path, "o")
    for cls in (HistogramMatchingHarmonizer, WhiteStripeHarmonizer):
        est = cls().fit(paths, sites)
        with warnings.catch_warnings():
            warnings.simplefilter("error", GridMismatchWarning)
            out = est.transform(other)
        np.testing.assert_array_equal(np.asarray(out[0].dataobj), est.transform(imgs[:1])[0])


def test_combat_refuses_another_affine_of_the_same_shape(tiny, tmp_path):
    """The same scans stored with the first and last axes swapped (same shape, as at
    4 mm's 46x55x46): another affine, so voxel i is another place."""
    imgs, sites, ages, _ = tiny
    cube = imgs[:, :12, :12, :12]
    est = ComBatHarmonizer().fit(_write(cube, _affine(2.0), tmp_path), sites, ages)
    swap = np.eye(4)[[2, 1, 0, 3]]
    swapped = _write(cube[:3].transpose(0, 3, 2, 1), _affine(2.0) @ swap, tmp_path, "swap")
    with pytest.raises(ValueError, match="another affine"):
        est.transform(swapped, sites[:3], ages[:3])
    with pytest.raises(ValueError, match="another affine"):  # in fit too
        ComBatHarmonizer().fit(
            _write(cube[:3], _affine(2.0), tmp_path, "a") + swapped, sites[:6], ages[:6]
        )
    # a shifted origin by 1e-4 mm is the same grid
    nudged = _affine(2.0)
    nudged[0, 3] += 1e-4
    est.transform(_write(cube[:3], nudged, tmp_path, "nudged"), sites[:3], ages[:3])


def test_a_mask_file_gives_array_images_their_grid(tiny, tmp_path):
    """Arrays have no affine; a NIfTI mask has one. The one grid record (``grid_``) keeps
    it, ``affine_`` is that record, and NIfTI images on another grid are refused."""
    imgs, sites, _, _ = tiny
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(imgs.shape[1:], np.uint8), _affine(2.0)), mask_path)
    est = HistogramMatchingHarmonizer(mask=str(mask_path)).fit(imgs, sites)
    np.testing.assert_array_equal(est.grid_["affine"], _affine(2.0))
    np.testing.assert_array_equal(est.affine_, _affine(2.0))
    assert est.grid_["shape"] == list(imgs.shape[1:])
    est.check_grid(_write(imgs[:1], _affine(2.0), tmp_path, "same"))
    other = _write(imgs[:1], _affine(3.0), tmp_path, "other")
    with pytest.raises(ValueError, match="another affine"):
        est.check_grid(other)
    with pytest.raises(ValueError, match="another affine"):
        est.transform(other)
    # without a mask, histogram matching is not voxel-wise: any affine is fine
    plain = HistogramMatchingHarmonizer().fit(_write(imgs, _affine(2.0), tmp_path), sites)
    assert plain.affine_ is None
    plain.check_grid(other)


# -- the shipped 4 mm model -----------------------------------------------------------------------
def test_the_shipped_model_carries_its_4mm_training_grid(demo):
    model, _ = demo
    assert model.grid_["voxel_size"] == [4.0, 4.0, 4.0]
    assert model.grid_["shape"] == [46, 55, 46]
    assert 20_000 < model.grid_["brain_voxels"] < 40_000
    assert model.get_params()["voxel_size"] == 4.0


def test_the_shipped_model_refuses_2mm_and_1mm_images(demo, tmp_path):
    model, ds = demo
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridMismatchWarning)
        model.transform(ds.imgs[:1])  # its own voxel size: no word
        model.transform(_write(ds.imgs[:1], ds.affine, tmp_path, "four"))
    two = make_multisite(n_subjects=1, n_sites=2, resolution=2, random_state=1)
    with pytest.raises(ValueError, match="about 2 mm.*Resample them to 4 mm voxels"):
        model.transform(two.imgs[:1])  # arrays: by the size of the brain in voxels
    with pytest.raises(ValueError, match="voxels of 2 mm, not 4 mm"):
        model.transform(_write(two.imgs[:1], two.affine, tmp_path, "two"))
    one_mm = ds.imgs[:1].repeat(4, axis=1).repeat(4, axis=2).repeat(4, axis=3)
    with pytest.raises(ValueError, match=r"about (0\.9\d|1) mm"):
        model.transform(one_mm)
    header_1mm = ds.affine @ np.diag([0.25, 0.25, 0.25, 1.0])  # what preprocess writes
    with pytest.raises(ValueError, match="voxels of 1 mm, not 4 mm"):
        model.transform(_write(ds.imgs[:1], header_1mm, tmp_path, "one"))
    with pytest.raises(ValueError, match="about 2 mm"):  # the benchmark's wrapper too
        PretrainedIGUANe().fit(two.imgs, two.sites)
    with pytest.warns(GridMismatchWarning, match="about 2 mm"):
        PretrainedIGUANe(grid_mismatch="warn").fit(two.imgs, two.sites).transform(two.imgs)


def test_models_saved_without_a_grid_load_with_a_note(tiny, tmp_path):
    imgs, sites, ages, _ = tiny
    for est, name in (
        (ComBatHarmonizer().fit(imgs, sites), "old.npz"),
        (IGUANeHarmonizer(**TINY, voxel_size=2.0).fit(imgs, sites, ages), "old.pt"),
    ):
        out = est.transform(imgs, sites=sites)
        del est.grid_  # as saved by harmonix before grids were recorded
        est.save(tmp_path / name)
        with pytest.warns(UserWarning, match="before models recorded the grid"):
            old = type(est).load(tmp_path / name)
        assert not hasattr(old, "grid_")
        np.testing.assert_allclose(old.transform(imgs, sites=sites), out, rtol=1e-6)
    hm = HistogramMatchingHarmonizer().fit(imgs, sites)
    del hm.grid_
    hm.save(tmp_path / "hm.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # HM never checks grids: nothing to say
        HistogramMatchingHarmonizer.load(tmp_path / "hm.npz")


# -- helpers --------------------------------------------------------------------------------
def test_voxel_size_values():
    assert check_voxel_size(None) is None
    assert check_voxel_size(2) == (2.0, 2.0, 2.0)
    assert check_voxel_size([1, 1, 3]) == (1.0, 1.0, 3.0)
    for bad in (0, -1, True, "2", (1, 1), (1, 1, float("nan"))):
        with pytest.raises(ValueError, match="voxel_size"):
            check_voxel_size(bad)
    assert describe_voxel_size([4, 4, 4]) == "4 mm"
    assert describe_voxel_size([1, 1, 3.5]) == "1x1x3.5 mm"
    assert describe_voxel_size(None) == "unknown"


def test_a_training_set_with_two_voxel_sizes_is_refused_by_iguane(tmp_path):
    imgs, sites, _, _ = make_tiny_images()
    paths = _write(imgs[:8], _affine(2.0), tmp_path) + _write(
        imgs[8:], _affine(3.0), tmp_path, "b"
    )
    with pytest.raises(ValueError, match=r"voxels of 3 mm, not 2 mm"):
        IGUANeHarmonizer(**TINY).fit(paths, sites)
    grid = HistogramMatchingHarmonizer().fit(paths, sites).grid_  # HM: recorded as unknown
    assert grid["voxel_size"] is None and grid["affine"] is None
