"""
Training a small IGUANe on a CPU
================================

:class:`~harmonix.IGUANeHarmonizer` trains a 3-D CycleGAN: one forward generator that maps
every source site to the reference site, plus a backward generator and two
discriminators per source site. The published settings need a GPU and hours of training
(see the GPU tutorial). This tutorial runs the whole workflow on a CPU in about a minute
with a tiny configuration: narrow networks (``base_width=4``), small training patches
(``patch_size=16``), generators that start as the identity map (``identity_init=True``)
and a handful of steps. That is enough to learn the API, the training history and
saving/loading — **not** to learn a harmonization. The last part applies the CPU model
shipped with harmonix, trained with :data:`harmonix.iguane.CPU_RECIPE`, to sites it never
saw.
"""

# %%
# Data
# ----
# Three sites; the networks are trained on ``site0`` (the reference) and ``site1``, and
# ``site2`` is kept aside as a site never seen in training.
import time

import matplotlib.pyplot as plt
import numpy as np

from harmonix import IGUANeHarmonizer
from harmonix.datasets import make_multisite
from harmonix.iguane import Generator3D

ds = make_multisite(n_subjects=6, n_sites=3, resolution=4, random_state=0)
train = ds.sites != "site2"

# %%
# Network size
# ------------
# ``base_width`` sets the number of channels of the generator's first level; the
# published network (``base_width=16``) has 6.5 million parameters. Width 4 is about 16
# times smaller.
for width in (16, 4):
    n_params = sum(p.numel() for p in Generator3D(base_width=width).parameters())
    print(f"base_width={width:2d}: {n_params:,} generator parameters")

# %%
# Train
# -----
# One epoch of 8 steps; each step updates the discriminators and the generators of every
# source site once, on random 16³ patches containing brain. Ages make the sampler pair
# images of similar age. ``val_fraction`` holds out images of each source site to select
# the best forward generator (here one image, checked every 4 steps).
# ``identity_init=True`` zeroes the generators' last convolution, so they start as the
# identity map instead of the published random initialization, whose random correction
# would dominate after so few steps.
iguane = IGUANeHarmonizer(
    reference_site="site0",
    n_epochs=1,
    steps_per_epoch=8,
    base_width=4,
    patch_size=16,
    identity_init=True,
    val_fraction=0.2,
    val_every=4,
    voxel_size=ds.resolution,  # arrays carry no voxel size; augmentation shifts in mm
    device="cpu",
    random_state=0,
)
start = time.perf_counter()
iguane.fit(ds.imgs[train], ds.sites[train], ds.ages[train])
print(f"trained in {time.perf_counter() - start:.0f} s")
print(iguane)

# %%
# Training history
# ----------------
# ``history_`` records the mean losses of every step and the validation scores (minus the
# distance of the harmonized held-out images to the reference site, in intensity
# distribution and regional intensity profile; higher is better). The score of the
# unharmonized held-out images (``val_baseline``) gives the starting point; after so few
# steps the generator is still (nearly) the identity and the score has barely moved. When
# the selected generator scores below that baseline, ``fit`` warns
# (:class:`~harmonix.exceptions.ModelSelectionWarning`) and
# ``history_["selected_below_baseline"]`` is True.
history = iguane.history_
fig, axes = plt.subplots(1, 2, figsize=(9, 3), layout="constrained")
for key in ("loss_discriminator", "loss_adversarial", "loss_cycle", "loss_identity"):
    axes[0].plot(history[key], label=key.removeprefix("loss_"))
axes[0].set_xlabel("step")
axes[0].set_yscale("log")
axes[0].legend(fontsize=7)
axes[1].plot(history["val_step"], history["val_score"], "o-", label="harmonized")
axes[1].axhline(history["val_baseline"], color="gray", ls="--", label="unharmonized")
axes[1].set_xlabel("step")
axes[1].set_title("validation score (higher is better)", fontsize=9)
axes[1].legend(fontsize=7)
print(
    f"best step {history['best_step']}: score {history['best_score']:.5f}, "
    f"baseline {history['val_baseline']:.5f}, "
    f"below the baseline: {history['selected_below_baseline']}"
)

# %%
# Harmonize seen and unseen sites
# -------------------------------
# Only the forward generator is used: ``transform`` needs no site labels, so images of
# ``site2``, never seen in training, are harmonized the same way. The output mirrors the
# input, is on the reference site's intensity scale (``reference_median_``) and keeps the
# background at 0.
harmonized = iguane.transform(ds.imgs)
print(
    harmonized.shape,
    harmonized.dtype,
    "background still 0:",
    bool((harmonized[ds.imgs == 0] == 0).all()),
)

# %%
# Each image is median-normalized before the network and brought to the reference site's
# scale after it, which already removes global scale differences. How much did the
# network itself change the images? Compare each output with its input, both divided by
# their brain median:
brain = ds.imgs > 0
change = [
    np.mean(np.abs(o[b] / np.median(o[b]) - x[b] / np.median(x[b])))
    for x, o, b in zip(ds.imgs, harmonized, brain)
]
print(f"mean relative change made by the network: {np.mean(change):.1e}")

# %%
# Practically nothing: in a minute the cycle-consistency and identity losses (weights 30
# and 15) keep the generator at the identity, and learning site-specific contrast takes
# thousands of steps. The images below are therefore the median-normalized inputs.

fig, axes = plt.subplots(2, 3, figsize=(7, 5), layout="constrained")
for col, site in enumerate(["site0", "site1", "site2"]):
    i = np.flatnonzero((ds.subjects == "sub-00") & (ds.sites == site))[0]
    for row, (imgs, label) in enumerate([(ds.imgs, "input"), (harmonized, "IGUANe")]):
        axes[row, col].imshow(
            imgs[i][:, :, 23].T,
            cmap="gray",
            origin="lower",
            vmin=0,
            vmax=np.percentile(imgs[i], 99.5),
        )
        axes[row, col].set_title(
            f"{label}, {site}" + (" (unseen)" if site == "site2" else ""), fontsize=8
        )
        axes[row, col].axis("off")

# %%
# Save and load
# -------------
# IGUANe models hold network weights, so they are saved with :func:`torch.save`
# (plain tensors and values only; ``.pt``) and loaded with ``torch.load(weights_only=True)``.
import tempfile
from pathlib import Path

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "iguane_tiny.pt"
    iguane.save(path)
    print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB")
    restored = IGUANeHarmonizer.load(path)
    same = np.allclose(restored.transform(ds.imgs[:1]), harmonized[:1], atol=1e-4)
    print("same output after loading:", same)

# %%
# A trained CPU model on new sites
# --------------------------------
# A training that learns takes about 20 minutes on 2 cores:
# ``IGUANeHarmonizer(reference_site=..., **CPU_RECIPE)`` (see the user guide, "Training
# on a CPU"). harmonix ships one such model, trained by ``benchmarks/train_demo_model.py``
# on the sites of ``make_multisite(..., random_state=0)``. Here it harmonizes a data set
# of *other* sites (seed 1), none of which it saw, and is compared with histogram
# matching fitted on these sites, by traveling-subject SSIM (same subject, two sites,
# higher is better). The site labels let IGUANe map each site's histogram once: they are
# new to the model (its training sites are named ``demo-train-site0``...), so each site
# gets a map fitted from its own images.
from harmonix import HistogramMatchingHarmonizer
from harmonix.benchmark import traveling_subject_ssim_score
from harmonix.benchmark.metrics import robust_range
from harmonix.iguane import load_demo_model

new = make_multisite(n_subjects=6, n_sites=3, resolution=4, random_state=1)
model = load_demo_model()
outputs = {
    "none": new.imgs,
    "HM": HistogramMatchingHarmonizer(reference_site="site0")
    .fit(new.imgs, new.sites)
    .transform(new.imgs),
    "IGUANe (shipped)": model.transform(new.imgs, sites=new.sites),
}
for name, out in outputs.items():
    ssim = traveling_subject_ssim_score(
        out, new.subjects, new.sites, new.mask, value_range=robust_range(out, new.mask)
    )
    print(f"{name:17s} traveling SSIM {ssim:.3f}")

# %%
# The guard: how far each image lies from what the model saw in training (about 1 for
# images like its held-out training images; ``transform`` warns above
# ``ood_threshold_``) and how its contrast pattern correlates with the reference site's
# (``transform`` warns below ``profile_threshold_``), summed up per site.
report = model.guard_report(new.imgs, sites=new.sites)
print(f"thresholds: distance {model.ood_threshold_:.2f}, profile {model.profile_threshold_:.2f}")
print(report[["site", "site_map", "distance_max", "profile_min", "n_flagged"]].round(2))

# %%
# Going further
# -------------
# Useful models need more than a minute: on a CPU, ``CPU_RECIPE`` trains a 4 mm model in
# about 20 minutes on 2 cores (the model used above); at full size, the published
# settings (``base_width=16``, whole 160×192×160 volumes, 100 epochs of 200 steps) need a
# GPU and real preprocessed images: see the GPU training tutorial, or load the authors'
# trained weights with :meth:`~harmonix.IGUANeHarmonizer.from_keras_weights`. The
# ``checkpoint_dir`` / ``resume=True`` parameters let a long training run in several
# sessions.
