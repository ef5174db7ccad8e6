"""The CPU thread policy (harmonix._threads) and how IGUANe inference uses it: its
logic on scripted machine states, not timings."""

import itertools
import os

import numpy as np
import pytest
import torch

from harmonix import _threads
from harmonix._threads import inference_threads
from harmonix.iguane.inference import harmonize_volume
from harmonix.iguane.model.networks import Generator3D


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
    # on Linux /proc/stat is read; whatever the load, the answers are well-formed (the
    # rule itself is checked on scripted loads above)
    running = _threads._procs_running()
    assert running is None or running >= 1  # the caller itself is runnable
    load = _threads.busy_neighbours()
    if load is not None:
        busy, usable = load
        assert busy >= 0 and 1 <= usable <= (os.cpu_count() or 1)
    n = inference_threads(64)
    assert 1 <= n <= 4 * 64  # 64 when idle, up to 4x with busy neighbours


def _spy_calls(monkeypatch) -> list[tuple[int | None, bool]]:
    """(threads, norms on the call's threads) of every harmonize_volume call."""
    from harmonix.iguane._kernels import fused_inference

    seen = []
    real = _threads.intraop_threads

    def spy(n):
        seen.append((n, None))
        return real(n)

    def record_norms(module, x):
        n, _ = seen[-1]
        seen[-1] = (n, not fused_inference._NORMS_SINGLE_THREAD.get())

    monkeypatch.setattr(_threads, "intraop_threads", spy)
    g = Generator3D(base_width=2).eval()
    g.enc_convs[0].norm.register_forward_pre_hook(record_norms)
    g.fused_inference = False  # the plain pass calls the norm modules (hook above)
    return seen, g


def test_harmonize_volume_follows_the_load_only_when_asked(monkeypatch):
    seen, g = _spy_calls(monkeypatch)
    x = np.zeros((16, 16, 16), np.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(2)

    def unexpected():
        raise AssertionError("the default must not read the machine's load")

    try:
        monkeypatch.setattr(_threads, "busy_neighbours", unexpected)
        harmonize_volume(g, x)  # default: PyTorch's setting, whatever the load
        harmonize_volume(g, x, num_threads=1)  # an explicit count
        monkeypatch.setattr(_threads, "busy_neighbours", lambda: (1, 2))  # one core busy
        harmonize_volume(g, x, num_threads="auto")
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="'auto'"):
            harmonize_volume(g, x, num_threads="all")
    finally:
        torch.set_num_threads(before)
    # the default: no thread change (None), norms on one thread; "auto" with one busy
    # neighbour on 2 cores: 2 + 2 threads
    assert seen == [(None, False), (1, False), (4, False)]


def test_auto_norms_use_the_call_threads_only_on_an_idle_machine(monkeypatch):
    seen, g = _spy_calls(monkeypatch)
    x = np.zeros((16, 16, 16), np.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for load in ((0, 2), (1, 2), (3, 2), None):
            monkeypatch.setattr(_threads, "busy_neighbours", lambda load=load: load)
            harmonize_volume(g, x, num_threads="auto")
        harmonize_volume(g, x, num_threads=2)  # the caller's count: the default (one thread)
    finally:
        torch.set_num_threads(before)
    assert seen == [(2, True), (4, False), (8, False), (2, False), (2, False)]


def test_norms_on_call_threads_lifts_the_one_thread_rule():
    from harmonix.iguane._kernels import fused_inference as fi

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


def test_norm_results_do_not_depend_on_the_thread_count():
    # why the norms may change threads with the load ("auto") without changing outputs:
    # their reductions never split a reduced axis between threads
    from harmonix.iguane._kernels import fused_inference as fi
    from harmonix.iguane.model.networks import MADInstanceNorm3d

    torch.manual_seed(0)
    before = torch.get_num_threads()
    try:
        layouts = (torch.channels_last_3d, torch.contiguous_format, torch.contiguous_format)
        for c, layout in zip((16, 2, 1), layouts):
            norm = MADInstanceNorm3d(c)
            x = (torch.randn(1, c, 21, 40, 33) * 3 + 1).contiguous(memory_format=layout)
            outs = []
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                with torch.inference_mode(), fi.norms_on_call_threads():
                    outs.append(fi.relu_mad_norm_(x.clone(), norm))
            assert all(torch.equal(o, outs[0]) for o in outs[1:]), (c, layout)
    finally:
        torch.set_num_threads(before)


def test_default_fits_ignore_the_load_auto_reads_it(monkeypatch):
    # two default fits with one random_state, on a simulated idle machine and next to two
    # simulated busy processes: the default never reads the load, so the models are equal
    from _helpers import make_tiny_images

    from harmonix.iguane.estimator import IGUANeHarmonizer

    imgs, sites, ages, _ = make_tiny_images(shape=(12, 14, 12), n_subjects=3, n_sites=2)
    reads = []

    def fit(load, **params):
        def simulated(*args, **kwargs):
            reads.append(load)
            return load

        monkeypatch.setattr(_threads, "busy_neighbours", simulated)
        est = IGUANeHarmonizer(
            n_epochs=1, steps_per_epoch=2, base_width=2, random_state=0, voxel_size=1.0
        )
        return est.set_params(**params).fit(imgs, sites, ages)

    idle, loaded = fit((0, 2)), fit((2, 2))
    assert reads == []
    for key, value in idle.generator_.state_dict().items():
        assert torch.equal(value, loaded.generator_.state_dict()[key]), key
    assert np.array_equal(idle.transform(imgs), loaded.transform(imgs))
    assert reads == []
    fit((2, 2), cpu_threads="auto").transform(imgs[:1])
    assert len(reads) >= 2  # every site-step and every transform call reads it
