"""
Quickstart: harmonize images from several sites
================================================

This tutorial simulates the same subjects scanned at four sites, shows how different the
sites look, and harmonizes them with histogram matching in three lines. Every harmonizer in
harmonix is used the same way: ``fit(imgs, sites, ages)`` then ``transform(imgs)``.
"""

# %%
# Simulated multi-site data
# -------------------------
# :func:`~harmonix.datasets.make_multisite` renders synthetic subjects (deformations of the
# ICBM152 template with age-related atrophy) at several simulated sites, each with its own
# contrast, intensity curve, bias field, blur, noise and scale. Every subject is scanned at
# every site: these are *traveling subjects*. We use 4 mm voxels to keep things fast.
import matplotlib.pyplot as plt
import numpy as np

from harmonix.datasets import make_multisite

ds = make_multisite(n_subjects=6, n_sites=4, resolution=4, random_state=0)
print(ds)
print("images:", ds.imgs.shape, ds.imgs.dtype)
print("sites: ", np.unique(ds.sites))
print("ages:  ", np.round(ds.ages[:6], 1))

# %%
# Images are ordered site-major: ``ds.imgs[s * n_subjects + j]`` is subject ``j`` at site
# ``s``. Here is subject 0 at every site, each displayed with its own intensity range:


def show_subject(imgs, title, subject="sub-00", vmax=None):
    """Axial slice of one subject at every site."""
    fig, axes = plt.subplots(1, 4, figsize=(8, 2.6), layout="constrained")
    for ax, site in zip(axes, np.unique(ds.sites)):
        i = np.flatnonzero((ds.subjects == subject) & (ds.sites == site))[0]
        ax.imshow(
            imgs[i][:, :, 23].T,
            cmap="gray",
            origin="lower",
            vmin=0,
            vmax=vmax if vmax is not None else np.percentile(imgs[i], 99.5),
        )
        ax.set_title(site, fontsize=9)
        ax.axis("off")
    fig.suptitle(title)


show_subject(ds.imgs, "Raw images (each with its own display range)")

# %%
# The sites differ in more than brightness. The brain intensity histograms of the same
# subject, after scaling each image by its median, show different contrast between grey
# and white matter:


def plot_histograms(imgs, title, ax):
    for site in np.unique(ds.sites):
        i = np.flatnonzero((ds.subjects == "sub-00") & (ds.sites == site))[0]
        values = imgs[i][imgs[i] != 0]
        ax.hist(
            values / np.median(values),
            bins=80,
            range=(0, 2),
            histtype="step",
            label=site,
            density=True,
        )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("intensity / brain median")


fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
plot_histograms(ds.imgs, "Raw images, subject sub-00", ax)
ax.legend(fontsize=8)

# %%
# Harmonize
# ---------
# :class:`~harmonix.HistogramMatchingHarmonizer` learns the reference site's intensity
# scale and maps every image onto it. ``reference_site`` defaults to the largest site; we
# pick ``site0`` explicitly.
from harmonix import HistogramMatchingHarmonizer

hm = HistogramMatchingHarmonizer(reference_site="site0")
hm.fit(ds.imgs, ds.sites, ds.ages)
harmonized = hm.transform(ds.imgs)
print(type(harmonized), harmonized.shape, harmonized.dtype)

# %%
# The output mirrors the input (a 4-D float32 array here) and the background stays 0.
# Now one display range fits every site:
show_subject(
    harmonized, "Histogram matching (one display range)", vmax=np.percentile(harmonized, 99.5)
)

fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
plot_histograms(harmonized, "Harmonized, subject sub-00", ax)
ax.legend(fontsize=8)

# %%
# How close are the sites now?
# ----------------------------
# The benchmark metrics measure this on traveling subjects: the 3-D SSIM between the
# images of one subject at different sites (1 = identical). See the benchmark tutorial
# for the full set of metrics.
from harmonix.benchmark import traveling_subject_ssim_score

before = traveling_subject_ssim_score(ds.imgs, ds.subjects, ds.sites, ds.mask)
after = traveling_subject_ssim_score(harmonized, ds.subjects, ds.sites, ds.mask)
print(f"traveling-subject SSIM: raw {before:.3f} -> harmonized {after:.3f}")

# %%
# Images from a new site
# ----------------------
# Histogram matching handles each image on its own at transform time, so it also
# harmonizes images from a site it never saw. Fit on three sites, transform the fourth:
train = ds.sites != "site3"
hm_3 = HistogramMatchingHarmonizer(reference_site="site0").fit(
    ds.imgs[train], ds.sites[train], ds.ages[train]
)
new_site = hm_3.transform(ds.imgs[~train])
print("fitted on", hm_3.sites_, "- harmonized", len(new_site), "images of site3")

# %%
# Save and load
# -------------
# ``save`` writes a small ``.npz`` file without pickle; ``load`` restores the fitted
# harmonizer.
import tempfile
from pathlib import Path

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "hm.npz"
    hm.save(path)
    restored = HistogramMatchingHarmonizer.load(path)
    print(restored)
    print("same output:", np.array_equal(restored.transform(ds.imgs[:2]), harmonized[:2]))
