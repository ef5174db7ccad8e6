"""
BIDS in, BIDS derivatives out
=============================

Data sets are usually kept in BIDS: ``sub-*/[ses-*/]anat/*_T1w.nii.gz`` images, JSON
sidecars naming the scanner, ``participants.tsv`` with ages. This tutorial reads such a
dataset into a manifest (:func:`harmonix.bids.bids_manifest`, pybids underneath), fits
ComBat on it, and writes the harmonized images as a BIDS derivatives dataset whose
sidecars lead back to the source images. The dataset is synthetic, written by
:func:`harmonix.bids.write_bids_dataset` (``harmonix make-dataset --bids``).
"""

# %%
# A BIDS dataset
# --------------
# Four subjects at three sites (scanners), 4 mm voxels: subjects 00 and 01 travel to
# every site (one session per site), 02 and 03 are scanned at one site, and 03 has two
# runs.
import tempfile
from pathlib import Path

from harmonix.bids import write_bids_dataset
from harmonix.datasets import make_multisite

tmp = Path(tempfile.mkdtemp(prefix="harmonix-bids-"))
ds = make_multisite(n_subjects=4, n_sites=3, resolution=4, random_state=0)
raw = write_bids_dataset(ds, tmp / "ds")
for path in sorted(raw.rglob("*")):
    if path.is_file():
        print(path.relative_to(raw))

# %%
# The scanner is in the sidecars: per image for the traveling subjects, per subject for
# the others (inherited by both runs of sub-03).
print((raw / "sub-03" / "sub-03_T1w.json").read_text())
print((raw / "participants.tsv").read_text())

# %%
# The manifest
# ------------
# :func:`~harmonix.bids.bids_manifest` lists the T1w images with their site -- by default
# the scanner named by ``Manufacturer``, ``ManufacturersModelName`` and
# ``MagneticFieldStrength`` -- their entities and the covariates asked for.
# ``harmonix bids-manifest ds --out manifest.csv --covariates age`` writes the same table
# as a CSV that every command reads.
from harmonix.bids import bids_manifest, write_bids_manifest

table = bids_manifest(raw, covariates="age")
print(table.drop(columns="path").to_string())

# %%
# Fit on the dataset
# ------------------
# The manifest is what ``harmonix fit`` reads; from Python, read it back with
# :func:`harmonix.io.read_manifest`.
from harmonix import ComBatHarmonizer
from harmonix.io import read_manifest

manifest = write_bids_manifest(raw, tmp / "manifest.csv", covariates="age")
man = read_manifest(manifest)
combat = ComBatHarmonizer().fit([str(p) for p in man.paths], man.sites, man.ages)
combat.save(tmp / "combat.npz")

# %%
# BIDS derivatives out
# --------------------
# :func:`~harmonix.bids.transform_manifest_to_bids` (``harmonix transform --manifest
# manifest.csv --bids-out ...``) names each output for its source -- the entities come
# from the manifest -- and writes a sidecar with the sources, the method, the model's hash
# and its parameters. :func:`~harmonix.bids.transform_to_bids` does the same for a list of
# images, given their entities, sites and ages.
from harmonix.bids import transform_manifest_to_bids

deriv = raw / "derivatives" / "harmonix"
written = transform_manifest_to_bids(
    combat, manifest, deriv, model_path=tmp / "combat.npz", verbose=False
)
for path in written:
    print(path.relative_to(deriv))
print((deriv / "dataset_description.json").read_text())

# %%
# pybids indexes the derivatives next to the raw data; ``Sources`` is a BIDS URI whose
# dataset name (``raw``) ``DatasetLinks`` resolves, so every output leads back to its
# source image.
import json

import bids

layout = bids.BIDSLayout(str(raw), derivatives=True)
outputs = layout.get(scope="harmonix", desc="harmonized", suffix="T1w", extension=".nii.gz")
links = json.loads((deriv / "dataset_description.json").read_text())["DatasetLinks"]
meta = outputs[-1].get_metadata()
_, name, inner = meta["Sources"][0].split(":", 2)
source = (deriv / links[name] / inner).resolve()
print(outputs[-1].filename, "<-", source.relative_to(raw.resolve()))
print(meta["Harmonization"]["Method"], meta["Harmonization"]["ModelSHA256"][:16], "...")

# %%
# The traveling subject sub-00 at its three sites, before and after ComBat:
import matplotlib.pyplot as plt
import nibabel as nib

fig, axes = plt.subplots(2, 3, figsize=(7, 4.6))
for col, session in enumerate(("1", "2", "3")):
    before = layout.get(subject="00", session=session, suffix="T1w", extension=".nii.gz")[0]
    after = layout.get(
        scope="harmonix", subject="00", session=session, desc="harmonized", extension=".nii.gz"
    )[0]
    for row, (img, label) in enumerate(((before, "raw"), (after, "ComBat"))):
        data = nib.load(img.path).get_fdata()
        axes[row, col].imshow(data[:, :, data.shape[2] // 2].T, cmap="gray", origin="lower")
        axes[row, col].set_title(f"ses-{session} {label}", fontsize=9)
        axes[row, col].axis("off")
fig.tight_layout()
plt.show()
