"""Model files: no pickle, version stamp, refusal of foreign or malicious files."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest

from harmonix import (
    ComBatHarmonizer,
    HistogramMatchingHarmonizer,
    IdentityHarmonizer,
    IGUANeHarmonizer,
    WhiteStripeHarmonizer,
)
from harmonix._version import __version__
from harmonix.iguane.pretrained import DEMO_MODEL_PATH
from harmonix.persistence import (
    load_estimator,
    load_model,
    read_model_info,
    save_estimator,
    to_plain,
)


class _Boom:
    """Unpickling this would run code (it creates a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def fitted(tiny):
    return IdentityHarmonizer().fit(tiny[0], tiny[1])


def test_model_file_is_stamped(fitted, tmp_path):
    path = save_estimator(fitted, tmp_path / "m")
    assert path.suffix == ".npz"
    info = read_model_info(path)
    assert info["version"] == __version__
    assert info["class"] == "harmonix.base.IdentityHarmonizer"
    assert load_estimator(path)._saved_version == __version__


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    np.savez(evil, __harmonix__=np.array([_Boom(str(marker))], dtype=object))
    with pytest.raises(ValueError, match="not a harmonix model"):
        IdentityHarmonizer.load(evil)
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(ValueError, match="not a harmonix model"):
        IdentityHarmonizer.load(plain)
    assert not marker.exists()


def test_object_array_attribute_is_refused(fitted, tmp_path):
    path = save_estimator(fitted, tmp_path / "m.npz")
    with np.load(path) as data:
        arrays = dict(data)
    arrays["array:sites_"] = np.array([_Boom(str(tmp_path / "x"))], dtype=object)
    tampered = tmp_path / "t.npz"
    np.savez(tampered, **arrays)
    with pytest.raises(ValueError):
        load_estimator(tampered)
    assert not (tmp_path / "x").exists()


def test_foreign_class_is_refused(fitted, tmp_path):
    path = save_estimator(fitted, tmp_path / "m.npz")
    with pytest.raises(ValueError, match="not harmonix"):
        load_estimator(_restamped(path, tmp_path, "os.system"))


def _restamped(path, tmp_path, class_name):
    """A copy of the model file at ``path`` that names ``class_name`` as its class."""
    with np.load(path) as data:
        arrays = dict(data)
    meta = json.loads(bytes(arrays["__harmonix__"]).decode())
    meta["class"] = class_name
    arrays["__harmonix__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "restamped.npz", **arrays)
    return tmp_path / "restamped.npz"


def test_file_naming_a_module_that_moved_loads_by_class_name(tiny, tmp_path):
    """A file written when histogram matching was harmonix.histogram_matching loads and
    transforms as the original; an unknown class is still refused."""
    hm = HistogramMatchingHarmonizer().fit(tiny[0], tiny[1])
    path = save_estimator(hm, tmp_path / "hm.npz")
    old = _restamped(path, tmp_path, "harmonix.histogram_matching.HistogramMatchingHarmonizer")
    loaded = load_model(old)
    assert type(loaded) is HistogramMatchingHarmonizer
    np.testing.assert_array_equal(loaded.transform(tiny[0]), hm.transform(tiny[0]))
    with pytest.raises(ValueError, match="does not have"):
        load_model(_restamped(path, tmp_path, "harmonix.gone.NoSuchHarmonizer"))


def test_wrong_class_and_missing_file(fitted, tmp_path):
    from harmonix.base import BaseHarmonizer

    path = save_estimator(fitted, tmp_path / "m.npz")
    assert isinstance(BaseHarmonizer.load(path), IdentityHarmonizer)

    class Other(BaseHarmonizer):
        pass

    with pytest.raises(ValueError, match="holds a IdentityHarmonizer"):
        Other.load(path)
    with pytest.raises(FileNotFoundError):
        load_estimator(tmp_path / "missing.npz")


def test_save_is_atomic(fitted, tmp_path, monkeypatch):
    path = save_estimator(fitted, tmp_path / "m.npz")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        fitted.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_load_model_reads_any_model_file_by_the_name_given_to_fit(tiny, tmp_path):
    imgs, sites = tiny[0], tiny[1]
    hm = HistogramMatchingHarmonizer().fit(imgs, sites)
    hm.save(tmp_path / "hm")  # written as hm.npz
    loaded = load_model(tmp_path / "hm")
    assert isinstance(loaded, HistogramMatchingHarmonizer)
    np.testing.assert_array_equal(loaded.transform(imgs), hm.transform(imgs))
    assert isinstance(load_model(tmp_path / "hm.npz"), HistogramMatchingHarmonizer)
    # an IGUANe model, found by its .pt suffix or saved under .npz
    shutil.copy(DEMO_MODEL_PATH, tmp_path / "iguane.pt")
    shutil.copy(DEMO_MODEL_PATH, tmp_path / "odd.npz")
    for name in ("iguane", "iguane.pt", "odd.npz"):
        model = load_model(tmp_path / name)
        assert isinstance(model, IGUANeHarmonizer) and model.reference_site_ is not None


def test_load_model_errors_name_the_fix(fitted, tmp_path):
    fitted.save(tmp_path / "m.npz")
    (tmp_path / "m.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="Both .* exist; name the model file with its suffix"):
        load_model(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="Model file not found"):
        load_model(tmp_path / "nothing")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError):
        load_model(tmp_path / "junk.npz")


def test_load_model_takes_the_class_from_the_file(tmp_path, monkeypatch):
    """The class named in the file is loaded; a file naming another package's class, or a
    class this version lacks, or none at all, is refused before anything is built."""
    import torch

    payload = torch.load(DEMO_MODEL_PATH, map_location="cpu", weights_only=True)
    calls = []
    monkeypatch.setattr(
        IGUANeHarmonizer, "load", classmethod(lambda cls, path: calls.append((cls, path)))
    )
    torch.save(payload, tmp_path / "ok.pt")
    load_model(tmp_path / "ok.pt")
    assert calls == [(IGUANeHarmonizer, tmp_path / "ok.pt")]
    cases = {
        "other.pt": ("evil.module.Cls", "which is not harmonix's"),
        "gone.pt": ("harmonix.iguane.estimator.NoSuchModel", "does not have"),
        "none.pt": (None, "no class name stored"),
    }
    for name, (cls_name, message) in cases.items():
        torch.save({**payload, "class": cls_name}, tmp_path / name)
        with pytest.raises(ValueError, match=message):
            load_model(tmp_path / name)
    assert len(calls) == 1


def test_to_plain_serves_both_model_formats(tmp_path):
    value = {1: (np.int64(2), np.float32(0.5)), "a": np.arange(3), "p": tmp_path / "m.nii"}
    as_json = to_plain(value)
    assert json.loads(json.dumps(as_json)) == {
        "1": [2, 0.5],
        "a": {"__ndarray_list__": [0, 1, 2]},
        "p": str(tmp_path / "m.nii"),
    }
    for target, expected in (("json", TypeError), ("torch", None)):
        for unsaveable in (np.random.default_rng(0), len):
            if expected is None:
                assert to_plain(unsaveable, target=target) is None  # not saved
            else:
                with pytest.raises(TypeError, match="parameter 'random_state'"):
                    to_plain(unsaveable, "parameter 'random_state'", target=target)
    as_torch = to_plain(value, target="torch")
    assert as_torch == {"1": (2, 0.5), "a": [0, 1, 2], "p": str(tmp_path / "m.nii")}
    assert type(as_torch["1"]) is tuple and type(as_torch["1"][0]) is int
    with pytest.raises(TypeError, match="without pickle"):
        to_plain(object(), target="torch")


@pytest.mark.parametrize(
    ("cls", "attr"),
    [
        (HistogramMatchingHarmonizer, "percentiles_"),
        (WhiteStripeHarmonizer, "width_"),
        (ComBatHarmonizer, "empirical_bayes_"),
    ],
)
def test_fitted_attributes_older_files_lack_are_computed_from_the_parameters(tiny, cls, attr):
    """A model pickled before ``attr`` existed gets it from the stored parameter, equal to
    what fit computes."""
    model = cls().fit(tiny[0], tiny[1])
    state = dict(model.__getstate__())  # a copy: the model keeps its attribute
    del state[attr]
    old = cls.__new__(cls)
    old.__setstate__(state)
    np.testing.assert_array_equal(getattr(old, attr), getattr(model, attr))
    np.testing.assert_array_equal(
        old.transform(tiny[0], tiny[1]), model.transform(tiny[0], tiny[1])
    )
