"""Behaviour unchanged by a re-layout of ``harmonix.iguane``: digests of three small trainings.

Three small IGUANe trainings, through the public API only (``IGUANeHarmonizer``,
``CPU_RECIPE``, ``make_multisite``: the same names in both layouts), each exercising other
modules:

- ``a_recipe``: the CPU recipe (histogram input normalization, identity initialization,
  constant-then-linear schedule, validation and checkpoint selection) for a few steps;
- ``b_augment``: median normalization, augmentation (rotations, shifts), patches,
  ``batch_size=2``, age-balanced pairs, another seed;
- ``c_resume``: checkpoints every 2 steps, a training stopped after 3 steps
  (``max_steps``) and resumed (``resume=True``) to the end.

For each it writes SHA-256 digests of: the training data; every tensor of the fitted
generator's ``state_dict``; the training history (JSON, sorted keys); the model file saved
by ``save`` (its bytes, and its payload read back with ``torch.load(weights_only=True)``:
tensors by their bytes, other values as JSON); the checkpoint file (bytes and payload,
which holds every network: generators and discriminators, optimizers, random states); the
output of ``transform`` and the guard's ``guard_report``. Threads are fixed to one.

Run it with the old and the new layout, then with the new layout on what the old one
wrote (old model files loaded and transformed, the old stopped checkpoint resumed), and
compare::

    PYTHONPATH=<old checkout> python benchmarks/check_layout_equivalence.py \\
        --workdir W_old --json old.json
    python benchmarks/check_layout_equivalence.py --workdir W_new --json new.json
    python benchmarks/check_layout_equivalence.py --workdir W_cross --from W_old \\
        --json cross.json
    python benchmarks/check_layout_equivalence.py --compare old.json new.json cross.json

``--from DIR`` does not train ``a`` and ``b``: it loads their model files from ``DIR``
and transforms with them; for ``c`` it resumes from the checkpoint that ``DIR``'s stopped
training left (copied) and saves the result. ``--compare`` prints a Markdown table (equal
or not, per digest) to stdout; put it in ``benchmarks/results/layout_equivalence.md``.
A few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonix import IGUANeHarmonizer
from harmonix.datasets import make_multisite
from harmonix.iguane import CPU_RECIPE

CHECKPOINT = "iguane_checkpoint.pt"

CONFIGS: dict[str, dict[str, Any]] = {
    "a_recipe": {
        **CPU_RECIPE,
        "warmup_steps": 2,
        "max_steps": 4,
        "val_every": 2,
        "random_state": 0,
    },
    "b_augment": {
        "n_epochs": 1,
        "steps_per_epoch": 3,
        "base_width": 4,
        "disc_base_width": 8,
        "patch_size": 32,
        "batch_size": 2,
        "augment": True,
        "rotation_degrees": 10.0,
        "shift_mm": 8.0,
        "age_bin_width": 20.0,
        "val_fraction": 0.25,
        "val_every": 2,
        "input_normalization": "median",
        "random_state": 7,
    },
    "c_resume": {
        "n_epochs": 1,
        "steps_per_epoch": 6,
        "base_width": 2,
        "disc_base_width": 4,
        "patch_size": 16,
        "warmup_steps": 1,
        "lr_schedule": "linear",
        "augment": False,
        "val_every": 3,
        "checkpoint_every": 2,
        "random_state": 3,
    },
}
STOP_AFTER = 3  # c_resume: steps of the interrupted first run


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digest(t: torch.Tensor | np.ndarray) -> str:
    """Digest of an array's dtype, shape and bytes."""
    a = t.detach().cpu().contiguous() if isinstance(t, torch.Tensor) else np.ascontiguousarray(t)
    if isinstance(a, torch.Tensor):
        raw = a.reshape(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b""
        head = f"{a.dtype}{tuple(a.shape)}"
    else:
        raw, head = a.tobytes(), f"{a.dtype}{a.shape}"
    return sha(head.encode() + raw)


def plain(value: Any) -> Any:
    """``value`` with arrays and tensors replaced by their digests (for JSON)."""
    if isinstance(value, torch.Tensor | np.ndarray):
        return {"digest": tensor_digest(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return repr(value)


def value_digest(value: Any) -> str:
    return sha(json.dumps(plain(value), sort_keys=True).encode())


def file_digests(path: Path) -> dict[str, Any]:
    """The bytes of a ``torch.save`` file and its payload, key by key."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {
        "bytes": sha(path.read_bytes()),
        "payload": {str(k): value_digest(v) for k, v in payload.items()},
    }


def model_digests(h: IGUANeHarmonizer, imgs: np.ndarray, sites: np.ndarray) -> dict[str, Any]:
    out = np.asarray(h.transform(imgs, sites))
    report = h.guard_report(imgs, sites)
    return {
        "generator": {k: tensor_digest(v) for k, v in h.generator_.state_dict().items()},
        "history": value_digest(h.history_),
        "transform": tensor_digest(out.astype(np.float32)),
        "guard_report": sha(report.to_json(double_precision=15).encode()),
    }


def run(workdir: Path, source: Path | None) -> dict[str, Any]:
    torch.set_num_threads(1)
    ds = make_multisite(n_subjects=6, n_sites=3, resolution=4, random_state=0)
    imgs, sites, ages = ds.imgs, ds.sites, ds.ages
    result: dict[str, Any] = {
        "data": {"imgs": tensor_digest(imgs), "sites": value_digest(list(sites))},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    source = None if source is None else source.resolve()
    os.chdir(workdir)  # relative paths: the checkpoint_dir saved in a model is the same
    for name, params in CONFIGS.items():
        t0 = time.perf_counter()
        folder = Path(name)
        folder.mkdir(exist_ok=True)
        model_path = folder / "model.pt"
        entry: dict[str, Any] = {}
        if name == "c_resume":
            ckpt = folder / "checkpoints"
            if source is None:  # stop after STOP_AFTER steps, keep that checkpoint
                IGUANeHarmonizer(
                    **params, checkpoint_dir=ckpt, max_steps=STOP_AFTER, voxel_size=4
                ).fit(imgs, sites, ages)
                shutil.copy(ckpt / CHECKPOINT, folder / "stopped_checkpoint.pt")
            else:  # resume from the checkpoint the other run stopped at
                ckpt.mkdir(exist_ok=True)
                shutil.copy(source / name / "stopped_checkpoint.pt", ckpt / CHECKPOINT)
            entry["stopped_checkpoint"] = file_digests(ckpt / CHECKPOINT)
            h = IGUANeHarmonizer(**params, checkpoint_dir=ckpt, resume=True, voxel_size=4)
            h.fit(imgs, sites, ages)
            entry["checkpoint"] = file_digests(ckpt / CHECKPOINT)
            h.save(model_path)
        elif source is None:
            h = IGUANeHarmonizer(**params, voxel_size=4).fit(imgs, sites, ages)
            h.save(model_path)
        else:  # the model file the other run saved
            shutil.copy(source / name / "model.pt", model_path)
        entry["model_file"] = file_digests(model_path)
        loaded = IGUANeHarmonizer.load(model_path)
        entry["loaded"] = model_digests(loaded, imgs, sites)
        if source is None or name == "c_resume":
            entry["fitted"] = model_digests(h, imgs, sites)
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        result[name] = entry
    return result


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    return out


def compare(old: dict, new: dict, cross: dict | None) -> list[str]:
    """A Markdown table: for each digest group, equal or not between the runs."""
    fo, fn = flatten(old["digests"]), flatten(new["digests"])
    fc = flatten(cross["digests"]) if cross else {}
    groups: dict[str, list[str]] = {}
    for key in fo:
        if key.endswith("seconds"):
            continue
        parts = key.split(".")
        group = ".".join(parts[:3]) if parts[1] in ("fitted", "loaded") else ".".join(parts[:2])
        groups.setdefault(group, []).append(key)
    lines = [
        "| what | digests | old = new | new on old's files = old |",
        "|---|---|---|---|",
    ]
    for group, keys in groups.items():
        same = all(fo[k] == fn.get(k) for k in keys)
        crossed = [k for k in keys if k in fc]
        cell = "—"
        if crossed:
            cell = "equal" if all(fo[k] == fc[k] for k in crossed) else "DIFFER"
        lines.append(f"| `{group}` | {len(keys)} | {'equal' if same else 'DIFFER'} | {cell} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path, help="where to write the digests")
    parser.add_argument("--from", dest="source", type=Path, help="another run's workdir")
    parser.add_argument("--compare", nargs="+", type=Path, metavar="JSON")
    args = parser.parse_args()
    if args.compare:
        runs = [json.loads(p.read_text()) for p in args.compare]
        for r, p in zip(runs, args.compare):
            print(f"- `{p.name}`: commit {r['commit']}, {r['seconds']} s, load {r['load']}")
        print()
        print("\n".join(compare(runs[0], runs[1], runs[2] if len(runs) > 2 else None)))
        return
    if args.workdir is None or args.json is None:
        parser.error("--workdir and --json are needed (or --compare)")
    import harmonix

    root = Path(harmonix.__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    t0 = time.perf_counter()
    out = args.json.resolve()  # run() works inside the workdir
    digests = run(args.workdir.resolve(), args.source)
    record = {
        "commit": commit or "unknown",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - t0, 1),
        "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "digests": digests,
    }
    out.write_text(json.dumps(record, indent=1, sort_keys=True))
    print(f"wrote {out} ({record['seconds']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
