"""IGUANe training options of the CPU recipes: warm-up, Adam beta1, schedules, shifts in mm,
discriminators without instance normalization, checkpoint scoring, histogram input
normalization, the out-of-distribution guard, and a short learning test (a warmed-up
discriminator separates two contrasts)."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from harmonix import HistogramMatchingHarmonizer, IGUANeHarmonizer
from harmonix.exceptions import ModelSelectionWarning, SiteMismatchWarning
from harmonix.iguane import CPU_RECIPE, CPU_RECIPE_2MM, PatchDiscriminator3D
from harmonix.iguane._fitting import train_config
from harmonix.iguane.guard import OutOfDistributionWarning
from harmonix.iguane.inputs import volumes as D
from harmonix.iguane.training import loop as T
from harmonix.iguane.training.augmentation import augment
from harmonix.iguane.training.checkpoints import CHECKPOINT_NAME, load_checkpoint
from harmonix.iguane.training.config import TrainConfig
from harmonix.iguane.training.selection import SiteDistance
from harmonix.iguane.training.trainer import lr_factor
from harmonix.intensity.landmarks import apply_landmarks, compute_landmarks

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n_per_site=3, gammas=(1.0, 1.8), shape=(16, 16, 16), seed=0):
    """Raw images (background 0) of two sites whose contrast differs by a gamma curve."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    brain = radius < 0.85
    imgs, sites = [], []
    for k, gamma in enumerate(gammas):
        for j in range(n_per_site):
            tissue = 0.6 + 0.4 * np.cos(5 * radius + 0.3 * j) ** 2 + 0.03 * rng.random(shape)
            imgs.append(np.where(brain, 100 * tissue**gamma, 0).astype(np.float32))
            sites.append(f"site{k}")
    return np.stack(imgs), np.array(sites)


def _volumes(imgs):
    return [(p.x, p.mask) for p in (D.prepare_volume(x) for x in imgs)]


#: voxel_size: the blob arrays carry none, and augmentation shifts in mm
TINY = dict(n_epochs=1, steps_per_epoch=2, base_width=2, val_every=1, voxel_size=1.0)


# -- schedules, beta1, shifts ----------------------------------------------------------------
def test_lr_schedules_at_chosen_steps():
    linear = lr_factor("linear", 10, 0.1)
    assert [linear(s) for s in (0, 5, 10, 20)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    cyc = lr_factor("constant_then_linear", 10, 0.0)
    assert [cyc(s) for s in (0, 3, 5, 6, 8, 10, 12)] == pytest.approx(
        [1.0, 1.0, 1.0, 0.8, 0.4, 0.0, 0.0]
    )
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")


def test_schedules_and_beta1_reach_the_optimizers(tmp_path):
    imgs, sites = _blobs()
    config = TrainConfig(
        **{**TINY, "steps_per_epoch": 4, "val_every": 4},
        beta1=0.5,
        learning_rate=1e-3,
        final_learning_rate=0.0,
        lr_schedule="constant_then_linear",
        checkpoint_every=1,
    )
    for stop, expected in ((2, 1e-3), (3, 0.5e-3), (4, 0.0)):
        T.train(
            _volumes(imgs),
            sites,
            "site0",
            config=config,
            checkpoint_dir=tmp_path,
            resume=True,
            max_steps=stop,
            random_state=0,
        )
        state = load_checkpoint(tmp_path / CHECKPOINT_NAME)["trainer"]
        for opt in (state["opt_forward"], *state["opt_backward"], *state["opt_disc"]):
            assert opt["param_groups"][0]["betas"][0] == 0.5
        # one source site: the forward and backward schedules have the same length
        assert state["opt_backward"][0]["param_groups"][0]["lr"] == pytest.approx(expected)
        assert state["opt_forward"]["param_groups"][0]["lr"] == pytest.approx(expected)


def test_shift_in_millimetres():
    assert TrainConfig().max_shift_voxels == (5, 5, 5)  # the original: 5 voxels of 1 mm
    assert TrainConfig(voxel_size=(4, 4, 4)).max_shift_voxels == (1, 1, 1)
    assert TrainConfig(shift_mm=6, voxel_size=(1, 2, 4)).max_shift_voxels == (6, 3, 1)
    assert TrainConfig(augment=False).max_shift_voxels == (0, 0, 0)
    with pytest.raises(ValueError, match="voxel_size"):
        TrainConfig(voxel_size=(1, 0, 1))
    with pytest.raises(ValueError, match="shift_mm"):
        TrainConfig(shift_mm=-1)


def test_augment_respects_per_axis_shift_bounds():
    x = torch.full((12, 12, 12), -1.0)
    x[4:8, 4:8, 4:8] = 0.5
    mask = x > -1
    for seed in range(30):
        _, m = augment(
            x, mask, np.random.default_rng(seed), rotation_probability=0.0, max_shift=(2, 0, 1)
        )
        idx = np.argwhere(m.numpy())
        lo = idx.min(0) - 4
        assert abs(lo[0]) <= 2 and lo[1] == 0 and abs(lo[2]) <= 1
    same, m = augment(x, mask, np.random.default_rng(0), rotation_probability=0.0, max_shift=0)
    assert torch.equal(same, x) and torch.equal(m, mask)


def test_estimator_reads_the_voxel_size_from_nifti_and_uses_it_for_shifts(tmp_path):
    imgs, sites = _blobs()
    paths = []
    for i, img in enumerate(imgs):
        path = tmp_path / f"{i}.nii.gz"
        nib.save(nib.Nifti1Image(img, np.diag([4.0, 4.0, 4.0, 1.0])), path)
        paths.append(str(path))
    tiny = {**TINY, "voxel_size": None, "steps_per_epoch": 1}
    est = IGUANeHarmonizer(**tiny).fit(paths, sites)
    assert est.grid_["voxel_size"] == [4.0, 4.0, 4.0]
    est = IGUANeHarmonizer(**{**tiny, "voxel_size": 4}).fit(imgs, sites)
    assert est.grid_["voxel_size"] == [4.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="voxel size is not known"):  # arrays: no voxel size
        IGUANeHarmonizer(**tiny).fit(imgs, sites)
    with pytest.raises(ValueError, match="headers"):  # NIfTI: the header is the truth
        IGUANeHarmonizer(**{**tiny, "voxel_size": 2}).fit(paths, sites)
    no_shift = IGUANeHarmonizer(**{**tiny, "shift_mm": 0}).fit(imgs, sites)
    assert no_shift.grid_["voxel_size"] is None  # nothing in mm: unknown is fine
    est = IGUANeHarmonizer(shift_mm=5, voxel_size=(4, 4, 2))
    assert train_config(est, (4.0, 4.0, 2.0)).max_shift_voxels == (1, 1, 2)


# -- warm-up ----------------------------------------------------------------------------------
def test_warmup_updates_discriminators_only(tmp_path):
    imgs, sites = _blobs()
    config = TrainConfig(**TINY, disc_pairs=1, warmup_steps=3, checkpoint_every=1)
    vols = _volumes(imgs)
    T.train(
        vols, sites, "site0", config=config, checkpoint_dir=tmp_path, max_steps=1, random_state=0
    )
    first = load_checkpoint(tmp_path / CHECKPOINT_NAME)["trainer"]
    T.train(
        vols,
        sites,
        "site0",
        config=config,
        checkpoint_dir=tmp_path,
        resume=True,
        max_steps=3,
        random_state=0,
    )
    warm = load_checkpoint(tmp_path / CHECKPOINT_NAME)["trainer"]
    for key in first["forward"]:  # generators untouched during warm-up
        assert torch.equal(first["forward"][key], warm["forward"][key])
        assert torch.equal(first["backward"][0][key], warm["backward"][0][key])
    moved = [
        not torch.equal(first["disc_ref"][0][k], warm["disc_ref"][0][k])
        for k in first["disc_ref"][0]
    ]
    assert any(moved)  # discriminators trained
    hist = warm["history"]
    assert len(hist["loss_discriminator"]) == 3 and np.isfinite(hist["loss_discriminator"]).all()
    assert np.isnan(hist["loss_generator"]).all() and hist["val_step"] == []
    # the generators' learning rate has not started decaying
    assert warm["sched_forward"]["last_epoch"] == 0
    result = T.train(
        vols, sites, "site0", config=config, checkpoint_dir=tmp_path, resume=True, random_state=0
    )
    assert result.step == 5 and result.completed
    assert np.isfinite(result.history["loss_generator"][3:]).all()
    assert result.history["val_step"] == [4, 5]


@pytest.mark.parametrize("instance_norm", [True, False], ids=["published", "no-instance-norm"])
def test_warmed_up_discriminator_separates_two_contrasts(tmp_path, instance_norm):
    """Behaviour, not timing: after warm-up the reference discriminator scores real
    reference images above (identity-mapped) images of a site with another contrast, with
    the published discriminator and without its instance normalizations."""
    imgs, sites = _blobs(n_per_site=8, gammas=(1.0, 2.2), shape=(32, 32, 32), seed=1)
    train_idx = [0, 1, 2, 3, 8, 9, 10, 11]
    test_idx = [4, 5, 6, 7, 12, 13, 14, 15]
    config = TrainConfig(
        n_epochs=1,
        steps_per_epoch=1,
        warmup_steps=80,
        base_width=2,
        disc_base_width=8,
        disc_pairs=1,
        identity_init=True,
        augment=False,
        beta1=0.5,
        learning_rate=1e-3,
        val_fraction=0.0,
        checkpoint_every=80,
        disc_instance_norm=instance_norm,
    )
    vols = _volumes(imgs)
    T.train(
        [vols[i] for i in train_idx],
        sites[train_idx],
        "site0",
        config=config,
        checkpoint_dir=tmp_path,
        max_steps=80,
        random_state=0,
    )
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)["trainer"]
    disc = PatchDiscriminator3D(8, instance_norm=instance_norm)
    disc.load_state_dict(state["disc_ref"][0])  # strict: the trainer built the same network
    disc.eval()
    with torch.no_grad():
        scores = [
            float(
                disc(
                    D.network_input(torch.from_numpy(vols[i][0]), torch.from_numpy(vols[i][1]))[
                        None, None
                    ]
                ).mean()
            )
            for i in test_idx
        ]
    real, fake = np.array(scores[:4]), np.array(scores[4:])  # held-out ref / other site
    # pairwise accuracy (AUC): every held-out reference image scored above every other one
    auc = np.mean(real[:, None] > fake[None, :])
    assert auc == 1.0, scores
    assert real.mean() - fake.mean() > 0.3, scores  # chance: no difference


# -- scoring -----------------------------------------------------------------------------------
def test_scoring_callable_and_ties_go_to_the_later_checkpoint():
    imgs, sites = _blobs()
    vols = _volumes(imgs)
    calls = []

    def constant(harmonize, volumes, labels):
        calls.append((len(volumes), list(labels)))
        y = harmonize(*volumes[0])
        assert y.shape == volumes[0][0].shape and (y[~volumes[0][1]] == -1).all()
        return 1.0

    config = TrainConfig(**{**TINY, "steps_per_epoch": 3})
    result = T.train(vols, sites, "site0", config=config, scoring=constant, random_state=0)
    h = result.history
    assert h["val_step"] == [1, 2, 3] and h["val_score"] == [1.0, 1.0, 1.0]
    assert h["best_step"] == 3  # tie: the latest
    assert calls and all(lab == ["site1"] * n for n, lab in calls)

    scores = iter([3.0, 2.0, 1.0, 0.0])
    with pytest.warns(ModelSelectionWarning, match="below the unharmonized"):
        result = T.train(
            vols, sites, "site0", config=config, scoring=lambda *a: next(scores), random_state=0
        )
    assert result.history["val_baseline"] == 3.0 and result.history["best_step"] == 1
    assert result.history["selected_below_baseline"] is True


def test_default_score_sees_a_bias_field_that_histograms_miss():
    """A smooth multiplicative field that keeps the histogram moves regional means."""
    rng = np.random.default_rng(0)
    shape = (24, 24, 24)
    mask = np.zeros(shape, bool)
    mask[2:22, 2:22, 2:22] = True
    refs = [np.where(mask, 0.1 * rng.standard_normal(shape), -1.0) for _ in range(4)]
    score = SiteDistance(grid=4).fit_sums(SiteDistance(grid=4).sums([(r, mask) for r in refs]))
    clean = np.where(mask, 0.1 * rng.standard_normal(shape), -1.0)
    # same values, rearranged along one axis so the low ones sit on one side: histogram
    # identical, regional profile not
    ramp = clean.copy().ravel()
    order = np.argsort(np.indices(shape)[0][mask], kind="stable")
    ramp[np.flatnonzero(mask.ravel())[order]] = np.sort(clean[mask])
    ramp = ramp.reshape(shape)
    assert np.allclose(np.sort(ramp[mask]), np.sort(clean[mask]))
    assert score.distance(ramp, mask) > 3 * score.distance(clean, mask)


# -- histogram normalization and the guard -------------------------------------------------------
def test_histogram_normalization_with_identity_generator_is_histogram_matching():
    imgs, sites = _blobs()
    est = IGUANeHarmonizer(
        reference_site="site0",
        input_normalization="histogram",
        identity_init=True,
        random_state=0,
        device="cpu",
        **{**TINY, "learning_rate": 1e-12, "final_learning_rate": 1e-12},
    )
    est.fit(imgs, sites)
    with torch.no_grad():  # exactly the identity
        est.generator_.out_conv.weight.zero_()
        est.generator_.out_conv.bias.zero_()
    # without site labels each image is mapped by its own landmarks: histogram matching
    hm = HistogramMatchingHarmonizer(reference_site="site0").fit(imgs, sites)
    np.testing.assert_allclose(est.transform(imgs), hm.transform(imgs), rtol=1e-4, atol=1e-3)
    # with site labels, one map per site: from the site's mean landmarks to the standard
    q = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
    lms = np.stack([compute_landmarks(x, x != 0, q) for x in imgs])
    expected = np.stack(
        [
            apply_landmarks(x, lms[sites == s].mean(0), hm.standard_landmarks_, x != 0)
            for x, s in zip(imgs, sites)
        ]
    )
    np.testing.assert_allclose(est.transform(imgs, sites), expected, rtol=1e-4, atol=1e-3)
    # a site unseen in fit is pooled over its images in the call
    new = imgs[3:6] * 1.7
    pooled = np.stack([compute_landmarks(x, x != 0, q) for x in new]).mean(0)
    expected = np.stack([apply_landmarks(x, pooled, hm.standard_landmarks_, x != 0) for x in new])
    np.testing.assert_allclose(est.transform(new, ["new"] * 3), expected, rtol=1e-4, atol=1e-3)
    assert est.input_normalization_["kind"] == "histogram"
    assert est.input_normalization_["sites"] == ["site0", "site1"]
    with pytest.raises(ValueError, match="input_normalization"):
        IGUANeHarmonizer(input_normalization="zscore", **TINY).fit(imgs, sites)


def test_guard_distances_threshold_warning_and_fallback(tmp_path):
    imgs, sites = _blobs(n_per_site=4)
    est = IGUANeHarmonizer(
        reference_site="site0",
        input_normalization="histogram",
        random_state=0,
        device="cpu",
        **TINY,
    )
    est.fit(imgs, sites)
    assert est.training_corrections_.size >= 1 and est.typical_correction_ > 0
    d = est.distribution_distance(imgs[sites == "site1"])
    assert d.shape == (4,) and np.all(np.isfinite(d)) and np.median(d) == pytest.approx(1, 0.5)
    assert est.ood_threshold_ >= 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est.set_params(ood_threshold=1e6).transform(imgs[:2])  # nothing flagged
    est.set_params(ood_threshold=1e-9)
    est.ood_threshold_ = 1e-9
    with pytest.warns(OutOfDistributionWarning, match="2 of 2 image"):
        corrected = est.transform(imgs[4:6])
    est.set_params(ood_action="fallback")
    with pytest.warns(OutOfDistributionWarning, match="without the generator"):
        plain = est.transform(imgs[4:6])
    hm = HistogramMatchingHarmonizer(reference_site="site0").fit(imgs, sites)
    np.testing.assert_allclose(plain, hm.transform(imgs[4:6]), rtol=1e-4, atol=1e-3)
    assert not np.allclose(plain, corrected)
    est.set_params(ood_action="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est.transform(imgs[4:6])
    est.save(tmp_path / "m.pt")
    loaded = IGUANeHarmonizer.load(tmp_path / "m.pt")
    assert loaded.ood_threshold_ == est.ood_threshold_
    assert loaded.input_normalization_ == est.input_normalization_
    np.testing.assert_allclose(loaded.training_corrections_, est.training_corrections_)
    np.testing.assert_array_equal(loaded.reference_profile_, est.reference_profile_)
    assert loaded.profile_threshold_ == est.profile_threshold_
    with pytest.raises(ValueError, match="ood_action"):
        loaded.set_params(ood_action="drop").transform(imgs[:1])


def test_guard_flags_an_inverted_contrast_by_its_regional_profile():
    imgs, sites = _blobs(n_per_site=4)
    est = IGUANeHarmonizer(
        reference_site="site0", input_normalization="histogram", random_state=0, **TINY
    ).fit(imgs, sites)
    corr = est.training_profile_correlations_
    assert corr.size >= 1 and corr.min() > 0.3  # toy anatomy differs a lot between images
    assert est.profile_threshold_ == pytest.approx(1 - 1.5 * (1 - corr.min()))
    seen = est.profile_correlation(imgs[sites == "site1"])
    assert np.all(seen >= est.profile_threshold_)
    # a T2-like image: the same anatomy with its contrast reversed inside the brain
    brain = imgs[4] > 0
    inverted = np.where(brain, imgs[4][brain].max() + imgs[4][brain].min() - imgs[4], 0.0)
    assert est.profile_correlation(inverted[None])[0] < 0
    # the size of the correction does not reveal it; the profile does
    assert est.distribution_distance(inverted[None])[0] < est.ood_threshold_
    with pytest.warns(OutOfDistributionWarning, match="1 of 2 image.*regional intensity"):
        est.transform(np.stack([imgs[5], inverted]))
    # a model without the profile (official weights, older files) is not flagged by it
    for name in ("reference_profile_", "profile_threshold_"):
        delattr(est, name)
    assert np.isnan(est.profile_correlation(inverted[None])[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est.transform(inverted[None])


def test_cpu_recipe_is_a_valid_parameter_set():
    est = IGUANeHarmonizer(reference_site="site0", **CPU_RECIPE)
    params = est.get_params()
    assert all(params[k] == v for k, v in CPU_RECIPE.items())
    config = train_config(est, (4.0, 4.0, 4.0))
    assert config.patch_size is None and config.warmup_steps > 0 and config.beta1 == 0.5


# -- the shipped model -------------------------------------------------------------------------
def _saved_tiny_model(path):
    """Blob images, their sites and a tiny histogram-normalized model saved at ``path``."""
    imgs, sites = _blobs()
    model = IGUANeHarmonizer(
        reference_site="site0",
        input_normalization="histogram",
        random_state=0,
        device="cpu",
        **TINY,
    ).fit(imgs, sites)
    model.save(path)
    return imgs, sites, model


def test_pretrained_wrapper_loads_instead_of_training(tmp_path):
    from sklearn.base import clone

    from harmonix.iguane.pretrained import PretrainedIGUANe

    imgs, sites, model = _saved_tiny_model(tmp_path / "m.pt")
    wrapper = clone(PretrainedIGUANe(tmp_path / "m.pt"))
    wrapper.fit(imgs[:2] * 3.0, ["a", "b"])  # any data: nothing is trained
    for key, value in model.generator_.state_dict().items():
        assert torch.equal(wrapper.model_.generator_.state_dict()[key], value)
    np.testing.assert_allclose(
        wrapper.transform(imgs, sites), model.transform(imgs, sites), rtol=1e-5, atol=1e-4
    )
    with pytest.raises(FileNotFoundError):
        PretrainedIGUANe(tmp_path / "missing.pt").fit(imgs, sites)


def test_shipped_demo_model_is_a_cpu_recipe_model():
    from harmonix.iguane.pretrained import DEMO_MODEL_PATH, load_demo_model

    assert DEMO_MODEL_PATH.is_file(), "the package ships its demo model"
    model = load_demo_model()
    names = [f"demo-train-site{k}" for k in range(4)]  # no user's label collides
    assert model.base_width == CPU_RECIPE["base_width"] and model.reference_site_ == names[0]
    assert model.reference_site == names[0] and model.sites_.tolist() == names
    assert model.input_normalization_["kind"] == "histogram"
    assert model.input_normalization_["sites"] == names
    assert np.isfinite(model.ood_threshold_) and model.typical_correction_ > 0


def test_pretrained_wrapper_keeps_new_sites_apart_from_training_sites(tmp_path):
    from harmonix.iguane.pretrained import PretrainedIGUANe

    imgs, sites, model = _saved_tiny_model(tmp_path / "m.pt")
    other = imgs * np.linspace(0.5, 2.0, len(imgs))[:, None, None, None]  # other "site1"
    wrapper = PretrainedIGUANe(tmp_path / "m.pt").fit(other, sites)
    # pooled over the given images of each label, not the model's stored site1 landmarks
    expected = model.transform(other, np.array([f"x-{s}" for s in sites]))
    np.testing.assert_allclose(wrapper.transform(other, sites), expected, rtol=1e-5, atol=1e-4)
    # the model itself sees that these are not its site0/site1 and maps them as new sites
    with pytest.warns(SiteMismatchWarning, match="'site1' .3 image"):
        np.testing.assert_array_equal(model.transform(other, sites), expected)
    model.set_params(site_check="warn")  # the stored maps of the training sites
    with pytest.warns(SiteMismatchWarning, match="applied anyway"):
        assert not np.allclose(model.transform(other, sites), expected)


# -- discriminators without instance normalization (CPU_RECIPE_2MM) ------------------------
def test_discriminator_without_instance_norm():
    """The two MAD instance normalizations left out: no norm parameters, the same map."""
    torch.manual_seed(0)
    plain = PatchDiscriminator3D(8, instance_norm=False)
    published = PatchDiscriminator3D(8)
    assert isinstance(plain.norm2, torch.nn.Identity) and isinstance(
        plain.norm3, torch.nn.Identity
    )
    norm_params = sum(p.numel() for n, p in published.named_parameters() if "norm" in n)
    assert norm_params == 2 * (16 + 32)
    n_plain = sum(p.numel() for p in plain.parameters())
    assert n_plain == sum(p.numel() for p in published.parameters()) - norm_params
    x = torch.rand(2, 1, 32, 32, 32) - 0.5
    assert plain(x).shape == published(x).shape == (2, 1, 4, 4, 4)
    # the same weights give the same first layer; the scores differ by the norms alone
    plain.load_state_dict(
        {k: v for k, v in published.state_dict().items() if "norm" not in k}, strict=True
    )
    with torch.no_grad():
        assert not torch.allclose(plain(x), published(x))
        published.norm2, published.norm3 = torch.nn.Identity(), torch.nn.Identity()
        torch.testing.assert_close(plain(x), published(x), rtol=0, atol=0)


def test_disc_instance_norm_option_flows_and_is_checked():
    est = IGUANeHarmonizer(**CPU_RECIPE_2MM)
    assert est.disc_instance_norm is False
    config = train_config(est, (2.0, 2.0, 2.0))
    assert config.disc_instance_norm is False and config.patch_size == (48, 64, 48)
    # no held-out images: the held-out score does not see 2 mm effects, the last step is kept
    assert config.val_fraction == 0.0 and config.warmup_steps == 1500
    assert config.steps_per_epoch == 600
    assert train_config(IGUANeHarmonizer(), (1.0, 1.0, 1.0)).disc_instance_norm is True
    with pytest.raises(ValueError, match="disc_instance_norm must be True or False"):
        TrainConfig(disc_instance_norm="no")


def test_disc_instance_norm_fingerprint():
    """The default leaves checkpoint fingerprints as they were (old checkpoints resume);
    leaving the normalizations out is a different training."""
    from harmonix.iguane.training.checkpoints import fingerprint

    def of(config):
        return fingerprint(config, np.array(["a", "b"]), "a", None, images="digest")

    default = of(TrainConfig())
    assert "disc_instance_norm" not in default
    assert of(TrainConfig(disc_instance_norm=True)) == default
    assert of(TrainConfig(disc_instance_norm=False)) != default


def test_2mm_recipe_halves_the_cycle_and_identity_terms():
    # E15 (iguane_learning_2mm.md): lighter terms than the 4 mm recipe's, and the
    # estimator built from the recipe carries them
    assert CPU_RECIPE_2MM["cycle_weight"] == CPU_RECIPE["cycle_weight"] / 2
    assert CPU_RECIPE_2MM["identity_weight"] == CPU_RECIPE["identity_weight"] / 2
    est = IGUANeHarmonizer(**CPU_RECIPE_2MM)
    assert (est.cycle_weight, est.identity_weight) == (5.0, 2.5)
