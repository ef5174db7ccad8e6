"""Bad input, in two tables: one run for every harmonizer, one through the command line.

Each row of ESTIMATOR_CASES is a bad (or unusual) input, the stage it is given to and
what must happen: a clear error (its type and a piece of its message) or the documented
result. Every row runs for every harmonizer :mod:`harmonix` exports and also checks that
the caller's arrays and files are unchanged, and that the estimator is left as it was: a
failed fit leaves it unfitted, a failed transform leaves a fitted one working as before.

Each row of CLI_CASES is a ``harmonix`` command line that must fail with exit status 1
and a one-line message, write no output (not even a temporary file) and leave the
dataset's files unchanged. BIDS_CASES are the same refusals of :mod:`harmonix.bids` from
Python: the error's type and message, nothing written.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import importlib.util
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from _helpers import HARMONIZERS, make, make_feature_study, make_tiny_images
from sklearn.exceptions import NotFittedError

from harmonix import bids as hbids
from harmonix.cli import main
from harmonix.exceptions import BackgroundWarning
from harmonix.persistence import load_model

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


class Data(NamedTuple):
    imgs: Any
    sites: Any
    ages: Any
    covariates: Any = None


@dataclass(frozen=True)
class Expect:
    """What a row must give: an error, or output passing ``check`` (the documented result)."""

    error: type[Exception] | None = None
    match: str = ""
    check: Callable[[Any, Data], None] | None = None
    warns: type[Warning] | None = None  # the documented result comes with this warning


def raises(error: type[Exception], match: str) -> Callable[[type], Expect]:
    return lambda cls: Expect(error, match)


def harmonized(cls: type) -> Expect:
    return Expect(check=_check_output)


def _check_table(out: Any, data: Data) -> None:
    """A harmonized table: float64, the input's shape, finite."""
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert out.shape == np.shape(data.imgs) and np.isfinite(out).all()


def _check_output(out: Any, data: Data) -> None:
    """Harmonized output mirrors the input: float32, same shapes, finite, background 0."""
    outs = [np.asarray(o.dataobj) if isinstance(o, nib.Nifti1Image) else o for o in out]
    ins = [np.asarray(nib.load(i).dataobj) if isinstance(i, str) else i for i in data.imgs]
    assert len(outs) == len(ins)
    for o, i in zip(outs, ins):
        i = np.squeeze(i, axis=3) if i.ndim == 4 else i
        assert o.dtype == np.float32 and o.shape == i.shape
        assert np.isfinite(o).all() and (o[i == 0] == 0).all()


# -- inputs ----------------------------------------------------------------------------------
def _clean(d: Data, tmp: Path) -> Data:
    return d


def _with_voxel(value: float) -> Callable[[Data, Path], Data]:
    def build(d: Data, tmp: Path) -> Data:
        imgs = d.imgs.copy()
        imgs[1, 6, 6, 6] = value
        return d._replace(imgs=imgs)

    return build


def _first_two(d: Data) -> Data:
    return Data(d.imgs[:2], d.sites[:2], d.ages[:2], d.covariates.iloc[:2])


def _covariates(**columns: Any) -> Callable[[Data, Path], Data]:
    """The data with covariate columns replaced or added (``None`` removes one)."""

    def build(d: Data, tmp: Path) -> Data:
        cov = d.covariates.copy()
        for name, values in columns.items():
            if values is None:
                cov = cov.drop(columns=name)
            else:
                cov[name] = values(len(cov)) if callable(values) else values
        return d._replace(covariates=cov)

    return build


def _write(data: np.ndarray, path: Path) -> str:
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return str(path)


def _as_files(d: Data, tmp: Path) -> list[str]:
    return [_write(img, tmp / f"img{i}.nii.gz") for i, img in enumerate(d.imgs)]


def _files_with(replace: Callable[[Path, np.ndarray], None]) -> Callable[[Data, Path], Data]:
    """All images as files, image 1 replaced by ``replace(path, image)``."""

    def build(d: Data, tmp: Path) -> Data:
        paths = _as_files(d, tmp)
        replace(Path(paths[1]), d.imgs[1])
        return d._replace(imgs=paths)

    return build


def _four_d(path: Path, img: np.ndarray) -> None:
    _write(np.stack([img, img], axis=-1), path)


def _two_d(path: Path, img: np.ndarray) -> None:
    _write(img[:, :, img.shape[2] // 2], path)


def _four_d_one_frame(path: Path, img: np.ndarray) -> None:
    _write(img[..., None], path)


def _garbage(path: Path, img: np.ndarray) -> None:
    path.write_bytes(b"this is not a NIfTI file" * 10)


def _truncated(path: Path, img: np.ndarray) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))


def _nan_file(path: Path, img: np.ndarray) -> None:
    bad = img.copy()
    bad[6, 6, 6] = np.nan
    _write(bad, path)


def _missing(path: Path, img: np.ndarray) -> None:
    path.unlink()


def _swapped_axes(path: Path, img: np.ndarray) -> None:
    """The same scan stored with its first and last axes swapped (same shape, same place)."""
    nib.save(
        nib.Nifti1Image(np.ascontiguousarray(img.transpose(2, 1, 0)), AFFINE[:, [2, 1, 0, 3]]),
        path,
    )


def _mask_file(affine: np.ndarray) -> Callable[[Data, Path], Data]:
    """All images as files, and a whole-grid mask file beside them with ``affine``."""

    def build(d: Data, tmp: Path) -> Data:
        nib.save(nib.Nifti1Image(np.ones(d.imgs.shape[1:], np.uint8), affine), tmp / "mask.nii.gz")
        return d._replace(imgs=_as_files(d, tmp))

    return build


def _mask_beside(d: Data) -> dict:
    return {"mask": str(Path(d.imgs[0]).parent / "mask.nii.gz")}


def _with_site(value: Any) -> Callable[[Data, Path], Data]:
    """Image 1's site label replaced by ``value`` (a missing value of some kind)."""

    def build(d: Data, tmp: Path) -> Data:
        sites = np.asarray(d.sites, dtype=object).copy()
        sites[1] = value
        return d._replace(sites=sites)

    return build


def _pandas_sites(dtype: str) -> Callable[[Data, Path], Data]:
    """Sites as a pandas array of ``dtype`` ("Int64": site numbers; "string": names) with
    <NA> for image 1."""

    def build(d: Data, tmp: Path) -> Data:
        labels = [int(str(s)[-1]) if dtype == "Int64" else str(s) for s in d.sites]
        values = pd.array(labels, dtype=dtype)
        values[1] = pd.NA
        return d._replace(sites=values)

    return build


_MISSING_SITE = r"missing label\(s\) at position\(s\) \[1\]"

#: Every kind of missing site label a user can plausibly pass (pandas gives most of them).
_MISSING_SITE_BUILDS = [
    ("none", _with_site(None)),
    ("nan", _with_site(np.nan)),
    ("float32-nan", _with_site(np.float32("nan"))),
    ("pandas-na-in-int64", _pandas_sites("Int64")),
    ("pandas-na-in-string", _pandas_sites("string")),
    ("nat", _with_site(pd.NaT)),
    ("empty-text", _with_site("")),
    ("whitespace-text", _with_site("   ")),
    ("nan-text", _with_site("nan")),
]


def _all_zero(d: Data, tmp: Path) -> Data:
    imgs = d.imgs.copy()
    imgs[0] = 0
    return d._replace(imgs=imgs)


def _shape_differs(cls: type) -> Expect:
    return Expect(ValueError, "resample") if cls._fixed_shape else harmonized(cls)


def _background(value: Any) -> Callable[[Data, Path], Data]:
    """The background (voxels == 0) replaced by ``value``, or by small noise."""

    def build(d: Data, tmp: Path) -> Data:
        imgs = d.imgs.copy()
        zero = imgs == 0
        if value == "noise":
            noise = np.random.default_rng(0).normal(0, 1e-3, int(zero.sum()))
            imgs[zero] = noise.astype(np.float32)
        else:
            imgs[zero] = value
        return d._replace(imgs=imgs)

    return build


def _background_warning(cls: type) -> Expect:
    return Expect(check=_check_output, warns=BackgroundWarning)


def _negative_background(cls: type) -> Expect:
    """A warning; IGUANe, which scales by the brain median, also refuses a negative one."""
    if cls.__name__ == "IGUANeHarmonizer":
        return Expect(ValueError, "positive intensities", warns=BackgroundWarning)
    return _background_warning(cls)


def _files_at(voxels: Callable[[int], float]) -> Callable[[Data, Path], Data]:
    """All images as files, image ``i`` with voxels of ``voxels(i)`` mm."""

    def build(d: Data, tmp: Path) -> Data:
        paths = []
        for i, img in enumerate(d.imgs):
            path = tmp / f"vox{i}.nii.gz"
            nib.save(nib.Nifti1Image(img, np.diag([voxels(i)] * 3 + [1.0])), path)
            paths.append(str(path))
        return d._replace(imgs=paths)

    return build


def _finer_arrays(d: Data, tmp: Path) -> Data:
    """The images at half the voxel size (each voxel split in 8): 8 times more brain voxels."""
    return d._replace(imgs=d.imgs.repeat(2, axis=1).repeat(2, axis=2).repeat(2, axis=3))


def _grid_checked(match: str) -> Callable[[type], Expect]:
    """Refused by methods that check the voxel size (IGUANe), else the documented result."""
    return lambda cls: Expect(ValueError, match) if cls._grid_check == "voxel" else harmonized(cls)


def _unseen_site(cls: type) -> Expect:
    return Expect(ValueError, "not seen in fit") if cls._needs_sites else harmonized(cls)


def _voxel_wise_refuses(cls: type) -> Expect:
    """Voxel-wise methods refuse another affine, a network another orientation."""
    if cls._fixed_shape:
        return Expect(ValueError, "another affine")
    if cls._grid_check == "voxel":
        return Expect(ValueError, "orientation SAR, not RAS")
    return harmonized(cls)


def _has_param(name: str) -> Callable[[type], bool]:
    return lambda cls: name in cls().get_params()


@dataclass(frozen=True)
class Case:
    id: str
    stage: str  # "fit" or "transform" (of a model fitted on the clean images)
    build: Callable[[Data, Path], Data]
    expect: Callable[[type], Expect]
    params: dict | Callable[[Data], dict] = None  # constructor parameters of the row
    applies: Callable[[type], bool] = lambda cls: True


def _bad_param(id: str, name: str, value: Any, error: type[Exception], match: str) -> Case:
    """A row for a constructor parameter the fit refuses (methods without it have none)."""
    return Case(
        id, "fit", _clean, raises(error, match), params={name: value}, applies=_has_param(name)
    )


#: Rows that hold alike for fit and for transform: (id, build, expect).
_EITHER_STAGE = [
    ("nan-voxel", _with_voxel(np.nan), raises(ValueError, "NaN or infinite")),
    (
        "2-d-images",
        lambda d, t: d._replace(imgs=[i[0] for i in d.imgs]),
        raises(ValueError, "every image must be 3-D"),
    ),
    ("all-zero-image", _all_zero, raises(ValueError, "no brain voxels")),
    *(
        (f"missing-site-{name}", build, raises(ValueError, _MISSING_SITE))
        for name, build in _MISSING_SITE_BUILDS
    ),
    (
        "int16-images",
        lambda d, t: d._replace(imgs=np.round(d.imgs * 100).astype(np.int16)),
        harmonized,
    ),
    ("float64-images", lambda d, t: d._replace(imgs=d.imgs.astype(np.float64)), harmonized),
    ("4-d-nifti", _files_with(_four_d), raises(ValueError, "4-D")),
    ("2-d-nifti", _files_with(_two_d), raises(ValueError, "a 2-D image")),
    ("truncated-nifti", _files_with(_truncated), raises(ValueError, "truncated|corrupt")),
]

ESTIMATOR_CASES = [
    *(
        Case(name, stage, build, expect)
        for stage in ("fit", "transform")
        for name, build, expect in _EITHER_STAGE
    ),
    # -- fit -----------------------------------------------------------------------------
    Case("inf-voxel", "fit", _with_voxel(np.inf), raises(ValueError, "NaN or infinite")),
    Case(
        "5-d-array", "fit", lambda d, t: d._replace(imgs=d.imgs[None]), raises(ValueError, "4-D")
    ),
    Case(
        "one-image-not-a-list",
        "fit",
        lambda d, t: d._replace(imgs=d.imgs[0]),
        raises(ValueError, "wrap it in a list|pass imgs"),
    ),
    Case(
        "dict-of-images",
        "fit",
        lambda d, t: d._replace(imgs=dict(enumerate(d.imgs))),
        raises(TypeError, "Unsupported image container"),
    ),
    Case(
        "fewer-sites-than-images",
        "fit",
        lambda d, t: d._replace(sites=d.sites[:-1]),
        raises(ValueError, "one label per image"),
    ),
    Case(
        "fewer-ages-than-images",
        "fit",
        lambda d, t: d._replace(ages=d.ages[:-1]),
        raises(ValueError, "one age per image"),
    ),
    Case(
        "nan-age",
        "fit",
        lambda d, t: d._replace(ages=np.r_[np.nan, d.ages[1:]]),
        raises(ValueError, "finite age"),
    ),
    Case(
        "covariate-length-differs",
        "fit",
        lambda d, t: d._replace(covariates={"sex": d.covariates["sex"].tolist()[:-1]}),
        raises(ValueError, "values of covariate 'sex'"),
    ),
    Case(
        "covariate-missing-value",
        "fit",
        _covariates(sex=lambda n: [None] + ["F", "M"] * (n // 2)),
        raises(ValueError, "'sex' has missing values"),
    ),
    Case(
        "covariate-constant",
        "fit",
        _covariates(sex=lambda n: ["F"] * n),
        raises(ValueError, "'sex' is constant"),
    ),
    Case(
        "covariate-collinear-with-site",
        "fit",
        lambda d, t: _covariates(scanner=np.asarray(d.sites))(d, t),
        raises(ValueError, "'scanner' is collinear with site"),
    ),
    Case(
        "covariate-age-given-twice",
        "fit",
        lambda d, t: _covariates(age=np.asarray(d.ages))(d, t),
        raises(ValueError, "given both as ages"),
    ),
    Case(
        "covariates-not-a-table",
        "fit",
        lambda d, t: d._replace(covariates=["F", "M"]),
        raises(TypeError, "DataFrame or a mapping"),
    ),
    Case(
        "covariate-mixed-types",
        "fit",
        _covariates(sex=lambda n: ["F", 1.0] * (n // 2) + ["F"] * (n % 2)),
        raises(TypeError, "'sex' mixes value types"),
    ),
    Case(
        "feature-table-for-an-image-method",
        "fit",
        lambda d, t: d._replace(imgs=d.imgs.reshape(len(d.imgs), -1)),
        lambda cls: (
            Expect(check=_check_table) if cls._accepts_tables else Expect(ValueError, "2-D table")
        ),
    ),
    Case(
        "one-site",
        "fit",
        lambda d, t: d._replace(sites=["a"] * len(d.sites)),
        raises(ValueError, "at least 2 sites"),
    ),
    _bad_param(
        "unknown-reference-site",
        "reference_site",
        "nowhere",
        ValueError,
        "not among the training sites",
    ),
    _bad_param(
        "unknown-site-check-policy",
        "site_check",
        "sometimes",
        ValueError,
        "site_check must be one of",
    ),
    Case(
        "empty-mask",
        "fit",
        _clean,
        raises(ValueError, "mask is empty"),
        params=lambda d: {"mask": np.zeros(d.imgs.shape[1:], bool)},
        applies=_has_param("mask"),
    ),
    _bad_param(
        "scoring-returns-nan",
        "scoring",
        lambda *a: float("nan"),
        ValueError,
        "must be a finite number",
    ),
    _bad_param(
        "scoring-returns-none", "scoring", lambda *a: None, TypeError, "must return a number"
    ),
    Case("4-d-nifti-one-frame", "fit", _files_with(_four_d_one_frame), harmonized),
    Case("not-a-nifti", "fit", _files_with(_garbage), raises(ValueError, "NIfTI")),
    Case("nan-in-nifti", "fit", _files_with(_nan_file), raises(ValueError, "NaN or infinite")),
    Case("missing-file", "fit", _files_with(_missing), raises(FileNotFoundError, "not found")),
    _bad_param(
        "reference-site-nan",
        "reference_site",
        float("nan"),
        ValueError,
        "reference_site=nan is a missing value",
    ),
    Case("same-scan-swapped-axes", "fit", _files_with(_swapped_axes), _voxel_wise_refuses),
    Case(
        "mask-file-other-affine",
        "fit",
        _mask_file(np.eye(4)),
        raises(ValueError, "mask's affine"),
        params=_mask_beside,
        applies=_has_param("mask"),
    ),
    Case(
        "mask-file-same-affine",
        "fit",
        _mask_file(AFFINE),
        harmonized,
        params=_mask_beside,
        applies=_has_param("mask"),
    ),
    Case("background-1e-6", "fit", _background(1e-6), _background_warning),
    _bad_param(
        "arrays-without-voxel-size", "voxel_size", None, ValueError, "voxel size is not known"
    ),
    Case(
        "voxel-size-contradicts-headers",
        "fit",
        _files_at(lambda i: 2.0),
        raises(ValueError, "headers"),
        params={"voxel_size": 4.0},
        applies=_has_param("voxel_size"),
    ),
    Case(
        "two-voxel-sizes",
        "fit",
        _files_at(lambda i: 4.0 if i == 1 else 2.0),
        lambda cls: (
            Expect(ValueError, "4 mm")  # voxel_size=2 (FAST_PARAMS) refused too
            if cls._grid_check == "voxel"
            else Expect(ValueError, "another affine")
            if cls._fixed_shape
            else harmonized(cls)
        ),
    ),
    # -- transform -------------------------------------------------------------------------
    Case(
        "shape-differs-from-fit",
        "transform",
        lambda d, t: d._replace(imgs=np.pad(d.imgs, ((0, 0), (0, 2), (0, 0), (0, 0)))),
        _shape_differs,
    ),
    Case(
        "fewer-sites-than-images",
        "transform",
        lambda d, t: d._replace(sites=d.sites[:1]),
        raises(ValueError, "one label per image"),
    ),
    Case(
        "fewer-ages-than-images",
        "transform",
        lambda d, t: d._replace(ages=d.ages[:1]),
        raises(ValueError, "one age per image"),
    ),
    Case(
        "unseen-site",
        "transform",
        lambda d, t: d._replace(sites=["new"] * len(d.sites)),
        _unseen_site,
    ),
    Case("background-noise", "transform", _background("noise"), _background_warning),
    Case("background--1e-3", "transform", _background(-1e-3), _negative_background),
    Case(
        "files-of-another-voxel-size",
        "transform",
        _files_at(lambda i: 4.0),
        _grid_checked("voxels of 4 mm, not 2 mm"),
    ),
    Case(
        "arrays-of-half-the-voxel-size",
        "transform",
        _finer_arrays,
        lambda cls: (
            _shape_differs(cls) if cls._fixed_shape else _grid_checked("brain voxels")(cls)
        ),
    ),
    Case(
        "covariate-level-unseen-in-fit",
        "transform",
        _covariates(sex=lambda n: ["X"] * n),
        raises(ValueError, r"'sex' has level\(s\) \['X'\] not seen in fit"),
    ),
    Case(
        "covariate-continuous-in-fit-text-now",
        "transform",
        lambda d, t: d._replace(ages=None, covariates=d.covariates.assign(age=["old"] * 2)),
        raises(ValueError, "'age' was continuous in fit"),
    ),
    Case(
        "covariate-missing-value",
        "transform",
        _covariates(sex=lambda n: [None] * n),
        raises(ValueError, "'sex' has missing values"),
    ),
    Case(
        "covariate-missing",
        "transform",
        _covariates(sex=None),
        lambda cls: (
            Expect(ValueError, r"column\(s\) \['sex'\]")
            if cls._needs_covariates
            else harmonized(cls)
        ),
    ),
    Case(
        "table-to-an-image-model",
        "transform",
        lambda d, t: d._replace(imgs=d.imgs.reshape(len(d.imgs), -1)),
        lambda cls: Expect(ValueError, "fitted on images|2-D table"),
    ),
]


# -- the estimator table ---------------------------------------------------------------------
def _snapshot(data: Data) -> Any:
    """A copy of the inputs: arrays copied, files by content hash."""

    def one(x: Any) -> Any:
        if isinstance(x, str):
            p = Path(x)
            return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None
        return copy.deepcopy(x)

    imgs = data.imgs
    items = [one(x) for x in imgs] if isinstance(imgs, list) else one(imgs)
    return items, copy.deepcopy(data.sites), copy.deepcopy(data.ages), _frozen(data.covariates)


def _frozen(cov: Any) -> Any:
    """A comparable copy of covariates (a DataFrame as a dict of lists)."""
    return cov.to_dict("list") if isinstance(cov, pd.DataFrame) else copy.deepcopy(cov)


def _assert_same(before: Any, after: Any) -> None:
    if isinstance(before, dict):
        assert before.keys() == after.keys()
        for k in before:
            _assert_same(before[k], after[k])
    elif isinstance(before, list | tuple):
        assert len(before) == len(after)
        for a, b in zip(before, after):
            _assert_same(a, b)
    elif isinstance(before, np.ndarray) and before.dtype != object:
        np.testing.assert_array_equal(before, after)
        assert before.dtype == after.dtype
    elif isinstance(before, np.ndarray | pd.api.extensions.ExtensionArray):  # may hold NA
        assert type(before) is type(after) and before.dtype == after.dtype
        assert [repr(x) for x in before] == [repr(x) for x in after]
    else:
        assert before == after


@pytest.fixture(scope="module")
def clean() -> Data:
    imgs, sites, ages, _ = make_tiny_images()
    sex = np.tile(["F", "M", "F"], len(imgs) // 3)  # one value per subject
    return Data(imgs, sites, ages, pd.DataFrame({"sex": sex}))


@pytest.fixture(scope="module")
def fitted(clean) -> dict[str, tuple[Any, np.ndarray]]:
    """Per harmonizer: a model fitted on the clean images and its output on two of them."""
    models = {}
    for cls in HARMONIZERS:
        est = make(cls).fit(*clean)
        few = _first_two(clean)
        models[cls.__name__] = (est, est.transform(*few))
    return models


def _rows() -> list[Any]:
    return [
        pytest.param(cls, case, id=f"{case.stage}-{case.id}-{cls.__name__}")
        for case in ESTIMATOR_CASES
        for cls in HARMONIZERS
        if case.applies(cls)
    ]


@pytest.mark.parametrize(("cls", "case"), _rows())
def test_estimator_bad_input(cls, case, clean, fitted, tmp_path):
    start = clean if case.stage == "fit" else _first_two(clean)
    data = case.build(Data(*(copy.deepcopy(x) for x in start)), tmp_path)
    before = _snapshot(data)
    expect = case.expect(cls)
    params = case.params(data) if callable(case.params) else (case.params or {})
    if case.stage == "fit":
        est = make(cls, **params)

        def run() -> Any:
            est.fit(*data)
            return est.transform(*data)
    else:
        est, reference = fitted[cls.__name__]

        def run() -> Any:
            return est.transform(*data)

    if expect.error is not None:
        with (
            pytest.warns(expect.warns) if expect.warns else contextlib.nullcontext(),
            pytest.raises(expect.error, match=expect.match),
        ):
            run()
        if case.stage == "fit":  # a failed fit leaves the estimator unfitted
            with pytest.raises(NotFittedError):
                est.transform(*_first_two(clean))
    elif expect.warns is not None:
        with pytest.warns(expect.warns):
            out = run()
        expect.check(out, data)
    else:
        expect.check(run(), data)
    if case.stage == "transform":  # the model works as before
        np.testing.assert_array_equal(est.transform(*_first_two(clean)), reference)
    _assert_same(before, _snapshot(data))


def test_every_harmonizer_has_rows():
    ids = {row.id for row in _rows()}
    for cls in HARMONIZERS:
        assert sum(cls.__name__ in i for i in ids) >= 25


def test_float64_and_float32_inputs_agree(clean, fitted):
    few = _first_two(clean)
    for est, reference in fitted.values():
        out = est.transform(few.imgs.astype(np.float64), few.sites, few.ages, few.covariates)
        np.testing.assert_allclose(out, reference, rtol=1e-6, atol=1e-5)


# -- the command-line table ------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_data(tmp_path_factory) -> dict[str, Path]:
    """A synthetic dataset, bad files beside it, and fitted HM and ComBat models."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    assert (
        main(
            [
                "--quiet",
                "make-dataset",
                "--out",
                str(data),
                "--n-subjects",
                "2",
                "--n-sites",
                "3",
                "--resolution",
                "4",
            ]
        )
        == 0
    )
    manifest = data / "manifest.csv"
    files = {"root": root, "data": data, "manifest": manifest}
    for method in ("hm", "combat"):
        files[method] = root / f"{method}.npz"
        assert (
            main(
                [
                    "-q",
                    "fit",
                    "--method",
                    method,
                    "--manifest",
                    str(manifest),
                    "--out",
                    str(files[method]),
                ]
            )
            == 0
        )
    first = sorted(data.rglob("*.nii.gz"))[0]
    img = nib.load(first)
    bad = root / "bad"
    bad.mkdir()
    for name, replace in (
        ("four_d", _four_d),
        ("truncated", _truncated),
        ("garbage", _garbage),
        ("nan", _nan_file),
        ("swapped", _swapped_axes),
    ):
        path = bad / f"{name}.nii.gz"
        path.write_bytes(first.read_bytes())
        replace(path, np.asarray(img.dataobj, dtype=np.float32))
        files[name] = path
    lines = manifest.read_text().splitlines()
    header, rows = lines[0], lines[1:]

    def manifest_with(name: str, text: str) -> None:  # beside manifest.csv: same rows
        files[name] = data / f"{name}.csv"
        files[name].write_text(text)

    def with_first_path(path: Path) -> str:
        first_row = rows[0].split(",")
        first_row[0] = str(path)
        return "\n".join([header, ",".join(first_row), *rows[1:]]) + "\n"

    files["gzip_json"] = bad / "gzipped_prep.json"  # e.g. a renamed .nii.gz
    files["gzip_json"].write_bytes(first.read_bytes())
    manifest_with("no_path_column", "file,site\na.nii.gz,x\n")
    manifest_with("missing_files", "path,site\nnothere.nii.gz,x\nalso.nii.gz,y\n")
    manifest_with("bad_age", "path,site,age\n" + f"{first},site0,old\n")
    manifest_with("with_4d", with_first_path(files["four_d"]))
    manifest_with("with_nan", with_first_path(files["nan"]))
    manifest_with("with_truncated", with_first_path(files["truncated"]))
    manifest_with("unseen_site", f"path,site,age\n{first},elsewhere,40\n")
    manifest_with("no_ages", f"path,site\n{first},site0\n")
    manifest_with("blank_site", f"path,site,age\n{first},site0,40\n{first},   ,41\n")
    manifest_with("swapped_axes", f"path,site,age\n{files['swapped']},site0,40\n")
    files["first"] = first
    _bids_data(root, files)
    # tables of features, good and bad, and a ComBat model fitted on the good one
    X, sites, cov = make_feature_study(n_per=(8, 8, 8), n_features=3, seed=1)
    table = pd.DataFrame(X, columns=["roi_a", "roi_b", "roi_c"]).assign(site=sites, **cov)
    tables = root / "tables"
    tables.mkdir()

    def table_with(name: str, frame: pd.DataFrame) -> None:
        files[name] = tables / f"{name}.csv"
        frame.to_csv(files[name], index=False)

    table_with("table", table)
    table_with("table_text_feature", table.assign(roi_b=["big"] * len(table)))
    table_with("table_nan_feature", table.assign(roi_c=[np.nan] + [1.0] * (len(table) - 1)))
    table_with("table_no_site", table.drop(columns="site"))
    table_with("table_no_sex", table.drop(columns="sex"))
    table_with("table_new_level", table.assign(diagnosis=["MCI"] * len(table)))
    table_with("table_no_roi", table.drop(columns="roi_a"))
    files["table_model"] = root / "table_combat.npz"
    fit_table = ["-q", "fit", "--method", "combat", "--table", str(files["table"])]
    fit_table += ["--covariates", "age,sex,diagnosis", "--out", str(files["table_model"])]
    assert main(fit_table) == 0
    return files


def _bids_data(root: Path, files: dict[str, Path]) -> None:
    """A synthetic BIDS dataset (sub-00: sessions 1-2, sub-01: runs 1-2) and broken copies."""
    good = root / "bids"
    argv = ["-q", "make-dataset", "--bids", str(good), "--n-subjects", "2", "--n-sites", "2"]
    assert main([*argv, "--resolution", "4"]) == 0
    files["bids"] = good
    files["bids_manifest"] = root / "bids_manifest.csv"  # as bids-manifest writes it
    rows = ["path,site,subject,session,run"]
    for path in sorted(good.glob("sub-*/**/*_T1w.nii.gz")):
        ents = hbids.parse_name(path.name)[0]
        cells = [ents["subject"], ents.get("session", ""), ents.get("run", "")]
        rows.append(",".join([str(path), "scanner", *cells]))
    files["bids_manifest"].write_text("\n".join(rows) + "\n")
    empty = root / "bids_empty"
    empty.mkdir()
    shutil.copy(good / "dataset_description.json", empty)
    shutil.copy(good / "participants.tsv", empty)
    files["bids_empty"] = empty
    harmonized = root / "harmonized_only"  # a derivatives folder without preprocessing
    name = "sub-01_space-MNI152NLin2009aSym_desc-harmonized_T1w.nii.gz"
    (harmonized / "sub-01" / "anat").mkdir(parents=True)
    shutil.copy(good / "sub-01/anat/sub-01_run-1_T1w.nii.gz", harmonized / "sub-01/anat" / name)
    files["harmonized_only"] = harmonized
    for name, broken in (
        (
            "bids_duplicate",
            lambda d: shutil.copy(  # a .nii copy of a .nii.gz image
                d / "sub-01/anat/sub-01_run-1_T1w.nii.gz", d / "sub-01/anat/sub-01_run-1_T1w.nii"
            ),
        ),
        (
            "bids_no_scanner",
            lambda d: (d / "sub-01/sub-01_T1w.json").write_text(
                '{"ManufacturersModelName": "Achieva", "MagneticFieldStrength": 1.5}'
            ),
        ),
        ("bids_no_sessions_tsv", lambda d: (d / "sub-00/sub-00_sessions.tsv").unlink()),
    ):
        files[name] = root / name
        shutil.copytree(good, files[name])
        broken(files[name])


def _fit(
    method: str, data: str, *extra: str, source: str = "--manifest"
) -> Callable[[dict], list[str]]:
    """``fit`` with ``method`` of the manifest (``source="--table"``: the feature table) of
    the key ``data`` into model_out."""
    return lambda f: [
        "fit",
        "--method",
        method,
        source,
        str(f[data]),
        "--out",
        str(f["model_out"]),
        *extra,
    ]


def _fit_table(method: str, table: str) -> Callable[[dict], list[str]]:
    """``fit --table`` with the covariates age, sex and diagnosis."""
    return _fit(method, table, "--covariates", "age,sex,diagnosis", source="--table")


def _transform_table(model: str, table: str, out: str = "table_out") -> Callable[[dict], list]:
    return lambda f: [
        "transform",
        "--model",
        str(f[model]),
        "--table",
        str(f[table]),
        "--out",
        str(f[out]) if out in f else out,
    ]


def _file(f: dict, name: str) -> Path:
    """The file of the key ``name``, else the file ``name`` in the data folder."""
    return f[name] if name in f else f["root"] / name


def _transform(
    model: str, *source: str, bids_out: str | None = None
) -> Callable[[dict], list[str]]:
    """``transform`` with ``model`` (a key, or a file name in the data folder) of
    ``source`` (``"manifest", key`` or ``"input", key, ...``) into img_out, or with
    ``--bids-out`` into the folder of the key ``bids_out``."""

    def argv(f: dict) -> list[str]:
        src = (
            ["--manifest", str(f[source[1]])]
            if source[0] == "manifest"
            else ["--input", *(str(f[s]) for s in source[1:])]
        )
        out = ["--bids-out", str(f[bids_out])] if bids_out else ["--out", str(f["img_out"])]
        return ["transform", "--model", str(_file(f, model)), *src, *out]

    return argv


HAS_PYBIDS = importlib.util.find_spec("bids") is not None
PYBIDS = pytest.mark.skipif(not HAS_PYBIDS, reason="pybids (harmonix[bids]) is not installed")


def _bids_manifest(data: str, *extra: str) -> Callable[[dict], list[str]]:
    return lambda f: ["bids-manifest", str(f[data]), "--out", str(f["csv_out"]), *extra]


def _to_native(
    transform: str, image: str = "first", bids_out: bool = False
) -> Callable[[dict], list[str]]:
    """``to-native`` of the file of the key ``image`` through ``transform`` (a key, or a
    file name in the data folder) into img_out/native.nii.gz, or img_out with --bids-out."""

    def argv(f: dict) -> list[str]:
        out = (
            ["--bids-out", str(f["img_out"])]
            if bids_out
            else ["--out", str(f["img_out"] / "native.nii.gz")]
        )
        return [
            "to-native",
            "--input",
            str(f[image]),
            "--transform",
            str(_file(f, transform)),
            *out,
        ]

    return argv


def _make_dataset(*extra: str) -> Callable[[dict], list[str]]:
    return lambda f: ["make-dataset", "--out", str(f["img_out"]), "--resolution", "4", *extra]


CLI_CASES = [
    (
        "to-native-image-as-transform",
        _to_native("first"),
        r"is an image, not a transform file: pass the NAME_prep.json",
    ),
    (
        "to-native-binary-transform",
        _to_native("gzip_json"),
        r"not a JSON transform file .*utf-8.*: pass the NAME_prep.json",
    ),
    (
        "make-dataset-prevalence-not-a-number",
        _make_dataset("--diagnosis-prevalence", "often"),
        "takes numbers",
    ),
    (
        "make-dataset-per-site-prevalence-of-traveling-subjects",
        _make_dataset("--n-sites", "2", "--diagnosis-prevalence", "0.1,0.7"),
        "need traveling=False",
    ),
    ("unknown-method", _fit("magic", "manifest"), "unknown method"),
    ("unknown-parameter", _fit("hm", "manifest", "--param", "nonsense=1"), "unknown parameter"),
    (
        "manifest-not-found",
        lambda f: _fit("hm", "manifest")(f) + ["--manifest", "none.csv"],
        "not found",
    ),
    ("manifest-without-path-column", _fit("hm", "no_path_column"), "path"),
    ("manifest-with-missing-files", _fit("hm", "missing_files"), "missing file"),
    ("manifest-with-bad-age", _fit("combat", "bad_age"), "age"),
    ("fit-4-d-nifti", _fit("hm", "with_4d"), "4-D"),
    ("fit-nan-voxels", _fit("ws", "with_nan"), "NaN or infinite"),
    ("fit-truncated-nifti", _fit("combat", "with_truncated"), "truncated|corrupt"),
    ("transform-truncated-nifti", _transform("hm", "input", "truncated"), "truncated|corrupt"),
    ("transform-not-a-nifti", _transform("hm", "input", "first", "garbage"), "NIfTI"),
    ("transform-4-d-nifti", _transform("hm", "input", "four_d"), "4-D"),
    ("transform-combat-without-sites", _transform("combat", "input", "first"), "site"),
    (
        "transform-combat-unseen-site",
        _transform("combat", "manifest", "unseen_site"),
        "not seen in fit",
    ),
    (
        "transform-combat-without-ages",
        _transform("combat", "manifest", "no_ages"),
        "fitted with ages",
    ),
    ("manifest-with-blank-site", _fit("hm", "blank_site"), r"empty path or site.*\[3\]"),
    (
        "transform-combat-same-scan-swapped-axes",
        _transform("combat", "manifest", "swapped_axes"),
        "another affine",
    ),
    (
        "fit-manifest-without-covariate-column",
        _fit("combat", "manifest", "--covariates", "sex"),
        r"no column\(s\) \['sex'\]",
    ),
    (
        "fit-manifest-entity-as-covariate",
        _fit("combat", "bids_manifest", "--covariates", "session"),
        r"\['session'\] name BIDS entities",
    ),
    (
        "fit-manifest-and-table",
        lambda f: _fit("combat", "manifest")(f) + ["--table", str(f["table"])],
        "either --manifest .* or --table",
    ),
    ("fit-table-with-an-image-method", _fit_table("hm", "table"), "--table needs --method combat"),
    (
        "fit-table-text-feature",
        _fit_table("combat", "table_text_feature"),
        r"\['roi_b'\] .*not numeric",
    ),
    (
        "fit-table-nan-feature",
        _fit_table("combat", "table_nan_feature"),
        r"NaN or infinite.*roi_c",
    ),
    ("fit-table-without-site", _fit_table("combat", "table_no_site"), "one 'site' column"),
    (
        "fit-table-without-covariate",
        _fit_table("combat", "table_no_sex"),
        r"no column\(s\) \['sex'\]",
    ),
    (
        "transform-table-with-an-image-model",
        _transform_table("combat", "table"),
        "not fitted on a table",
    ),
    (
        "transform-table-without-covariate",
        _transform_table("table_model", "table_no_sex"),
        r"no column\(s\) \['sex'\]",
    ),
    (
        "transform-table-without-feature",
        _transform_table("table_model", "table_no_roi"),
        r"no column\(s\) \['roi_a'\]",
    ),
    (
        "transform-table-unseen-level",
        _transform_table("table_model", "table_new_level"),
        r"'diagnosis' has level\(s\) \['MCI'\] not seen in fit",
    ),
    (
        "transform-table-output-not-csv",
        _transform_table("table_model", "table", "img_out"),
        r"must name a \.csv file",
    ),
    (
        "transform-table-over-its-input",
        _transform_table("table_model", "table", "table"),
        "overwrite the input table",
    ),
    (
        "mixed-precision-for-hm",
        lambda f: [*_transform("hm", "input", "first")(f), "--mixed-precision"],
        "IGUANe models only",
    ),
    (
        "model-not-found",
        _transform("none.npz", "input", "first"),
        "not found",
    ),
    (
        "output-would-replace-input",
        lambda f: [  # --out: the input's own folder
            *_transform("hm", "input", "first")(f)[:-1],
            str(f["first"].parent),
            "--suffix",
            "",
        ],
        "overwrite an input",
    ),
    # BIDS in
    (
        "bids-manifest-not-bids",
        _bids_manifest("data"),
        "not a BIDS dataset.*dataset_description",
        PYBIDS,
    ),
    (
        "bids-manifest-no-t1w",
        _bids_manifest("bids_empty"),
        "No T1w image found in .*bids_empty",
        PYBIDS,
    ),
    (
        "bids-manifest-no-such-session",
        _bids_manifest("bids", "--session", "9"),
        "No T1w image .*session 9",
        PYBIDS,
    ),
    (
        "bids-manifest-missing-participants-column",
        _bids_manifest("bids", "--covariates", "age,handedness"),
        "participants.tsv' has no column 'handedness'",
        PYBIDS,
    ),
    (
        "bids-manifest-missing-site-column",
        _bids_manifest("bids", "--site-column", "scanner"),
        "participants.tsv' has no column 'scanner'",
        PYBIDS,
    ),
    (
        "bids-manifest-site-not-in-sidecars",
        _bids_manifest("bids_no_scanner"),
        r"site of 2 image\(s\) cannot be determined .*sub-01_run-1_T1w.nii.gz \(no Manufacturer\)",
        PYBIDS,
    ),
    (
        "bids-manifest-site-column-empty",
        _bids_manifest("bids_no_sessions_tsv", "--site-column", "site"),
        r"site of 2 image\(s\) .*sub-00_ses-1_T1w.nii.gz \(no site value\)",
        PYBIDS,
    ),
    (
        "bids-manifest-two-images-one-key",
        _bids_manifest("bids_duplicate"),
        "sub-01_run-1_T1w.nii' and .*sub-01_run-1_T1w.nii.gz' have the same BIDS entities",
        PYBIDS,
    ),
    # BIDS derivatives out
    *(
        (f"transform-bids-out-{name}", _transform("hm", *source, bids_out=out), message)
        for name, source, out, message in [
            ("into-raw-dataset", ("manifest", "bids_manifest"), "bids", "is a raw BIDS dataset"),
            (
                "two-images-one-key",
                ("manifest", "manifest"),
                "img_out",
                "sub-00_site0.nii.gz' and .*sub-00_site1.nii.gz' have the same BIDS entities",
            ),
            ("without-entities", ("manifest", "no_ages"), "img_out", "no 'subject' column"),
            (
                "input-not-bids-named",
                ("input", "first"),
                "img_out",
                "sub-00_site0.nii.gz' is not a BIDS T1w file name",
            ),
        ]
    ),
    (
        "preprocess-bids-out-without-entities",
        lambda f: ["preprocess", "--manifest", str(f["no_ages"]), "--bids-out", str(f["img_out"])],
        "no 'subject' column",
        pytest.mark.skipif(
            not all(importlib.util.find_spec(m) for m in ("deepbet", "SimpleITK")),
            reason="harmonix[preprocess] is not installed",
        ),
    ),
    (
        "to-native-bids-out-input-not-bids-named",
        _to_native("none.json", "four_d", bids_out=True),
        "four_d.nii.gz' is not a BIDS file name",
    ),
    (
        "to-native-bids-out-nothing-to-map",
        lambda f: ["to-native", "--bids-out", str(f["img_out"])],
        "No .*_space-MNI152NLin2009aSym_desc-harmonized_T1w.nii.gz image in",
    ),
    (
        "to-native-input-without-transform",
        lambda f: ["to-native", "--input", str(f["first"]), "--out", str(f["img_out"])],
        "--transform is required",
    ),
    (
        "to-native-bids-out-without-preprocessing-files",
        lambda f: ["to-native", "--bids-out", str(f["harmonized_only"])],
        "preprocessing files of 1 image.*sub-01_space-MNI152NLin2009aSym_desc-harmonized_T1w"
        ".nii.gz \\(no sub-01_space-MNI152NLin2009aSym_desc-preproc_T1w.json, "
        "sub-01_desc-brain_mask.nii.gz\\)",
    ),
    (
        "to-native-bids-out-input-not-in-a-template-space",
        _to_native("none.json", "first", bids_out=True),
        "sub-00_site0.nii.gz' has no space- entity",
    ),
]


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _outputs(tmp_path: Path) -> dict[str, Path]:
    names = {
        "model_out": "model.npz",
        "img_out": "imgs",
        "csv_out": "manifest.csv",
        "table_out": "harmonized.csv",
    }
    return {key: tmp_path / name for key, name in names.items()}


@pytest.mark.parametrize(
    ("argv", "message"), [pytest.param(c[1], c[2], id=c[0], marks=c[3:]) for c in CLI_CASES]
)
def test_cli_bad_input(argv, message, cli_data, capsys, tmp_path):
    files = {**cli_data, **_outputs(tmp_path)}
    before = _tree(cli_data["root"])
    assert main(["--quiet", *argv(files)]) == 1
    err = capsys.readouterr().err.strip()
    assert re.search(message, err), err
    assert len(err.splitlines()) == 1, err
    assert _tree(tmp_path) == {}  # no output, not even a temporary file
    assert _tree(cli_data["root"]) == before  # inputs intact


def test_voxel_wise_model_refuses_images_on_another_grid(clean, tmp_path):
    """ComBat fitted on NIfTI files records their affine and refuses, before any work,
    the same scan stored with its axes swapped (same shape); arrays carry no affine."""
    from harmonix import ComBatHarmonizer

    paths = _as_files(clean, tmp_path)
    est = ComBatHarmonizer().fit(paths, clean.sites, clean.ages)
    np.testing.assert_array_equal(est.affine_, AFFINE)
    swapped = tmp_path / "swapped.nii.gz"
    _swapped_axes(swapped, clean.imgs[0])
    reference = est.transform(paths[:1], sites=clean.sites[:1], ages=clean.ages[:1])
    with pytest.raises(ValueError, match="another affine.*orientation"):
        est.transform([str(swapped)], sites=clean.sites[:1], ages=clean.ages[:1])
    np.testing.assert_array_equal(  # the refusal changed nothing
        est.transform(paths[:1], sites=clean.sites[:1], ages=clean.ages[:1])[0].get_fdata(),
        reference[0].get_fdata(),
    )
    moved = tmp_path / "moved.nii.gz"  # same orientation, shifted by 5 voxels
    shifted = AFFINE.copy()
    shifted[:3, 3] = 10.0
    nib.save(nib.Nifti1Image(clean.imgs[0], shifted), moved)
    with pytest.raises(ValueError, match="another affine"):
        est.transform([str(moved)], sites=clean.sites[:1], ages=clean.ages[:1])


def test_cli_failure_midway_leaves_only_complete_outputs(cli_data, capsys, tmp_path):
    """A truncated file (only detectable by reading it) stops transform at that file."""
    good = sorted(cli_data["data"].rglob("*.nii.gz"))[:2]
    inputs = [*good, cli_data["truncated"]]
    out = tmp_path / "imgs"
    argv = [
        "-q",
        "transform",
        "--model",
        str(cli_data["hm"]),
        "--input",
        *map(str, inputs),
        "--out",
        str(out),
    ]
    assert main(argv) == 1
    assert "truncated.nii.gz" in capsys.readouterr().err
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name.replace(".nii.gz", "_harmonized.nii.gz") for p in good)
    for name in written:  # complete, readable images
        assert np.isfinite(nib.load(out / name).get_fdata()).all()


def test_cli_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["fit"]) == 2
    assert "usage" in capsys.readouterr().err


# -- the BIDS table from Python ---------------------------------------------------------------
def _transform_to_bids(manifest: str, out: str | None = None) -> Callable[[dict], Any]:
    return lambda f: hbids.transform_manifest_to_bids(
        load_model(f["hm"]), f[manifest], f[out] if out else f["img_out"], verbose=False
    )


BIDS_CASES = [
    (
        "not-bids",
        lambda f: hbids.bids_manifest(f["data"]),
        ValueError,
        "not a BIDS dataset",
        PYBIDS,
    ),
    ("no-folder", lambda f: hbids.bids_manifest(f["root"] / "none"), FileNotFoundError, "none"),
    ("no-t1w", lambda f: hbids.bids_manifest(f["bids_empty"]), ValueError, "No T1w image", PYBIDS),
    (
        "missing-participants-column",
        lambda f: hbids.bids_manifest(f["bids"], covariates=["age", "handedness"]),
        ValueError,
        "participants.tsv' has no column 'handedness'",
        PYBIDS,
    ),
    (
        "site-not-in-sidecars",
        lambda f: hbids.bids_manifest(f["bids_no_scanner"]),
        ValueError,
        r"sub-01_run-2_T1w.nii.gz \(no Manufacturer\)",
        PYBIDS,
    ),
    (
        "site-column-and-site-from",
        lambda f: hbids.bids_manifest(f["bids"], site_column="site", site_from="Manufacturer"),
        ValueError,
        "not both",
    ),
    (
        "two-images-one-key",
        lambda f: hbids.bids_manifest(f["bids_duplicate"]),
        ValueError,
        "same BIDS entities",
        PYBIDS,
    ),
    (
        "manifest-written-over",
        lambda f: hbids.write_bids_manifest(f["bids"], f["manifest"]),
        FileExistsError,
        "exists",
    ),
    (
        "derivatives-into-raw-dataset",
        _transform_to_bids("bids_manifest", "bids"),
        ValueError,
        "is a raw BIDS dataset",
    ),
    (
        "derivatives-two-images-one-key",
        _transform_to_bids("manifest"),
        ValueError,
        "have the same BIDS entities",
    ),
    (
        "derivatives-without-entities",
        _transform_to_bids("no_ages"),
        ValueError,
        "no 'subject' column",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [pytest.param(c[1], c[2], c[3], id=c[0], marks=c[4:]) for c in BIDS_CASES],
)
def test_bids_bad_input(call, error, match, cli_data, tmp_path):
    files = {**cli_data, **_outputs(tmp_path)}
    before = _tree(cli_data["root"])
    with pytest.raises(error, match=match):
        call(files)
    assert _tree(tmp_path) == {}
    assert _tree(cli_data["root"]) == before
