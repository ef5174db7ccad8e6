"""Learning curves of IGUANe on CPU: does training improve unseen sites, and is it safe?

Data: ``make_multisite(resolution=4, style="legacy")`` (family A, 46x55x46 voxels of 4 mm;
the legacy simulation the shipped model and the results were made with), ``--n-sites``
sites of which the last is held out of training ("unseen"), plus the same subjects scanned
at the sites of a second family (``benchmarks/_helpers/site_family_b.py``: gamma curves, slice
blur, linear-gradient bias, Gaussian noise), never seen in training either.

Training: :func:`harmonix.iguane.training.loop.train` with the settings of
:data:`harmonix.iguane.CPU_RECIPE` (or the ones given on the command line), in chunks of
``--eval-every`` steps resumed from the checkpoint (the resume is exact, so the chunks are
one training). After each chunk the *current* forward generator harmonizes every image
and is scored:

- traveling-subject SSIM (:func:`harmonix.benchmark.metrics.traveling_subject_ssim_score`)
  of the unseen A site, of the seen source sites, and of the B sites: pairs of one
  subject's images at two sites, at least one of them in the scored group, every image
  harmonized by the method; one robust intensity range per method, from its outputs on
  the training images;
- distance correlation (:func:`~harmonix.benchmark.metrics.distance_correlation_score`);
- the age-GM correlation of the unseen site's images;
- the validation score, discriminator and generator losses of the chunk.

none (raw images), HM and WS (fitted on the training images) are scored once, as
horizontal lines. The guard (``IGUANeHarmonizer.distribution_distance``) of the final
model is compared with the per-image SSIM to each subject's reference-site scan.

Run from the repository root (about 15-25 min per seed on 2 cores)::

    python benchmarks/bench_iguane_learning.py --seeds 0 1 2

``--resolution 2 --style preprocessed`` runs the same study on 2 mm images of the
preprocessed style (91x109x91 voxels: train on patches, e.g. ``--set
'patch_size=[48,64,48]'``).

It writes ``benchmarks/results/iguane_learning.md`` and ``iguane_learning.png``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _helpers import common
from _helpers.iguane_scores import Scorer
from _helpers.site_family_b import make_family_b

from harmonix.datasets import make_multisite
from harmonix.iguane import CPU_RECIPE, CPU_RECIPE_2MM
from harmonix.iguane.estimator import IGUANeHarmonizer
from harmonix.iguane.inputs.normalization import InputNormalizer, image_landmarks
from harmonix.iguane.model.networks import Generator3D
from harmonix.iguane.training.checkpoints import CHECKPOINT_NAME, load_checkpoint


def parse_args() -> argparse.Namespace:
    p = common.script_parser(__doc__, "iguane_learning.md")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-subjects", type=int, default=8)
    p.add_argument("--n-sites", type=int, default=5, help="family A sites, unseen included")
    p.add_argument("--n-sites-b", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument(
        "--resolution",
        type=int,
        choices=[2, 4],
        default=4,
        help="voxel size in mm of the simulated images (default 4)",
    )
    p.add_argument(
        "--style",
        default="legacy",
        help="make_multisite style of family A (default legacy; e.g. preprocessed)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a CPU_RECIPE parameter (JSON value), e.g. --set n_epochs=4",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--label", default="CPU_RECIPE")
    p.add_argument("--json", default=None, help="append the curves to this JSON-lines file")
    p.add_argument(
        "--report",
        default=None,
        metavar="JSONL",
        help="only write the results file and figure from a JSON-lines file of earlier runs",
    )
    p.add_argument(
        "--save-models",
        default=None,
        metavar="DIR",
        help="save each seed's final model as DIR/seed<N>.pt (for bench_iguane_guard.py)",
    )
    p.add_argument(
        "--rescore",
        default=None,
        metavar="DIR",
        help="with --report: score again the baselines and the final models "
        "saved as DIR/seed<N>.pt (curves and timings kept), rewrite the JSONL, "
        "then write the report",
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="4mm",
        help="the parameters --set overrides: CPU_RECIPE (4mm, default) or CPU_RECIPE_2MM",
    )
    return p.parse_args()


RECIPES = {"4mm": CPU_RECIPE, "2mm": CPU_RECIPE_2MM}


def recipe(overrides: list[str], base: str = "4mm") -> dict:
    params = dict(RECIPES[base])
    for item in overrides:
        name, _, value = item.partition("=")
        params[name] = json.loads(value)
    return params


def fitted_from(generator: Generator3D, params: dict, ds, reference_median: float):
    """An IGUANeHarmonizer around a trained forward generator (for transform)."""
    est = IGUANeHarmonizer(**{**params, "device": "cpu"})
    est.generator_ = generator.eval()
    est.reference_site_ = ds.reference_site
    est.sites_ = np.unique(ds.sites)
    est.n_images_ = 0
    est.mask_ = None
    est.image_shape_ = None
    est.input_shape_ = None
    est.reference_median_ = reference_median
    est.history_ = {}
    return est


def start_point(ds, ds_b, score: Scorer, params: dict) -> dict:
    """Scores at the end of the warm-up: the generators are still the identity.

    With ``identity_init`` the generators do not change during the discriminator warm-up,
    so the forward generator is exactly the identity and IGUANe returns its normalized
    inputs (with ``input_normalization="histogram"``: the per-site histogram-matched
    images).
    """
    tr = score.train
    landmarks = np.stack([image_landmarks(x) for x in ds.imgs[tr]])
    kind = params.get("input_normalization", "median")
    norm = InputNormalizer.fit(kind, landmarks, ds.sites[tr], ds.reference_site)
    gen = Generator3D(params["base_width"])
    with torch.no_grad():
        gen.out_conv.weight.zero_()
        gen.out_conv.bias.zero_()
    ref = ds.imgs[ds.sites == ds.reference_site]
    median = (
        float(np.median([np.median(x[x != 0]) for x in ref])) if kind == "median" else norm.median
    )
    model = fitted_from(gen, params, ds, median)
    model.input_normalization_ = norm.to_dict()
    model.ood_action = "ignore"
    res = score(model.transform(ds.imgs, ds.sites), model.transform(ds_b.imgs, ds_b.sites))
    res.update(
        step=params["warmup_steps"],
        seconds=float("nan"),
        val_score=None,
        loss_discriminator=float("nan"),
        loss_generator=float("nan"),
        loss_adversarial=float("nan"),
    )
    return res


def make_data(seed: int, args: argparse.Namespace) -> Scorer:
    """The A data set, the B sites and their scorer for one seed."""
    ds = make_multisite(
        args.n_subjects,
        args.n_sites,
        resolution=args.resolution,
        random_state=seed,
        style=args.style,
    )
    ds_b = make_family_b(ds, n_sites=args.n_sites_b, random_state=seed)
    return Scorer(ds, ds_b, ds.site_names[-1])


def final_rows(est: IGUANeHarmonizer, score: Scorer) -> dict:
    """Scores and guard distances of a trained model (the selected checkpoint)."""
    ds, ds_b = score.ds, score.b
    final = score(est.transform(ds.imgs, ds.sites), est.transform(ds_b.imgs, ds_b.sites))
    final["best_step"] = est.history_["best_step"]
    return {
        "final": final,
        "guard_b": est.distribution_distance(ds_b.imgs, ds_b.sites).tolist(),
        "guard_unseen": est.distribution_distance(
            ds.imgs[score.unseen], ds.sites[score.unseen]
        ).tolist(),
        "guard_threshold": est.ood_threshold_,
    }


def rescore(jsonl: Path, models: Path, args: argparse.Namespace) -> None:
    """Recompute baselines and final scores of earlier runs from their saved models.

    The learning curves and timings of each run are kept; its ``baselines`` (with the
    oracle) and ``final`` rows are scored again with today's metrics, from the model saved
    by ``--save-models`` (``models/seed<N>.pt``). The JSON-lines file is rewritten.
    """
    runs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for run in runs:
        score = make_data(run["seed"], args)
        est = IGUANeHarmonizer.load(models / f"seed{run['seed']}.pt")
        est.set_params(ood_action="ignore")
        run["baselines"] = score.baselines()
        run.update(final_rows(est, score))
        print(f"seed {run['seed']} rescored", flush=True)
    tmp = jsonl.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(run) + "\n" for run in runs))
    tmp.replace(jsonl)


def run_seed(seed: int, args: argparse.Namespace, params: dict) -> dict:
    score = make_data(seed, args)
    ds, ds_b, tr = score.ds, score.b, score.train
    rows: dict = {"seed": seed, "baselines": score.baselines(), "curve": []}

    if params.get("identity_init"):
        rows["curve"].append(start_point(ds, ds_b, score, params))
    total = params["warmup_steps"] + params["n_epochs"] * params["steps_per_epoch"]
    est = IGUANeHarmonizer(
        **{
            **params,
            "random_state": seed,
            "device": "cpu",
            "val_fraction": 0.1,
            "voxel_size": ds.resolution,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        est.set_params(checkpoint_dir=tmp, resume=True)
        steps = list(range(params["warmup_steps"], total, args.eval_every))[1:] + [total]
        t0 = time.perf_counter()
        for stop in steps:
            est.set_params(max_steps=stop)
            est.fit(ds.imgs[tr], ds.sites[tr], ds.ages[tr])
            elapsed = time.perf_counter() - t0
            state = load_checkpoint(Path(tmp) / CHECKPOINT_NAME)["trainer"]
            gen = Generator3D(params["base_width"])
            gen.load_state_dict(state["forward"])
            current = fitted_from(gen, params, ds, est.reference_median_)
            current.input_normalization_ = est.input_normalization_
            current.ood_action = "ignore"
            s = score(
                current.transform(ds.imgs, ds.sites), current.transform(ds_b.imgs, ds_b.sites)
            )
            hist = state["history"]
            lo = max(0, len(hist["loss_generator"]) - args.eval_every)
            s.update(
                step=stop,
                seconds=elapsed,
                val_score=hist["val_score"][-1] if hist["val_score"] else None,
                loss_discriminator=float(np.nanmean(hist["loss_discriminator"][lo:])),
                loss_generator=float(np.nanmean(hist["loss_generator"][lo:])),
                loss_adversarial=float(np.nanmean(hist["loss_adversarial"][lo:])),
            )
            rows["curve"].append(s)
            print(
                f"seed {seed} step {stop} ({elapsed:.0f} s): unseen {s['ssim_unseen']:.4f} "
                f"seen {s['ssim_seen']:.4f} B {s['ssim_family_b']:.4f} "
                f"D {s['loss_discriminator']:.3f} adv {s['loss_adversarial']:.3f}",
                flush=True,
            )
        rows["train_seconds"] = time.perf_counter() - t0
    est.set_params(checkpoint_dir=None, resume=False, max_steps=None)
    if args.save_models:
        Path(args.save_models).mkdir(parents=True, exist_ok=True)
        est.save(Path(args.save_models) / f"seed{seed}.pt")
    rows.update(final_rows(est, score))
    return rows


def _mean(values) -> float:
    return float(np.mean(values))


def _guard_rows(run: dict) -> tuple[int, int, int, int]:
    """(images below HM, of them flagged, images flagged, images) over unseen A and B."""
    below = flagged_below = flagged = total = 0
    thr = run["guard_threshold"]
    for key, guard in (("per_image_unseen", run["guard_unseen"]), ("per_image_b", run["guard_b"])):
        mine, hm = run["final"][key], run["baselines"]["HM"][key]
        for m, h, g in zip(mine, hm, guard):
            total += 1
            flag = g > thr
            flagged += flag
            if m < h:
                below += 1
                flagged_below += flag
    return below, flagged_below, flagged, total


def biology_table(runs: list[dict]) -> list[str]:
    """Distance correlations and age-GM correlations on the unseen A site, with the oracle."""
    methods = ("none", "HM", "WS", "IGUANe", "oracle")
    if not all("oracle" in r["baselines"] for r in runs):
        return []

    def row(r: dict) -> dict[str, dict]:
        return {**r["baselines"], "IGUANe": r["final"]}

    def cells(values: dict, key: str, names=methods) -> str:
        return " / ".join(f"{values[m][key]:.3f}" for m in names)

    lines = [
        "",
        "## Between-subject differences and biology (unseen A site)",
        "",
        "Distance correlation (Spearman, over the 28 subject pairs of the unseen site): of "
        "the pairwise distances after harmonization with those *before* (the input), and with "
        "those of the same subjects' reference-site scans (*oracle distances*: how the "
        "reference scanner sees the differences). The oracle row harmonizes each image into "
        "its subject's reference-site scan: a perfect harmonization. Age-GM r: Pearson "
        "correlation of age with the GM volume measured on the images "
        "(`gm_age_correlation`), beside the true GM volumes of the simulation.",
        "",
        "| seed | dist. corr to input: "
        + " / ".join(methods)
        + " | dist. corr to oracle distances: "
        + " / ".join(methods[:4])
        + " | age-GM r: true / "
        + " / ".join(methods)
        + " |",
        "|---|---|---|---|",
    ]
    for r in runs:
        v = row(r)
        lines.append(
            f"| {r['seed']} | {cells(v, 'distance_corr_unseen')} | "
            f"{cells(v, 'distance_corr_oracle_unseen', methods[:4])} | "
            f"{r['baselines']['none']['gm_age_r_true_unseen']:.3f} / "
            f"{cells(v, 'gm_age_r_unseen')} |"
        )
    mean = {
        m: {
            k: _mean([row(r)[m][k] for r in runs])
            for k in (
                "distance_corr_unseen",
                "distance_corr_oracle_unseen",
                "gm_age_r_unseen",
                "gm_age_r_true_unseen",
            )
        }
        for m in methods
    }
    lines.append(
        f"| mean | {cells(mean, 'distance_corr_unseen')} | "
        f"{cells(mean, 'distance_corr_oracle_unseen', methods[:4])} | "
        f"{mean['none']['gm_age_r_true_unseen']:.3f} / {cells(mean, 'gm_age_r_unseen')} |"
    )
    return lines


def write_report(runs: list[dict], out: Path, notes: list[str]) -> None:
    """Results table (markdown) and learning-curve figure of the runs of one label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "# IGUANe learning curves on CPU (`benchmarks/bench_iguane_learning.py`)",
        "",
        *notes,
        "",
        "## Final models (selected checkpoint), per seed",
        "",
        "Traveling-subject SSIM: unseen family-A site (`unseen`), family-B sites (`B`, "
        "never seen, other kinds of site effects). Distance correlation and age-GM r on the "
        "unseen A site.",
        "",
        "| seed | train s | best step | unseen: none / HM / WS / IGUANe | gain vs HM | "
        "B: none / HM / WS / IGUANe | B gain vs HM | dist. corr (HM) | age-GM r none / "
        "IGUANe |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        b, f = r["baselines"], r["final"]
        lines.append(
            f"| {r['seed']} | {r['train_seconds']:.0f} | {f['best_step']} | "
            f"{b['none']['ssim_unseen']:.3f} / {b['HM']['ssim_unseen']:.3f} / "
            f"{b['WS']['ssim_unseen']:.3f} / **{f['ssim_unseen']:.3f}** | "
            f"{f['ssim_unseen'] - b['HM']['ssim_unseen']:+.3f} | "
            f"{b['none']['ssim_family_b']:.3f} / {b['HM']['ssim_family_b']:.3f} / "
            f"{b['WS']['ssim_family_b']:.3f} / **{f['ssim_family_b']:.3f}** | "
            f"{f['ssim_family_b'] - b['HM']['ssim_family_b']:+.3f} | "
            f"{f['distance_corr_unseen']:.3f} ({b['HM']['distance_corr_unseen']:.3f}) | "
            f"{b['none']['gm_age_r_unseen']:.3f} / {f['gm_age_r_unseen']:.3f} |"
        )
    keys = ("ssim_unseen", "ssim_family_b", "distance_corr_unseen", "gm_age_r_unseen")
    means = {k: _mean([r["final"][k] for r in runs]) for k in keys}
    base = {
        (m, k): _mean([r["baselines"][m][k] for r in runs])
        for m in ("none", "HM", "WS")
        for k in keys
    }
    lines += [
        f"| mean | {_mean([r['train_seconds'] for r in runs]):.0f} | | "
        f"{base['none', 'ssim_unseen']:.3f} / {base['HM', 'ssim_unseen']:.3f} / "
        f"{base['WS', 'ssim_unseen']:.3f} / **{means['ssim_unseen']:.3f}** | "
        f"{means['ssim_unseen'] - base['HM', 'ssim_unseen']:+.3f} | "
        f"{base['none', 'ssim_family_b']:.3f} / {base['HM', 'ssim_family_b']:.3f} / "
        f"{base['WS', 'ssim_family_b']:.3f} / **{means['ssim_family_b']:.3f}** | "
        f"{means['ssim_family_b'] - base['HM', 'ssim_family_b']:+.3f} | "
        f"{means['distance_corr_unseen']:.3f} ({base['HM', 'distance_corr_unseen']:.3f}) | "
        f"{base['none', 'gm_age_r_unseen']:.3f} / {means['gm_age_r_unseen']:.3f} |",
        "",
        "## The guard (out-of-distribution flag of the final models)",
        "",
        "Per image of the unseen A site and of the B sites: SSIM to the same subject's "
        "reference-site image (all harmonized by the method), IGUANe vs HM, and whether "
        "`distribution_distance` exceeds `ood_threshold_`.",
        "",
        "| seed | threshold | images below HM | of them flagged | flagged in all | images |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        below, fb, flagged, total = _guard_rows(r)
        lines.append(
            f"| {r['seed']} | {r['guard_threshold']:.2f} | {below} | {fb} | {flagged} | {total} |"
        )
    lines += biology_table(runs)
    lines += [
        "",
        "## Learning curves (current generator every eval step)",
        "",
        "The first row of a seed is the end of the discriminator warm-up: the generators "
        "are still the identity, so IGUANe returns its per-site histogram-matched inputs.",
        "",
    ]
    lines += [
        "| seed | step | s | unseen | seen | B | dist. corr | val score | D loss | adv |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        for c in r["curve"]:
            val = "" if c["val_score"] is None else f"{c['val_score']:.4f}"
            secs = "" if not np.isfinite(c["seconds"]) else f"{c['seconds']:.0f}"
            lines.append(
                f"| {r['seed']} | {c['step']} | {secs} | {c['ssim_unseen']:.4f} | "
                f"{c['ssim_seen']:.4f} | {c['ssim_family_b']:.4f} | "
                f"{c['distance_corr_unseen']:.3f} | {val} | {c['loss_discriminator']:.3f} | "
                f"{c['loss_adversarial']:.3f} |"
            )
    lines += ["", f"Parameters: `{json.dumps(runs[0]['params'])}`", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    panels = (
        ("ssim_unseen", "unseen A site"),
        ("ssim_seen", "seen source sites"),
        ("ssim_family_b", "family B sites (unseen)"),
    )
    colors = {"none": "0.6", "HM": "tab:orange", "WS": "tab:green"}
    for ax, (key, title) in zip(axes, panels):
        for r in runs:
            steps = [c["step"] for c in r["curve"]]
            ax.plot(
                steps,
                [c[key] for c in r["curve"]],
                "o-",
                color="tab:blue",
                ms=3,
                label="IGUANe" if r is runs[0] else None,
            )
        for m, col in colors.items():
            ax.axhline(
                _mean([r["baselines"][m][key] for r in runs]),
                color=col,
                ls="--",
                label=f"{m} (mean)",
            )
        ax.set_title(f"traveling SSIM, {title}")
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    ax = axes[3]
    for r in runs:
        steps = [c["step"] for c in r["curve"]]
        ax.plot(
            steps,
            [c["loss_discriminator"] for c in r["curve"]],
            color="tab:red",
            label="D loss" if r is runs[0] else None,
        )
        ax.plot(
            steps,
            [c["loss_adversarial"] for c in r["curve"]],
            color="tab:purple",
            label="G adversarial" if r is runs[0] else None,
        )
    ax.set_title("losses (mean over the preceding steps)")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=90)
    print(f"wrote {out} and {out.with_suffix('.png')}")


def main() -> None:
    args = parse_args()
    if args.report:
        if args.rescore:
            torch.set_num_threads(args.threads)
            rescore(Path(args.report), Path(args.rescore), args)
        runs = [json.loads(line) for line in Path(args.report).read_text().splitlines()]
        notes_path = args.out.with_suffix(".notes.md")
        notes = notes_path.read_text().splitlines() if notes_path.exists() else []
        write_report(runs, args.out, notes)
        return
    torch.set_num_threads(args.threads)
    params = recipe(args.set, args.recipe)
    load_start = common.load_now()
    for seed in args.seeds:
        rows = run_seed(seed, args, params)
        rows["label"] = args.label
        rows["params"] = params
        b = rows["baselines"]
        f = rows["final"]
        print(
            f"seed {seed} final: unseen {f['ssim_unseen']:.4f} (HM {b['HM']['ssim_unseen']:.4f}"
            f", none {b['none']['ssim_unseen']:.4f}); B {f['ssim_family_b']:.4f} "
            f"(HM {b['HM']['ssim_family_b']:.4f}, none {b['none']['ssim_family_b']:.4f})",
            flush=True,
        )
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(rows) + "\n")
    print(common.load_line(load_start, common.load_now()), flush=True)


if __name__ == "__main__":
    main()
