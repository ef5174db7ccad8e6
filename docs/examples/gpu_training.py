"""
Training IGUANe at full size on a GPU
=====================================

.. note::
   This tutorial is **not executed** when the documentation is built: it needs a CUDA GPU
   (about 24 GB of memory for 10 sites at the published settings) and your own
   preprocessed data. Its code is complete; run it as a script.

The published IGUANe settings train on 1 mm MNI images cropped to 160×192×160, with the
full-width networks (``base_width=16``), 100 epochs of 200 steps, mixed precision and an
age-balanced sampling of training pairs. Expect several hours to a day, depending on the
GPU and the number of sites.
"""

# %%
# Data
# ----
# A manifest CSV lists the preprocessed images (skull-stripped, N4-corrected, registered
# to MNI 1 mm; see the preprocessing guide) with columns ``path, site, age[, subject]``.
# Paths are loaded lazily; the training keeps a small cache of prepared volumes.
from harmonix import IGUANeHarmonizer
from harmonix.io import read_manifest

manifest = read_manifest("data/manifest.csv")
paths = [str(p) for p in manifest.paths]
print(len(paths), "images from", len(set(manifest.sites)), "sites")

# %%
# The harmonizer
# --------------
# The defaults are the published settings; set the reference site, the grid and the
# device, and a checkpoint folder so that an interrupted training can resume.
iguane = IGUANeHarmonizer(
    reference_site="SALD",  # a large site with a wide age range
    input_shape=(160, 192, 160),  # crop/pad 1 mm MNI images like the original
    device="cuda",  # a ValueError if PyTorch sees no GPU
    mixed_precision=True,  # float16 autocast with loss scaling
    checkpoint_dir="iguane_checkpoints",
    checkpoint_every=200,  # about once per epoch
    val_fraction=0.1,  # held-out images select the best generator
    val_every=1000,  # every 5 epochs, as in the original
    cache_size=32,  # prepared volumes kept in memory
    random_state=0,
    verbose=1,  # progress bar with running losses
)

# %%
# Train
# -----
# Ages make the sampler draw (source, reference) pairs from common age bins, so that age
# differences between sites are not learned as site effects.
iguane.fit(paths, manifest.sites, manifest.ages)
iguane.save("iguane_full.pt")

# %%
# If the job is interrupted (time limit, preemption), run the same script with
# ``resume=True``: training continues from ``iguane_checkpoints/`` exactly where it
# stopped (same parameters and data required)::
#
#     iguane.set_params(resume=True).fit(paths, manifest.sites, manifest.ages)

# %%
# Training curves and checkpoint selection
# ----------------------------------------
import matplotlib.pyplot as plt

history = iguane.history_
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
for key in ("loss_discriminator", "loss_adversarial", "loss_cycle", "loss_identity"):
    axes[0].plot(history[key], label=key, lw=0.5)
axes[0].set_xlabel("step")
axes[0].legend()
axes[1].plot(history["val_step"], history["val_score"], "o-")
axes[1].axhline(history["val_baseline"], ls="--", color="gray", label="unharmonized")
axes[1].set_xlabel("step")
axes[1].set_ylabel("validation distance (lower is better)")
axes[1].legend()
print("best step:", history["best_step"])

# %%
# Harmonize new images
# --------------------
# Inference uses the forward generator only: any site, no labels. On a GPU a volume takes
# a fraction of a second; outputs are NIfTI images on the input grid.
from harmonix.io import save_imgs

new = read_manifest("new_site/manifest.csv")
harmonized = iguane.transform([str(p) for p in new.paths])
save_imgs(harmonized, [f"harmonized/{p.name}" for p in new.paths])

# %%
# The same from the command line::
#
#     harmonix fit --method iguane --manifest data/manifest.csv --out iguane_full.pt \
#         --param reference_site=SALD --param "input_shape=(160, 192, 160)" \
#         --param device=cuda --param checkpoint_dir=iguane_checkpoints
#     harmonix transform --model iguane_full.pt --manifest new_site/manifest.csv \
#         --out harmonized/
