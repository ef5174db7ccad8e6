"""
Using the official IGUANe weights
=================================

.. note::
   This tutorial is **not executed** when the documentation is built: it needs the
   weight file published by the IGUANe authors, which cannot be downloaded here. Its code
   is complete; run it as a script once you have the file.

The authors of IGUANe publish their trained forward generator (SALD as the reference
site, trained with 10 other sites) as a Keras 2 weight file,
``harmonization/iguane_weights.h5`` in https://github.com/RocaVincent/iguane_harmonization
(about 26 MB). :meth:`harmonix.IGUANeHarmonizer.from_keras_weights` loads it into a
fitted harmonizer. Only ``h5py`` is needed (a harmonix dependency), not TensorFlow.
"""

# %%
# Load the weights
# ----------------
# The loader maps the Keras layers to the PyTorch modules in order, checking every layer
# name and weight shape; a file that does not match the IGUANe generator raises an error.
from harmonix import IGUANeHarmonizer

iguane = IGUANeHarmonizer.from_keras_weights(
    "iguane_weights.h5",
    device="auto",  # CUDA when available, else CPU (a few seconds per volume)
)
print(iguane.reference_site_)  # "SALD"
print(sum(p.numel() for p in iguane.generator_.parameters()))  # 6,532,098

# %%
# Prepare the images like the original
# ------------------------------------
# The published network was trained on T1-weighted images that were
#
# 1. skull-stripped (background 0), e.g. with HD-BET or SynthStrip;
# 2. bias-corrected with ANTs ``N4BiasFieldCorrection``;
# 3. rigidly registered to MNI space at 1 mm (ANTs or FSL FLIRT, 6 degrees of freedom,
#    on the ``MNI152_T1_1mm_brain`` template, 182×218×182 voxels).
#
# harmonix does the rest: brain-median normalization (median 500) and the crop/pad to
# 160×192×160 (``input_shape`` defaults to it here), undone on output.

# %%
# Harmonize
# ---------
# No fitting is needed: the harmonizer is returned fitted. Outputs are NIfTI images with
# each input's affine, on IGUANe's intensity scale (brain median 500; change it with
# ``reference_median=``).
from harmonix.io import read_manifest, save_imgs

manifest = read_manifest("my_study/manifest.csv")
harmonized = iguane.transform([str(p) for p in manifest.paths])
save_imgs(harmonized, [f"harmonized/{p.name}" for p in manifest.paths])

# %%
# Save it as a harmonix model
# ---------------------------
# Saved once, the model no longer needs the ``.h5`` file and works with the command line.
iguane.save("iguane_official.pt")

# %%
# ::
#
#     harmonix transform --model iguane_official.pt --manifest my_study/manifest.csv \
#         --out harmonized/
#
# Checking the loader
# -------------------
# The test suite proves the mapping without the real file: it builds the same generator
# in Keras (``pip install -e ".[keras]"``), saves random weights in the legacy HDF5
# format, loads them with harmonix and compares the outputs of both on one volume.
