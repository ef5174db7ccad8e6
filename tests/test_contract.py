"""The estimator contract, checked for every harmonizer that ``harmonix`` exports.

Methods added later are picked up automatically from ``harmonix.__all__``; only their
fast test settings live in ``_helpers.FAST_PARAMS``.
"""

from __future__ import annotations

import inspect
import pickle

import joblib
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from _helpers import HARMONIZERS, make, transform_kwargs
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import (
    check_estimator_cloneable,
    check_estimator_repr,
    check_get_params_invariance,
    check_mixin_order,
    check_no_attributes_set_in_init,
    check_set_params,
)

import harmonix
from harmonix.cli.methods import METHODS


def fit_args(cls, tiny):
    imgs, sites, ages, _ = tiny
    return imgs, sites, ages


@pytest.fixture(params=HARMONIZERS, ids=lambda c: c.__name__)
def cls(request):
    return request.param


def test_every_method_of_the_command_line_is_exported_and_checked_here():
    # a method the CLI offers but harmonix does not export would escape this suite
    assert sorted(METHODS.values()) == sorted(c.__name__ for c in HARMONIZERS)
    assert all(getattr(harmonix, c.__name__) is c for c in HARMONIZERS)


def test_fit_and_transform_take_the_users_positional_call(cls):
    # users write h.fit(imgs, sites, ages) and h.transform(imgs, sites), positionally
    fit = inspect.signature(cls.fit).parameters
    assert list(fit)[:4] == ["self", "imgs", "sites", "ages"]
    assert fit["sites"].default is inspect.Parameter.empty and fit["ages"].default is None
    transform = inspect.signature(cls.transform).parameters
    assert list(transform)[:4] == ["self", "imgs", "sites", "ages"]
    assert transform["sites"].default is None and transform["ages"].default is None
    assert all(
        p.kind is p.POSITIONAL_OR_KEYWORD
        for p in [*fit.values(), *transform.values()]
        if p.name in ("imgs", "sites", "ages")
    )


def test_every_entry_point_takes_covariates_after_ages(cls):
    for method in ("fit", "transform", "fit_transform"):
        params = inspect.signature(getattr(cls, method)).parameters
        assert list(params)[4] == "covariates" and params["covariates"].default is None


def test_covariates_are_checked_recorded_and_kept(cls, tiny):
    imgs, sites, ages, _ = tiny
    # 3 subjects per site: age and one more covariate are all the design can hold
    cov = pd.DataFrame({"dx": np.tile(["CN", "CN", "AD"], 3)})
    est = make(cls).fit(imgs, sites, ages, cov)
    assert est.covariate_levels_ == {"age": None, "dx": ["AD", "CN"]}
    kw = transform_kwargs(cls, sites, ages)
    out = est.transform(imgs, **kw, covariates=cov)
    assert out.shape == imgs.shape and np.isfinite(out).all()
    np.testing.assert_array_equal(est.fit_transform(imgs, sites, ages, cov), out)
    if cls._needs_covariates:  # modelled: transform needs them
        with pytest.raises(ValueError, match="fitted with covariates"):
            est.transform(imgs, **kw)
    elif cls.__name__ != "IGUANeHarmonizer":  # ignored (IGUANe samples its pairs by them)
        np.testing.assert_array_equal(est.transform(imgs), out)
        np.testing.assert_array_equal(make(cls).fit(imgs, sites).transform(imgs), out)
    with pytest.raises(ValueError, match=r"'dx' has level\(s\) \['MCI'\] not seen in fit"):
        est.transform(
            imgs[:1],
            **transform_kwargs(cls, sites[:1], ages[:1]),
            covariates={"dx": ["MCI"]},
        )


# -- scikit-learn API checks that do not need 2-D data -------------------------------------
@pytest.mark.parametrize(
    "check",
    [
        check_estimator_cloneable,
        check_estimator_repr,
        check_no_attributes_set_in_init,
        check_get_params_invariance,
        check_set_params,
        check_mixin_order,
    ],
    ids=lambda f: f.__name__,
)
def test_sklearn_api_checks(cls, check):
    check(cls.__name__, make(cls))


def test_fit_returns_self_and_refit_forgets(cls, tiny):
    imgs, sites, ages = fit_args(cls, tiny)
    est = make(cls)
    assert est.fit(imgs, sites, ages) is est
    assert set(est.sites_.tolist()) == set(sites.tolist())
    est.stale_attr_ = 1
    est.fit(imgs, sites, ages)
    assert not hasattr(est, "stale_attr_")


def test_fit_does_not_change_params(cls, tiny):
    est = make(cls)
    before = {k: repr(v) for k, v in est.get_params().items()}
    est.fit(*fit_args(cls, tiny))
    assert {k: repr(v) for k, v in est.get_params().items()} == before


def test_not_fitted(cls, tiny):
    with pytest.raises(NotFittedError):
        make(cls).transform(tiny[0], **transform_kwargs(cls, tiny[1], tiny[2]))


def test_fit_is_idempotent(cls, tiny):
    imgs, sites, ages = fit_args(cls, tiny)
    kw = transform_kwargs(cls, sites, ages)
    a = make(cls).fit(imgs, sites, ages).transform(imgs, **kw)
    est = make(cls).fit(imgs, sites, ages)
    est.fit(imgs, sites, ages)
    np.testing.assert_allclose(est.transform(imgs, **kw), a, rtol=1e-5, atol=1e-5)


@pytest.fixture
def fitted(cls, tiny):
    return make(cls).fit(*fit_args(cls, tiny))


def _other_value(name, value, tiny, tmp_path):
    """A valid value of parameter ``name`` other than ``value``."""
    imgs, sites, ages, _ = tiny
    mask = np.ones(imgs.shape[1:], dtype=bool)
    mask[0] = False
    others = {
        # every harmonizer
        "reference_site": sites[-1],
        "mask": mask,
        "grid_mismatch": "warn",
        # HistogramMatchingHarmonizer, WhiteStripeHarmonizer
        "percentiles": (5, 25, 50, 75, 95),
        "width": 0.1,
        # ComBatHarmonizer
        "empirical_bayes": not value,
        "smooth_age": 2,
        "smooth": ("age",),
        "unseen_site": "keep",
        "chunk_size": 7,
        # IGUANeHarmonizer
        "n_epochs": 3,
        "steps_per_epoch": 5,
        "base_width": 8,
        "disc_base_width": 4,
        "disc_instance_norm": False,
        "patch_size": 16,
        "batch_size": 2,
        "learning_rate": 1e-3,
        "final_learning_rate": 0.0,
        "lr_schedule": "constant_then_linear",
        "beta1": 0.5,
        "warmup_steps": 3,
        "cycle_weight": 1.0,
        "identity_weight": 1.0,
        "augment": not value,
        "rotation_degrees": 0.0,
        "shift_mm": 0.0,
        "voxel_size": 4.0,
        "identity_init": not value,
        "age_bin_width": 10.0,
        "val_fraction": 0.5,
        "val_every": 3,
        "checkpoint_dir": tmp_path / "checkpoints",
        "checkpoint_every": 3,
        "resume": not value,
        "input_shape": (16, 16, 16),
        "cache_size": 0,
        "device": "cpu",
        "mixed_precision": True,
        "cpu_threads": 1,
        "random_state": 123,
        "verbose": 1,
        "distributed": False,
        "input_normalization": "histogram",
        "max_steps": 1,
        "ood_action": "ignore",
        "ood_threshold": 1e-3,
        "scoring": lambda harmonize, volumes, sites: 0.0,
    }
    assert name in others, f"add a value of the new parameter {name!r} to this table"
    return others[name]


def test_set_params_after_fit_does_not_change_transform(cls, fitted, tiny, tmp_path):
    """transform reads fitted attributes only: every parameter set after fit acts at the
    next fit, except the documented transform-time options (``_transform_params``)."""
    imgs, sites, ages, _ = tiny
    kw = transform_kwargs(cls, sites, ages)
    before = fitted.transform(imgs, **kw)
    params = fitted.get_params(deep=False)
    assert set(cls._transform_params) <= set(params)
    for name in cls._transform_params:  # each documented where the class says so
        assert f"``{name}``" in cls.__doc__.split("Parameters read by transform")[1][:400]
    changed = {
        name: _other_value(name, value, tiny, tmp_path)
        for name, value in params.items()
        if name not in cls._transform_params
    }
    fitted.set_params(**changed)
    np.testing.assert_array_equal(fitted.transform(imgs, **kw), before)


def test_output_mirrors_ndarray(cls, fitted, tiny):
    imgs, sites, ages, _ = tiny
    original = imgs.copy()
    out = fitted.transform(imgs, **transform_kwargs(cls, sites, ages))
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32 and out.shape == imgs.shape
    assert np.isfinite(out).all()
    assert (out[imgs == 0] == 0).all(), "background must stay 0"
    np.testing.assert_array_equal(imgs, original)  # input untouched


def test_output_mirrors_list(cls, fitted, tiny):
    imgs, sites, ages, _ = tiny
    arrays = [img.astype(np.float64) for img in imgs[:2]]
    out = fitted.transform(arrays, **transform_kwargs(cls, sites[:2], ages[:2]))
    assert isinstance(out, list) and len(out) == 2
    assert all(o.dtype == np.float32 and o.shape == imgs.shape[1:] for o in out)
    ref = fitted.transform(imgs[:2], **transform_kwargs(cls, sites[:2], ages[:2]))
    np.testing.assert_allclose(np.stack(out), ref, rtol=1e-5, atol=1e-4)


def test_output_mirrors_nifti(cls, tiny_nifti):
    paths, sites, ages, affine = tiny_nifti
    est = make(cls).fit(paths, sites, ages)
    kw = transform_kwargs(cls, sites[:2], ages[:2])
    out = est.transform(paths[:2], **kw)
    assert isinstance(out, list) and all(isinstance(o, nib.Nifti1Image) for o in out)
    for o, p in zip(out, paths[:2]):
        np.testing.assert_allclose(o.affine, affine)
        assert o.get_data_dtype() == np.float32
        src = nib.load(p).get_fdata()
        assert (o.get_fdata()[src == 0] == 0).all()
    images = [nib.load(p) for p in paths[:2]]
    out2 = est.transform(images, **kw)
    np.testing.assert_allclose(out2[0].get_fdata(), out[0].get_fdata(), rtol=1e-5, atol=1e-4)


def test_pickle_and_joblib_roundtrip(cls, fitted, tiny, tmp_path):
    imgs, sites, ages, _ = tiny
    kw = transform_kwargs(cls, sites, ages)
    ref = fitted.transform(imgs, **kw)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(fitted)).transform(imgs, **kw), ref)
    joblib.dump(fitted, tmp_path / "m.joblib")
    np.testing.assert_allclose(joblib.load(tmp_path / "m.joblib").transform(imgs, **kw), ref)


def test_save_load_roundtrip(cls, fitted, tiny, tmp_path):
    imgs, sites, ages, _ = tiny
    kw = transform_kwargs(cls, sites, ages)
    path = tmp_path / "model.npz"
    fitted.save(path)
    loaded = cls.load(path)
    assert type(loaded) is cls
    assert loaded.get_params().keys() == fitted.get_params().keys()
    np.testing.assert_allclose(loaded.transform(imgs, **kw), fitted.transform(imgs, **kw))


def test_clone_is_unfitted(cls, fitted, tiny):
    with pytest.raises(NotFittedError):
        clone(fitted).transform(tiny[0], **transform_kwargs(cls, tiny[1], tiny[2]))


# -- masks and failures (bad input: tests/test_bad_inputs.py) ----------------------------
def test_mask_sets_outside_to_zero(cls, tiny):
    if "mask" not in cls().get_params():
        pytest.skip("no mask parameter")
    imgs, sites, ages, _ = tiny
    mask = np.zeros(imgs.shape[1:], bool)
    mask[2:10, 2:12, 2:10] = True
    out = (
        make(cls, mask=mask)
        .fit(imgs, sites, ages)
        .transform(imgs, **transform_kwargs(cls, sites, ages))
    )
    assert (out[:, ~mask] == 0).all()


def test_failed_fit_leaves_estimator_unfitted(cls, tiny, monkeypatch):
    imgs, sites, ages = fit_args(cls, tiny)
    est = make(cls).fit(imgs, sites, ages)

    def broken_fit(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(est, "_fit", broken_fit)
    with pytest.raises(RuntimeError, match="boom"):
        est.fit(imgs, sites, ages)
    with pytest.raises(NotFittedError):
        est.transform(imgs, **transform_kwargs(cls, sites, ages))
