"""Voxel-wise ComBat at 1 mm: ``harmonix.ComBatHarmonizer`` vs neuroHarmonize 2.5.2.

Data: ``make_multisite(n_subjects=12, n_sites=5, resolution=1)`` (60 images of
182x218x182 voxels), written once as uncompressed NIfTI files with a CSV of sites and
ages. Each measurement runs in its own subprocess, so its peak memory (``ru_maxrss``) is
its own:

* harmonix fit from the file paths (images loaded one at a time), model saved as ``.npz``;
  the same with ``smooth_age=True``;
* neuroHarmonize's own workflow: ``flattenNIFTIs`` with the common brain mask (voxels
  non-zero in every image: the voxels harmonix harmonizes), ``harmonizationLearn``
  (EB, covariates ``SITE`` + ``age``), ``saveHarmonizationModel`` (pickle) and
  ``harmonizationApply`` on the flattened matrix; the fit peak is read right after
  ``harmonizationLearn``;
* harmonix transform of the 60 images (in-memory arrays, batches of 12) and of one image,
  compared voxel by voxel with neuroHarmonize's output;
* neuroHarmonize's GAM (``smooth_terms=["age"]``) on a few voxels, extrapolated.

BLAS threads are limited to one so that both libraries get the same resources. Writes
``benchmarks/results/combat.md``.

Usage::

    python benchmarks/bench_combat.py [--workdir DIR] [--n-subjects 12] [--keep]
"""

from __future__ import annotations

from _helpers import common

common.limit_threads()  # BLAS/OpenMP: one thread, before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

#: Start of the section of combat.md that bench_combat_rim.py writes (kept on rewrite).
RIM_BEGIN = "<!-- rim: written by benchmarks/bench_combat_rim.py -->"
N_SITES = 5
GAM_VOXELS = 10
GOALS = {
    "parity": 1e-4,  # max relative difference of outputs
    "memory": 1 / 3,  # fit peak vs neuroHarmonize
    "apply_s": 0.2,  # seconds per image
    "size": 1 / 10,  # model file vs neuroHarmonize pickle
    "smooth_s": 600.0,  # smooth_age fit
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _inputs(work: pathlib.Path):
    import pandas as pd

    table = pd.read_csv(work / "covars.csv")
    paths = [str(work / "imgs" / f"img_{i:03d}.nii") for i in range(len(table))]
    return paths, table


# -- steps (each runs in a fresh process) --------------------------------------------------
def step_generate(work: pathlib.Path, n_subjects: int) -> dict:
    import nibabel as nib
    import pandas as pd

    from harmonix.datasets import make_multisite

    t0 = time.perf_counter()
    ds = make_multisite(n_subjects=n_subjects, n_sites=N_SITES, resolution=1, random_state=0)
    gen_s = time.perf_counter() - t0
    (work / "imgs").mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(ds.imgs):
        nib.save(nib.Nifti1Image(img, ds.affine), work / "imgs" / f"img_{i:03d}.nii")
    mask = nib.Nifti1Image(ds.mask.astype(np.int8), ds.affine)
    nib.save(mask, work / "mask.nii")
    pd.DataFrame({"SITE": ds.sites, "age": ds.ages}).to_csv(work / "covars.csv", index=False)
    return {
        "n_images": len(ds),
        "shape": list(ds.imgs.shape[1:]),
        "n_voxels": int(ds.mask.sum()),
        "generate_s": gen_s,
    }


def step_ours_fit(work: pathlib.Path, smooth: bool) -> dict:
    from harmonix.combat import ComBatHarmonizer

    paths, table = _inputs(work)
    t0, c0 = time.perf_counter(), time.process_time()
    h = ComBatHarmonizer(smooth_age=smooth).fit(paths, table["SITE"], table["age"])
    fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    result = {
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu,
        "fit_peak_mb": _peak_mb(),
        "n_iter": h.n_iter_.tolist(),
    }
    if not smooth:
        model = work / "harmonix_combat.npz"
        h.save(model)
        result["model_mb"] = model.stat().st_size / 2**20
        result["n_voxels"] = int(h.voxel_mask_.sum())
    return result


def step_nh_fit(work: pathlib.Path) -> dict:
    import contextlib
    import io

    import pandas as pd
    from neuroHarmonize import harmonizationApply, harmonizationLearn
    from neuroHarmonize.harmonizationLearn import saveHarmonizationModel
    from neuroHarmonize.harmonizationNIFTI import flattenNIFTIs

    paths, table = _inputs(work)
    covars = table[["SITE", "age"]]
    (work / "nh_model.pkl").unlink(missing_ok=True)  # saveHarmonizationModel refuses to overwrite
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0, c0 = time.perf_counter(), time.process_time()
        data = flattenNIFTIs(
            pd.DataFrame({"PATH": paths}), str(work / "mask.nii"), str(work / "flat.npy")
        )
        t1 = time.perf_counter()
        model, _ = harmonizationLearn(data, covars, eb=True)
        t2, c2 = time.perf_counter(), time.process_time()
        fit_peak = _peak_mb()
        saveHarmonizationModel(model, str(work / "nh_model.pkl"))
        t3, c3 = time.perf_counter(), time.process_time()
        out = harmonizationApply(data, covars, model)
        t4, c4 = time.perf_counter(), time.process_time()
        apply_peak = _peak_mb()
        np.save(work / "nh_out.npy", out.astype(np.float32))
        del out
        try:  # one image (neuroHarmonize issue #50)
            one = harmonizationApply(data[:1], covars.iloc[:1], model)
            one_result = "NaN output" if np.isnan(one).any() else "ok"
        except Exception as exc:
            one_result = f"{type(exc).__name__}: {str(exc)[:80]}"
    return {
        "flatten_s": t1 - t0,
        "learn_s": t2 - t1,
        "fit_cpu_s": c2 - c0,
        "fit_peak_mb": fit_peak,
        "save_s": t3 - t2,
        "model_mb": (work / "nh_model.pkl").stat().st_size / 2**20,
        "apply_s": t4 - t3,
        "apply_cpu_s": c4 - c3,
        "apply_peak_mb": apply_peak,
        "one_image": one_result,
        "n_images": len(paths),
    }


def step_ours_apply(work: pathlib.Path) -> dict:
    import nibabel as nib

    from harmonix.combat import ComBatHarmonizer

    paths, table = _inputs(work)
    sites, ages = table["SITE"].to_numpy(), table["age"].to_numpy()
    h = ComBatHarmonizer.load(work / "harmonix_combat.npz")
    mask = np.asarray(nib.load(work / "mask.nii").dataobj) != 0
    assert (mask == h.voxel_mask_).all(), "common masks differ"
    expected = np.load(work / "nh_out.npy", mmap_mode="r")
    n = len(paths)
    batch, total, cpu, max_abs, ref_max, max_rel = 12, 0.0, 0.0, 0.0, 0.0, 0.0
    for start in range(0, n, batch):
        idx = list(range(start, min(start + batch, n)))
        imgs = np.stack([np.asarray(nib.load(paths[i]).dataobj, dtype=np.float32) for i in idx])
        t0, c0 = time.perf_counter(), time.process_time()
        out = h.transform(imgs, sites[idx], ages[idx])
        total += time.perf_counter() - t0
        cpu += time.process_time() - c0
        ours = out[:, mask].astype(np.float64)
        theirs = np.asarray(expected[idx], dtype=np.float64)
        diff = np.abs(ours - theirs)
        max_abs = max(max_abs, float(diff.max()))
        ref_max = max(ref_max, float(np.abs(theirs).max()))
        max_rel = max(max_rel, float((diff / np.maximum(np.abs(theirs), 1e-12)).max()))
        del imgs, out, ours, theirs, diff
    one = np.asarray(nib.load(paths[7]).dataobj, dtype=np.float32)[None]
    times, cpus = [], []
    for _ in range(5):
        t0, c0 = time.perf_counter(), time.process_time()
        h.transform(one, sites[7:8], ages[7:8])
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    t0 = time.perf_counter()
    h.transform([paths[7]], sites[7:8], ages[7:8])
    one_path_s = time.perf_counter() - t0
    return {
        "apply_per_image_s": total / n,
        "apply_per_image_cpu_s": cpu / n,
        "apply_one_image_s": float(np.median(times)),
        "apply_one_image_cpu_s": float(np.median(cpus)),
        "apply_one_path_s": one_path_s,
        "apply_peak_mb": _peak_mb(),
        "max_abs_diff": max_abs,
        "max_rel_diff": max_abs / ref_max,
        "max_voxel_rel_diff": max_rel,
    }


def step_nh_gam(work: pathlib.Path, n_voxels: int) -> dict:
    import contextlib
    import io

    from neuroHarmonize import harmonizationLearn

    _, table = _inputs(work)
    data = np.load(work / "flat.npy", mmap_mode="r")
    cols = np.linspace(0, data.shape[1] - 1, GAM_VOXELS).astype(int)
    sub = np.ascontiguousarray(data[:, cols])
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        harmonizationLearn(sub, table[["SITE", "age"]], smooth_terms=["age"])
        elapsed = time.perf_counter() - t0
    per_voxel = elapsed / GAM_VOXELS
    return {"gam_per_voxel_s": per_voxel, "gam_full_h": per_voxel * n_voxels / 3600}


# -- driver --------------------------------------------------------------------------------
def _run_step(name: str, work: pathlib.Path, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--step", name, "--workdir", str(work), *extra]
    print(f"[bench_combat] {name} ...", flush=True)
    load = common.load_now()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"step {name} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_before"] = load
    print(f"[bench_combat] {name}: {result}", flush=True)
    return result


def _versions() -> dict:
    from importlib.metadata import version

    import harmonix

    return {
        "harmonix": harmonix.__version__,
        "neuroHarmonize": version("neuroHarmonize"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _report(r: dict, versions: dict, load: tuple, out: pathlib.Path) -> str:
    gen, ours, smooth, nh, app, gam = (
        r["generate"],
        r["ours_fit"],
        r["ours_smooth"],
        r["nh_fit"],
        r["ours_apply"],
        r["nh_gam"],
    )
    n = gen["n_images"]
    nh_fit_s = nh["flatten_s"] + nh["learn_s"]
    mem_ratio = ours["fit_peak_mb"] / nh["fit_peak_mb"]
    size_ratio = ours["model_mb"] / nh["model_mb"]
    met = {
        "parity": app["max_rel_diff"] <= GOALS["parity"],
        "memory": mem_ratio <= GOALS["memory"],
        "apply": app["apply_per_image_s"] <= GOALS["apply_s"],
        "apply_cpu": app["apply_per_image_cpu_s"] <= GOALS["apply_s"],
        "size": size_ratio <= GOALS["size"],
        "smooth": smooth["fit_s"] <= GOALS["smooth_s"],
    }

    def yes(flag: bool) -> str:
        return "met" if flag else "**not met**"

    shape = "×".join(map(str, gen["shape"]))
    one_wall, one_cpu = app["apply_one_image_s"], app["apply_one_image_cpu_s"]
    if met["apply"]:
        apply_status = "met"
    elif met["apply_cpu"]:
        apply_status = "met in CPU time; **not met** in wall time on the loaded machine"
    else:
        apply_status = "**not met**"
    if one_wall > GOALS["apply_s"]:
        apply_status += (
            f" (a one-image call: {one_wall:.2f} s wall, "
            f"{'met' if one_cpu <= GOALS['apply_s'] else 'not met'} in CPU time)"
        )
    loads = ", ".join(f"{k} {v['load_before']:.1f}" for k, v in r.items() if "load_before" in v)
    lines = [
        "# ComBat benchmark: harmonix vs neuroHarmonize",
        "",
        f"Data: `make_multisite(n_subjects={n // N_SITES}, n_sites={N_SITES}, resolution=1, "
        f"random_state=0)`: {n} images of {shape} voxels, {gen['n_voxels']:,} voxels "
        "non-zero in every image (the common mask both libraries harmonize). EB on, "
        "covariates SITE + age (linear), no reference site. Uncompressed NIfTI inputs.",
        "",
        "| measure | harmonix | neuroHarmonize 2.5.2 | goal |",
        "|---|---|---|---|",
        f"| fit time, wall s (CPU s) | {ours['fit_s']:.1f} ({ours['fit_cpu_s']:.1f}), from "
        f"files | {nh_fit_s:.1f} ({nh['fit_cpu_s']:.1f}): flatten {nh['flatten_s']:.1f} + "
        f"learn {nh['learn_s']:.1f} | |",
        f"| fit peak memory (MB) | {ours['fit_peak_mb']:,.0f} | {nh['fit_peak_mb']:,.0f} | "
        f"≤ 1/3: ratio {mem_ratio:.2f}, {yes(met['memory'])} |",
        f"| apply per image, wall s (CPU s) | {app['apply_per_image_s']:.3f} "
        f"({app['apply_per_image_cpu_s']:.3f}), 4-D arrays in batches of 12; one image "
        f"{app['apply_one_image_s']:.3f} ({app['apply_one_image_cpu_s']:.3f}); one .nii path "
        f"{app['apply_one_path_s']:.3f} (with loading); peak {app['apply_peak_mb']:,.0f} MB | "
        f"{nh['apply_s'] / n:.3f} ({nh['apply_cpu_s'] / n:.3f}), all {n} at once on the "
        f"flattened matrix, peak {nh['apply_peak_mb']:,.0f} MB; one image: "
        f"{nh['one_image']} | ≤ 0.2: {apply_status} |",
        f"| model file (MB) | {ours['model_mb']:.1f} (.npz, float32) | "
        f"{nh['model_mb']:.1f} (pickle) | ≤ 1/10: ratio {size_ratio:.3f}, "
        f"{yes(met['size'])} |",
        f"| max relative difference of outputs | {app['max_rel_diff']:.2e} "
        f"(max abs {app['max_abs_diff']:.3g}; largest per-voxel relative "
        f"{app['max_voxel_rel_diff']:.2e}) | reference | ≤ 1e-4: {yes(met['parity'])} |",
        f"| smooth age fit (s) | {smooth['fit_s']:.1f} (`smooth_age=True`, 4 df, peak "
        f"{smooth['fit_peak_mb']:,.0f} MB) | GAM: {gam['gam_per_voxel_s'] * 1000:.0f} ms "
        f"per voxel → ≈ {gam['gam_full_h']:.0f} h for all voxels (measured on "
        f"{GAM_VOXELS} voxels) | ≤ 600: {yes(met['smooth'])} |",
        "",
        f"EB iterations per site (harmonix): {ours['n_iter']}. Relative difference: "
        "max |harmonix − neuroHarmonize| / max |neuroHarmonize| over the common-mask voxels "
        "of all images.",
        "",
        "## Setup",
        "",
        f"- CPU: {common.cpu_model()}, {os.cpu_count()} logical CPUs, shared with other jobs "
        f"(load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the start); "
        "BLAS limited to 1 thread for both libraries. Timings are single runs; with "
        "several jobs per core, wall times are up to ~3× the CPU times. Load average before "
        f"each step: {loads}.",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}.",
        "- Each measurement in its own subprocess; peak memory is `ru_maxrss`, including the "
        "interpreter and imports. neuroHarmonize's fit peak includes `flattenNIFTIs` (float64 "
        "matrix) and `harmonizationLearn`; harmonix's includes loading the files.",
        f"- Generating the data set took {gen['generate_s']:.0f} s (not part of any figure).",
        "",
        "Reproduce: `python benchmarks/bench_combat.py`.",
        "",
    ]
    text = "\n".join(lines)
    # keep the sections other scripts write: "Brain rim" (bench_combat_rim.py, to the end)
    # and "Covariates and tables" (bench_combat_covariates.py, between its markers)
    previous = out.read_text() if out.exists() else ""
    kept = RIM_BEGIN + previous.split(RIM_BEGIN, 1)[1] if RIM_BEGIN in previous else ""
    start, end = "<!-- covariates:start -->", "<!-- covariates:end -->"
    if start in previous and end in previous and start not in kept:
        kept += "\n\n" + start + previous.split(start, 1)[1].split(end, 1)[0] + end
    if kept:
        text = text.rstrip("\n") + "\n\n" + kept.strip("\n") + "\n"
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = common.script_parser(__doc__, "combat.md")
    parser.add_argument("--workdir", type=pathlib.Path, default=None)
    parser.add_argument("--n-subjects", type=int, default=12)
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from WORKDIR/results.json"
    )
    parser.add_argument("--n-voxels", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.step is not None:
        work = args.workdir
        steps = {
            "generate": lambda: step_generate(work, args.n_subjects),
            "ours_fit": lambda: step_ours_fit(work, smooth=False),
            "ours_smooth": lambda: step_ours_fit(work, smooth=True),
            "nh_fit": lambda: step_nh_fit(work),
            "ours_apply": lambda: step_ours_apply(work),
            "nh_gam": lambda: step_nh_gam(work, args.n_voxels),
        }
        print(json.dumps(steps[args.step]()))
        return

    if args.report_only:
        results = json.loads((args.workdir / "results.json").read_text())
        print(_report(results, _versions(), tuple(results["load_start"]), args.out))
        return
    load = common.load_now()
    work = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="bench_combat_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results: dict = {"load_start": list(load)}
        if not (work / "covars.csv").exists():
            results["generate"] = _run_step("generate", work, "--n-subjects", str(args.n_subjects))
        else:
            results["generate"] = json.loads((work / "generate.json").read_text())
        (work / "generate.json").write_text(json.dumps(results["generate"]))
        results["ours_fit"] = _run_step("ours_fit", work)
        results["ours_smooth"] = _run_step("ours_smooth", work)
        results["nh_fit"] = _run_step("nh_fit", work)
        results["ours_apply"] = _run_step("ours_apply", work)
        results["nh_gam"] = _run_step(
            "nh_gam", work, "--n-voxels", str(results["generate"]["n_voxels"])
        )
        (work / "results.json").write_text(json.dumps(results, indent=1))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        print(_report(results, _versions(), load, args.out))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
