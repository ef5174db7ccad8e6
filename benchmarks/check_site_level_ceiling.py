"""How high can a site-level harmonizer score at 2 mm? The rescan ceiling of traveling SSIM.

A harmonizer that maps each *site* to the reference site (HM, ComBat, IGUANe) cannot undo
what differs between two scans of one subject at the *same* site: the residual bias of
each scan and its noise (preprocessed style, ``harmonix.datasets.sites``). The oracle of
``run_benchmark`` (each subject's reference-site rendering, one image per subject) scores
a traveling SSIM of 1; a perfect site-level map scores what two rescans at one site score.

For each seed, ``make_multisite(20 subjects, 4 sites, 2 mm)`` is simulated three ways,
with the same random streams (so the same subjects, scans and held-out site):

- **default**: the benchmark's data; HM is fitted as in ``compare_methods.py``;
- **no scan residual**: each scan keeps its site's bias but not its own residual (the
  residual is still drawn, so that the noise is the same);
- **rescans**: every site drawn with the reference site's parameters (contrast, curve,
  blur, noise level, bias): the sites differ only by the scans' own residuals and noise,
  and no harmonization is the perfect site-level map.

Run from the repository root (about 2 min per seed and variant on 2 cores)::

    python benchmarks/check_site_level_ceiling.py --seeds 0 1 2
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
from _helpers import common
from sklearn.base import BaseEstimator

import harmonix.datasets.multisite as multisite
from harmonix import HistogramMatchingHarmonizer
from harmonix.benchmark import run_benchmark
from harmonix.datasets import make_multisite

METRIC = "traveling_subject_ssim_score"
VARIANTS = ("default", "no scan residual", "rescans")


class NoHarmonization(BaseEstimator):
    """The images as they are (float32)."""

    def fit(self, imgs, sites, ages=None):
        return self

    def transform(self, imgs, sites=None, ages=None):
        return np.asarray(imgs, dtype=np.float32)


@contextlib.contextmanager
def simulation(variant: str) -> Iterator[None]:
    """Patch the simulation for ``variant`` (see the module docstring), then restore it."""
    draw, scan_bias = multisite._draw_site_preprocessed, multisite._scan_bias
    if variant == "no scan residual":

        def site_bias_only(site_log_bias, subj, rng):
            scan_bias(site_log_bias, subj, rng)  # the same draws: the noise is unchanged
            return np.exp(site_log_bias.reshape(-1)[subj.flat]), 0.0

        multisite._scan_bias = site_bias_only
    elif variant == "rescans":
        first: list = []

        def reference_site(anat, rng, name):
            params, bias = draw(anat, rng, name)  # every site's draws, as by default
            if not first:
                first.append((params, bias))  # site0, the reference site
            params, bias = copy.deepcopy(first[0][0]), first[0][1].copy()
            params["name"] = name
            return params, bias

        multisite._draw_site_preprocessed = reference_site
    try:
        yield
    finally:
        multisite._draw_site_preprocessed, multisite._scan_bias = draw, scan_bias


def scores(seed: int, variant: str) -> dict[tuple[str, str], float]:
    with simulation(variant):
        ds = make_multisite(20, 4, resolution=2, random_state=seed)
    methods = {"none": NoHarmonization(), "HM": HistogramMatchingHarmonizer()}
    df = run_benchmark(methods, ds, random_state=seed, n_boot=10, metrics=[METRIC])
    return {(r.method, r.protocol): float(r.value) for r in df.itertuples()}


def main() -> None:
    p = common.script_parser(__doc__, "site_level_ceiling.md")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    load = common.load_now()
    rows = {(s, v): scores(s, v) for s in args.seeds for v in VARIANTS}
    lines = [
        "# The rescan ceiling of a site-level harmonizer (2 mm, preprocessed style)",
        "",
        f"Command: `{common.command_line()}`  ",
        f"`make_multisite(20, 4, resolution=2, random_state=seed)`, seeds {args.seeds}; "
        "traveling SSIM of unseen sites (the held-out site drawn with each seed, as in "
        "`compare_methods.py`) and of seen sites. Load average at the start: "
        f"{load[0]:.2f} (quality figures: they do not depend on it).",
        "",
        "| seed | HM unseen | HM seen | HM unseen, no scan residual | rescans unseen "
        "(none) | rescans unseen (HM) | room above HM (unseen) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    room = []
    for s in args.seeds:
        d, r, c = rows[(s, "default")], rows[(s, "no scan residual")], rows[(s, "rescans")]
        room.append(c[("none", "unseen")] - d[("HM", "unseen")])
        lines.append(
            f"| {s} | {d[('HM', 'unseen')]:.3f} | {d[('HM', 'seen')]:.3f} | "
            f"{r[('HM', 'unseen')]:.3f} | {c[('none', 'unseen')]:.3f} | "
            f"{c[('HM', 'unseen')]:.3f} | {room[-1]:+.3f} |"
        )
    lines += [
        "",
        f"Room between HM and the rescan ceiling on unseen sites: {np.mean(room):+.3f} on "
        f"average (per seed {', '.join(f'{x:+.3f}' for x in room)}). The oracle scores "
        "1.000 (one image per subject), which no site-level map can reach.",
    ]
    common.write_results(args.out, lines)


if __name__ == "__main__":
    main()
