"""
Comparing methods with the benchmark
====================================

:func:`~harmonix.benchmark.run_benchmark` fits every harmonizer on the same training
sites, harmonizes the training images ("seen" protocol) and the images of held-out sites
("unseen" protocol), and scores all outputs with the same metrics: similarity of
traveling subjects, similarity to the ground truth, preservation of differences between
subjects and of age effects, how well the site can still be predicted, and cost.
"""

# %%
# Data and harmonizers
# --------------------
# Eight subjects at four sites, 4 mm voxels. By default the benchmark holds out one site
# other than the reference site, drawn with ``random_state``; here we name it. Beside
# the methods run two harmonizers that keep nothing of their inputs
# (:mod:`harmonix.benchmark.sanity`): "collapse" returns the mean training image for every
# input, "noise" returns noise. A metric that cannot rank them last cannot see what they
# destroy.
import matplotlib.pyplot as plt

from harmonix import (
    ComBatHarmonizer,
    HistogramMatchingHarmonizer,
    IdentityHarmonizer,
    WhiteStripeHarmonizer,
)
from harmonix.benchmark import (
    METRICS,
    MeanImageHarmonizer,
    NoiseHarmonizer,
    plot_metrics,
    plot_slices,
    run_benchmark,
    to_markdown,
)
from harmonix.datasets import make_multisite

ds = make_multisite(n_subjects=8, n_sites=4, resolution=4, random_state=0)

harmonizers = {
    "none": IdentityHarmonizer(),
    "HM": HistogramMatchingHarmonizer(reference_site="site0"),
    "WS": WhiteStripeHarmonizer(reference_site="site0"),
    "ComBat": ComBatHarmonizer(),
    "collapse": MeanImageHarmonizer(),
    "noise": NoiseHarmonizer(),
}

# %%
# Run
# ---
# Each harmonizer is cloned, fitted on sites 0-2 and scored; ``return_outputs=True`` also
# returns the harmonized images. ComBat cannot serve the unseen site (its default
# ``unseen_site="error"``), so its unseen scores are missing, with the reason. The oracle
# row (each subject's own reference-site scan) gives the ceiling of every metric, and
# every value has a 95 % bootstrap interval over subjects (``ci_low``, ``ci_high``).
df, outputs = run_benchmark(
    harmonizers,
    ds,
    test_sites=["site3"],
    oracle=True,
    n_boot=200,
    random_state=0,
    return_outputs=True,
)
print(df.head(8).to_string())
print(df.attrs["held_out"])

# %%
# The metrics
# -----------
# ``*_score`` metrics are better when higher, ``*_error`` when lower; "reference" values
# (chance level, null brain-age error, true GM-age correlation) are read beside them:
for name, (direction, description) in METRICS.items():
    print(f"{name:29s} {direction:9s} {description}")

# %%
# Tables
# ------
# :func:`~harmonix.benchmark.to_markdown` renders one table per protocol (the same
# tables as the project's ``benchmarks/results`` files):
print(to_markdown(df, legend=False))

# %%
# Figures
# -------
# :func:`~harmonix.benchmark.plot_metrics` and :func:`~harmonix.benchmark.plot_slices`
# write PNG files (no display needed); we show them here.
import tempfile
from pathlib import Path

tmp = Path(tempfile.mkdtemp(prefix="harmonix-bench-"))
metrics_png = plot_metrics(
    df,
    tmp / "metrics.png",
    metrics=[
        "traveling_subject_ssim_score",
        "subject_specificity_score",
        "site_predictability_error",
        "brain_age_correlation_score",
    ],
)
slices_png = plot_slices(outputs, ds, "sub-00", tmp / "slices.png", test_sites=["site3"])

for png in (metrics_png, slices_png):
    image = plt.imread(png)
    fig, ax = plt.subplots(figsize=(image.shape[1] / 100, image.shape[0] / 100), dpi=100)
    ax.imshow(image)
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)

# %%
# Reading the results
# -------------------
# On these simulated sites, intensity normalization (HM, WS) brings traveling subjects
# much closer, HM more than WS because it also aligns grey-matter contrast. ComBat, one
# model per voxel fitted on the training sites, makes the seen sites the most alike, but
# it has no parameters for the unseen site. What HM and WS leave comes from effects no
# global intensity map can undo (bias fields, blur, noise). With 8 subjects per site the
# cross-validated metrics (site prediction, brain age) are noisy: use more subjects and
# several seeds (:func:`~harmonix.benchmark.summarize`) for real comparisons, as the
# project's ``benchmarks/`` scripts do. IGUANe can be added like any other harmonizer;
# with CPU-sized settings it learns little (see the IGUANe tutorial).
#
# The garbage rows show what each metric can see. "collapse" makes every subject's images
# identical, so its traveling SSIM is 1 and no site can be predicted, as for the oracle;
# the subject specificity (is the agreement the subject's own?) and the distance
# correlation put both garbage rows at or near 0, below every method. The brain-age
# correlation gives collapse 0 but, on 8 subjects, scatters for noise; on 20 subjects per
# site it ranks both last (``benchmarks/results/benchmark_sanity.md``).
seen = df[df.protocol == "seen"].pivot(index="method", columns="metric", values="value")
print(
    seen[
        [
            "traveling_subject_ssim_score",
            "subject_specificity_score",
            "distance_correlation_score",
            "site_predictability_error",
            "brain_age_correlation_score",
        ]
    ]
    .round(3)
    .to_string()
)

import shutil

shutil.rmtree(tmp)
