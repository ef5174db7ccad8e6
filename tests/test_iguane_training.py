"""The IGUANe training loop (harmonix.iguane.training.loop; tiny volumes, seconds)."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import numpy as np
import pytest
import torch
from _iguane_helpers import TINY_TRAINING, blob_volumes

from harmonix.iguane.devices import resolve_device
from harmonix.iguane.inputs import volumes as D
from harmonix.iguane.training import loop as T
from harmonix.iguane.training.checkpoints import CHECKPOINT_NAME, load_checkpoint
from harmonix.iguane.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


_volumes = blob_volumes
FAST = TINY_TRAINING


# -- device ------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_raises():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    vols, sites, _ = _volumes()
    with pytest.raises(ValueError, match="CUDA is not available"):
        T.train(vols, sites, "ref", config=TrainConfig(**FAST), device="cuda")


# -- training ------------------------------------------------------------------------------
def _states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), key
        elif isinstance(va, dict):
            _states_equal(va, vb)
        elif isinstance(va, list | tuple):
            assert len(va) == len(vb), key
            for x, y in zip(va, vb):
                _states_equal({"v": x}, {"v": y})
        else:
            assert va == vb, key


def test_train_history_validation_and_global_rng(tmp_path):
    vols, sites, ages = _volumes()
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
    result = T.train(vols, sites, "ref", ages, TrainConfig(**FAST), random_state=0)
    assert torch.equal(torch.get_rng_state(), torch_state)  # no global seeding
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()  # noqa: NPY002
    h = result.history
    assert result.step == 4 and result.completed and result.device == "cpu"
    assert all(len(h[k]) == 4 for k in ("loss_discriminator", "loss_cycle", "loss_generator"))
    assert all(np.isfinite(h["loss_generator"]))
    assert h["val_step"] == [2, 4] and h["val_baseline"] is not None
    assert h["best_score"] == max(h["val_score"])
    best = max(h["val_score"])  # ties go to the later checkpoint
    assert h["best_step"] == max(s for s, v in zip(h["val_step"], h["val_score"]) if v == best)
    assert result.val_indices and all(sites[i] != "ref" for i in result.val_indices)
    assert not result.generator.training
    assert next(result.generator.parameters()).device.type == "cpu"


def test_four_steps_equal_two_plus_resume_plus_two(tmp_path):
    vols, sites, ages = _volumes()
    config = TrainConfig(**{**FAST, "augment": True})

    def run(folder: str, **kwargs) -> T.TrainResult:
        folder = tmp_path / folder
        return T.train(vols, sites, "ref", ages, config, checkpoint_dir=folder, **kwargs)

    full = run("a", random_state=7)
    first = run("b", max_steps=2, random_state=7)
    assert first.step == 2 and not first.completed
    # every random state comes from the checkpoint: random_state is ignored
    resumed = run("b", resume=True, random_state=123)
    assert resumed.step == 4 and resumed.completed
    assert resumed.history == full.history
    _states_equal(full.generator.state_dict(), resumed.generator.state_dict())
    a = load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME)
    b = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    _states_equal(a["trainer"], b["trainer"])  # weights, optimizers, schedulers, RNGs


def test_resume_refuses_other_settings_and_restarts_without_checkpoint(tmp_path):
    vols, sites, ages = _volumes()
    config = TrainConfig(**{**FAST, "steps_per_epoch": 1})
    T.train(vols, sites, "ref", ages, config, checkpoint_dir=tmp_path, random_state=0)
    other = dataclasses.replace(config, cycle_weight=10.0)
    with pytest.raises(ValueError, match="cycle_weight"):
        T.train(vols, sites, "ref", ages, other, checkpoint_dir=tmp_path, resume=True)
    fresh = T.train(
        vols,
        sites,
        "ref",
        ages,
        config,
        checkpoint_dir=tmp_path / "empty",
        resume=True,
        random_state=0,
    )
    assert fresh.step == 1


def test_resume_refuses_other_or_permuted_images(tmp_path):
    vols, sites, ages = _volumes(n_per_site=3)
    config = TrainConfig(**FAST)
    T.train(vols, sites, "ref", ages, config, checkpoint_dir=tmp_path, max_steps=2, random_state=0)
    # the same sites and ages, two images of site "a" swapped: other data
    swapped = list(vols)
    swapped[3], swapped[4] = vols[4], vols[3]
    with pytest.raises(ValueError, match="training images"):
        T.train(swapped, sites, "ref", ages, config, checkpoint_dir=tmp_path, resume=True)
    edited = list(_volumes(n_per_site=3)[0])
    x, mask = edited[0]
    edited[0] = (np.where(mask, x + 0.01, x).astype(np.float32), mask)
    with pytest.raises(ValueError, match="training images"):
        T.train(edited, sites, "ref", ages, config, checkpoint_dir=tmp_path, resume=True)
    # the digest given by the caller (the estimator's, of the raw images) is the one used
    with pytest.raises(ValueError, match="training images"):
        T.train(
            _volumes(n_per_site=3)[0],
            sites,
            "ref",
            ages,
            config,
            checkpoint_dir=tmp_path,
            resume=True,
            data_digest="0123456789abcdef",
        )
    done = T.train(
        _volumes(n_per_site=3)[0], sites, "ref", ages, config, checkpoint_dir=tmp_path, resume=True
    )
    assert done.step == 4 and done.completed


def test_checkpoint_of_an_older_harmonix_names_the_missing_digest():
    from harmonix.iguane.training.checkpoints import describe_mismatch, fingerprint

    vols, sites, ages = _volumes()
    config = TrainConfig(**FAST)
    old = json.loads(fingerprint(config, sites, "ref", ages))
    del old["images"]
    now = fingerprint(config, sites, "ref", ages, images="0123456789abcdef")
    assert "no digest of its images" in describe_mismatch(json.dumps(old), now)


def test_scoring_returning_nan_is_an_error_not_a_silent_last_model():
    vols, sites, ages = _volumes()
    config = TrainConfig(**FAST)
    with pytest.raises(ValueError, match=r"returned nan for the unharmonized"):
        T.train(vols, sites, "ref", ages, config, scoring=lambda *a: float("nan"))
    scores = iter([0.0, float("nan")])  # the baseline is fine, the first checkpoint is not
    with pytest.raises(ValueError, match=r"returned nan for the generator at step 2"):
        T.train(vols, sites, "ref", ages, config, scoring=lambda *a: next(scores))
    with pytest.raises(TypeError, match="must return a number"):
        T.train(vols, sites, "ref", ages, config, scoring=lambda *a: None)


def test_selected_model_below_the_baseline_warns_and_is_flagged():
    from harmonix.exceptions import ModelSelectionWarning

    vols, sites, ages = _volumes()
    config = TrainConfig(**FAST)

    def closeness_to_input(harmonize, volumes, labels):
        # best when the images are left alone: every trained generator scores below that
        return -float(np.mean([np.abs(harmonize(x, m) - x)[m].mean() for x, m in volumes]))

    with pytest.warns(ModelSelectionWarning, match="below the unharmonized images"):
        result = T.train(vols, sites, "ref", ages, config, scoring=closeness_to_input)
    h = result.history
    assert h["best_score"] < h["val_baseline"] == 0.0
    assert h["selected_below_baseline"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelSelectionWarning)
        result = T.train(vols, sites, "ref", ages, config, scoring=lambda *a: 1.0)  # ties
    assert result.history["selected_below_baseline"] is False
    no_val = T.train(vols, sites, "ref", ages, dataclasses.replace(config, val_fraction=0.0))
    assert no_val.history["selected_below_baseline"] is None


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    vols, sites, ages = _volumes()
    config = TrainConfig(**{**FAST, "steps_per_epoch": 3, "checkpoint_every": 1})
    T.train(vols, sites, "ref", ages, config, checkpoint_dir=tmp_path, max_steps=1, random_state=0)
    path = tmp_path / CHECKPOINT_NAME
    good = path.read_bytes()
    # a crash in the middle of writing the next checkpoint leaves the good one in place
    real_save = torch.save

    def crashing_save(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        T.train(vols, sites, "ref", ages, config, checkpoint_dir=tmp_path, resume=True)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]  # the temporary file was removed
    # a stray partial temporary file (e.g. from a killed process) is ignored on resume
    (tmp_path / f".{CHECKPOINT_NAME}.abc123.tmp").write_bytes(b"garbage")
    out = T.train(vols, sites, "ref", ages, config, checkpoint_dir=tmp_path, resume=True)
    assert out.step == 3 and out.completed
    assert load_checkpoint(path)["trainer"]["step"] == 3
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Could not read the checkpoint"):
        T.train(vols, sites, "ref", ages, config, checkpoint_dir=tmp_path, resume=True)


def test_patches_batches_and_mixed_shapes():
    vols, sites, ages = _volumes(shape=(32, 32, 16))
    small, _, _ = _volumes(shape=(16, 16, 16), seed=1)
    vols = vols[:-1] + [small[0]]  # one volume of another shape
    config = TrainConfig(
        **{**FAST, "steps_per_epoch": 1, "patch_size": 16, "batch_size": 2, "val_fraction": 0}
    )
    result = T.train(vols, sites, "ref", ages, config, random_state=0)
    assert result.history["val_step"] == [] and result.history["best_step"] is None
    whole = TrainConfig(**{**FAST, "steps_per_epoch": 1, "batch_size": 2})
    assert T.train(vols, sites, "ref", ages, whole, random_state=0).completed


@pytest.mark.filterwarnings("ignore::harmonix.iguane.devices.EmulatedBFloat16Warning")
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_autocast_code_path_on_cpu(amp_dtype):
    vols, sites, _ = _volumes()
    config = TrainConfig(
        **{**FAST, "steps_per_epoch": 2, "mixed_precision": True, "amp_dtype": amp_dtype}
    )
    try:
        result = T.train(vols, sites, "ref", config=config, random_state=0)
    except RuntimeError as exc:  # pragma: no cover - depends on the CPU build
        pytest.skip(f"{amp_dtype} autocast unsupported on this CPU build: {exc}")
    assert np.isfinite(result.history["loss_generator"]).all()
    assert np.isfinite(result.history["val_score"]).all()
    for name, value in result.generator.state_dict().items():
        assert torch.isfinite(value).all(), name


def test_same_seed_same_result_and_progress_bar(capsys):
    vols, sites, _ = _volumes()
    config = TrainConfig(**{**FAST, "steps_per_epoch": 2})
    a = T.train(vols, sites, "ref", config=config, random_state=5, verbose=1)
    b = T.train(vols, sites, "ref", config=config, random_state=5)
    assert a.history == b.history
    _states_equal(a.generator.state_dict(), b.generator.state_dict())
    assert "IGUANe training" in capsys.readouterr().err


def test_identity_init_starts_generators_as_identity():
    vols, sites, _ = _volumes()
    config = TrainConfig(
        **{**FAST, "steps_per_epoch": 1, "identity_init": True, "val_fraction": 0},
        learning_rate=1e-12,
        final_learning_rate=1e-12,
    )
    gen = T.train(vols, sites, "ref", config=config, random_state=0).generator
    x, mask = (torch.from_numpy(a) for a in vols[3])
    with torch.no_grad():
        y = gen(D.network_input(x, mask)[None, None])[0, 0]
    torch.testing.assert_close(y[mask], x[mask], atol=1e-5, rtol=0)
