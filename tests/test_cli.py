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


# -- CLI transform == Python transform of the same images ----------------------------------
#: Models fitted on sites 0 and 1 only (site 2 is new to them), by the command line.
GROUPED_METHODS = {
    "hm": [],
    "ws": [],
    "combat": ["--param", "unseen_site=fit"],
    "iguane": [
        *("--param", "n_epochs=1", "--param", "steps_per_epoch=1", "--param", "base_width=2"),
        *("--param", "random_state=0", "--param", "input_normalization=histogram"),
    ],
}


@pytest.fixture(scope="module")
def two_site_manifest(dataset_dir):
    """The dataset's manifest restricted to sites 0 and 1 (the training set)."""
    lines = (dataset_dir / "manifest.csv").read_text().splitlines()
    kept = [lines[0]] + [row for row in lines[1:] if row.split(",")[1] != "site2"]
    path = dataset_dir / "train_sites_0_1.csv"
    path.write_text("\n".join(kept) + "\n")
    return path


@pytest.mark.parametrize("method", list(GROUPED_METHODS))
def test_cli_transform_equals_python_transform_of_all_images(
    dataset_dir, two_site_manifest, tmp_path, method
):
    """The command line takes a manifest site by site: its files equal one transform call
    on all images, also where a new site's images are pooled (ComBat's unseen_site="fit",
    IGUANe's per-site histogram map), and in parallel."""
    model = tmp_path / ("model.pt" if method == "iguane" else "model.npz")
    fit = ["-q", "fit", "--method", method, "--manifest", str(two_site_manifest)]
    assert main([*fit, "--out", str(model), *GROUPED_METHODS[method]]) == 0
    manifest = dataset_dir / "manifest.csv"
    out = tmp_path / "out"
    transform = ["-q", "transform", "--model", str(model), "--manifest", str(manifest)]
    assert main([*transform, "--out", str(out), "--n-jobs", "2"]) == 0
    man = read_manifest(manifest)
    fitted = load_model(model)
    expected = fitted.transform([str(p) for p in man.paths], sites=man.sites, ages=man.ages)
    for path, want in zip(man.paths, expected):
        got = nib.load(out / path.name.replace(".nii.gz", "_harmonized.nii.gz")).get_fdata()
        np.testing.assert_allclose(got, want.get_fdata(), rtol=0, atol=1e-4)
    new = [i for i, s in enumerate(man.sites) if s == "site2"]
    assert len(new) == 3
    if method == "combat":  # one new-site image alone cannot be harmonized
        with pytest.raises(ValueError, match="at least 2 images"):
            fitted.transform([str(man.paths[new[0]])], sites=["site2"], ages=man.ages[:1])
    if method == "iguane":  # one new-site image alone gets another map: grouping matters
        alone = fitted.transform([str(man.paths[new[0]])], sites=["site2"])[0].get_fdata()
        assert np.abs(alone - expected[new[0]].get_fdata()).max() > 1.0


def test_cli_reference_site_given_as_a_number_names_the_manifest_site(tmp_path, dataset_dir):
    """Numeric site names: --param reference_site=1 names the manifest's site "1"."""
    lines = (dataset_dir / "manifest.csv").read_text().splitlines()
    rows = [lines[0]]
    for row in lines[1:]:
        cells = row.split(",")
        cells[0] = str(dataset_dir / cells[0])
        cells[1] = " " + cells[1][-1] + " "  # site0 -> " 0 ": spaces are stripped too
        rows.append(",".join(cells))
    manifest = tmp_path / "numbered.csv"
    manifest.write_text("\n".join(rows) + "\n")
    model = tmp_path / "hm.npz"
    fit = ["-q", "fit", "--method", "hm", "--manifest", str(manifest), "--out", str(model)]
    assert main([*fit, "--param", "reference_site=1"]) == 0
    fitted = load_model(model)
    assert fitted.reference_site_ == "1" and fitted.sites_.tolist() == ["0", "1", "2"]


def test_cli_skip_existing_resumes_an_interrupted_transform(dataset_dir, tmp_path, capsys):
    manifest = str(dataset_dir / "manifest.csv")
    model = tmp_path / "ws.npz"
    assert main(["-q", "fit", "--method", "ws", "--manifest", manifest, "--out", str(model)]) == 0
    out = tmp_path / "out"
    args = ["-q", "transform", "--model", str(model), "--manifest", manifest, "--out", str(out)]
    assert main(args) == 0
    files = sorted(out.glob("*.nii.gz"))
    complete = {p.name: nib.load(p).get_fdata() for p in files}
    files[0].unlink()  # as if interrupted before these two were written
    files[1].unlink()
    files[2].write_bytes(b"kept")  # an existing output is never touched
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--skip-existing" in err and "overwrite=True" not in err
    assert main([*args, "--skip-existing"]) == 0
    assert files[2].read_bytes() == b"kept"
    for p in (files[0], files[1], *files[3:]):
        np.testing.assert_array_equal(nib.load(p).get_fdata(), complete[p.name])
    assert main([*args, "--skip-existing", "--overwrite"]) == 1
    assert "exclude each other" in capsys.readouterr().err


def test_transform_refuses_images_of_another_voxel_size_unless_told(dataset_dir, tmp_path, capsys):
    """The shipped 4 mm IGUANe model on a file whose header says 2 mm: exit 1 and nothing
    written; with --grid-mismatch warn the file is harmonized."""
    from harmonix.iguane.pretrained import DEMO_MODEL_PATH

    src = nib.load(sorted(dataset_dir.rglob("*.nii.gz"))[0])
    two_mm = tmp_path / "two_mm.nii.gz"
    nib.save(
        nib.Nifti1Image(np.asarray(src.dataobj), src.affine @ np.diag([0.5] * 3 + [1])), two_mm
    )
    out = tmp_path / "out"
    argv = ["-q", "transform", "--model", str(DEMO_MODEL_PATH), "--input", str(two_mm)]
    assert main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "voxels of 2 mm, not 4 mm" in err and "--grid-mismatch warn" in err
    assert not out.exists() or not any(out.iterdir())
    with pytest.warns(UserWarning, match="voxels of 2 mm"):
        assert main([*argv, "--out", str(out), "--grid-mismatch", "warn"]) == 0
    assert len(list(out.glob("*_harmonized.nii.gz"))) == 1


def test_transform_mixed_precision_iguane(dataset_dir, tmp_path, monkeypatch):
    from harmonix.iguane import devices
    from harmonix.iguane.pretrained import DEMO_MODEL_PATH, load_demo_model

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)  # no emulation warning
    src = sorted(dataset_dir.rglob("*.nii.gz"))[0]
    out = tmp_path / "out"
    argv = ["-q", "transform", "--model", str(DEMO_MODEL_PATH), "--input", str(src)]
    assert main([*argv, "--out", str(out), "--mixed-precision"]) == 0
    written = nib.load(out / src.name.replace(".nii.gz", "_harmonized.nii.gz")).get_fdata()
    model = load_demo_model()
    plain = model.transform([src])[0].get_fdata()
    bf16 = model.set_params(mixed_precision=True).transform([src])[0].get_fdata()
    np.testing.assert_allclose(written, bf16, rtol=1e-6)  # what Python computes in bf16
    assert not np.array_equal(written, plain)  # ... which is not the float32 result
