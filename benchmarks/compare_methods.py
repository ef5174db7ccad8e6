"""Compare no harmonization, HM, WhiteStripe, ComBat and IGUANe on synthetic traveling subjects.

Every seed simulates a new data set (``harmonix.datasets.make_multisite``), fits each
method on all sites but the held-out ones and scores seen and unseen sites with
``harmonix.benchmark.run_benchmark``, with the oracle row (each subject's own
reference-site scan: the ceiling of every metric) and 95 % bootstrap intervals over
subjects. Results are aggregated as mean ± sd [interval of the mean] over seeds and
written to ``<out>/compare_methods.md`` with figures ``<out>/compare_methods_metrics.png``
and ``<out>/compare_methods_slices.png``; the table marks with ``*`` the methods whose
interval does not overlap that of no harmonization.

Examples
--------
The issue's setting (2 mm, 5 seeds, 20 subjects per site; hours on 2 CPU cores)::

    python benchmarks/compare_methods.py --seeds 0 1 2 3 4 --n-subjects 20

A quick check of the script (minutes)::

    python benchmarks/compare_methods.py --resolution 4 --n-subjects 4 --seeds 0 1 \\
        --no-iguane --out /tmp/compare

Disease effects (``--disease``): every site scans subjects of its own, with a diagnosis
whose prevalence differs between sites (``--prevalence``, 10 % at the reference site and
70 % at another by default), and ComBat runs twice, with age and sex only and with the
diagnosis too; writes ``<out>/compare_methods_disease.md`` (about an hour on 2 busy cores
for 3 seeds at 2 mm)::

    python benchmarks/compare_methods.py --disease --seeds 0 1 2 --n-subjects 20

IGUANe is sized for a CPU by default (``--iguane-width 4``, 200 steps on 32-voxel patches),
which is still slow on CPU (tens of seconds per step on 2 busy cores); on a GPU use the
published settings, e.g. ``--iguane-width 16 --iguane-patch 0 --iguane-epochs 100
--iguane-steps 200 --device cuda``. ``--iguane-recipe 2mm`` trains it with
:data:`~harmonix.iguane.CPU_RECIPE_2MM` (``4mm``: :data:`~harmonix.iguane.CPU_RECIPE`).

One IGUANe training is one draw of its training's randomness. Several trainings per data
set (the same command with ``--iguane-set random_state=K``, each with its own ``--out``)
are combined into one report, IGUANe's values being their mean, with::

    python benchmarks/compare_methods.py <the same options> --from-csv A/compare_methods.csv \
        --more-iguane B/compare_methods.csv --out C
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from _helpers import common

from harmonix import IdentityHarmonizer
from harmonix.benchmark import (
    METRIC_TARGETS,
    METRICS,
    plot_metrics,
    plot_slices,
    run_benchmark,
    summarize,
    to_markdown,
)
from harmonix.datasets import make_multisite


def build_methods(
    args: argparse.Namespace, reference: str, seed: int | None = None
) -> tuple[dict, list[str]]:
    """The harmonizers to compare (IGUANe's model file, with --save-iguane or
    --load-iguane, named by ``seed``), and notes on those that are unavailable."""
    methods: dict = {"none": IdentityHarmonizer()}
    notes: list[str] = []
    try:
        from harmonix.intensity.histogram_matching import HistogramMatchingHarmonizer

        methods["HM"] = HistogramMatchingHarmonizer(reference_site=reference)
    except ImportError as exc:
        notes.append(f"HM skipped: {exc}")
    try:
        from harmonix.intensity.whitestripe import WhiteStripeHarmonizer

        methods["WS"] = WhiteStripeHarmonizer(reference_site=reference)
    except ImportError as exc:
        notes.append(f"WS skipped: {exc}")
    try:
        from harmonix.combat import ComBatHarmonizer

        methods["ComBat"] = ComBatHarmonizer(reference_site=reference, unseen_site="error")
    except ImportError as exc:
        notes.append(f"ComBat skipped: {exc}")
    if args.no_iguane:
        notes.append("IGUANe skipped (--no-iguane).")
        return methods, notes
    try:
        from harmonix.iguane.estimator import IGUANeHarmonizer
    except ImportError as exc:
        notes.append(f"IGUANe skipped: not available ({exc}).")
        return methods, notes
    if args.iguane_pretrained:
        from harmonix.iguane.pretrained import PretrainedIGUANe

        methods["IGUANe"] = PretrainedIGUANe()
        notes.append(
            "IGUANe is the shipped 4 mm CPU model (CPU_RECIPE, trained on seed 0's sites "
            "0-3 by benchmarks/train_demo_model.py): not fitted here, so every site, seen "
            "or unseen by the other methods, is new to it."
        )
        return methods, notes
    if args.iguane_recipe:
        from harmonix.iguane import CPU_RECIPE, CPU_RECIPE_2MM

        name, recipe = {
            "4mm": ("CPU_RECIPE", CPU_RECIPE),
            "2mm": ("CPU_RECIPE_2MM", CPU_RECIPE_2MM),
        }[args.iguane_recipe]
        if args.iguane_generator_steps:
            recipe = {**recipe, "steps_per_epoch": args.iguane_generator_steps}
        recipe = {**recipe, **args.iguane_set}
        cls = IGUANeHarmonizer
        if args.save_iguane or args.load_iguane:
            cls = _stored_iguane_class(IGUANeHarmonizer, args, seed)
        methods["IGUANe"] = cls(
            reference_site=reference, **recipe, max_steps=args.iguane_max_steps, device=args.device
        )
        notes.append(
            f"IGUANe is trained for each seed with {name}"
            + (
                f", {args.iguane_generator_steps} generator steps"
                if args.iguane_generator_steps
                else ""
            )
            + (f", stopped after {args.iguane_max_steps} steps" if args.iguane_max_steps else "")
            + "".join(f", {k}={v!r}" for k, v in args.iguane_set.items())
            + "."
        )
        if args.load_iguane:
            notes.append(
                f"IGUANe's models are the ones a run with --save-iguane trained and saved "
                f"(read from {args.load_iguane.name}/); the fit times are that run's."
            )
        return methods, notes
    methods["IGUANe"] = IGUANeHarmonizer(
        reference_site=reference,
        n_epochs=args.iguane_epochs,
        steps_per_epoch=args.iguane_steps,
        base_width=args.iguane_width,
        patch_size=args.iguane_patch or None,
        val_fraction=args.iguane_val_fraction,
        val_every=args.iguane_val_every,
        identity_init=not args.iguane_random_init,
        device=args.device,
    )
    return methods, notes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.script_parser(__doc__)
    p.add_argument(
        "--resolution",
        type=int,
        default=2,
        choices=[1, 2, 4],
        help="voxel size in mm of the simulated images (default 2)",
    )
    p.add_argument(
        "--n-subjects", type=int, default=20, help="subjects, scanned at every site (default 20)"
    )
    p.add_argument("--n-sites", type=int, default=4, help="sites (default 4)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4],
        help="one simulated data set and benchmark per seed (default 0-4)",
    )
    p.add_argument(
        "--n-boot",
        type=int,
        default=1000,
        help="bootstrap samples per value for the 95 %% intervals (default 1000)",
    )
    p.add_argument(
        "--test-sites",
        nargs="*",
        default=None,
        help="sites held out of fit (default: one non-reference site drawn with each seed)",
    )
    p.add_argument("--out", type=Path, default=common.RESULTS, help="output folder")
    p.add_argument("--no-iguane", action="store_true", help="skip IGUANe")
    p.add_argument("--iguane-epochs", type=int, default=1)
    p.add_argument(
        "--iguane-steps",
        type=int,
        default=200,
        help="IGUANe training steps per epoch (each updates every source site)",
    )
    p.add_argument(
        "--iguane-width", type=int, default=4, help="IGUANe generator base width (published: 16)"
    )
    p.add_argument(
        "--iguane-patch",
        type=int,
        default=32,
        help="IGUANe training patch size (multiple of 16; 0: whole volumes)",
    )
    p.add_argument(
        "--iguane-val-fraction",
        type=float,
        default=0.0,
        help="held-out fraction for IGUANe's model selection (default 0: last)",
    )
    p.add_argument("--iguane-val-every", type=int, default=1000)
    p.add_argument(
        "--iguane-random-init",
        action="store_true",
        help="the paper's random initialization instead of identity_init (which "
        "starts the generators at the identity: better for short CPU runs)",
    )
    p.add_argument(
        "--iguane-pretrained",
        action="store_true",
        help="use the shipped 4 mm CPU model instead of training one (4 mm data, "
        "seeds other than 0)",
    )
    p.add_argument(
        "--iguane-recipe",
        choices=["4mm", "2mm"],
        default=None,
        help="train IGUANe with CPU_RECIPE (4mm) or CPU_RECIPE_2MM (2mm) instead of the "
        "--iguane-* settings above",
    )
    p.add_argument(
        "--iguane-max-steps",
        type=int,
        default=None,
        help="with --iguane-recipe: stop IGUANe's training after this many steps (warm-up "
        "included; a quick check of the pipeline)",
    )
    p.add_argument(
        "--iguane-generator-steps",
        type=int,
        default=None,
        help="with --iguane-recipe: generator steps instead of the recipe's (its "
        "steps_per_epoch; the warm-up comes first as in the recipe)",
    )
    p.add_argument(
        "--iguane-set",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="with --iguane-recipe: override recipe parameters (values read as JSON, e.g. "
        "base_width=8 random_state=1; a random_state set here replaces the seed's)",
    )
    p.add_argument(
        "--save-iguane",
        type=Path,
        default=None,
        help="with --iguane-recipe: save each seed's fitted IGUANe in this folder "
        "(iguane_seed<N>.pt, and the fit's seconds in iguane_seed<N>.json)",
    )
    p.add_argument(
        "--load-iguane",
        type=Path,
        default=None,
        help="with --iguane-recipe: read each seed's IGUANe from this folder (written by "
        "--save-iguane) instead of training it; the report gives the saved fit times",
    )
    p.add_argument("--device", default="auto", help="IGUANe device: auto, cpu or cuda")
    p.add_argument(
        "--disease",
        action="store_true",
        help="site-confounded diagnosis: subjects of each site's own, ComBat with and "
        "without the diagnosis, the disease metrics (compare_methods_disease.md)",
    )
    p.add_argument(
        "--from-csv",
        type=Path,
        nargs="+",
        default=None,
        metavar="CSV",
        help="rewrite the report from saved per-seed values (compare_methods.csv, or "
        "compare_methods_disease.csv with --disease) without running the methods; several "
        "files (runs of other seeds, e.g. one --seeds each) are read as one; the slices "
        "figure and the run's machine line are kept from the report in --out",
    )
    p.add_argument(
        "--more-iguane",
        type=Path,
        nargs="+",
        default=[],
        metavar="CSV",
        help="with --from-csv: per-seed values of runs that trained IGUANe again on the same "
        "data sets (another random_state): their IGUANe rows are added, so that IGUANe's "
        "values are the mean over its trainings (the other methods must have the same "
        "values in every file); the combined values are written to --out",
    )
    p.add_argument(
        "--prevalence",
        type=float,
        nargs="+",
        default=[0.1, 0.7, 0.4, 0.4],
        help="diagnosis prevalence per site with --disease (default 0.1 0.7 0.4 0.4)",
    )
    p.add_argument("--verbose", action="store_true", help="progress bars and INFO logs")
    args = p.parse_args(argv)
    if (args.iguane_set or args.save_iguane or args.load_iguane) and not args.iguane_recipe:
        p.error("--iguane-set, --save-iguane and --load-iguane need --iguane-recipe")
    if args.save_iguane and args.load_iguane:
        p.error("give --save-iguane or --load-iguane, not both")
    if args.more_iguane and (args.from_csv is None or args.disease):
        p.error("--more-iguane needs --from-csv (and not --disease)")
    combined = args.out / "compare_methods.csv"
    if args.more_iguane and combined.exists() and any(map(combined.samefile, args.from_csv)):
        p.error(f"--more-iguane writes the combined values to {combined}: give another --out")
    args.iguane_set = dict(_setting(item) for item in args.iguane_set)
    return args


def _setting(item: str) -> tuple[str, object]:
    """``NAME=VALUE`` of ``--iguane-set``: the value read as JSON (else as text)."""
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise SystemExit(f"--iguane-set takes NAME=VALUE items, got {item!r}.")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _stored_iguane_class(base: type, args: argparse.Namespace, seed: int | None) -> type:
    """``base`` (IGUANeHarmonizer) that saves its fitted model to ``--save-iguane``, or
    reads the one saved there instead of training (``--load-iguane``): one file per seed,
    with the fit's seconds beside it (``iguane_seed<seed>.json``)."""
    folder = args.load_iguane or args.save_iguane
    path = folder / f"iguane_seed{seed}.pt"

    class Stored(base):
        def fit(self, imgs, sites, ages=None, covariates=None):
            if not args.load_iguane:
                t0 = time.perf_counter()
                super().fit(imgs, sites, ages=ages, covariates=covariates)
                seconds = time.perf_counter() - t0  # the fit alone, not the saving
                folder.mkdir(parents=True, exist_ok=True)
                self.save(path)
                path.with_suffix(".json").write_text(json.dumps({"fit_seconds": seconds}))
                return self
            params = self.get_params(deep=False)
            for name, value in vars(base.load(path)).items():
                if name not in params:  # fitted values; this run's parameters stay
                    setattr(self, name, value)
            return self

    Stored.__name__ = Stored.__qualname__ = base.__name__
    return Stored


def saved_fit_seconds(folder: Path, seed: int) -> float:
    """The fit time of seed ``seed``'s IGUANe model saved in ``folder``."""
    return json.loads((folder / f"iguane_seed{seed}.json").read_text())["fit_seconds"]


def _getter(summary: pd.DataFrame):
    """``get(method, metric, protocol, column="mean")`` on the aggregated results."""

    def get(method: str, metric: str, protocol: str = "unseen", column: str = "mean") -> float:
        hit = summary[
            (summary.method == method)
            & (summary.metric == metric)
            & (summary.protocol == protocol)
        ]
        return float(hit[column].iloc[0]) if len(hit) else float("nan")

    return get


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def metric_goal_lines(summary: pd.DataFrame) -> list[str]:
    """Check that the metrics can tell methods apart (the benchmark issue's targets)."""
    get = _getter(summary)
    lines = []
    none_sp = get("none", "site_predictability_error", "seen")
    chance = get("none", "site_chance_level", "seen")
    oracle_sp = get("oracle", "site_predictability_error", "seen")
    lines.append(
        f"- Site predictability (seen) of no harmonization ≥ 0.9: "
        f"{_verdict(none_sp >= 0.9)} ({none_sp:.3f}); oracle within 0.1 of chance "
        f"{chance:.3f}: {_verdict(abs(oracle_sp - chance) <= 0.1)} ({oracle_sp:.3f})."
    )
    apart = []
    for method in sorted(set(summary.method) - {"none", "oracle"}):
        for protocol in ("seen", "unseen"):
            for metric in (
                m
                for m, (d, _) in METRICS.items()
                if d in ("higher", "lower") and not m.endswith(("_seconds", "_mb"))
            ):
                a = (
                    get(method, metric, protocol, "ci_low"),
                    get(method, metric, protocol, "ci_high"),
                )
                b = (
                    get("none", metric, protocol, "ci_low"),
                    get("none", metric, protocol, "ci_high"),
                )
                if all(np.isfinite(v) for v in (*a, *b)) and (a[1] < b[0] or b[1] < a[0]):
                    apart.append(f"{method} {metric} ({protocol})")
    lines.append(
        f"- At least one method differs from no harmonization by more than both "
        f"intervals: {_verdict(bool(apart))} ({'; '.join(apart[:8]) or 'none'}"
        f"{'...' if len(apart) > 8 else ''})."
    )
    mae, null = get("none", "brain_age_error", "seen"), get("none", "brain_age_null_error", "seen")
    lines.append(
        f"- Brain-age MAE of no harmonization (seen) ≤ 0.7 × null: "
        f"{_verdict(mae <= 0.7 * null)} ({mae:.2f} y vs null {null:.2f} y, "
        f"ratio {mae / null:.2f})."
    )
    r, r_true = (
        get("none", "gm_age_correlation", "seen"),
        get("none", "true_gm_age_correlation", "seen"),
    )
    lines.append(
        f"- GM-age r of no harmonization (seen) within 0.1 of the true-volume r: "
        f"{_verdict(abs(r - r_true) <= 0.1)} ({r:.3f} vs {r_true:.3f})."
    )
    below, tied = [], []
    for protocol in ("seen", "unseen"):
        for metric, (direction, _) in METRICS.items():
            if direction not in ("higher", "lower", "target") or metric.endswith(
                ("_seconds", "_mb")
            ):
                continue
            o = get("oracle", metric, protocol)
            o_ci = (
                get("oracle", metric, protocol, "ci_low"),
                get("oracle", metric, protocol, "ci_high"),
            )
            for method in sorted(set(summary.method) - {"oracle"}):
                v = get(method, metric, protocol)
                if not (np.isfinite(o) and np.isfinite(v)):
                    continue
                if direction == "target":
                    target = METRIC_TARGETS[metric]
                    t = target if isinstance(target, float) else get(method, target, protocol)
                    worse = abs(o - t) > abs(v - t)
                else:
                    worse = o < v if direction == "higher" else o > v
                if not worse:
                    continue
                v_ci = (
                    get(method, metric, protocol, "ci_low"),
                    get(method, metric, protocol, "ci_high"),
                )
                # "at" the method: the two 95 % intervals overlap
                if o_ci[0] <= v_ci[1] and v_ci[0] <= o_ci[1]:
                    tied.append(f"{metric} ({protocol}) vs {method}")
                else:
                    below.append(f"{metric} ({protocol}) below {method}")
    lines.append(
        f"- Oracle at or above every method on every metric (at: intervals overlap): "
        f"{_verdict(not below)}"
        + (f" (exceptions: {'; '.join(below)})" if below else "")
        + (f"; lower but within the intervals: {'; '.join(tied)}" if tied else "")
        + "."
    )
    return lines


def iguane_against_hm_lines(summary: pd.DataFrame) -> list[str]:
    """The 2 mm issue's goals on the unseen site, IGUANe against histogram matching: a
    traveling-SSIM gain of at least 0.01 with separate intervals, site predictability no
    higher, brain-age error and GM-age correlation no worse (or within the intervals)."""
    get = _getter(summary)

    def interval(method: str, metric: str) -> tuple[float, float, float]:
        return tuple(get(method, metric, column=c) for c in ("mean", "ci_low", "ci_high"))

    def overlap(a: tuple, b: tuple) -> bool:
        return a[1] <= b[2] and b[1] <= a[2]

    def fmt(v: tuple, digits: int = 3) -> str:
        return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"

    ig, hm = (interval(m, "traveling_subject_ssim_score") for m in ("IGUANe", "HM"))
    gain = ig[0] - hm[0]
    lines = [
        "- Unseen-site traveling SSIM, IGUANe at least 0.01 above HM with separate "
        f"intervals: {_verdict(gain >= 0.01 and ig[1] > hm[2])} (IGUANe {fmt(ig)}, HM "
        f"{fmt(hm)}, gain {gain:+.4f})."
    ]
    ig, hm = (interval(m, "site_predictability_error") for m in ("IGUANe", "HM"))
    lines.append(
        f"- Site predictability (unseen), IGUANe no higher than HM: {_verdict(ig[0] <= hm[0])} "
        f"(IGUANe {fmt(ig)}, HM {fmt(hm)})."
    )
    ig, hm = (interval(m, "brain_age_error") for m in ("IGUANe", "HM"))
    lines.append(
        "- Brain-age error (unseen), IGUANe no worse than HM or within its interval: "
        f"{_verdict(ig[0] <= hm[0] or overlap(ig, hm))} (IGUANe {fmt(ig, 1)} y, "
        f"HM {fmt(hm, 1)} y)."
    )
    true = get("none", "true_gm_age_correlation")
    ig, hm = (interval(m, "gm_age_correlation") for m in ("IGUANe", "HM"))
    closer = abs(ig[0] - true) <= abs(hm[0] - true)
    lines.append(
        "- GM-age correlation (unseen), IGUANe no further from the truth than HM or within "
        f"its interval: {_verdict(closer or overlap(ig, hm))} (IGUANe {fmt(ig)}, HM "
        f"{fmt(hm)}, true {true:.3f})."
    )
    return lines


def goal_lines(summary: pd.DataFrame) -> list[str]:
    """Check the project's goals for IGUANe on the aggregated results."""
    get = _getter(summary)
    if "IGUANe" not in set(summary.method):
        return ["- IGUANe was not run: its goals are not evaluated."]
    lines = iguane_against_hm_lines(summary)
    ig = get("IGUANe", "traveling_subject_ssim_score")
    others = {m: get(m, "traveling_subject_ssim_score") for m in ("HM", "WS", "none")}
    ok = all(ig > v for v in others.values() if np.isfinite(v))
    txt = ", ".join(f"{m} {v:.3f}" for m, v in others.items())
    lines.append(
        f"- Unseen-site traveling SSIM, IGUANe above HM, WS and none: "
        f"{_verdict(ok)} (IGUANe {ig:.3f}; {txt})."
    )
    ig_t = get("IGUANe", "truth_ssim_score")
    others_t = {m: get(m, "truth_ssim_score") for m in ("HM", "WS", "none", "oracle")}
    txt = ", ".join(f"{m} {v:.3f}" for m, v in others_t.items())
    lines.append(
        f"- (Also reported) unseen-site SSIM to the ground truth: IGUANe {ig_t:.3f}; {txt}."
    )
    a = get("IGUANe", "site_predictability_error", "seen")  # unseen: above
    b = get("HM", "site_predictability_error", "seen")
    lines.append(
        f"- Site predictability (seen), IGUANe ≤ HM: {_verdict(a <= b)} "
        f"(IGUANe {a:.3f}, HM {b:.3f})."
    )
    for protocol in ("unseen", "seen"):
        d = get("IGUANe", "distance_correlation_score", protocol)
        lines.append(
            f"- Inter-subject distance correlation ({protocol}) ≥ 0.9 for IGUANe: "
            f"{_verdict(d >= 0.9)} ({d:.3f})."
        )
    for protocol in ("unseen", "seen"):
        a, b = get("IGUANe", "brain_age_error", protocol), get("none", "brain_age_error", protocol)
        lines.append(
            f"- Brain-age MAE ({protocol}), IGUANe no worse than none: "
            f"{_verdict(a <= b)} (IGUANe {a:.2f} y, none {b:.2f} y)."
        )
    return lines


#: What the disease comparison scores (the other image metrics need traveling subjects).
DISEASE_METRICS = [
    "disease_effect_error",
    "true_disease_effect",
    "disease_auc_score",
    "site_predictability_error",
    "site_chance_level",
    "gm_age_correlation",
    "true_gm_age_correlation",
    "truth_ssim_score",
]
#: The columns of the data set's covariates each ComBat receives.
DISEASE_COVARIATES = {"ComBat": ["age", "sex"], "ComBat+dx": ["age", "sex", "diagnosis"]}


def disease_goal_lines(summary: pd.DataFrame, tidy: pd.DataFrame) -> list[str]:
    """The issue's check: ComBat keeps the disease effect with the diagnosis, not without.

    ``tidy`` holds the per-seed values (column ``seed``), for the differences between
    methods computed seed by seed.
    """
    get = _getter(summary)

    def cell(method: str) -> tuple[float, float, float]:
        return tuple(
            get(method, "disease_effect_error", "seen", c) for c in ("mean", "ci_low", "ci_high")
        )

    def per_seed(method: str) -> pd.Series:
        rows = tidy[(tidy.method == method) & (tidy.metric == "disease_effect_error")]
        return rows.set_index("seed")["value"]

    def versus(a: str, b: str) -> str:
        diff = per_seed(a) - per_seed(b)
        return f"{diff.mean():+.2f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.2f}"

    true_d = get("oracle", "true_disease_effect", "seen")
    with_dx, without, oracle = cell("ComBat+dx"), cell("ComBat"), cell("oracle")
    fmt = "{:+.2f} [{:+.2f}, {:+.2f}]".format
    kept = {
        m: (true_d + sign * cell(m)[0]) / (true_d + sign * oracle[0])
        for m, sign in (("ComBat", np.sign(true_d)), ("ComBat+dx", np.sign(true_d)))
    }
    return [
        f"- True standardized effect of diagnosis (regional GM volume, adjusted for age and "
        f"sex): {true_d:.2f}. Errors are measured minus true, in d units, signed so that "
        "negative means weaker than the truth; differences between methods are per seed, "
        "mean ± sd over seeds.",
        f"- ComBat with the diagnosis within 0.1 d of the truth: "
        f"{_verdict(abs(with_dx[0]) <= 0.1)} (error {fmt(*with_dx)}). Beyond what any "
        f"image-based measure reaches here: the oracle (each subject's own scan at the "
        f"reference site) errs by {fmt(*oracle)}, the measured regional volume being a "
        f"noisy copy of the true one. Against the oracle, ComBat with the diagnosis is "
        f"within 0.1 d: {_verdict(abs(with_dx[0] - oracle[0]) <= 0.1)} "
        f"({versus('ComBat+dx', 'oracle')} d); it keeps {kept['ComBat+dx']:.0%} of the "
        "oracle's effect.",
        f"- ComBat without the diagnosis loses part of the effect, its interval below the "
        f"truth and below ComBat with it: "
        f"{_verdict(without[2] < 0 and without[2] < with_dx[1])} (error {fmt(*without)}; "
        f"against ComBat with the diagnosis {versus('ComBat', 'ComBat+dx')} d); it keeps "
        f"{kept['ComBat']:.0%} of the oracle's effect.",
    ]


def _command(argv: list[str] | None) -> str:
    """The command that computed the values (``--from-csv`` and ``--more-iguane`` left
    out)."""
    given = list(argv or sys.argv[1:])
    for option in ("--from-csv", "--more-iguane"):  # each with its files
        if option in given:
            k = given.index(option)
            end = next((j for j in range(k + 1, len(given)) if given[j].startswith("--")), None)
            del given[k : len(given) if end is None else end]
    return " ".join(["python", "benchmarks/compare_methods.py", *given])


def read_saved(paths: list[Path]) -> pd.DataFrame:
    """The per-seed values of one or several ``compare_methods.csv`` files as one table:
    runs of different seeds (a seed found in two files is refused: a ValueError)."""
    frames = [pd.read_csv(path) for path in paths]
    seen: dict[int, Path] = {}
    for path, frame in zip(paths, frames, strict=True):
        for seed in sorted(set(frame["seed"].tolist())):
            if seed in seen:
                raise ValueError(
                    f"seed {seed} is in both {seen[seed]} and {path}: give each seed's "
                    "values once (other trainings on the same data go to --more-iguane)."
                )
            seen[seed] = path
    return pd.concat(frames, ignore_index=True)


def _names(paths: list[Path]) -> str:
    """Saved-value files named for a report: their folder and name."""
    return ", ".join(f"{p.parent.name}/{p.name}" for p in paths)


def read_trainings(first: list[Path], more: list[Path]) -> pd.DataFrame:
    """The per-seed values of ``first`` with the IGUANe rows of ``more`` added.

    ``first`` holds one or several files of different seeds, read as one
    (:func:`read_saved`); each file of ``more`` is a ``compare_methods.csv`` of runs on
    some of the same data sets (same seeds and options) in which IGUANe was trained with
    another ``random_state``. A ``training`` column numbers the files (0: ``first``). The
    other methods do not depend on IGUANe's training: their rows must have the same
    values in every file (else the files are not of the same data, and a ValueError says
    so); they are kept once.
    """
    saved = read_saved(first)
    saved.insert(1, "training", 0)
    keys = ["seed", "method", "protocol", "metric"]
    base = saved[saved.method != "IGUANe"].set_index(keys)["value"]
    frames = [saved]
    for k, path in enumerate(more, start=1):
        other = pd.read_csv(path)
        common = other[other.method != "IGUANe"].set_index(keys)["value"]
        shared = base.index.intersection(common.index)
        same = np.isclose(base[shared], common[shared], rtol=1e-9, atol=0, equal_nan=True)
        timing = shared.get_level_values("metric").str.endswith(("_seconds", "_mb"))
        if not len(shared) or not same[~timing].all():
            raise ValueError(
                f"{path}: its methods other than IGUANe differ from {_names(first)}, so it "
                "is not a run on the same data sets (same seeds, sizes and options)."
            )
        rows = other[other.method == "IGUANe"].copy()
        if rows.empty:
            raise ValueError(f"{path} holds no IGUANe values.")
        rows.insert(1, "training", k)
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def main_disease(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--disease``: the site-confounded comparison (compare_methods_disease.md)."""
    t_start = time.perf_counter()
    runs, notes = [], []
    prevalence = args.prevalence if len(args.prevalence) > 1 else args.prevalence[0]
    if args.from_csv is not None:  # rewrite the report from saved per-seed values
        saved = read_saved(args.from_csv)
        saved["reason"] = saved["reason"].fillna("")
        runs = [saved[saved.seed == seed].copy() for seed in args.seeds]
        notes = ["IGUANe skipped (--no-iguane)."] if args.no_iguane else []
    for seed in args.seeds if args.from_csv is None else []:
        t0 = time.perf_counter()
        ds = make_multisite(
            args.n_subjects,
            args.n_sites,
            args.resolution,
            random_state=seed,
            diagnosis_prevalence=prevalence,
            traveling=False,
        )
        methods, notes = build_methods(args, ds.reference_site, seed)
        methods["ComBat+dx"] = methods["ComBat"]
        df = run_benchmark(
            methods,
            ds,
            test_sites=[],
            random_state=seed,
            oracle=True,
            n_boot=args.n_boot,
            metrics=DISEASE_METRICS,
            covariates=DISEASE_COVARIATES,
            verbose=args.verbose,
        )
        df.insert(0, "seed", seed)
        runs.append(df)
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        print(to_markdown(df, legend=False), flush=True)
    total = time.perf_counter() - t_start
    load = common.load_now()[0]
    tidy = pd.concat(runs, ignore_index=True)
    if args.from_csv is None:
        tidy.to_csv(args.out / "compare_methods_disease.csv", index=False)
    summary = summarize(runs)
    cmd = _command(argv)
    lines = [
        "# Keeping a disease effect: methods compared on site-confounded synthetic data",
        "",
        f"Command: `{cmd}`  ",
        f"Data: `make_multisite(n_subjects={args.n_subjects}, n_sites={args.n_sites}, "
        f"resolution={args.resolution}, diagnosis_prevalence={prevalence}, traveling=False)` "
        f"per seed, seeds {args.seeds}: every site scans {args.n_subjects} subjects of its "
        "own; patients (AD) lose GM in the medial temporal lobes, men elsewhere; no site "
        "is held out.  ",
        "Methods: none, HM, WS, ComBat with age and sex (`ComBat`), ComBat with age, sex "
        "and diagnosis (`ComBat+dx`), and the oracle (each subject's own scan at the "
        "reference site).  ",
        (
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s); wall time "
            f"{total / 60:.1f} min (1-min load average at the end: {load:.1f})."
            if args.from_csv is None
            else f"Report rewritten from the saved per-seed values ({_names(args.from_csv)})."
        ),
        "",
        *[f"Note: {n}" for n in notes],
        "",
        f"## Results (mean ± sd over {len(args.seeds)} seeds)",
        "",
        to_markdown(summary),
        "`disease_effect_error` is the standardized effect of diagnosis (regression of the "
        "regional GM volume on age, sex and diagnosis, all sites pooled) measured on the "
        "harmonized images minus the same on the true volumes: the pooled analysis that "
        "harmonization is for. `disease_auc_score` is optimistic for a method fitted with "
        "the diagnosis on the images it scores (ComBat+dx keeps the covariate-model mean "
        "of every image's diagnosis: the labels leak into the features), and inflated "
        "for images that still carry site effects (the site predicts the diagnosis).",
        "",
        "## The issue's check",
        "",
        *disease_goal_lines(summary, tidy),
        "",
        "Per-seed values: [compare_methods_disease.csv](compare_methods_disease.csv).",
        "",
    ]
    (args.out / "compare_methods_disease.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'compare_methods_disease.md'} in {total / 60:.1f} min")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.disease:
        return main_disease(args, argv)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    runs, notes, held_out = [], [], []
    first = None
    if args.from_csv is not None:  # rewrite the report from saved per-seed values
        saved = read_trainings(args.from_csv, args.more_iguane)
        saved["reason"] = saved["reason"].fillna("")
        runs = [saved[saved.seed == seed].copy() for seed in args.seeds]
        held_out = [
            (seed, {"sites": sorted(set(r["held_out"].dropna().astype(str)))})
            for seed, r in zip(args.seeds, runs, strict=True)
        ]
        notes = build_methods(args, "site0")[1]  # the notes of the run
        if args.more_iguane:
            trainings = saved[saved.method == "IGUANe"].groupby("seed")["training"].nunique()
            counts = sorted({int(trainings.min()), int(trainings.max())})
            notes.append(
                f"IGUANe's values are the mean over {'-'.join(map(str, counts))} "
                f"trainings per seed (another random_state each: {_names(args.from_csv)} and "
                f"{', '.join(p.parent.name + '/' + p.name for p in args.more_iguane)}); the "
                "other methods' are those of one run per seed. The intervals treat the "
                "trainings on one data set as sharing its subjects."
            )
    for k, seed in enumerate(args.seeds if args.from_csv is None else []):
        t0 = time.perf_counter()
        ds = make_multisite(args.n_subjects, args.n_sites, args.resolution, random_state=seed)
        methods, notes = build_methods(args, ds.reference_site, seed)
        test_sites = args.test_sites  # None: one non-reference site drawn with the seed
        shown = np.flatnonzero(ds.subjects == ds.subjects[0])  # the slices figure's images
        res = run_benchmark(
            methods,
            ds,
            test_sites=test_sites,
            random_state=seed,
            oracle=True,
            n_boot=args.n_boot,
            verbose=args.verbose,
            return_outputs=shown if k == 0 else False,
        )
        if k == 0:
            df, outputs = res
            view = SimpleNamespace(
                imgs=ds.imgs[shown],
                sites=ds.sites[shown],
                subjects=ds.subjects[shown],
                mask=ds.mask,
                truth=ds.truth[shown],
                reference_site=ds.reference_site,
            )
            first = (view, outputs, df.attrs["held_out"]["sites"])
        else:
            df = res
        held_out.append((seed, df.attrs["held_out"]))
        if args.load_iguane:  # the fit time of the run that trained the model
            fit = (df.method == "IGUANe") & (df.metric == "fit_seconds")
            df.loc[fit, "value"] = saved_fit_seconds(args.load_iguane, seed)
            memory = (df.method == "IGUANe") & (df.metric == "fit_peak_mb")
            df.loc[memory, "value"] = np.nan
            df.loc[memory, "reason"] = "model read from a file (--load-iguane): not measured"
        df.insert(0, "seed", seed)
        runs.append(df)
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        print(to_markdown(df, legend=False), flush=True)
    total = time.perf_counter() - t_start
    cpu = time.process_time() - cpu_start
    load = common.load_now()[0]

    tidy = pd.concat(runs, ignore_index=True)
    summary = summarize(runs)
    metrics_png = plot_metrics(summary, args.out / "compare_methods_metrics.png")
    slices_png = args.out / "compare_methods_slices.png"
    report = args.out / "compare_methods.md"
    machine = (  # of the run that computed the values
        [line for line in report.read_text().splitlines() if line.startswith("Machine:")]
        if args.from_csv is not None and report.exists()
        else []
    )
    if args.from_csv is None or args.more_iguane:
        tidy.to_csv(args.out / "compare_methods.csv", index=False)
    if args.from_csv is None:
        ds, outputs, test_sites = first
        plot_slices(outputs, ds, ds.subjects[0], slices_png, test_sites=test_sites)
        reference = ds.reference_site
        subject = ds.subjects[0]
        methods_run = list(outputs)
    else:
        # not in the saved values: make_multisite's reference is its first site, and the
        # slices figure (kept) shows its first subject
        reference, subject = "site0", "sub-00"
        methods_run = list(dict.fromkeys(tidy["method"]))

    cmd = _command(argv)
    n_sites = args.n_sites
    lines = [
        "# Harmonization methods compared on synthetic traveling subjects",
        "",
        f"Command: `{cmd}`  ",
        f"Data: `make_multisite(n_subjects={args.n_subjects}, n_sites={n_sites}, "
        f"resolution={args.resolution})` per seed, seeds {args.seeds}; every subject is "
        "scanned at every site. Held-out (unseen) site per seed: "
        + ", ".join(f"{', '.join(map(str, h['sites']))} (seed {s})" for s, h in held_out)
        + (
            " (given by --test-sites)"
            if args.test_sites is not None
            else " (drawn by `run_benchmark` with `random_state=seed` among the sites other "
            "than the reference)"
        )
        + f"; reference site: {reference}.  ",
        f"Methods: {', '.join(methods_run)}. IGUANe config: "
        + (
            "the shipped CPU model (see the note below)."
            if args.iguane_pretrained and "IGUANe" in methods_run
            else ""
        )
        + (
            f"the {args.iguane_recipe} CPU recipe (see the note below)."
            if args.iguane_recipe and "IGUANe" in methods_run and not args.iguane_pretrained
            else ""
        )
        + (
            f"base_width={args.iguane_width}, {args.iguane_epochs} epoch(s) x "
            f"{args.iguane_steps} steps, patch_size={args.iguane_patch}, "
            f"val_fraction={args.iguane_val_fraction}, "
            f"identity_init={not args.iguane_random_init}, device={args.device} "
            "(a CPU-sized model, far from the published 16-width, 100 x 200-step training)."
            if "IGUANe" in methods_run and not args.iguane_pretrained and not args.iguane_recipe
            else ""
            if "IGUANe" in methods_run
            else "not run."
        )
        + "  ",
        *(
            [
                f"Machine: {platform.machine()}, {platform.system()}, {os.cpu_count()} CPU(s); "
                f"total wall time {total / 60:.1f} min, process CPU time {cpu / 60:.1f} min "
                f"(1-min load average at the end: {load:.1f}; timings are inflated when the "
                "cores are shared)."
            ]
            if args.from_csv is None
            else [
                *machine,
                f"Report rewritten from the saved per-seed values ({_names(args.from_csv)}).",
            ]
        ),
        "",
    ]
    lines += [f"Note: {n}" for n in notes]
    lines += [
        "",
        f"## Results (mean ± sd over {len(args.seeds)} seeds)",
        "",
        "Seen sites: the training sites (site predictability chance = "
        f"1/{n_sites - len(held_out[0][1]['sites'])}). Unseen sites: held out of fit; site "
        f"predictability classifies all {n_sites} sites (chance = 1/{n_sites}), brain age is "
        "learned on seen-site outputs and tested on unseen-site outputs of other subjects.",
        "",
        to_markdown(summary),
        "The oracle row scores each subject's own reference-site scan as its harmonized "
        "image: the ceiling of the image metrics. `truth_ssim_score` compares with a clean "
        "rendering at the reference site *without* its bias field and noise, so even the "
        "oracle stays below 1 there, and a method that also smooths noise can come closer "
        "to that target than the oracle; `traveling_subject_ssim_score` is the headline. "
        "The oracle's distance correlation compares the reference scans with the inputs of "
        "another site, so it is not a ceiling there. `subject_specificity_score` is 1 for "
        "the oracle by construction and 0 for outputs without subject information (one "
        "image for all, noise: `benchmarks/results/benchmark_sanity.md`); "
        "`brain_age_correlation_score` is 0 for predictions without age information, "
        "whatever their bias. `gm_age_correlation` is measured by a "
        "partial-volume segmentation with tissue classes shared within each site "
        "(`harmonix.benchmark.gm_volumes`) and should equal `true_gm_age_correlation` "
        "(the true GM volumes); `brain_age_null_error` is what predicting the mean age gives.",
        "",
        "What each metric can and cannot show: docs, *Benchmarking* (user guide).",
        "",
        "## Metric checks",
        "",
        *metric_goal_lines(summary),
        "",
        "## IGUANe goals",
        "",
        *goal_lines(summary),
        "",
        "## Figures",
        "",
        f"![metrics]({metrics_png.name})",
        "",
        f"![slices]({slices_png.name}) (first seed, subject {subject}; each row on its "
        "own common intensity scale)",
        "",
        f"Per-seed values: [{'compare_methods.csv'}](compare_methods.csv). "
        f"Metric directions: {', '.join(f'{m} {METRICS[m][0]}' for m in METRICS)}.",
        "",
    ]
    (args.out / "compare_methods.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'compare_methods.md'} in {total / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
