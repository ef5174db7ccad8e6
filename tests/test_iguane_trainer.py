"""The state and update step of one IGUANe training (harmonix.iguane.training.trainer)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from _iguane_helpers import TINY_TRAINING, blob_volumes

from harmonix import _threads
from harmonix.iguane.model.networks import Generator3D, glorot_init
from harmonix.iguane.training.config import TrainConfig
from harmonix.iguane.training.sampling import SitePairSampler
from harmonix.iguane.training.trainer import LOSS_NAMES, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

#: The keys of the checkpoint files written since the first release; files written then
#: must load, so these names stay ("forward": the generator to the reference site,
#: "backward": the generators to the source sites).
CHECKPOINT_KEYS = {
    "step",
    "forward",
    "backward",
    "disc_ref",
    "disc_src",
    "opt_forward",
    "opt_backward",
    "opt_disc",
    "sched_forward",
    "sched_backward",
    "sched_disc",
    "scaler_disc",
    "scaler_gen",
    "numpy_rng",
    "torch_rng",
    "history",
    "best_state",
}


def _trainer(seed: int = 0) -> Trainer:
    vols, sites, ages = blob_volumes(sites=("ref", "a", "b"))
    sampler = SitePairSampler(sites, "ref", ages)
    config = TrainConfig(**TINY_TRAINING)
    return Trainer(config, vols, sampler, torch.device("cpu"), np.random.SeedSequence(seed))


def test_generators_are_named_for_their_direction():
    trainer = _trainer()
    assert isinstance(trainer.to_reference, Generator3D)
    assert len(trainer.to_source) == len(trainer.disc_ref) == len(trainer.sources) == 2
    before = [p.detach().clone() for p in trainer.to_reference.parameters()]
    losses = trainer.train_step()
    assert set(losses) == set(LOSS_NAMES) and all(np.isfinite(list(losses.values())))
    # one step updates the generator to the reference once per source site
    assert trainer.opt_to_reference.state_dict()["state"][0]["step"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.to_reference.parameters()))


def test_state_keeps_the_checkpoint_file_keys_and_round_trips():
    trainer = _trainer()
    trainer.train_step()
    state = trainer.state_dict()
    assert set(state) == CHECKPOINT_KEYS
    buffer = io.BytesIO()  # through a file, as a checkpoint (no tensor shared)
    torch.save(state, buffer)
    buffer.seek(0)
    other = _trainer(seed=1)  # other weights and random states
    other.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(trainer.to_source[1].parameters(), other.to_source[1].parameters()):
        assert torch.equal(a, b)
    assert trainer.train_step() == other.train_step()  # the same next step


def test_glorot_init_is_seeded_and_zeroes_the_biases():
    a, b = Generator3D(2), Generator3D(2)
    glorot_init(a, torch.Generator().manual_seed(3))
    glorot_init(b, torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(torch.count_nonzero(m.bias) == 0 for m in a.modules() if hasattr(m, "padding"))


def _threads_seen(trainer: Trainer, monkeypatch) -> list[int]:
    seen: list[int] = []
    update = Trainer._update_discriminators

    def spy(self, k, site):
        seen.append(torch.get_num_threads())
        return update(self, k, site)

    monkeypatch.setattr(Trainer, "_update_discriminators", spy)
    trainer.train_step()
    return seen


def test_auto_site_steps_run_on_the_idle_cores_and_restore_the_setting(monkeypatch):
    asked = []

    def policy(limit=None, *, fair_share=True):
        asked.append(fair_share)
        return 1  # as if one of the two cores were busy

    monkeypatch.setattr(_threads, "inference_threads", policy)
    trainer = _trainer()
    object.__setattr__(trainer.config, "cpu_threads", "auto")  # frozen dataclass
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _threads_seen(trainer, monkeypatch) == [1, 1]  # one per source site
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert asked == [False, False]  # training: one thread when every core is shared


def test_default_threads_do_not_follow_the_load(monkeypatch):
    def unexpected(*args, **kwargs):
        raise AssertionError("the default must not read the machine's load")

    monkeypatch.setattr(_threads, "inference_threads", unexpected)
    trainer = _trainer()
    assert trainer.config.cpu_threads is None
    # PyTorch's setting (1 in the tests), whatever the load
    assert _threads_seen(trainer, monkeypatch) == [torch.get_num_threads()] * 2


def test_cpu_threads_fixes_the_thread_count(monkeypatch):
    monkeypatch.setattr(_threads, "inference_threads", lambda *a, **k: 99)
    trainer = _trainer()
    object.__setattr__(trainer.config, "cpu_threads", 2)  # frozen dataclass
    assert _threads_seen(trainer, monkeypatch) == [2, 2]
    assert torch.get_num_threads() == 1
    for bad in (0, "all", 1.5, True):
        with pytest.raises(ValueError, match="cpu_threads must be None, 'auto'"):
            TrainConfig(cpu_threads=bad)
    assert TrainConfig(cpu_threads="auto").cpu_threads == "auto"


def test_cpu_threads_is_not_part_of_the_checkpoint_settings():
    from harmonix.iguane.training.checkpoints import fingerprint

    sites = np.array(["ref", "a"])
    a = fingerprint(TrainConfig(), sites, "ref", None)
    assert fingerprint(TrainConfig(cpu_threads=3), sites, "ref", None) == a
    assert fingerprint(TrainConfig(cpu_threads="auto"), sites, "ref", None) == a
    assert fingerprint(TrainConfig(base_width=8), sites, "ref", None) != a
