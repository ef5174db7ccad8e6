"""The thread policy of IGUANe inference (harmonix.iguane.inference.inference_threads): its
logic on scripted machine states, not timings."""

import itertools

import numpy as np
import pytest
import torch

from harmonix.iguane import inference
from harmonix.iguane.inference import harmonize_volume, inference_threads
from harmonix.iguane.networks import Generator3D


def _reader(*values):
    """A runnable-task reader returning ``values`` in turn (then the last one forever)."""
    it = itertools.chain(values, itertools.repeat(values[-1]))
    return lambda: next(it)


@pytest.mark.parametrize(
    ("running", "cores", "limit", "expected"),
    [
        (1, (2, 2), 2, 2),  # idle 2-core machine: only the caller runs -> both cores
        (2, (2, 2), 2, 4),  # one busy neighbour -> 2 more threads (a larger fair share)
        (3, (2, 2), 2, 6),  # two busy neighbours
        (9, (2, 2), 2, 8),  # heavily loaded: at most 4x the limit
        (2, (4, 4), 4, 6),  # one busy neighbour on 4 cores
        (1, (8, 8), 4, 4),  # idle, but the user limited PyTorch to 4 threads
        (4, (8, 8), 4, 4),  # ... which stays the cap with busy neighbours
        (4, (8, 8), 8, 14),  # 3 busy neighbours on 8 cores
        (1, (2, 2), 1, 1),  # torch.set_num_threads(1) is respected on an idle machine
        (17, (4, 64), 4, 6),  # pinned to 4 of 64 cores: 16 busy tasks -> 1 on our cores
    ],
)
def test_thread_rule(running, cores, limit, expected):
    assert inference_threads(limit, read_running=_reader(running), cores=cores) == expected


def test_without_fair_share_the_free_cores_at_least_one():
    for running, expected in ((1, 2), (2, 1), (3, 1), (9, 1)):
        n = inference_threads(2, fair_share=False, read_running=_reader(running), cores=(2, 2))
        assert n == expected
    n = inference_threads(8, fair_share=False, read_running=_reader(4), cores=(8, 8))
    assert n == 5  # 3 busy neighbours on 8 cores


def test_median_ignores_a_short_spike():
    # a task that was runnable in one sample only does not count
    assert inference_threads(2, read_running=_reader(1, 5, 1, 1, 1), cores=(2, 2)) == 2
    # a neighbour busy in most samples does
    assert inference_threads(2, read_running=_reader(2, 2, 1, 2, 2), cores=(2, 2)) == 4


def test_unknown_load_uses_the_limit():
    assert inference_threads(2, read_running=lambda: None, cores=(2, 2)) == 2
    assert inference_threads(read_running=lambda: None, cores=(2, 2)) == torch.get_num_threads()


def test_reads_this_machine():
    # on Linux /proc/stat is read; anywhere the answer is a valid thread count: 64 on an
    # idle machine, up to 4x that with busy neighbours (fair share)
    n = inference_threads(64)
    assert 1 <= n <= 4 * 64
    running = inference._procs_running()
    assert running is None or running >= 1  # the caller itself is runnable


def _spy_calls(monkeypatch) -> list[tuple[int | None, bool]]:
    """(threads, norms on the call's threads) of every harmonize_volume call."""
    from harmonix.iguane import fused_inference

    seen = []
    real = inference.intraop_threads

    def spy(n):
        seen.append((n, None))
        return real(n)

    def record_norms(module, x):
        n, _ = seen[-1]
        seen[-1] = (n, not fused_inference._NORMS_SINGLE_THREAD.get())

    monkeypatch.setattr(inference, "intraop_threads", spy)
    g = Generator3D(base_width=2).eval()
    g.enc_convs[0].norm.register_forward_pre_hook(record_norms)
    g.fused_inference = False  # the plain pass calls the norm modules (hook above)
    return seen, g


def test_harmonize_volume_uses_the_policy(monkeypatch):
    seen, g = _spy_calls(monkeypatch)
    monkeypatch.setattr(inference, "busy_neighbours", lambda: (1, 2))  # one core busy
    x = np.zeros((16, 16, 16), np.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        harmonize_volume(g, x)
        harmonize_volume(g, x, num_threads=1)  # an explicit count bypasses the rule
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert [n for n, _ in seen] == [4, 1]  # one busy neighbour on 2 cores: 2 + 2 threads


def test_norms_use_the_call_threads_only_on_an_idle_machine(monkeypatch):
    seen, g = _spy_calls(monkeypatch)
    x = np.zeros((16, 16, 16), np.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for load in ((0, 2), (1, 2), (3, 2), None):
            monkeypatch.setattr(inference, "busy_neighbours", lambda load=load: load)
            harmonize_volume(g, x)
        harmonize_volume(g, x, num_threads=2)  # the caller's count: the default (one thread)
    finally:
        torch.set_num_threads(before)
    assert seen == [(2, True), (4, False), (8, False), (2, False), (2, False)]


def test_norms_on_call_threads_lifts_the_one_thread_rule():
    from harmonix.iguane import fused_inference as fi

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with fi._single_intraop_thread("cpu"):
            assert torch.get_num_threads() == 1
        with fi.norms_on_call_threads(), fi._single_intraop_thread("cpu"):
            assert torch.get_num_threads() == 2
        with fi.norms_on_call_threads(False), fi._single_intraop_thread("cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
