"""
NIfTI files in, NIfTI files out
===============================

Real data live in NIfTI files. harmonix accepts a list of paths (or nibabel images)
wherever it accepts arrays, loads the files one at a time, and returns
:class:`nibabel.nifti1.Nifti1Image` objects that keep each input's affine and header.
Writing is left to you (:func:`harmonix.io.save_imgs`, atomic) or to the command line.
"""

# %%
# A folder of NIfTI files and a manifest
# --------------------------------------
# :func:`~harmonix.datasets.write_nifti_dataset` writes a synthetic data set as
# ``<site>/<subject>_<site>.nii.gz`` files plus a ``manifest.csv`` with columns
# ``path, site, age, subject``: the same layout you would prepare for your own data.
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from harmonix.datasets import make_multisite, write_nifti_dataset
from harmonix.io import read_manifest, save_imgs

tmp = Path(tempfile.mkdtemp(prefix="harmonix-nifti-"))
ds = make_multisite(n_subjects=4, n_sites=3, resolution=4, random_state=0)
manifest_path = write_nifti_dataset(ds, tmp / "data")
print(manifest_path.read_text().splitlines()[:4])

# %%
# :func:`~harmonix.io.read_manifest` reads the CSV; relative paths are resolved against
# the manifest's folder and missing files are reported up front.
manifest = read_manifest(manifest_path)
print(len(manifest), "images;", "sites:", sorted(set(manifest.sites)))
print(manifest.paths[0].relative_to(tmp))

# %%
# Fit on paths, transform paths
# -----------------------------
# Pass the list of paths directly. Nothing is stacked in memory: each file is read when
# it is needed.
from harmonix import WhiteStripeHarmonizer

paths = [str(p) for p in manifest.paths]
ws = WhiteStripeHarmonizer(reference_site="site0").fit(paths, manifest.sites, manifest.ages)
harmonized = ws.transform(paths[:3])
print(type(harmonized), len(harmonized))
print(type(harmonized[0]).__name__, harmonized[0].shape, harmonized[0].get_data_dtype())

# %%
# The outputs keep the input's affine (and the rest of its header, with the data type
# set to float32):
src = nib.load(paths[0])
print("same affine:", np.allclose(harmonized[0].affine, src.affine))
print(harmonized[0].affine)

# %%
# nibabel images work as inputs too, for example after your own preprocessing in memory:
imgs = [nib.load(p) for p in paths[:2]]
print(type(ws.transform(imgs)[0]).__name__)

# %%
# Save the results
# ----------------
# :func:`~harmonix.io.save_imgs` checks every destination first and writes each file under
# a temporary name before renaming it, so an interrupted run never leaves half-written
# files. Existing files are only replaced with ``overwrite=True``.
out_dir = tmp / "harmonized"
names = [out_dir / p.name.replace(".nii.gz", "_ws.nii.gz") for p in manifest.paths[:3]]
written = save_imgs(harmonized, names)
print([p.name for p in written])

# %%
# The same from the command line
# ------------------------------
# The ``harmonix`` command wraps these steps (see the CLI reference)::
#
#     harmonix fit --method ws --manifest data/manifest.csv --out ws.npz \
#         --param reference_site=site0
#     harmonix transform --model ws.npz --manifest data/manifest.csv --out harmonized/
#
# Clean up the temporary folder:
import shutil

shutil.rmtree(tmp)
