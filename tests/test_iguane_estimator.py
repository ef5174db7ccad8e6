"""IGUANeHarmonizer: fit/transform, output scale, persistence, devices (tiny, seconds)."""

from __future__ import annotations

import joblib
import nibabel as nib
import numpy as np
import pytest
import torch
from _helpers import make_tiny_images
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from harmonix._version import __version__
from harmonix.iguane.estimator import IGUANeHarmonizer
from harmonix.iguane.model.networks import Generator3D

# voxel_size: the tiny arrays carry none, and augmentation shifts in mm
FAST = dict(
    n_epochs=1, steps_per_epoch=2, base_width=2, val_every=1, random_state=0, voxel_size=1.0
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return make_tiny_images(shape=(12, 14, 12), n_subjects=3, n_sites=3, seed=0)


@pytest.fixture(scope="module")
def fitted(data):
    imgs, sites, ages, _ = data
    return IGUANeHarmonizer(**FAST).fit(imgs, sites, ages)


def _identity_generator(width=2):
    """A generator whose output equals its input (zero residual)."""
    gen = Generator3D(width)
    with torch.no_grad():
        gen.out_conv.weight.zero_()
        gen.out_conv.bias.zero_()
    return gen.eval()


def test_fit_sets_attributes_and_history(fitted, data):
    imgs, sites, _, _ = data
    assert fitted.reference_site_ == "site0"  # ties: the first label
    assert fitted.sites_.tolist() == ["site0", "site1", "site2"]
    assert isinstance(fitted.generator_, Generator3D) and not fitted.generator_.training
    assert next(fitted.generator_.parameters()).device.type == "cpu"
    ref = imgs[sites == "site0"]
    medians = [np.median(img[img != 0]) for img in ref]
    assert fitted.reference_median_ == pytest.approx(np.median(medians), rel=1e-6)
    h = fitted.history_
    assert len(h["loss_generator"]) == 2 and len(h["loss_discriminator"]) == 2
    assert h["val_step"] == [1, 2] and len(h["val_score"]) == 2
    assert h["best_score"] == max(h["val_score"]) and h["val_baseline"] < 0
    assert h["val_indices"] and all(sites[i] != "site0" for i in h["val_indices"])


def test_transform_shapes_background_and_unseen_site(fitted, data):
    imgs, _, _, _ = data
    out = fitted.transform(imgs)
    assert out.shape == imgs.shape and out.dtype == np.float32
    assert (out[imgs == 0] == 0).all() and (out >= 0).all() and np.isfinite(out).all()
    unseen = imgs[:2] * 3.7 + (imgs[:2] != 0) * 0.4  # a new scanner
    assert fitted.transform(unseen).shape == unseen.shape
    bigger = [np.pad(imgs[0], 3), imgs[1][:10]]  # any grid, any number of images
    res = fitted.transform(bigger)
    assert [r.shape for r in res] == [b.shape for b in bigger]
    assert all((r[b == 0] == 0).all() for r, b in zip(res, bigger))


def test_output_scale_is_the_reference_median(fitted, data):
    """With an identity generator, output = image / own median * reference median."""
    imgs, _, _, _ = data
    est = clone(fitted)
    est.__dict__.update({k: v for k, v in vars(fitted).items() if k.endswith("_")})
    est.generator_ = _identity_generator()
    est.reference_median_ = 800.0
    out = est.transform(imgs[3:5])
    for img, o in zip(imgs[3:5], out):
        brain = img != 0
        expected = img / np.median(img[brain]) * 800.0
        np.testing.assert_allclose(o[brain], expected[brain], rtol=1e-5)


def test_fit_with_shapes_that_differ_and_fixed_input_shape(data):
    imgs, sites, ages, _ = data
    mixed = [np.pad(img, ((0, 4), (0, 0), (1, 1))) if i % 2 else img for i, img in enumerate(imgs)]
    est = IGUANeHarmonizer(**{**FAST, "steps_per_epoch": 1}, input_shape=(16, 16, 16))
    est.fit(mixed, sites, ages)
    res = est.transform(mixed[:2])
    assert [r.shape for r in res] == [m.shape for m in mixed[:2]]
    est = IGUANeHarmonizer(**{**FAST, "steps_per_epoch": 1, "patch_size": 16}).fit(mixed, sites)
    assert len(est.history_["loss_cycle"]) == 1


def test_save_load_round_trip(fitted, data, tmp_path):
    imgs, _, _, _ = data
    path = tmp_path / "iguane.pt"
    fitted.save(path)
    loaded = IGUANeHarmonizer.load(path)
    assert loaded.get_params() == fitted.get_params()
    assert loaded._saved_version == __version__
    assert loaded.reference_site_ == fitted.reference_site_
    np.testing.assert_array_equal(loaded.sites_, fitted.sites_)
    assert loaded.history_ == fitted.history_
    assert loaded.reference_median_ == fitted.reference_median_
    np.testing.assert_array_equal(loaded.transform(imgs), fitted.transform(imgs))
    raw = torch.load(path, weights_only=True)  # plain tensors and values only
    assert raw["version"] == __version__ and raw["class"].endswith("IGUANeHarmonizer")


def test_save_handles_paths_and_generators_in_params(data, tmp_path):
    imgs, sites, _, _ = data
    est = IGUANeHarmonizer(
        **{**FAST, "steps_per_epoch": 1, "random_state": np.random.default_rng(0)},
        checkpoint_dir=tmp_path / "ckpt",
    ).fit(imgs, sites)
    est.save(tmp_path / "m.pt")
    loaded = IGUANeHarmonizer.load(tmp_path / "m.pt")
    assert loaded.checkpoint_dir == str(tmp_path / "ckpt") and loaded.random_state is None
    assert (tmp_path / "ckpt" / "iguane_checkpoint.pt").is_file()


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        IGUANeHarmonizer.load(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="Could not read the model .*IGUANeHarmonizer.save"):
        IGUANeHarmonizer.load(tmp_path / "bad.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an IGUANe model"):
        IGUANeHarmonizer.load(tmp_path / "other.pt")
    with pytest.raises(NotFittedError):
        IGUANeHarmonizer().save(tmp_path / "x.pt")


def test_joblib_round_trip(fitted, data, tmp_path):
    imgs, _, _, _ = data
    joblib.dump(fitted, tmp_path / "m.joblib")
    loaded = joblib.load(tmp_path / "m.joblib")
    np.testing.assert_array_equal(loaded.transform(imgs), fitted.transform(imgs))


def test_resume_from_a_finished_checkpoint(data, tmp_path):
    imgs, sites, ages, _ = data
    params = {**FAST, "checkpoint_dir": tmp_path, "checkpoint_every": 1}
    first = IGUANeHarmonizer(**params).fit(imgs, sites, ages)
    again = IGUANeHarmonizer(**params, resume=True).fit(imgs, sites, ages)
    assert again.history_ == first.history_
    np.testing.assert_array_equal(again.transform(imgs[:2]), first.transform(imgs[:2]))
    # the same sites and ages, two images of one site swapped: refused, nothing fitted
    swapped = imgs.copy()
    a, b = np.flatnonzero(sites == "site1")[:2]
    swapped[[a, b]] = imgs[[b, a]]
    other = IGUANeHarmonizer(**params, resume=True)
    with pytest.raises(ValueError, match="the training images"):
        other.fit(swapped, sites, ages)
    assert not hasattr(other, "generator_")
    # the images given as a list, or as files, are the same images: accepted
    paths = []
    for i, img in enumerate(imgs):
        paths.append(str(tmp_path / f"img{i}.nii.gz"))
        nib.save(nib.Nifti1Image(img, np.eye(4)), paths[-1])
    from_files = IGUANeHarmonizer(**params, resume=True).fit(paths, sites, ages)
    assert from_files.history_ == first.history_
    # other input normalization: the networks would see other inputs, refused
    renormalized = IGUANeHarmonizer(**params, resume=True, input_normalization="histogram")
    with pytest.raises(ValueError, match="input_normalization='median' \\(now 'histogram'\\)"):
        renormalized.fit(imgs, sites, ages)
    assert not hasattr(renormalized, "generator_")


def test_invalid_parameters_raise(data):
    imgs, sites, _, _ = data
    for bad, match in [
        ({"patch_size": 20}, "multiple of 16"),
        ({"input_shape": (10, 16, 16)}, "input_shape"),
        ({"base_width": 0}, "base_width"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"device": "tpu"}, "device"),
        ({"cache_size": "big"}, "cache_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            IGUANeHarmonizer(**{**FAST, **bad}).fit(imgs, sites)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_raises(data):
    imgs, sites, _, _ = data
    with pytest.raises(ValueError, match="CUDA is not available"):
        IGUANeHarmonizer(**FAST, device="cuda").fit(imgs, sites)


def test_non_positive_median_names_the_image(data):
    imgs, sites, _, _ = data
    bad = imgs.copy()
    bad[4] = -bad[4]
    with pytest.raises(ValueError, match="Image 4.*positive"):
        IGUANeHarmonizer(**FAST).fit(bad, sites)


@pytest.mark.filterwarnings("ignore::harmonix.iguane.devices.EmulatedBFloat16Warning")
def test_mixed_precision_on_cpu(data):
    imgs, sites, _, _ = data
    est = IGUANeHarmonizer(**{**FAST, "steps_per_epoch": 1}, mixed_precision=True)
    try:
        out = est.fit(imgs, sites).transform(imgs[:2])
    except RuntimeError as exc:  # pragma: no cover - depends on the CPU build
        pytest.skip(f"bfloat16 autocast unsupported here: {exc}")
    assert np.isfinite(out).all() and (out[imgs[:2] == 0] == 0).all()


def test_from_keras_weights(tmp_path, data):
    h5py = pytest.importorskip("h5py")
    from harmonix.iguane.model.keras_weights import _TORCH_TO_KERAS, _expected_params

    torch.manual_seed(0)
    source = Generator3D(16).eval()
    path = tmp_path / "iguane_weights.h5"
    with h5py.File(path, "w") as f:  # a Keras 2 legacy layout holding `source`'s weights
        f.attrs["layer_names"] = [b"generator"]
        group = f.create_group("generator")
        names = []
        for i, (role, param, _) in enumerate(_expected_params(source)):
            array = param.detach().numpy()
            if role == "kernel":
                array = array.transpose(_TORCH_TO_KERAS)
            names.append(f"layer{i}/{role}:0")
            group.create_dataset(names[-1], data=array)
        group.attrs["weight_names"] = [n.encode() for n in names]
    est = IGUANeHarmonizer.from_keras_weights(path, reference_median=500.0, device="cpu")
    assert est.reference_site_ == "SALD" and est.input_shape == (160, 192, 160)
    for a, b in zip(est.generator_.state_dict().values(), source.state_dict().values()):
        assert torch.equal(a, b)
    est.set_params(input_shape=None)  # tiny images: no need for the 1 mm MNI crop
    imgs = data[0][:1]
    out = est.transform(imgs)
    assert out.shape == imgs.shape and (out[imgs == 0] == 0).all()
    with pytest.raises(ValueError, match="base_width=16"):
        IGUANeHarmonizer.from_keras_weights(path, base_width=8)
    with pytest.raises(ValueError, match="reference_median"):
        IGUANeHarmonizer.from_keras_weights(path, reference_median=0)
