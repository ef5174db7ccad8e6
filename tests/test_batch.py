"""transform_files: streaming, parallel (joblib and dask) harmonization of NIfTI files."""

from __future__ import annotations

import joblib
import nibabel as nib
import numpy as np
import pytest

from harmonix import HistogramMatchingHarmonizer, IdentityHarmonizer
from harmonix.batch import output_paths, transform_files


@pytest.fixture
def model(tiny):
    imgs, sites, _, _ = tiny
    return IdentityHarmonizer().fit(imgs, sites)


def test_transform_files_parallel(model, tiny_nifti, tmp_path):
    paths = tiny_nifti[0]
    written = transform_files(model, paths, tmp_path / "out", n_jobs=2, verbose=False)
    assert written == output_paths(paths, tmp_path / "out")
    for src, dst in zip(paths, written):
        np.testing.assert_allclose(nib.load(dst).get_fdata(), nib.load(src).get_fdata(), rtol=1e-6)
        np.testing.assert_allclose(nib.load(dst).affine, nib.load(src).affine)


def test_transform_files_checks_before_writing(model, tiny_nifti, tmp_path):
    paths = tiny_nifti[0]
    out = tmp_path / "out"
    out.mkdir()
    clash = output_paths(paths, out)[-1]
    clash.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="exists"):
        transform_files(model, paths, out, verbose=False)
    assert sorted(out.iterdir()) == [clash] and clash.read_bytes() == b"keep"
    with pytest.raises(FileExistsError, match="overwrite an input"):
        transform_files(model, paths[:1], tmp_path, suffix="", verbose=False)
    with pytest.raises(ValueError, match="sites"):
        transform_files(model, paths, out, sites=["a"], verbose=False)
    with pytest.raises(FileNotFoundError):
        transform_files(model, [tmp_path / "nope.nii.gz"], out, verbose=False)


def test_transform_files_on_dask_cluster_equals_the_serial_run(tiny, tiny_nifti, tmp_path):
    distributed = pytest.importorskip("distributed")
    imgs, sites, _, _ = tiny
    hm = HistogramMatchingHarmonizer().fit(imgs, sites)  # changes every non-reference image
    paths = tiny_nifti[0]
    serial = transform_files(hm, paths, tmp_path / "serial", n_jobs=1, verbose=False)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster), joblib.parallel_backend("dask"):
            written = transform_files(hm, paths, tmp_path / "d", n_jobs=2, verbose=False)
    assert [p.name for p in written] == [p.name for p in serial]
    changed = 0
    for src, a, b in zip(paths, serial, written):
        one, two = nib.load(a), nib.load(b)
        np.testing.assert_array_equal(two.get_fdata(), one.get_fdata())
        np.testing.assert_array_equal(two.affine, one.affine)
        changed += not np.allclose(one.get_fdata(), nib.load(src).get_fdata())
    assert changed >= 2 * len(paths) // 3  # the images really were harmonized
