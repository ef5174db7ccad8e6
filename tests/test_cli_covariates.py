"""The command line with covariates: tables of features, covariate columns of manifests.

Each path is checked against the same computation in Python (CLI equals Python); the bad
inputs of these options are rows of tests/test_bad_inputs.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _helpers import make_feature_study

from harmonix import ComBatHarmonizer
from harmonix.cli import main
from harmonix.io import read_manifest
from harmonix.persistence import load_model


@pytest.fixture(scope="module")
def study_csv(tmp_path_factory):
    X, sites, cov = make_feature_study(n_features=6, seed=2)
    table = pd.DataFrame(X, columns=[f"Left-ROI-{j}" for j in range(6)])
    table.insert(0, "subject", [f"sub-{i:03d}" for i in range(len(X))])
    table.insert(1, "site", sites)
    for name in ("age", "sex", "diagnosis"):
        table[name] = cov[name]
    path = tmp_path_factory.mktemp("tables") / "features.csv"
    table.to_csv(path, index=False)
    return path, X, sites, cov


def test_fit_and_transform_a_table_equals_python(study_csv, tmp_path):
    path, X, sites, cov = study_csv
    model = tmp_path / "combat.npz"
    argv = ["-q", "fit", "--method", "combat", "--table", str(path), "--out", str(model)]
    argv += ["--covariates", "age,sex,diagnosis", "--id-columns", "subject"]
    argv += ["--param", "reference_site=s1"]
    assert main(argv) == 0
    fitted = load_model(model)
    assert fitted.feature_names_in_.tolist() == [f"Left-ROI-{j}" for j in range(6)]
    assert list(fitted.covariate_levels_) == ["age", "sex", "diagnosis"]
    out = tmp_path / "harmonized.csv"
    assert (
        main(["-q", "transform", "--model", str(model), "--table", str(path), "--out", str(out)])
        == 0
    )
    written = pd.read_csv(out)
    original = pd.read_csv(path)
    assert list(written.columns) == list(original.columns)  # same table, same order
    for col in ("subject", "site", "age", "sex", "diagnosis"):
        pd.testing.assert_series_equal(written[col], original[col])
    expected = ComBatHarmonizer(reference_site="s1").fit_transform(X, sites, covariates=cov)
    features = written[[f"Left-ROI-{j}" for j in range(6)]].to_numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-12)
    # a second run refuses to replace the output unless asked
    again = ["-q", "transform", "--model", str(model), "--table", str(path), "--out", str(out)]
    assert main(again) == 1
    assert main([*again, "--overwrite"]) == 0


def test_manifest_covariate_columns(tmp_path):
    data = tmp_path / "data"
    argv = ["-q", "make-dataset", "--out", str(data), "--n-subjects", "4", "--n-sites", "3"]
    argv += ["--resolution", "4", "--diagnosis-prevalence", "0.5"]
    assert main(argv) == 0
    manifest = data / "manifest.csv"
    man = read_manifest(manifest)
    assert list(man.extra.columns) == ["sex", "diagnosis"]
    model = tmp_path / "combat.npz"
    fit = ["-q", "fit", "--method", "combat", "--manifest", str(manifest), "--out", str(model)]
    assert main([*fit, "--covariates", "sex,diagnosis"]) == 0
    fitted = load_model(model)
    assert list(fitted.covariate_levels_) == ["age", "sex", "diagnosis"]
    out = tmp_path / "out"
    tr = ["-q", "transform", "--model", str(model), "--manifest", str(manifest), "--out", str(out)]
    assert main(tr) == 0
    paths = [str(p) for p in man.paths]
    expected = fitted.transform(paths[:2], man.sites[:2], man.ages[:2], man.extra.iloc[:2])
    written = sorted(out.rglob("*.nii.gz"))
    assert len(written) == len(paths)
    import nibabel as nib

    got = nib.load(out / expected_name(paths[0])).get_fdata()
    np.testing.assert_allclose(got, expected[0].get_fdata(), rtol=1e-6)


def expected_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.replace(".nii.gz", "_harmonized.nii.gz")
