"""IGUANe losses, sampling, augmentation and the training loop (tiny volumes, seconds)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from _iguane_helpers import TINY_TRAINING, blob_volumes
from hypothesis import given, settings
from hypothesis import strategies as st

from harmonix.iguane import data as D
from harmonix.iguane import losses as L
from harmonix.iguane import training as T

pytestmark = pytest.mark.usefixtures("one_thread")


_volumes = blob_volumes
FAST = TINY_TRAINING


# -- losses --------------------------------------------------------------------------------
def test_lsgan_losses_have_no_half_factor():
    ones, zeros = torch.ones(2, 1, 3, 3, 3), torch.zeros(2, 1, 3, 3, 3)
    assert L.discriminator_loss(ones, zeros).item() == 0.0
    assert L.discriminator_loss(zeros, ones).item() == 2.0
    half = torch.full((4,), 0.5)
    assert L.discriminator_loss(half, half).item() == pytest.approx(0.5)
    assert L.generator_adversarial_loss(ones).item() == 0.0
    assert L.generator_adversarial_loss(zeros).item() == 1.0
    assert L.generator_adversarial_loss(torch.tensor([3.0, 1.0])).item() == pytest.approx(2.0)


def test_l1_cycle_identity_and_weights():
    a, b = torch.zeros(1, 1, 2, 2, 2), torch.full((1, 1, 2, 2, 2), 0.5)
    assert L.l1_loss(a, b).item() == pytest.approx(0.5)
    assert L.cycle_loss(a, b, a, a + 2).item() == pytest.approx(2.5)
    assert L.identity_loss(a, b).item() == pytest.approx(0.5)
    total = L.generator_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0))
    assert total.item() == pytest.approx(1 + 30 * 2 + 15 * 3)
    assert (L.CYCLE_WEIGHT, L.IDENTITY_WEIGHT) == (30.0, 15.0)
    with pytest.raises(ValueError, match="Shapes differ"):
        L.l1_loss(a, torch.zeros(2))


def test_losses_are_float32_for_half_inputs():
    x = torch.rand(1, 1, 4, 4, 4).half()
    assert L.discriminator_loss(x, x).dtype == torch.float32
    assert L.l1_loss(x, x.bfloat16()).dtype == torch.float32


def test_joint_loss_gives_each_generator_its_own_gradient():
    """adv_f + adv_b + 30 cyc + 15 (id_f + id_b) == the original's separate losses."""
    torch.manual_seed(0)
    src, ref = torch.rand(5), torch.rand(5)
    f, b = torch.tensor(1.3, requires_grad=True), torch.tensor(0.7, requires_grad=True)
    d_ref, d_src = (lambda x: x.mean() * 0.9), (lambda x: x.mean() * 1.1)

    def terms():
        fake_ref, fake_src = f * src, b * ref
        adv_f = L.generator_adversarial_loss(d_ref(fake_ref))
        adv_b = L.generator_adversarial_loss(d_src(fake_src))
        cyc = L.cycle_loss(src, b * fake_ref, ref, f * fake_src)
        return adv_f, adv_b, cyc, L.identity_loss(ref, f * ref), L.identity_loss(src, b * src)

    adv_f, adv_b, cyc, id_f, id_b = terms()
    joint = L.generator_loss(adv_f + adv_b, cyc, id_f + id_b)
    g_f, g_b = torch.autograd.grad(joint, (f, b))
    adv_f, adv_b, cyc, id_f, id_b = terms()
    own_f = torch.autograd.grad(L.generator_loss(adv_f, cyc, id_f), f)[0]
    adv_f, adv_b, cyc, id_f, id_b = terms()
    own_b = torch.autograd.grad(L.generator_loss(adv_b, cyc, id_b), b)[0]
    torch.testing.assert_close(g_f, own_f)
    torch.testing.assert_close(g_b, own_b)


# -- intensity scale -----------------------------------------------------------------------
def test_prepare_volume_scale_grid_and_inverse():
    rng = np.random.default_rng(0)
    data = np.zeros((12, 14, 12), np.float32)
    data[2:10, 3:11, 2:10] = rng.uniform(50, 150, (8, 8, 8))
    original = data.copy()
    p = D.prepare_volume(data)
    np.testing.assert_array_equal(data, original)
    assert p.x.shape == (16, 16, 16) and p.x.dtype == np.float32
    assert (p.x[~p.mask] == -1).all() and p.mask.sum() == (data != 0).sum()
    assert np.median(p.x[p.mask]) == pytest.approx(0.0, abs=1e-6)
    back = p.change.invert(D.from_network_scale(p.x, p.mask))
    median = np.median(data[data != 0])
    np.testing.assert_allclose(back, data * 500 / median, rtol=1e-5, atol=1e-3)
    fixed = D.prepare_volume(data, input_shape=(32, 16, 16))
    assert fixed.x.shape == (32, 16, 16)


def test_negative_median_is_refused():
    with pytest.raises(ValueError, match="positive intensities"):
        D.brain_median(-np.ones((4, 4, 4)))


def test_network_input_zeroes_background():
    x = torch.tensor([-1.0, 0.5, -0.25])
    m = torch.tensor([False, True, True])
    assert D.network_input(x, m).tolist() == [0.0, 0.5, -0.25]


def test_volume_loader_caches_lru():
    calls = []
    images = [np.full((4, 4, 4), float(i + 1), np.float32) for i in range(3)]

    def get(i):
        calls.append(i)
        return images[i]

    loader = D.VolumeLoader(get, [1.0, 2.0, 3.0], cache_size=2)
    assert len(loader) == 3
    loader[0], loader[1], loader[0], loader[2], loader[1]
    assert calls == [0, 1, 2, 1]  # 1 was evicted when 2 came in (0 was used more recently)
    x, mask = loader[0]
    assert x.shape == (16, 16, 16) and mask.sum() == 64


# -- age-balanced sampling -----------------------------------------------------------------
def test_age_bin_probabilities_common_distribution():
    src = [20, 21, 22, 31, 41, 42, 70]
    ref = [25, 26, 27, 28, 35, 36, 44]
    edges, probs = D.age_bin_probabilities(src, ref, bin_width=10)
    np.testing.assert_allclose(edges, [25, 35, 45])  # shared range 25..44
    # src: [25,35) 1/7, [35,45] 2/7 ; ref: 4/7, 3/7 -> min 1/7, 2/7
    np.testing.assert_allclose(probs, [1 / 3, 2 / 3])
    _, none = D.age_bin_probabilities([10, 12], [50, 60])
    assert none.size == 0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0, 100), min_size=1, max_size=30),
    st.lists(st.floats(0, 100), min_size=1, max_size=30),
    st.floats(0.5, 20),
)
def test_age_bin_probabilities_properties(src, ref, width):
    edges, probs = D.age_bin_probabilities(src, ref, width)
    if probs.size == 0:
        return
    assert probs.sum() == pytest.approx(1.0) and (probs >= 0).all()
    src_bins = D._bin_of(np.asarray(src), edges)
    ref_bins = D._bin_of(np.asarray(ref), edges)
    for b in range(len(probs)):  # a bin missing on either side gets 0
        if not ((src_bins == b).any() and (ref_bins == b).any()):
            assert probs[b] == 0


def test_sampler_balances_ages_and_orders_pairs():
    rng = np.random.default_rng(0)
    ref_ages = np.concatenate([rng.uniform(20, 40, 30), rng.uniform(40, 80, 10)])
    src_ages = np.concatenate([rng.uniform(20, 40, 8), rng.uniform(40, 80, 32)])
    sites = np.array(["ref"] * 40 + ["s"] * 40)
    ages = np.concatenate([ref_ages, src_ages])
    sampler = D.SitePairSampler(sites, "ref", ages, age_bin_width=10)
    assert sampler.source_sites == ["s"] and sampler.balanced == {"s": True}
    pairs = [sampler.sample("s", rng) for _ in range(4000)]
    assert all(isinstance(p, D.Pair) for p in pairs)
    assert all(sites[p.source] == "s" and sites[p.reference] == "ref" for p in pairs)
    src_drawn = ages[[p.source for p in pairs]]
    ref_drawn = ages[[p.reference for p in pairs]]
    edges, probs = D.age_bin_probabilities(src_ages, ref_ages, 10)
    src_bins, ref_bins = D._bin_of(src_drawn, edges), D._bin_of(ref_drawn, edges)
    np.testing.assert_array_equal(src_bins, ref_bins)  # both images of a pair share a bin
    freq = np.bincount(src_bins, minlength=len(probs))[: len(probs)] / len(pairs)
    np.testing.assert_allclose(freq, probs, atol=0.03)
    # unbalanced sampling draws 80 % of the sources above 40; the common distribution
    # (bin-wise minimum: 0.1, 0.1 below 40 and 4 x 0.0625 above) about 56 %
    assert 0.45 < (src_drawn > 40).mean() < 0.67


def test_sampler_without_ages_respects_indices():
    sites = np.array(["r", "r", "r", "a", "a", "b"])
    sampler = D.SitePairSampler(sites, "r", indices=[0, 1, 3, 5])
    rng = np.random.default_rng(1)
    seen = {sampler.sample(s, rng) for s in ("a", "b") for _ in range(50)}
    assert {p.source for p in seen} == {3, 5} and {p.reference for p in seen} == {0, 1}
    with pytest.raises(ValueError, match="no training image"):
        D.SitePairSampler(sites, "r", indices=[0, 3])


def test_sampler_falls_back_when_ages_do_not_overlap():
    sites = np.array(["r", "r", "a", "a"])
    sampler = D.SitePairSampler(sites, "r", [20, 25, 70, 75])
    assert sampler.balanced == {"a": False}
    assert sampler.sample("a", np.random.default_rng(0)).source in (2, 3)


# -- augmentation and patches --------------------------------------------------------------
def _blob():
    x = -torch.ones(16, 20, 24)
    m = torch.zeros(16, 20, 24, dtype=torch.bool)
    m[4:12, 5:15, 6:18] = True
    x[m] = torch.linspace(-0.5, 1.5, int(m.sum()))
    return x, m


def test_rotation_keeps_background_and_rethresholds_mask():
    x, m = _blob()
    same_x, same_m = D.rotate_volume(x, m, 0.0, (0, 2))
    assert torch.equal(same_m, m) and torch.allclose(same_x, x, atol=1e-5)
    for plane in D.ROTATION_PLANES:
        rx, rm = D.rotate_volume(x, m, 9.0, plane)
        assert rm.dtype == torch.bool
        assert (rx[~rm] == -1).all()
        assert (rx[rm] >= -1).all() and rx[rm].max() <= x.max() + 1e-5
        assert abs(int(rm.sum()) - int(m.sum())) < 0.1 * int(m.sum())


def test_shift_moves_content_and_fills_background():
    x, m = _blob()
    sx, sm = D.shift_volume(x, m, (2, -3, 0))
    assert torch.equal(sx[2:, :-3], x[:-2, 3:]) and torch.equal(sm[2:, :-3], m[:-2, 3:])
    assert (sx[:2] == -1).all() and not sm[:2].any() and (sx[:, -3:] == -1).all()


def test_augment_is_reproducible_and_clean():
    x, m = _blob()
    a = D.augment(x, m, np.random.default_rng(3))
    b = D.augment(x, m, np.random.default_rng(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for seed in range(10):
        ax, am = D.augment(x, m, np.random.default_rng(seed))
        assert (ax[~am] == -1).all() and am.any()
        assert (ax >= -1).all()


def test_crop_patch_contains_center_and_pads():
    x, m = _blob()
    px, pm = D.crop_patch(x, m, (16, 16, 16), (10, 1, 23))
    assert px.shape == (16, 16, 16)
    px, pm = D.crop_patch(x, m, (32, 16, 16), (8, 10, 12))  # padded along axis 0
    assert px.shape == (32, 16, 16) and pm.sum() == m[:, 2:18, 4:20].sum()
    assert (px[~pm] == -1).all()
    center = D.random_brain_voxel(m, np.random.default_rng(0))
    assert m[center]


# -- device ------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_raises():
    with pytest.raises(ValueError, match="CUDA is not available"):
        T.resolve_device("cuda")
    vols, sites, _ = _volumes()
    with pytest.raises(ValueError, match="CUDA is not available"):
        T.train(vols, sites, "ref", config=T.TrainConfig(**FAST), device="cuda")


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
    result = T.train(vols, sites, "ref", ages, T.TrainConfig(**FAST), random_state=0)
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
    config = T.TrainConfig(**{**FAST, "augment": True})

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
    a = T.load_checkpoint(tmp_path / "a" / T.CHECKPOINT_NAME)
    b = T.load_checkpoint(tmp_path / "b" / T.CHECKPOINT_NAME)
    _states_equal(a["trainer"], b["trainer"])  # weights, optimizers, schedulers, RNGs


def test_resume_refuses_other_settings_and_restarts_without_checkpoint(tmp_path):
    vols, sites, ages = _volumes()
    config = T.TrainConfig(**{**FAST, "steps_per_epoch": 1})
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


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    vols, sites, ages = _volumes()
    config = T.TrainConfig(**{**FAST, "steps_per_epoch": 3, "checkpoint_every": 1})
    T.train(vols, sites, "ref", ages, config, checkpoint_dir=tmp_path, max_steps=1, random_state=0)
    path = tmp_path / T.CHECKPOINT_NAME
    good = path.read_bytes()
    # a crash in the middle of writing the next checkpoint leaves the good one in place
    real_save = torch.save

    def crashing_save(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(T.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        T.train(vols, sites, "ref", ages, config, checkpoint_dir=tmp_path, resume=True)
    monkeypatch.setattr(T.torch, "save", real_save)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == [T.CHECKPOINT_NAME]  # the temporary file was removed
    # a stray partial temporary file (e.g. from a killed process) is ignored on resume
    (tmp_path / f".{T.CHECKPOINT_NAME}.abc123.tmp").write_bytes(b"garbage")
    out = T.train(vols, sites, "ref", ages, config, checkpoint_dir=tmp_path, resume=True)
    assert out.step == 3 and out.completed
    assert T.load_checkpoint(path)["trainer"]["step"] == 3
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Could not read the checkpoint"):
        T.train(vols, sites, "ref", ages, config, checkpoint_dir=tmp_path, resume=True)


def test_patches_batches_and_mixed_shapes():
    vols, sites, ages = _volumes(shape=(32, 32, 16))
    small, _, _ = _volumes(shape=(16, 16, 16), seed=1)
    vols = vols[:-1] + [small[0]]  # one volume of another shape
    config = T.TrainConfig(
        **{**FAST, "steps_per_epoch": 1, "patch_size": 16, "batch_size": 2, "val_fraction": 0}
    )
    result = T.train(vols, sites, "ref", ages, config, random_state=0)
    assert result.history["val_step"] == [] and result.history["best_step"] is None
    whole = T.TrainConfig(**{**FAST, "steps_per_epoch": 1, "batch_size": 2})
    assert T.train(vols, sites, "ref", ages, whole, random_state=0).completed


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_autocast_code_path_on_cpu(amp_dtype):
    vols, sites, _ = _volumes()
    config = T.TrainConfig(
        **{**FAST, "steps_per_epoch": 2, "mixed_precision": True, "amp_dtype": amp_dtype}
    )
    try:
        result = T.train(vols, sites, "ref", config=config, random_state=0)
    except RuntimeError as exc:  # pragma: no cover - depends on the CPU build
        pytest.skip(f"{amp_dtype} autocast unsupported on this CPU build: {exc}")
    assert np.isfinite(result.history["loss_generator"]).all()
    assert np.isfinite(result.history["val_score"]).all()


def test_same_seed_same_result_and_progress_bar(capsys):
    vols, sites, _ = _volumes()
    config = T.TrainConfig(**{**FAST, "steps_per_epoch": 2})
    a = T.train(vols, sites, "ref", config=config, random_state=5, verbose=1)
    b = T.train(vols, sites, "ref", config=config, random_state=5)
    assert a.history == b.history
    _states_equal(a.generator.state_dict(), b.generator.state_dict())
    assert "IGUANe training" in capsys.readouterr().err


def test_identity_init_starts_generators_as_identity():
    vols, sites, _ = _volumes()
    config = T.TrainConfig(
        **{**FAST, "steps_per_epoch": 1, "identity_init": True, "val_fraction": 0},
        learning_rate=1e-12,
        final_learning_rate=1e-12,
    )
    gen = T.train(vols, sites, "ref", config=config, random_state=0).generator
    x, mask = (torch.from_numpy(a) for a in vols[3])
    with torch.no_grad():
        y = gen(D.network_input(x, mask)[None, None])[0, 0]
    torch.testing.assert_close(y[mask], x[mask], atol=1e-5, rtol=0)
