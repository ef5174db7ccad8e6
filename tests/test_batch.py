"""transform_files: streaming, parallel (joblib and dask) harmonization of NIfTI files."""

from __future__ import annotations

import json

import joblib
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from _helpers import make

from harmonix import (
    ComBatHarmonizer,
    HistogramMatchingHarmonizer,
    IdentityHarmonizer,
    IGUANeHarmonizer,
)
from harmonix.batch import output_paths, sidecar_path, transform_files


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


def test_transform_files_streams_site_by_site_and_equals_one_transform(tiny, tiny_nifti, tmp_path):
    """Each site's statistics come from one pass over all its images; every image is then
    harmonized on its own with them: the files equal one transform call on all images."""
    imgs, sites, ages, _ = tiny
    train = sites != "site2"
    model = ComBatHarmonizer(unseen_site="fit").fit(imgs[train], sites[train], ages[train])
    paths = tiny_nifti[0]
    order = [6, 0, 7, 3, 8, 1, 4, 2, 5]  # sites interleaved
    paths, sites, ages = [paths[i] for i in order], sites[order], ages[order]
    calls = {"stats": [], "transform": []}
    site_statistics, transform = model.site_statistics, model.transform

    def spy_stats(imgs, sites, ages=None, covariates=None):
        calls["stats"].append(list(sites))
        return site_statistics(imgs, sites, ages, covariates)

    def spy_transform(imgs, **kwargs):
        calls["transform"].append(len(imgs))
        return transform(imgs, **kwargs)

    model.site_statistics, model.transform = spy_stats, spy_transform
    written = transform_files(model, paths, tmp_path, sites=sites, ages=ages, verbose=False)
    assert written == output_paths(paths, tmp_path)
    assert sorted(map(sorted, calls["stats"])) == [["site0"] * 3, ["site1"] * 3, ["site2"] * 3]
    assert calls["transform"] == [1] * len(paths)  # one image at a time
    del model.site_statistics, model.transform
    expected = model.transform(paths, sites=sites, ages=ages)
    for dst, want in zip(written, expected):
        np.testing.assert_allclose(nib.load(dst).get_fdata(), want.get_fdata(), atol=1e-4)


@pytest.mark.parametrize("method", ["combat", "iguane"])
def test_site_statistics_let_images_go_one_at_a_time(tiny, method):
    """transform(one image, site_statistics=site_statistics(all images)) equals
    transform(all images) for the methods that pool a new site's images."""
    imgs, sites, ages, _ = tiny
    train = sites != "site2"
    if method == "combat":
        model = ComBatHarmonizer(unseen_site="fit")
    else:
        model = make(IGUANeHarmonizer, input_normalization="histogram")
    model.fit(imgs[train], sites[train], ages[train])
    kw = {"ages": ages} if method == "combat" else {}
    everything = model.transform(imgs, sites=sites, **kw)
    stats = model.site_statistics(imgs, sites, **kw)
    # the training sites passed the site check (None: their stored parameters); only the
    # new site is pooled
    assert list(stats) == ["site0", "site1", "site2"]
    assert stats["site0"] is None and stats["site1"] is None and stats["site2"] is not None
    for i in range(len(imgs)):
        kw = {"ages": ages[i : i + 1]} if method == "combat" else {}
        one = model.transform(imgs[i : i + 1], sites=sites[i : i + 1], site_statistics=stats, **kw)
        np.testing.assert_allclose(one[0], everything[i], rtol=0, atol=1e-4)
    with pytest.raises(TypeError, match="site_statistics must be the dict"):
        model.transform(imgs[:1], sites=sites[:1], site_statistics=[1], **kw)


def test_transform_files_to_given_names_with_sidecars(model, tiny_nifti, tmp_path):
    paths = tiny_nifti[0][:2]
    out = tmp_path / "out"
    names = ["a/first.nii.gz", "b/second.nii"]
    sidecars = [{"Sources": ["one"]}, {"Sources": ["two"]}]
    written = transform_files(model, paths, out, outputs=names, sidecars=sidecars, verbose=False)
    assert written == [out / n for n in names]
    for dst, meta in zip(written, sidecars):
        assert json.loads(sidecar_path(dst).read_text()) == meta
    assert sidecar_path(out / "b/second.nii") == out / "b/second.json"
    # a sidecar in the way refuses the whole call before anything is written
    (out / "c").mkdir()
    (out / "c/third.json").write_text("{}")
    with pytest.raises(FileExistsError, match="third.json"):
        transform_files(
            model, paths, out, outputs=["c/new.nii.gz", "c/third.nii.gz"], sidecars=sidecars
        )
    assert sorted(p.name for p in (out / "c").iterdir()) == ["third.json"]
    with pytest.raises(ValueError, match="1 outputs"):
        transform_files(model, paths, out, outputs=names[:1], verbose=False)
    # an interrupted run left a sidecar without its image: skip_existing finishes it
    stamp = written[0].stat().st_mtime_ns
    finish = ["a/first.nii.gz", "c/third.nii.gz"]
    transform_files(
        model, paths, out, outputs=finish, sidecars=sidecars, skip_existing=True, verbose=False
    )
    assert written[0].stat().st_mtime_ns == stamp  # kept
    assert json.loads((out / "c/third.json").read_text()) == sidecars[1]
    assert (out / "c/third.nii.gz").is_file()


def test_transform_files_checks_every_voxel_size_before_writing(tiny, tiny_nifti, tmp_path):
    """IGUANe fitted on 2 mm images, and one 4 mm file among 2 mm ones: nothing written."""
    imgs, sites, ages, _ = tiny
    paths, _, _, affine = tiny_nifti
    model = make(IGUANeHarmonizer).fit(imgs, sites, ages)  # voxel_size=2
    other = tmp_path / "coarse.nii.gz"
    nib.save(nib.Nifti1Image(imgs[0], affine @ np.diag([2.0, 2.0, 2.0, 1.0])), other)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"coarse.nii.gz' has voxels of 4 mm, not 2 mm"):
        transform_files(model, [*paths[:3], other], out, verbose=False)
    assert not out.exists() or not any(out.iterdir())


def test_transform_files_with_covariates_equals_transform(tiny, tiny_nifti, tmp_path):
    imgs, sites, ages, _ = tiny
    paths = tiny_nifti[0]
    cov = pd.DataFrame({"dx": np.tile(["CN", "AD", "CN"], 3)})
    combat = ComBatHarmonizer().fit(imgs, sites, ages, cov)
    written = transform_files(
        combat, paths, tmp_path / "out", sites=sites, ages=ages, covariates=cov, verbose=False
    )
    expected = combat.transform(imgs, sites, ages, cov)
    for out, exp in zip(written, expected):
        np.testing.assert_allclose(nib.load(out).get_fdata(), exp, rtol=1e-6, atol=1e-4)
    # a bad covariate fails the whole call before anything is written
    bad = cov.assign(dx=["MCI"] + cov["dx"].tolist()[1:])
    with pytest.raises(ValueError, match="'dx' has level"):
        transform_files(combat, paths, tmp_path / "bad", sites=sites, ages=ages, covariates=bad)
    with pytest.raises(ValueError, match=r"column\(s\) \['dx'\]"):
        transform_files(combat, paths, tmp_path / "bad", sites=sites, ages=ages, verbose=False)
    assert not (tmp_path / "bad").exists()


def test_new_site_statistics_use_the_covariates(tiny, tiny_nifti, tmp_path):
    """ComBat's unseen_site='fit' estimates a new site under the covariate model: its
    statistics, one image at a time, equal one transform call on all images."""
    imgs, sites, ages, _ = tiny
    cov = pd.DataFrame({"age": ages, "dx": np.tile(["CN", "AD", "CN"], 3)})
    train = sites != "site2"
    model = ComBatHarmonizer(unseen_site="fit").fit(
        imgs[train], sites[train], covariates=cov[train]
    )
    paths = tiny_nifti[0]
    written = transform_files(model, paths, tmp_path, sites=sites, covariates=cov, verbose=False)
    expected = model.transform(paths, sites=sites, covariates=cov)
    for dst, want in zip(written, expected):
        np.testing.assert_allclose(nib.load(dst).get_fdata(), want.get_fdata(), atol=1e-4)
    stats = model.site_statistics(imgs, sites, covariates=cov)
    ages_only = model.site_statistics(imgs, sites, covariates=cov.assign(dx="CN"))
    assert not np.allclose(stats["site2"][0], ages_only["site2"][0])  # dx enters the model
