"""SimpleITK vs ANTsPy for the chain's N4 + rigid registration, on the moved Colin27 head.

Both tools get the same input: the head moved as in ``bench_preprocess.py`` and the
moved BET brain mask (brain extraction is left out), N4 inside the mask, then 6-dof
registration of the masked brain to the ICBM152 2009a template on the FSL 1 mm grid. The
same is done on the unmoved head; the accuracy is the consistency of the two results
(moved vs move ∘ unmoved, mm over the template brain). ANTsPy (``antspyx``) pins
``scipy<1.16``, so it runs in its own environment, given by ``--ants-python``.

Usage::

    python -m venv /tmp/antsvenv && /tmp/antsvenv/bin/pip install antspyx
    python benchmarks/bench_registration_tools.py --data DIR --ants-python /tmp/antsvenv/bin/python
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import tempfile
import time

import nibabel as nib
import numpy as np
from _helpers import common
from _helpers.moved_head import GRID, MOVE, spread_mm

from harmonix.preprocessing import move_scan
from harmonix.preprocessing.steps import n4_correct, register_rigid
from harmonix.preprocessing.template import load_template

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

ANTS_CODE = r"""
import json, sys, time
import numpy as np
import ants
head, mask, fixed = (ants.image_read(p) for p in sys.argv[1:4])
t = time.perf_counter()
n4 = ants.n4_bias_field_correction(head, mask=mask, shrink_factor=4)
t_n4 = time.perf_counter() - t
t = time.perf_counter()
reg = ants.registration(fixed, n4 * mask, type_of_transform="Rigid")
t_reg = time.perf_counter() - t
tx = ants.read_transform(reg["fwdtransforms"][0])
print(json.dumps({"n4": t_n4, "registration": t_reg, "parameters": list(tx.parameters),
                  "center": list(tx.fixed_parameters)}))
"""


def ants_matrix(parameters: list[float], center: list[float]) -> np.ndarray:
    """RAS 4x4 (template world -> scan world) of an ITK/ANTs affine transform's values."""
    m = np.asarray(parameters[:9]).reshape(3, 3)
    c, t = np.asarray(center), np.asarray(parameters[9:12])
    lps = np.eye(4)
    lps[:3, :3] = m
    lps[:3, 3] = t + c - m @ c
    return LPS @ lps @ LPS


def run_sitk(head: nib.Nifti1Image, mask: np.ndarray, template) -> dict:
    data = head.get_fdata(dtype=np.float32)
    t = time.perf_counter()
    corrected = n4_correct(data, head.affine, mask)
    t_n4 = time.perf_counter() - t
    t = time.perf_counter()
    matrix = register_rigid(
        np.where(mask, corrected, 0).astype(np.float32),
        head.affine,
        template.data,
        template.affine,
    )
    return {"n4": t_n4, "registration": time.perf_counter() - t, "matrix": matrix}


def run_ants(
    python: str, head: nib.Nifti1Image, mask: np.ndarray, template_path: str, tmp: str
) -> dict:
    nib.save(head, f"{tmp}/head.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.float32), head.affine), f"{tmp}/mask.nii.gz")
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(os.cpu_count()))
    out = subprocess.run(
        [python, "-c", ANTS_CODE, f"{tmp}/head.nii.gz", f"{tmp}/mask.nii.gz", template_path],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    values = json.loads(out.stdout.strip().splitlines()[-1])
    values["matrix"] = ants_matrix(values.pop("parameters"), values.pop("center"))
    return values


def main() -> None:
    parser = common.script_parser(__doc__, "preprocess_tools.md")
    parser.add_argument("--data", required=True, help="folder with ch2.nii.gz, ch2bet.nii.gz")
    parser.add_argument("--ants-python", required=True, help="python with antspyx")
    args = parser.parse_args()
    load_start = common.load_now()
    data = pathlib.Path(args.data)
    head = nib.load(data / "ch2.nii.gz")
    head = nib.Nifti1Image(head.get_fdata(dtype=np.float32), head.affine)
    bet = nib.load(data / "ch2bet.nii.gz")
    gold = nib.Nifti1Image((bet.get_fdata() > 0).astype(np.float32), bet.affine)
    cases = {
        "unmoved": (head, gold.get_fdata() > 0),
        "moved": (
            move_scan(head, MOVE, **GRID),
            move_scan(gold, MOVE, order=1, **GRID).get_fdata() > 0.5,
        ),
    }
    template = load_template()
    results: dict[str, dict[str, dict]] = {"SimpleITK": {}, "ANTsPy": {}}
    with tempfile.TemporaryDirectory() as tmp:
        template_path = f"{tmp}/template.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(template.data), template.affine), template_path)
        for name, (img, mask) in cases.items():
            results["SimpleITK"][name] = run_sitk(img, mask, template)
            results["ANTsPy"][name] = run_ants(args.ants_python, img, mask, template_path, tmp)
            print(
                name,
                {
                    k: {m: round(v[name][m], 1) for m in ("n4", "registration")}
                    for k, v in results.items()
                },
            )
    lines = [
        "# N4 + rigid registration: SimpleITK vs ANTsPy (moved Colin27, BET mask)",
        "",
        "`python benchmarks/bench_registration_tools.py --data DIR --ants-python PY`",
        "",
        *common.machine_lines(load_start),
        "- SimpleITK: N4 shrink 4, 50/50/30 iterations; Mattes MI, shrink 4/2, 20 % "
        "sampling (harmonix defaults)",
        "- ANTsPy: `n4_bias_field_correction(shrink_factor=4)`, `registration(type_of_"
        "transform='Rigid')` (its defaults)",
        "",
        "| tool | N4 s (moved) | registration s (moved) | consistency mean mm | max mm |",
        "|---|---|---|---|---|",
    ]
    for tool, runs in results.items():
        mean, high = spread_mm(
            runs["moved"]["matrix"], MOVE @ runs["unmoved"]["matrix"], template.mask
        )
        lines.append(
            f"| {tool} | {runs['moved']['n4']:.1f} | "
            f"{runs['moved']['registration']:.1f} | {mean:.2f} | {high:.2f} |"
        )
    between, between_max = spread_mm(
        results["SimpleITK"]["moved"]["matrix"],
        results["ANTsPy"]["moved"]["matrix"],
        template.mask,
    )
    lines += [
        "",
        f"SimpleITK and ANTsPy results on the moved head differ by {between:.2f} mm on "
        f"average (max {between_max:.2f} mm). Wall seconds under the load above.",
    ]
    common.write_results(args.out, lines)


if __name__ == "__main__":
    main()
