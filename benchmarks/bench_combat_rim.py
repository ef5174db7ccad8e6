"""ComBat on the brain's rim: the brain voxels outside the common mask (``voxel_mask_``).

Only voxels that are brain in every training image have a ComBat model; the others (the
rim, where the training brains differ in extent) used to be returned unchanged, at their
site's scale. This script measures four rules on synthetic traveling subjects
(``make_multisite``):

* ``unchanged``: rim voxels returned as they are (harmonix before);
* ``image line`` (harmonix now): the least-squares line of ComBat's outputs on its inputs
  over the image's common-mask voxels, applied to its rim voxels;
* ``nearest voxel``: each rim voxel takes ComBat's map ``a * y + b`` of its nearest
  common-mask voxel (Euclidean distance transform);
* ``image ratio``: rim voxels multiplied by the median ratio output / input over the
  image's common-mask voxels.

Figures, for the default model (pooled grand mean) and for ``reference_site="site0"``:

* per site, the median intensity of the rim and of the common mask after ComBat, and the
  whole-brain mean (before, and after each rule);
* with ``reference_site="site0"``: the median relative error to the ground truth (each
  subject rendered at site0 without bias field and noise) on the rim and in the common
  mask of the other sites' images, and of site0's own images (the floor: bias and noise),
  on the two data sets above and on four more (seeds), to choose the rule.

Writes the "Brain rim" section of ``benchmarks/results/combat.md`` (between markers; the
rest of the file is bench_combat.py's).

Usage::

    python benchmarks/bench_combat_rim.py
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from _helpers import common
from scipy import ndimage

from harmonix import ComBatHarmonizer
from harmonix.datasets import make_multisite

BEGIN = "<!-- rim: written by benchmarks/bench_combat_rim.py -->"  # as in bench_combat.py
END = "<!-- /rim -->"
#: Data sets with per-site tables: the data of issue 28, and a larger 2 mm set.
DATASETS = {
    "4 mm, 3 sites x 6 subjects, seed 2": dict(
        n_subjects=6, n_sites=3, resolution=4, random_state=2
    ),
    "2 mm, 4 sites x 10 subjects, seed 0": dict(
        n_subjects=10, n_sites=4, resolution=2, random_state=0
    ),
}
#: More data sets for the error summary (the choice of the rule).
SEEDS = [dict(n_subjects=6, n_sites=3, resolution=4, random_state=s) for s in (0, 1, 3)] + [
    dict(n_subjects=10, n_sites=4, resolution=2, random_state=1)
]
RULES = ("unchanged", "image line", "nearest voxel", "image ratio")
FLOOR = "site0's own images (floor)"


def _outputs(h: ComBatHarmonizer, ds) -> dict[str, np.ndarray]:
    """The model's output under each rim rule (only the rim differs between them)."""
    out = h.transform(ds.imgs, ds.sites, ds.ages)  # harmonix's rule: the image line
    brain = ds.imgs != 0
    mask = h.voxel_mask_
    rim = brain & ~mask
    # ComBat maps every common-mask voxel linearly: read a and b off two constant images
    # (which the site check would take for another scanner: the stored effects are wanted)
    ones = np.ones_like(ds.imgs)
    check, h.site_check = h.site_check, "warn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        at_one = h.transform(ones, ds.sites, ds.ages)
        slope = h.transform(2 * ones, ds.sites, ds.ages) - at_one
    h.site_check = check
    offset = at_one - slope
    index = ndimage.distance_transform_edt(~mask, return_distances=False, return_indices=True)
    nearest_voxel, ratio = out.copy(), out.copy()
    for i in range(len(ds.imgs)):
        y = ds.imgs[i][rim[i]]
        near = tuple(axis[rim[i]] for axis in index)
        nearest_voxel[i][rim[i]] = slope[i][near] * y + offset[i][near]
        inside = brain[i] & mask
        ratio[i][rim[i]] = y * np.median(out[i][inside] / ds.imgs[i][inside])
    return {
        "unchanged": np.where(rim, ds.imgs, out),
        "image line": out,
        "nearest voxel": nearest_voxel,
        "image ratio": ratio,
    }


def _site_table(ds, h, outs) -> list[str]:
    brain = ds.imgs != 0
    rim = brain & ~h.voxel_mask_
    inside = brain & h.voxel_mask_
    lines = [
        "| site | rim median before | mask median before | rim median after ("
        + " / ".join(RULES)
        + ") | mask median after | whole-brain mean before | whole-brain mean after ("
        + " / ".join(RULES)
        + ") |",
        "|---|---|---|---|---|---|---|",
    ]
    for site in np.unique(ds.sites):
        s = ds.sites == site
        after_rim = " / ".join(f"{np.median(outs[r][s][rim[s]]):.0f}" for r in RULES)
        means = " / ".join(f"{outs[r][s][brain[s]].mean():.1f}" for r in RULES)
        lines.append(
            f"| {site} | {np.median(ds.imgs[s][rim[s]]):.0f} | "
            f"{np.median(ds.imgs[s][inside[s]]):.0f} | {after_rim} | "
            f"{np.median(outs['image line'][s][inside[s]]):.0f} | "
            f"{ds.imgs[s][brain[s]].mean():.1f} | {means} |"
        )
    return lines


def _errors(ds, h, outs) -> dict[str, tuple[float, float]]:
    """Median relative error to the truth (rim, mask) of the other sites' images under each
    rule, of site0's own images (the floor) and without harmonization."""
    brain = (ds.imgs != 0) & (ds.truth != 0)
    other = (ds.sites != "site0")[:, None, None, None]
    rim, inside = brain & ~h.voxel_mask_, brain & h.voxel_mask_

    def err(values: np.ndarray, where: np.ndarray) -> float:
        return float(np.median(np.abs(values[where] - ds.truth[where]) / ds.truth[where]))

    rows = {r: (err(outs[r], rim & other), err(outs[r], inside & other)) for r in RULES}
    rows[FLOOR] = (
        err(ds.imgs, rim & ~other),
        err(ds.imgs, inside & ~other),
    )
    rows["no harmonization"] = (err(ds.imgs, rim & other), err(ds.imgs, inside & other))
    return rows


def _error_table(rows: dict[str, tuple[float, float]]) -> list[str]:
    lines = ["| rule | rim error, other sites | mask error, other sites |", "|---|---|---|"]
    lines += [f"| {name} | {r:.3f} | {m:.3f} |" for name, (r, m) in rows.items()]
    return lines


def _rim_cost() -> tuple[float, float, tuple[float, ...], float]:
    """Median seconds of a one-image transform at 1 mm (182x218x182) with and without the
    rim step, the load average before timing and the rim's share of the image's brain."""
    import time as _time

    shape = (182, 218, 182)
    grid = np.ogrid[tuple(slice(-1, 1, n * 1j) for n in shape)]
    radius = np.sqrt(sum(g**2 for g in grid))
    rng = np.random.default_rng(0)
    imgs = []
    for k in range(8):
        extent = 0.7 + 0.02 * (k % 4)  # brains of different extents: a rim
        img = (600 + 100 * np.cos(6 * radius) + rng.normal(0, 20, shape)) * (1 + 0.2 * (k // 4))
        imgs.append(np.where(radius < extent, img, 0).astype(np.float32))
    sites = np.repeat(["a", "b"], 4)
    h = ComBatHarmonizer().fit(imgs, sites)
    one = [imgs[5]]
    load = common.load_now()

    def timed() -> float:
        best = []
        for _ in range(5):
            start = _time.perf_counter()
            h.transform(one, ["b"])
            best.append(_time.perf_counter() - start)
        return float(np.median(best))

    with_rim = timed()
    h._harmonize_rim = lambda *args: None  # the step skipped (rim left unchanged)
    without = timed()
    brain = one[0] != 0
    return with_rim, without, load, float((brain & ~h.voxel_mask_).sum() / brain.sum())


def main(argv: list[str] | None = None) -> None:
    args = common.script_parser(__doc__, "combat.md").parse_args(argv)
    start = time.perf_counter()
    lines = [
        BEGIN,
        "## Brain rim (brain voxels outside the common mask)",
        "",
        "ComBat models the voxels that are brain in every training image (`voxel_mask_`). "
        "The other brain voxels of an image (the rim) were returned unchanged, at their "
        "site's scale (`unchanged`). Now they are mapped with the least-squares line of "
        "ComBat's outputs on its inputs over the image's own `voxel_mask_` voxels "
        "(`image line`). Two alternatives were measured: each rim voxel taking ComBat's "
        "map `a * y + b` of its nearest `voxel_mask_` voxel (`nearest voxel`), and each "
        "rim voxel times the median output / input ratio of the image's mask voxels "
        "(`image ratio`). Medians and means are of the brain voxels (non-zero) of all "
        "images of a site; the in-mask numbers are the same under every rule (they are "
        "neuroHarmonize's, see above).",
        "",
    ]
    summary: dict[str, dict[str, tuple[float, float]]] = {}
    for name, params in DATASETS.items():
        ds = make_multisite(**params)
        for reference in (None, "site0"):
            h = ComBatHarmonizer(reference_site=reference).fit(ds.imgs, ds.sites, ds.ages)
            outs = _outputs(h, ds)
            brain = ds.imgs != 0
            share = (brain & ~h.voxel_mask_).sum() / brain.sum()
            title = "pooled grand mean" if reference is None else "reference_site='site0'"
            lines += [
                f"### {name}: {title}",
                "",
                f"`make_multisite({', '.join(f'{k}={v}' for k, v in params.items())})`; "
                f"rim: {share:.1%} of the brain voxels.",
                "",
                *_site_table(ds, h, outs),
                "",
            ]
            if reference is not None:
                rows = _errors(ds, h, outs)
                summary[name] = rows
                lines += [
                    "Median relative error to the ground truth (the subject rendered at "
                    "site0 without bias field or noise), voxels that are brain in the "
                    "image and in the truth:",
                    "",
                    *_error_table(rows),
                    "",
                ]
    for params in SEEDS:
        ds = make_multisite(**params)
        h = ComBatHarmonizer(reference_site="site0").fit(ds.imgs, ds.sites, ds.ages)
        name = (
            f"{params['resolution']} mm, {params['n_sites']} sites x "
            f"{params['n_subjects']} subjects, seed {params['random_state']}"
        )
        summary[name] = _errors(ds, h, _outputs(h, ds))
    lines += [
        "### Choosing the rule: rim error on six data sets",
        "",
        "Median relative error to the ground truth on the rim of the non-reference images "
        "(`reference_site='site0'`); last row: the mean over the data sets.",
        "",
        "| data set | " + " | ".join(RULES) + " | in-mask error | floor (site0, rim) |",
        "|---|" + "---|" * (len(RULES) + 2),
    ]
    for name, rows in summary.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{rows[r][0]:.3f}" for r in RULES)
            + f" | {rows['image line'][1]:.3f} | {rows[FLOOR][0]:.3f} |"
        )
    means = {r: float(np.mean([rows[r][0] for rows in summary.values()])) for r in RULES}
    worst = {r: float(np.max([rows[r][0] for rows in summary.values()])) for r in RULES}
    lines += [
        "| mean | " + " | ".join(f"{means[r]:.3f}" for r in RULES) + " | | |",
        "| worst | " + " | ".join(f"{worst[r]:.3f}" for r in RULES) + " | | |",
        "",
        "`image line` brings the rim from its site's scale (error {:.2f}-{:.2f} when left "
        "unchanged) to within {:.3f} of the in-mask error on every data set. "
        "`image line` (mean {:.3f}, worst {:.3f}) and `image ratio` ({:.3f}, "
        "{:.3f}) pool all the image's mask voxels; `nearest voxel` ({:.3f}, {:.3f}) extends "
        "the maps of the mask's boundary voxels, ComBat's least reliable (partial volume, "
        "few images per site). harmonix uses `image line`: as good as the ratio on "
        "average, and it also carries an additive site effect, which a ratio cannot.".format(
            min(rows["unchanged"][0] for rows in summary.values()),
            worst["unchanged"],
            max(rows["image line"][0] - rows["image line"][1] for rows in summary.values()),
            means["image line"],
            worst["image line"],
            means["image ratio"],
            worst["image ratio"],
            means["nearest voxel"],
            worst["nearest voxel"],
        ),
        "",
    ]
    with_rim, without, load, share = _rim_cost()
    lines += [
        f"Cost: a one-image transform at 1 mm (182x218x182, a rim of "
        f"{share:.1%} of the brain) takes {with_rim:.3f} s with the rim step and "
        f"{without:.3f} s without it (median of 5; load average {load[0]:.2f} before "
        "timing, 2 cores shared with other jobs; the apply times in the table above were "
        "measured before the rim step existed).",
        "",
        f"CPU: {common.cpu_model()}; {time.perf_counter() - start:.0f} s. Reproduce: "
        "`python benchmarks/bench_combat_rim.py`.",
        END,
    ]
    section = "\n".join(lines)
    text = args.out.read_text() if args.out.exists() else ""
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    args.out.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
