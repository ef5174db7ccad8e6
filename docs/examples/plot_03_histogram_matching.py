"""
Histogram matching, step by step
================================

:class:`~harmonix.HistogramMatchingHarmonizer` summarizes each image by *landmarks*
(percentiles of its brain voxels) and maps them piecewise-linearly onto a standard scale
learned from the reference site. This tutorial opens the box: landmarks, the learned
standard scale, the mapping of each site, and the effect of the number of landmarks.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

from harmonix import HistogramMatchingHarmonizer
from harmonix.benchmark import traveling_subject_ssim_score, truth_ssim_score
from harmonix.datasets import make_multisite
from harmonix.intensity.landmarks import apply_landmarks, compute_landmarks

ds = make_multisite(n_subjects=6, n_sites=4, resolution=4, random_state=0)
site_labels = np.unique(ds.sites)

# %%
# Landmarks
# ---------
# :func:`~harmonix.intensity.landmarks.compute_landmarks` returns the percentiles of the
# brain voxels (non-zero voxels). Here are the landmarks of subject ``sub-00`` at each
# site: the sites differ in scale *and* in shape.
percentiles = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
first = {s: np.flatnonzero((ds.sites == s) & (ds.subjects == "sub-00"))[0] for s in site_labels}
for s, i in first.items():
    print(s, np.round(compute_landmarks(ds.imgs[i], percentiles=percentiles)).astype(int))

# %%
# The standard scale and each site's map
# --------------------------------------
# Fitting learns ``standard_landmarks_`` from the reference site's images, on that site's
# own intensity scale. Transforming maps an image's landmarks onto them; between landmarks
# the map is linear.
hm = HistogramMatchingHarmonizer(reference_site="site0", percentiles=percentiles)
hm.fit(ds.imgs, ds.sites)
print("standard landmarks:", np.round(hm.standard_landmarks_).astype(int))

fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
for s, i in first.items():
    lm = compute_landmarks(ds.imgs[i], percentiles=percentiles)
    ax.plot(lm, hm.standard_landmarks_, "o-", ms=3, label=s)
ax.set_xlabel("input intensity (landmarks of sub-00)")
ax.set_ylabel("output intensity")
ax.set_title("Piecewise-linear map of each site")
ax.legend(fontsize=8)

# %%
# :func:`~harmonix.intensity.landmarks.apply_landmarks` applies one such map; it is what
# ``transform`` does for each image:
i = first["site2"]
manual = apply_landmarks(
    ds.imgs[i], compute_landmarks(ds.imgs[i], percentiles=percentiles), hm.standard_landmarks_
)
print("same as transform:", np.allclose(manual, hm.transform(ds.imgs[i][None])[0]))

# %%
# Histograms before and after
# ---------------------------
fig, axes = plt.subplots(1, 2, figsize=(8, 3), layout="constrained", sharey=True)
harmonized = hm.transform(ds.imgs)
for ax, imgs, title in [(axes[0], ds.imgs, "raw"), (axes[1], harmonized, "harmonized")]:
    for s, i in first.items():
        v = imgs[i][imgs[i] != 0]
        ax.hist(
            v, bins=80, range=(0, np.percentile(v, 99.9)), histtype="step", density=True, label=s
        )
    ax.set_title(f"sub-00, {title}", fontsize=10)
axes[0].legend(fontsize=8)

# %%
# How many landmarks?
# -------------------
# More landmarks match histograms more closely. On traveling subjects (same anatomy at
# every site) that is what we want, but on real data it also pushes different subjects
# towards one histogram shape. Three choices, scored by the traveling-subject SSIM and
# by the SSIM to the ground truth (each subject rendered clean at the reference site):
for q in [(1, 50, 99), percentiles, tuple(range(1, 100, 2))]:
    out = HistogramMatchingHarmonizer(reference_site="site0", percentiles=q).fit_transform(
        ds.imgs, ds.sites
    )
    ts = traveling_subject_ssim_score(out, ds.subjects, ds.sites, ds.mask)
    tr = truth_ssim_score(out, ds.truth, ds.mask)
    print(f"{len(q):2d} landmarks: traveling SSIM {ts:.3f}, truth SSIM {tr:.3f}")

# %%
# Histogram matching cannot undo spatially varying effects: each scan's residual bias, the
# site's resolution (slice thickness) and the noise remain, which is why the scores stay
# below 1. See the benchmark tutorial for a comparison with the other methods.
