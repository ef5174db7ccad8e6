"""
Keeping disease effects
=======================

A harmonization removes what differs between sites. When a diagnosis is unbalanced
across sites -- here 10 % patients at one site and 70 % at another -- the disease is one
of those differences, and a method that does not know the diagnosis takes part of its
effect for a site effect and removes it. This tutorial shows the pitfall with ComBat and
the fix: give the diagnosis (and every other biological variable that differs between
sites) as a covariate, on images and on a table of regional measures.
"""

# %%
# Site-confounded data
# --------------------
# :func:`~harmonix.datasets.make_multisite` can give subjects a sex and a diagnosis:
# patients ("AD") lose grey matter in the medial temporal lobes, with a severity of their
# own. With one prevalence per site the sites scan subjects of their own
# (``traveling=False``), and ``ds.covariates`` holds age, sex and diagnosis.
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harmonix import ComBatHarmonizer
from harmonix.benchmark import disease_effect, gm_volumes, oracle_outputs
from harmonix.benchmark.metrics.tissue import pattern_gm_volumes
from harmonix.datasets import make_multisite

ds = make_multisite(
    n_subjects=20,
    n_sites=3,
    resolution=4,
    random_state=0,
    diagnosis_prevalence=(0.1, 0.7, 0.4),
    traveling=False,
)
cov = ds.covariates
print(pd.crosstab(ds.sites, cov["diagnosis"]))

# %%
# The effect to keep: the standardized effect of diagnosis on the grey-matter volume of
# the disease's region, adjusted for age and sex (:func:`~harmonix.benchmark.disease_effect`;
# negative: patients have less). On the true volumes:
adjust = cov[["age", "sex"]]
true_d = disease_effect(ds.pattern_gm_volume, cov["diagnosis"], adjust)
print(f"true effect: d = {true_d:.2f}")

# %%
# ComBat with and without the diagnosis
# -------------------------------------
# Both fits keep age and sex; only the second knows the diagnosis. The covariates are a
# DataFrame with one row per image (``ages`` is just the short form of its ``age``
# column); ``transform`` needs the same columns.
without = ComBatHarmonizer(reference_site="site0").fit(ds.imgs, ds.sites, covariates=adjust)
with_dx = ComBatHarmonizer(reference_site="site0").fit(ds.imgs, ds.sites, covariates=cov)
outputs = {
    "none": ds.imgs,
    "ComBat (age, sex)": without.transform(ds.imgs, ds.sites, covariates=adjust),
    "ComBat (age, sex, diagnosis)": with_dx.transform(ds.imgs, ds.sites, covariates=cov),
    "oracle": oracle_outputs(ds),  # each subject scanned at the reference site
}
print(with_dx.covariates_)

# %%
# The regional volume is measured from each output's intensities, all sites pooled (the
# analysis harmonization is for), by :func:`~harmonix.benchmark.metrics.tissue.pattern_gm_volumes`.
# Any intensity-based measure is noisier than the truth, so even the oracle finds a
# weaker effect than the true volumes; compare the methods with it.
effects = {
    name: disease_effect(
        pattern_gm_volumes(imgs, ds.mask, ds.disease_region, margin=3), cov["diagnosis"], adjust
    )
    for name, imgs in outputs.items()
}
for name, d in effects.items():
    print(f"{name:>30}: d = {d:+.2f}")

fig, ax = plt.subplots(figsize=(6.5, 3.0), layout="constrained")
names = list(effects)
ax.barh(names, [effects[n] for n in names], color=["0.6", "tab:red", "tab:blue", "tab:green"])
ax.axvline(true_d, color="k", ls="--", label=f"true volumes ({true_d:.2f})")
ax.set_xlabel("standardized effect of diagnosis (d)")
ax.invert_yaxis()
ax.legend(loc="lower left", fontsize=8)
plt.show()

# %%
# On the unharmonized images, the pooled effect even has the wrong sign: the sites
# differ in contrast, and the site with 70 % patients is not the darkest one. Without the
# diagnosis, ComBat sees that site as one whose medial temporal voxels are darker, and
# brightens them: the pooled effect shrinks. With the diagnosis in the model, the site
# effect is estimated beside the disease effect, which is added back to every image.
#
# ComBat with the diagnosis can even show a *stronger* effect than the oracle: the
# patients' severities vary, so a site with many patients has more variance around the
# model than the reference site, which ComBat takes for a scanner effect and shrinks --
# the patients look more alike than they are. On the benchmark's 2 mm data (80 subjects,
# 3 seeds) it stays near the oracle (``benchmarks/results/compare_methods_disease.md``).
#
# Tables of regional measures
# ---------------------------
# Most studies harmonize regional measures rather than voxels (FreeSurfer volumes,
# cortical thickness): one row per scan, one column per feature. ComBat takes such a
# table (a 2-D array or a DataFrame, whose column names come back). Here the features
# are two grey-matter volumes measured site by site from the raw images (tissue classes
# fitted on each site's images, as a segmentation of each scan would be), so each site
# biases them its own way; the same pitfall and the same fix apply.
mtl_gm = np.empty(len(ds))
for site in ds.site_names:
    at = ds.sites == site
    mtl_gm[at] = pattern_gm_volumes(ds.imgs[at], ds.mask, ds.disease_region, margin=3)
table = pd.DataFrame({"mtl_gm": mtl_gm, "total_gm": gm_volumes(ds.imgs, ds.mask, ds.sites)})
print(f"{'table, raw':>42}: d = {disease_effect(table['mtl_gm'], cov['diagnosis'], adjust):+.2f}")
for name, columns in (("age, sex", adjust), ("age, sex, diagnosis", cov)):
    harmonized = ComBatHarmonizer().fit_transform(table, ds.sites, covariates=columns)
    d = disease_effect(harmonized["mtl_gm"], cov["diagnosis"], adjust)
    print(f"{'table harmonized with ' + name:>42}: d = {d:+.2f} {list(harmonized.columns)}")

# %%
# From the command line, the same table is a CSV with a ``site`` column and the
# covariate columns named by ``--covariates``::
#
#     harmonix fit --method combat --table features.csv --covariates age,sex,diagnosis \
#         --id-columns subject --out combat.npz
#     harmonix transform --model combat.npz --table new.csv --out new_harmonized.csv
#
# A caution for classifiers: a model fitted with the diagnosis as a covariate writes
# each image's diagnosis effect into it, so cross-validating a diagnosis classifier on
# the same harmonized images is optimistic (fit the harmonization inside each fold, e.g.
# with :class:`~harmonix.HarmonizerStep`). The benchmark's ``disease_auc_score`` shows it.
