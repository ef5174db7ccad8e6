"""The harmonix command line: every subcommand and its error paths."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonix.cli import main


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    assert main(["--quiet", "make-dataset", "--out", str(out), "--n-subjects", "3",
                 "--n-sites", "3", "--resolution", "4"]) == 0
    return out


def test_make_dataset_writes_manifest(dataset_dir):
    manifest = dataset_dir / "manifest.csv"
    lines = manifest.read_text().splitlines()
    assert lines[0].split(",")[:2] == ["path", "site"]
    assert len(lines) == 1 + 9
    first = dataset_dir / lines[1].split(",")[0]
    assert nib.load(first).ndim == 3


@pytest.mark.parametrize("method", ["hm", "ws", "combat", "none"])
def test_fit_then_transform_manifest(dataset_dir, tmp_path, method):
    model = tmp_path / "model.npz"
    manifest = str(dataset_dir / "manifest.csv")
    assert main(["-q", "fit", "--method", method, "--manifest", manifest,
                 "--out", str(model)]) == 0
    assert model.exists()
    out = tmp_path / "out"
    assert main(["-q", "transform", "--model", str(model), "--manifest", manifest,
                 "--out", str(out)]) == 0
    files = sorted(out.glob("*_harmonized.nii.gz"))
    assert len(files) == 9
    src = sorted(dataset_dir.rglob("*.nii.gz"))[0]
    res = nib.load(out / src.name.replace(".nii.gz", "_harmonized.nii.gz"))
    np.testing.assert_allclose(res.affine, nib.load(src).affine)
    assert (res.get_fdata()[nib.load(src).get_fdata() == 0] == 0).all()


def test_transform_inputs_parallel_and_no_overwrite(dataset_dir, tmp_path, capsys):
    model = tmp_path / "hm.npz"
    manifest = str(dataset_dir / "manifest.csv")
    assert main(["-q", "fit", "--method", "hm", "--manifest", manifest, "--out", str(model),
                 "--param", "percentiles=(2, 50, 98)"]) == 0
    inputs = [str(p) for p in sorted(dataset_dir.rglob("*.nii.gz"))[:3]]
    out = tmp_path / "o"
    args = ["-q", "transform", "--model", str(model), "--input", *inputs, "--out", str(out)]
    assert main([*args, "--n-jobs", "2"]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 3
    assert main(args) == 1  # outputs exist
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    # writing next to the inputs with an empty suffix would replace them
    assert main(["-q", "transform", "--model", str(model), "--input", inputs[0], "--out",
                 str(Path(inputs[0]).parent), "--suffix", ""]) == 1
    assert "overwrite an input" in capsys.readouterr().err
    assert list(out.glob(".*")) == []  # no temporary files left


def test_errors(dataset_dir, tmp_path, capsys):
    manifest = str(dataset_dir / "manifest.csv")
    assert main(["fit", "--method", "magic", "--manifest", manifest, "--out", "m.npz"]) == 1
    assert "unknown method" in capsys.readouterr().err
    assert main(["fit", "--method", "hm", "--manifest", str(tmp_path / "no.csv"),
                 "--out", str(tmp_path / "m.npz")]) == 1
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("file,site\na.nii.gz,x\n")
    assert main(["fit", "--method", "hm", "--manifest", str(bad), "--out", "m.npz"]) == 1
    assert "path" in capsys.readouterr().err
    missing = tmp_path / "missing.csv"
    missing.write_text("path,site\nnothere.nii.gz,x\nalso.nii.gz,y\n")
    assert main(["fit", "--method", "hm", "--manifest", str(missing), "--out", "m.npz"]) == 1
    assert "missing file" in capsys.readouterr().err
    assert main(["fit", "--method", "hm", "--manifest", manifest, "--out",
                 str(tmp_path / "m.npz"), "--param", "nonsense=1"]) == 1
    assert "unknown parameter" in capsys.readouterr().err
    assert main(["transform", "--model", str(tmp_path / "none.npz"), "--input", "x.nii",
                 "--out", str(tmp_path)]) == 1
    assert main([]) == 2
    assert main(["fit"]) == 2


def test_corrupt_nifti(dataset_dir, tmp_path, capsys):
    model = tmp_path / "hm.npz"
    assert main(["-q", "fit", "--method", "hm", "--manifest",
                 str(dataset_dir / "manifest.csv"), "--out", str(model)]) == 0
    src = sorted(dataset_dir.rglob("*.nii.gz"))[0]
    raw = gzip.decompress(src.read_bytes())
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(raw[: len(raw) // 3]))
    out = tmp_path / "o"
    assert main(["transform", "--model", str(model), "--input", str(corrupt),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "corrupt" in err or "truncated" in err
    assert not list(Path(out).glob("*.nii.gz"))


def test_combat_transform_needs_sites(dataset_dir, tmp_path, capsys):
    model = tmp_path / "cb.npz"
    manifest = str(dataset_dir / "manifest.csv")
    assert main(["-q", "fit", "--method", "combat", "--manifest", manifest,
                 "--out", str(model)]) == 0
    src = str(sorted(dataset_dir.rglob("*.nii.gz"))[0])
    assert main(["transform", "--model", str(model), "--input", src,
                 "--out", str(tmp_path / "o")]) == 1
    assert "site" in capsys.readouterr().err


def test_benchmark_subcommand(dataset_dir, tmp_path):
    out = tmp_path / "bench"
    assert main(["-q", "benchmark", "--manifest", str(dataset_dir / "manifest.csv"),
                 "--methods", "none,hm", "--test-sites", "site2", "--out", str(out)]) == 0
    table = (out / "benchmark.md").read_text()
    assert "HM" in table or "hm" in table
    assert (out / "metrics.png").stat().st_size > 0
    assert main(["-q", "benchmark", "--manifest", str(dataset_dir / "manifest.csv"),
                 "--methods", "none,magic", "--out", str(out)]) == 1


def test_demo_without_iguane(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--n-subjects", "3", "--no-iguane"]) == 0
    printed = capsys.readouterr().out
    assert "traveling" in printed
    assert all(f"| {m} " in printed for m in ("none", "hm", "ws", "combat"))
    assert (out / "benchmark.md").exists() and (out / "metrics.png").exists()
