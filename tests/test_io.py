"""harmonix.io: loading, lazy collections, atomic saving, manifests."""

from __future__ import annotations

import gzip
import os
import stat
import warnings

import nibabel as nib
import numpy as np
import pytest

from harmonix.io import (
    as_collection,
    atomic_write,
    load_img,
    load_imgs,
    read_manifest,
    save_img,
    save_imgs,
)

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def test_load_img_roundtrip(tiny_nifti):
    paths, _, _, affine = tiny_nifti
    img = load_img(paths[0])
    assert img.shape == (12, 14, 12)
    np.testing.assert_allclose(img.affine, affine)
    assert len(load_imgs(paths)) == len(paths)


def test_load_img_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_img(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match="NIfTI"):
        load_img(bad)
    four_d = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), four_d)
    with pytest.raises(ValueError, match="Split 4-D files"):
        load_img(four_d)
    two_d = tmp_path / "2d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), two_d)
    with pytest.raises(ValueError, match=r"\(4, 4\): a 2-D image") as err:
        load_img(two_d)
    assert "4-D" not in str(err.value)
    with pytest.raises(TypeError):
        load_img(3.0)
    with pytest.raises(ValueError, match="list"):
        load_imgs(str(four_d))


def test_truncated_file_raises_clear_error(tmp_path, tiny):
    path = tmp_path / "full.nii.gz"
    nib.save(nib.Nifti1Image(tiny[0][0], np.eye(4)), path)
    raw = gzip.decompress(path.read_bytes())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    coll = as_collection([str(cut)])
    with pytest.raises(ValueError, match="truncated|corrupt|NIfTI"):
        coll[0]


def test_single_4d_volume_with_one_frame_is_accepted(tmp_path):
    path = tmp_path / "one.nii"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3, 1), np.float32), np.eye(4)), path)
    assert load_img(path).shape == (3, 3, 3)


def test_save_is_atomic_and_refuses_overwrite(tmp_path, tiny):
    out = tmp_path / "a.nii.gz"
    save_img(tiny[0][0], out, affine=AFFINE)
    assert out.exists()
    with pytest.raises(FileExistsError):
        save_img(tiny[0][0], out, affine=AFFINE)
    save_img(tiny[0][1], out, affine=AFFINE, overwrite=True)
    np.testing.assert_array_equal(nib.load(out).get_fdata(), tiny[0][1])
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]  # no temporary left


def test_save_imgs_checks_everything_first(tmp_path, tiny):
    (tmp_path / "b.nii.gz").write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        save_imgs(list(tiny[0][:2]), [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])
    assert not (tmp_path / "a.nii.gz").exists()  # nothing written
    assert (tmp_path / "b.nii.gz").read_bytes() == b"keep me"
    with pytest.raises(ValueError, match="one path each"):
        save_imgs(list(tiny[0][:2]), [tmp_path / "c.nii"])
    with pytest.raises(ValueError, match=".nii"):
        save_img(tiny[0][0], tmp_path / "c.txt")


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(img, filename):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_img(np.ones((2, 2, 2), np.float32), tmp_path / "x.nii.gz", affine=AFFINE)
    assert list(tmp_path.iterdir()) == []


def test_bare_arrays_without_affine_warn_and_get_a_display_range(tmp_path):
    data = np.zeros((3, 3, 3), np.float32)
    data[1, 1, 1] = 1057.0
    with pytest.warns(UserWarning, match="identity affine"):
        save_img(data, tmp_path / "x.nii.gz")
    with pytest.warns(UserWarning, match="identity affine"):
        save_imgs([data], [tmp_path / "y.nii.gz"])
    header = nib.load(tmp_path / "x.nii.gz").header
    assert (float(header["cal_min"]), float(header["cal_max"])) == (0.0, 1057.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_img(data, tmp_path / "z.nii.gz", affine=AFFINE)  # no warning with an affine


def test_atomic_write_replaces_the_file_with_the_new_content(tmp_path):
    out = tmp_path / "sub" / "model.npz"  # the folder is created
    with atomic_write(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.endswith(".npz") and tmp != out
        np.savez(tmp, x=np.arange(3))  # numpy would append .npz to any other name
    with np.load(out) as data:
        np.testing.assert_array_equal(data["x"], np.arange(3))
    assert [p.name for p in out.parent.iterdir()] == ["model.npz"]
    with atomic_write(tmp_path / "img.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")  # nibabel compresses by the name
        nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), tmp)
    with gzip.open(tmp_path / "img.nii.gz") as fh:
        assert len(fh.read()) > 0
    with atomic_write(tmp_path / "c.ckpt", suffix=".tmp", fsync=True) as tmp:
        assert tmp.suffix == ".tmp"
        tmp.write_bytes(b"new")
    assert (tmp_path / "c.ckpt").read_bytes() == b"new"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_files_follow_the_umask(tmp_path, umask, mode):
    """Like any new file (mkstemp's 0600 would keep a lab group from reading outputs)."""
    before = os.umask(umask)
    try:
        with atomic_write(tmp_path / "img.nii.gz") as tmp:
            nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), tmp)
        save_img(np.ones((2, 2, 2), np.float32), tmp_path / "saved.nii", affine=np.eye(4))
    finally:
        os.umask(before)
    for name in ("img.nii.gz", "saved.nii"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_atomic_write_error_keeps_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "a.nii.gz"
    out.write_bytes(b"old content")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(out) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert out.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]


def test_read_manifest(tmp_path, tiny_nifti):
    paths, sites, ages, _ = tiny_nifti
    rows = ["path,site,age,subject"] + [
        f"{p.split('/')[-1]},{s},{a},sub{i}" for i, (p, s, a) in enumerate(zip(paths, sites, ages))
    ]
    csv = tmp_path / "m.csv"
    csv.write_text("\n".join(rows))
    man = read_manifest(csv)
    assert len(man) == len(paths)
    assert [str(p) for p in man.paths] == [str(tmp_path / p.split("/")[-1]) for p in paths]
    assert man.sites.tolist() == sites.tolist()
    np.testing.assert_allclose(man.ages, ages)
    assert man.subjects[0] == "sub0"


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("path,age\nimg0.nii.gz,3", ValueError, "site"),
        ("path,site\nmissing.nii.gz,a", FileNotFoundError, "missing"),
        ("path,site,age\nimg0.nii.gz,a,old", ValueError, "age"),
        ("path,site\n", ValueError, "no images"),
        ("path,site\nimg0.nii.gz,", ValueError, "empty"),
    ],
)
def test_read_manifest_errors(tmp_path, tiny_nifti, text, error, match):
    csv = tmp_path / "m.csv"
    csv.write_text(text)
    with pytest.raises(error, match=match):
        read_manifest(csv)


def test_collection_kinds_and_errors(tiny, tiny_nifti):
    imgs = tiny[0]
    assert as_collection(imgs).kind == "array"
    assert as_collection(list(imgs)).kind == "list"
    assert as_collection(tiny_nifti[0]).kind == "nifti"
    coll = as_collection(imgs)
    assert as_collection(coll) is coll
    with pytest.raises(ValueError, match="single|one 3-D"):
        as_collection(imgs[0])
    with pytest.raises(ValueError, match="single"):
        as_collection(tiny_nifti[0][0])
    with pytest.raises(TypeError, match="container"):
        as_collection({"a": imgs[0]})
    with pytest.raises(TypeError, match="all be"):
        as_collection([imgs[0], tiny_nifti[0][0]])
    with pytest.raises(ValueError, match="No images"):
        as_collection([])
    with pytest.raises(ValueError, match="4-D"):
        as_collection(np.zeros((2, 2)))
    bad = imgs.copy()
    bad[0, 5, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        as_collection(bad)[0]


def test_read_manifest_strips_values_like_headers(tmp_path, tiny_nifti):
    paths, sites, ages, _ = tiny_nifti
    rows = [" path , site , age "] + [
        f" {p} , {s}  ,{a}" for p, s, a in zip(paths[:3], sites[:3], ages[:3])
    ]
    csv = tmp_path / "spaces.csv"
    csv.write_text("\n".join(rows) + "\n")
    man = read_manifest(csv)
    assert man.sites.tolist() == sites[:3].tolist()
    assert [str(p) for p in man.paths] == paths[:3]


def test_outputs_get_their_own_display_range(tmp_path):
    """A header copied from an 8-bit input keeps cal_max=255 no more: viewers would
    saturate the harmonized intensities."""
    from harmonix import HistogramMatchingHarmonizer

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        data = np.zeros((8, 8, 8), np.uint8)
        data[2:6, 2:6, 2:6] = rng.integers(10 + 50 * i, 60 + 50 * i, (4, 4, 4))
        img = nib.Nifti1Image(data, AFFINE)
        img.header["cal_min"], img.header["cal_max"] = 0, 255
        paths.append(tmp_path / f"u8_{i}.nii.gz")
        nib.save(img, paths[-1])
    hm = HistogramMatchingHarmonizer(reference_site="b").fit(paths, ["a", "a", "b", "b"])
    out = hm.transform([paths[0]])[0]
    data = out.get_fdata()
    assert data.max() > 60  # mapped onto site b's brighter scale
    assert float(out.header["cal_min"]) == data.min()
    assert float(out.header["cal_max"]) == pytest.approx(data.max(), rel=1e-6)
