"""IGUANe training settings (harmonix.iguane.training.config) and their validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from harmonix.iguane.model import losses as L
from harmonix.iguane.model.networks import size_triple
from harmonix.iguane.training import config as C


def test_train_config_validates():
    assert C.TrainConfig(patch_size=32).patch_size == (32, 32, 32)
    assert C.TrainConfig(voxel_size=[2, 2, 3]).voxel_size == (2.0, 2.0, 3.0)
    assert C.TrainConfig().discriminator_width == 64
    assert C.TrainConfig().n_steps == 100 * 200
    with pytest.raises(ValueError, match="multiple of 16"):
        C.TrainConfig(patch_size=20)
    with pytest.raises(ValueError, match="n_epochs"):
        C.TrainConfig(n_epochs=0)
    with pytest.raises(ValueError, match="val_fraction"):
        C.TrainConfig(val_fraction=1.5)
    with pytest.raises(ValueError, match="amp_dtype"):
        C.TrainConfig(amp_dtype="int8")
    with pytest.raises(ValueError, match="lr_schedule"):
        C.TrainConfig(lr_schedule="cosine")
    with pytest.raises(dataclasses.FrozenInstanceError):
        C.TrainConfig().n_epochs = 3


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("learning_rate", 0.0, "learning_rate must be a positive number"),
        ("adam_eps", float("nan"), "adam_eps must be a positive number"),
        ("final_learning_rate", -1e-5, "final_learning_rate must be a non-negative number"),
        ("final_learning_rate", float("inf"), "final_learning_rate must be a non-negative"),
        ("cycle_weight", -1.0, "cycle_weight must be a non-negative number"),
        ("shift_mm", "5", "shift_mm must be a non-negative number"),
        ("warmup_steps", True, "warmup_steps must be an integer >= 0"),
        ("beta1", 1.0, r"beta1 must be in \[0, 1\)"),
    ],
)
def test_train_config_refuses_bad_numbers(name, value, message):
    with pytest.raises(ValueError, match=message):
        C.TrainConfig(**{name: value})


def test_zero_is_accepted_where_non_negative():
    config = C.TrainConfig(final_learning_rate=0.0, cycle_weight=0, shift_mm=0, warmup_steps=0)
    assert config.max_shift_voxels == (0, 0, 0)


def test_default_loss_weights_are_the_losses_module_ones():
    config = C.TrainConfig()
    assert (config.cycle_weight, config.identity_weight) == (L.CYCLE_WEIGHT, L.IDENTITY_WEIGHT)
    assert (L.CYCLE_WEIGHT, L.IDENTITY_WEIGHT) == (30.0, 15.0)  # the published weights


def test_size_triple_accepts_multiples_of_the_generator_size():
    assert size_triple((32, 48, 16)) == (32, 48, 16)
    assert size_triple([np.int64(160), 192, 160]) == (160, 192, 160)
    assert size_triple(32, allow_int=True) == (32, 32, 32)
    for bad in (32, (32, 32), (32, 32, 20), (0, 16, 16), (16, 16, None)):
        assert size_triple(bad) is None, bad
    assert size_triple(True, allow_int=True) is None
