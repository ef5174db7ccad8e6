"""Constant memory at scale: streaming transform of many files, ComBat on a large cohort.

1. ``harmonix.batch.transform_files`` with a fitted histogram-matching model over
   n = 10, 100, 1000 NIfTI paths (2 mm): peak RSS must stay flat as n grows, because
   each worker holds one image at a time.
2. ``ComBatHarmonizer.fit`` on 500 subjects at 2 mm given as paths (streamed, one image
   at a time into the masked voxel matrix): peak RSS must stay within 4 GB.

Each measurement runs in a fresh subprocess; peak RSS is ``ru_maxrss`` of that process
(interpreter and imports included). Data are generated in other subprocesses, so the
parent stays small: on Linux a child's ``ru_maxrss`` starts from its parent's size at
``fork``. Run: ``python benchmarks/bench_scaling.py``
(about 5 minutes on 2 cores); results go to ``benchmarks/results/scaling.md``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _helpers import common

CHILD_TRANSFORM = """
import json, resource, sys, time
from harmonix.batch import transform_files
from harmonix.persistence import load_estimator
model_path, out_dir, paths = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
model = load_estimator(model_path)
t = time.perf_counter()
transform_files(model, paths, out_dir, n_jobs=1, verbose=False)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CHILD_COMBAT = """
import json, resource, sys, time
from harmonix.io import read_manifest
from harmonix import ComBatHarmonizer
man = read_manifest(sys.argv[1])
t = time.perf_counter()
h = ComBatHarmonizer().fit([str(p) for p in man.paths], man.sites, man.ages)
print(json.dumps({"seconds": time.perf_counter() - t, "n_voxels": int(h.voxel_mask_.sum()),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


CHILD_PREPARE = """
import sys
from harmonix import HistogramMatchingHarmonizer, make_multisite, write_nifti_dataset
from harmonix.io import read_manifest
n_sub, seed, out, model = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ds = make_multisite(n_subjects=n_sub, n_sites=5, resolution=2, random_state=seed)
manifest = write_nifti_dataset(ds, out)
if model != "-":
    man = read_manifest(manifest)
    HistogramMatchingHarmonizer().fit([str(p) for p in man.paths], man.sites).save(model)
print(manifest)
"""


def _child(code: str, *args: str, stdin: str = "") -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = common.script_parser(__doc__, "scaling.md")
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument(
        "--combat-subjects", type=int, default=100, help="subjects per site (×5 sites)"
    )
    args = parser.parse_args()

    lines = [
        "# Scaling: streaming transform and large-cohort ComBat",
        "",
        f"Produced by `python benchmarks/bench_scaling.py`. Python {platform.python_version()},"
        f" {os.cpu_count()} CPUs, load average at start {common.load_now()[0]:.1f}.",
        "Peak memory is `ru_maxrss` of a fresh subprocess (interpreter and imports included).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = tmp / "hm.npz"
        manifest = (
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD_PREPARE,
                    "10",
                    "0",
                    str(tmp / "data"),
                    str(model_path),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        with open(manifest) as f:
            rows = f.read().splitlines()[1:]
        sources = [Path(manifest).parent / row.split(",")[0] for row in rows]
        links = tmp / "links"
        links.mkdir()
        sizes = [int(s) for s in args.sizes.split(",")]
        paths = []
        for i in range(max(sizes)):  # distinct names, shared content (hard links)
            dst = links / f"img{i:05d}.nii.gz"
            os.link(sources[i % len(sources)], dst)
            paths.append(str(dst))
        lines += [
            "## transform_files over n paths (histogram matching, 91×109×91, n_jobs=1)",
            "",
            "| n files | seconds | s / file | peak RSS (MB) |",
            "|---|---|---|---|",
        ]
        peaks = []
        for n in sizes:
            res = _child(
                CHILD_TRANSFORM, str(model_path), str(tmp / f"out{n}"), stdin=json.dumps(paths[:n])
            )
            peaks.append(res["peak_mb"])
            lines.append(
                f"| {n} | {res['seconds']:.1f} | {res['seconds'] / n:.3f} | {res['peak_mb']:.0f} |"
            )
        growth = peaks[-1] - peaks[0]
        lines += [
            "",
            f"Peak RSS grows by {growth:.0f} MB from {sizes[0]} to {sizes[-1]} files "
            f"({'flat' if growth < 50 else 'NOT flat'}).",
            "",
        ]

        n_sub = args.combat_subjects
        t = time.perf_counter()
        big_manifest = (
            subprocess.run(
                [sys.executable, "-c", CHILD_PREPARE, str(n_sub), "1", str(tmp / "big"), "-"],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        gen_s = time.perf_counter() - t
        res = _child(CHILD_COMBAT, str(big_manifest))
        lines += [
            f"## ComBat fit on {n_sub * 5} images at 2 mm from paths",
            "",
            "| images | voxels | fit seconds | peak RSS (MB) | goal ≤ 4096 MB |",
            "|---|---|---|---|---|",
            f"| {n_sub * 5} | {res['n_voxels']:,} | {res['seconds']:.1f} | {res['peak_mb']:.0f} |"
            f" {'met' if res['peak_mb'] <= 4096 else 'NOT met'} |",
            "",
            f"(Generating and writing the data set took {gen_s:.0f} s, not counted.)",
        ]
    common.write_results(args.out, [*lines, ""])


if __name__ == "__main__":
    main()
