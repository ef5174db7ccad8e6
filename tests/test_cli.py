"""The harmonix command line: every subcommand (its bad inputs: tests/test_bad_inputs.py)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonix.cli import main
from harmonix.io import read_manifest
from harmonix.persistence import load_model


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    assert (
        main(
            [
                "--quiet",
                "make-dataset",
                "--out",
                str(out),
                "--n-subjects",
                "3",
                "--n-sites",
                "3",
                "--resolution",
                "4",
            ]
        )
        == 0
    )
    return out


def test_make_dataset_writes_manifest(dataset_dir):
    manifest = dataset_dir / "manifest.csv"
    lines = manifest.read_text().splitlines()
    assert lines[0].split(",")[:2] == ["path", "site"]
    assert len(lines) == 1 + 9
    first = dataset_dir / lines[1].split(",")[0]
    assert nib.load(first).ndim == 3


@pytest.mark.parametrize("style", ["preprocessed", "legacy"])
def test_make_dataset_style(tmp_path, style):
    from harmonix.datasets import make_multisite

    assert (
        main(
            [
                "--quiet",
                "make-dataset",
                "--out",
                str(tmp_path),
                "--n-subjects",
                "2",
                "--n-sites",
                "2",
                "--resolution",
                "4",
                "--style",
                style,
            ]
        )
        == 0
    )
    manifest = read_manifest(tmp_path / "manifest.csv")
    ds = make_multisite(2, 2, resolution=4, random_state=0, style=style)
    written = np.stack([np.asanyarray(nib.load(p).dataobj) for p in manifest.paths])
    np.testing.assert_allclose(written, ds.imgs, rtol=1e-6)


@pytest.mark.parametrize("method", ["hm", "ws", "combat", "none"])
def test_fit_then_transform_manifest(dataset_dir, tmp_path, method):
    model = tmp_path / "model.npz"
    manifest = str(dataset_dir / "manifest.csv")
    assert (
        main(["-q", "fit", "--method", method, "--manifest", manifest, "--out", str(model)]) == 0
    )
    assert model.exists()
    out = tmp_path / "out"
    assert (
        main(["-q", "transform", "--model", str(model), "--manifest", manifest, "--out", str(out)])
        == 0
    )
    files = sorted(out.glob("*_harmonized.nii.gz"))
    assert len(files) == 9
    src = sorted(dataset_dir.rglob("*.nii.gz"))[0]
    res = nib.load(out / src.name.replace(".nii.gz", "_harmonized.nii.gz"))
    np.testing.assert_allclose(res.affine, nib.load(src).affine)
    assert (res.get_fdata()[nib.load(src).get_fdata() == 0] == 0).all()
    # the file holds what the library computes with the saved model
    man = read_manifest(manifest)
    i = [p.resolve() for p in man.paths].index(src.resolve())
    fitted = load_model(model)
    kw = {"sites": man.sites[i : i + 1], "ages": man.ages[i : i + 1]} if method == "combat" else {}
    expected = fitted.transform([src], **kw)[0].get_fdata()
    np.testing.assert_allclose(res.get_fdata(), expected, rtol=1e-6)


def test_transform_inputs_parallel_and_no_overwrite(dataset_dir, tmp_path, capsys):
    model = tmp_path / "hm.npz"
    manifest = str(dataset_dir / "manifest.csv")
    assert (
        main(
            [
                "-q",
                "fit",
                "--method",
                "hm",
                "--manifest",
                manifest,
                "--out",
                str(model),
                "--param",
                "percentiles=(2, 50, 98)",
            ]
        )
        == 0
    )
    inputs = [str(p) for p in sorted(dataset_dir.rglob("*.nii.gz"))[:3]]
    out = tmp_path / "o"
    args = ["-q", "transform", "--model", str(model), "--input", *inputs, "--out", str(out)]
    assert main([*args, "--n-jobs", "2"]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 3
    assert main(args) == 1  # outputs exist
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    # writing next to the inputs with an empty suffix would replace them
    assert (
        main(
            [
                "-q",
                "transform",
                "--model",
                str(model),
                "--input",
                inputs[0],
                "--out",
                str(Path(inputs[0]).parent),
                "--suffix",
                "",
            ]
        )
        == 1
    )
    assert "overwrite an input" in capsys.readouterr().err
    assert list(out.glob(".*")) == []  # no temporary files left


def test_benchmark_subcommand(dataset_dir, tmp_path):
    out = tmp_path / "bench"
    bench = ["-q", "benchmark", "--manifest", str(dataset_dir / "manifest.csv"), "--out", str(out)]
    assert main([*bench, "--methods", "none,hm", "--test-sites", "site2"]) == 0
    table = (out / "benchmark.md").read_text()
    assert "HM" in table or "hm" in table
    assert (out / "metrics.png").stat().st_size > 0
    assert main([*bench, "--methods", "none,magic"]) == 1


def test_demo_without_iguane(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--n-subjects", "3", "--no-iguane"]) == 0
    printed = capsys.readouterr().out
    assert "traveling" in printed
    assert all(f"| {m} " in printed for m in ("none", "hm", "ws", "combat"))
    assert (out / "benchmark.md").exists() and (out / "metrics.png").exists()


def test_model_name_as_given_to_fit_and_quiet_after_the_subcommand(dataset_dir, tmp_path, capsys):
    manifest = str(dataset_dir / "manifest.csv")
    model = tmp_path / "model"  # fit adds .npz
    assert (
        main(["fit", "--method", "hm", "--manifest", manifest, "--out", str(model), "--quiet"])
        == 0
    )
    assert (tmp_path / "model.npz").exists() and not model.exists()
    out = tmp_path / "out"
    assert (
        main(["transform", "--model", str(model), "--manifest", manifest, "--out", str(out), "-q"])
        == 0
    )
    assert len(list(out.glob("*_harmonized.nii.gz"))) == 9
    capsys.readouterr()
    (tmp_path / "model.pt").write_bytes(b"")  # two candidates: ambiguous, clear error
    assert (
        main(
            [
                "transform",
                "--model",
                str(model),
                "--manifest",
                manifest,
                "--out",
                str(out),
                "--overwrite",
                "-q",
            ]
        )
        == 1
    )
    assert "name the model file with its suffix" in capsys.readouterr().err
    assert (
        main(
            [
                "transform",
                "--model",
                str(tmp_path / "nothing"),
                "--manifest",
                manifest,
                "--out",
                str(out),
                "-q",
            ]
        )
        == 1
    )
    assert "model file not found" in capsys.readouterr().err.lower()
