"""
From raw T1 scans to harmonized images, and back to each scan's own space
=========================================================================

.. note::
   This tutorial is **not executed** when the documentation is built: preprocessing a
   full-resolution scan takes 30-45 s on two CPU cores, and IGUANe's published
   weights cannot be downloaded here. Its code is complete; run it as a script on your
   own scans.

IGUANe expects skull-stripped, bias-corrected, MNI-registered, median-normalized,
cropped images. ``harmonix preprocess`` builds them from raw scanner T1s with pip-only
tools (deepbet, SimpleITK); ``harmonix.preprocessing.to_native`` maps the harmonized
images back onto each raw scan's grid. Install the optional dependencies once::

    pip install "harmonix[preprocess]"
"""

# %%
# 1. Preprocess a study
# ---------------------
# A manifest lists the raw scans (``path, site`` and optionally ``age, subject``; paths
# relative to the CSV's folder)::
#
#     path,site,age
#     raw/sub-01_T1w.nii.gz,SiteA,34
#     raw/sub-02_T1w.nii.gz,SiteB,61
#
# Then, from a shell::
#
#     harmonix preprocess --manifest raw.csv --out prep/ --n-jobs 2
#
# For each scan ``NAME`` the folder receives ``NAME_prep.nii.gz`` (160×192×160, MNI 1 mm,
# brain median 500, background 0), ``NAME_native_mask.nii.gz`` (the brain mask on the raw
# scan's grid), ``NAME_prep.json`` (the rigid transform to template space and the QC
# numbers) and ``NAME_qc.png``; then ``qc.csv`` and ``manifest.csv`` listing the
# preprocessed images with the same sites and ages. Scans whose QC numbers fall outside
# the expected ranges, or far from the rest of the batch, are printed::
#
#     QC flagged: raw/sub-17_T1w.nii.gz: template_ncc<0.45
#
# Open their PNGs: the red line is the brain mask, the cyan lines are edges of the
# ICBM152 template; on a good result they follow the image's own boundaries. A scan that
# cannot be processed (a 4-D series, an empty or constant volume, a file without
# orientation, no brain found) or whose QC numbers are beyond the hard limits (noise, a
# phantom, a failed registration) is reported as ``failed:`` with the reason, left out of
# ``manifest.csv``, and nothing is written for it; the command then exits with status 1.
# Interrupted runs resume: run the same command again and finished scans are skipped.
# Running it again gives the same bytes (serial or with ``--n-jobs``).
#
# The same chain from Python, one scan at a time:
from harmonix.preprocessing import T1Preprocessor

result = T1Preprocessor().run("raw/sub-01_T1w.nii.gz")
print(result.image.shape)  # (160, 192, 160)
print(result.qc)  # mask_volume_ml, template_scale, template_ncc, template_dice, ..., flags
print(result.timings)  # seconds per stage
paths = result.save("prep", "sub-01_T1w")  # what the command writes

# %%
# 2. Harmonize with IGUANe
# ------------------------
# The published model (SALD reference, trained on 1 mm images preprocessed this way) is
# loaded from its Keras weight file (see :ref:`sphx_glr_auto_examples_keras_weights.py`);
# or train your own on the preprocessed images (``harmonix fit --method iguane --manifest
# prep/manifest.csv --out iguane.pt``; a GPU is advised at 1 mm).
from harmonix import IGUANeHarmonizer
from harmonix.io import read_manifest, save_imgs

iguane = IGUANeHarmonizer.from_keras_weights("iguane_weights.h5", device="auto")
manifest = read_manifest("prep/manifest.csv")
harmonized = iguane.transform([str(p) for p in manifest.paths])
names = [p.name.replace(".nii.gz", "_harmonized.nii.gz") for p in manifest.paths]
save_imgs(harmonized, [f"harmonized/{name}" for name in names])

# %%
# The same from a shell::
#
#     harmonix transform --model iguane_official.pt --manifest prep/manifest.csv \
#         --out harmonized/
#
# (same output names: ``sub-01_T1w_prep_harmonized.nii.gz``).
#
# 3. Back to each scan's native space
# -----------------------------------
# The transform saved beside each preprocessed image maps template space back onto the
# raw scan's grid (the inverse of the rigid registration, one linear interpolation).
# ``mask=`` zeroes everything outside the native brain mask; ``rescale=True`` undoes the
# median normalization, so intensities are on the bias-corrected scan's scale.
from harmonix.preprocessing import to_native

native = to_native(
    "harmonized/sub-01_T1w_prep_harmonized.nii.gz",
    "prep/sub-01_T1w_prep.json",
    mask="prep/sub-01_T1w_native_mask.nii.gz",
    rescale=True,
)
native.to_filename("sub-01_T1w_harmonized_native.nii.gz")
# Same shape and affine as raw/sub-01_T1w.nii.gz: overlay them in any viewer.

# %%
# Or from a shell::
#
#     harmonix to-native --input harmonized/sub-01_T1w_prep_harmonized.nii.gz \
#         --transform prep/sub-01_T1w_prep.json \
#         --mask prep/sub-01_T1w_native_mask.nii.gz --rescale \
#         --out sub-01_T1w_harmonized_native.nii.gz

# %%
# What the chain does, and how well
# ---------------------------------
# See :doc:`/user_guide/preprocessing` for each step, the choice of tools and the
# measured accuracy on a real head (``benchmarks/results/preprocess.md``).
