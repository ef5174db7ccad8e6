"""BIDS in, BIDS derivatives out (harmonix.bids; its bad inputs: tests/test_bad_inputs.py).

One synthetic BIDS dataset (make-dataset --bids: 3 scanners, sessions for two subjects,
two runs for one) goes through bids-manifest -> fit -> transform --bids-out, and through
preprocess --bids-out (a stand-in chain) -> transform --bids-out -> to-native --bids-out;
pybids indexes the derivatives and every output leads back to its source via Sources.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from harmonix import ComBatHarmonizer
from harmonix.benchmark import dataset_from_manifest
from harmonix.bids import (
    DerivativeDataset,
    bids_manifest,
    build_name,
    harmonized_path,
    manifest_entities,
    parse_name,
    preprocessed_paths,
    transform_manifest_to_bids,
    transform_to_bids,
    write_bids_manifest,
)
from harmonix.cli import main
from harmonix.datasets import make_multisite
from harmonix.io import read_manifest
from harmonix.persistence import load_model

bids = pytest.importorskip("bids")

N_SUBJECTS, N_SITES = 4, 3
SPACE = "MNI152NLin2009aSym"


@pytest.fixture(scope="module")
def synthetic():
    return make_multisite(N_SUBJECTS, N_SITES, resolution=4, random_state=0)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bids") / "ds"
    argv = ["-q", "make-dataset", "--bids", str(root), "--n-subjects", str(N_SUBJECTS)]
    assert main([*argv, "--n-sites", str(N_SITES), "--resolution", "4"]) == 0
    return root


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# -- the synthetic dataset --------------------------------------------------------------------
def test_make_dataset_bids_layout_and_contents(raw, synthetic):
    images = sorted(_rel(p, raw) for p in raw.glob("sub-*/**/*_T1w.nii.gz"))
    assert images == [
        *(f"sub-0{j}/ses-{s}/anat/sub-0{j}_ses-{s}_T1w.nii.gz" for j in (0, 1) for s in (1, 2, 3)),
        "sub-02/anat/sub-02_T1w.nii.gz",
        "sub-03/anat/sub-03_run-1_T1w.nii.gz",
        "sub-03/anat/sub-03_run-2_T1w.nii.gz",
    ]
    # image (subject j, site s) of make_multisite, written unchanged
    n = N_SUBJECTS
    for rel, index in [
        ("sub-01/ses-3/anat/sub-01_ses-3_T1w.nii.gz", 2 * n + 1),
        ("sub-02/anat/sub-02_T1w.nii.gz", 2 * n + 2),  # subject 2 at site 2 mod 3
        ("sub-03/anat/sub-03_run-1_T1w.nii.gz", 0 * n + 3),  # subject 3 at site 0
    ]:
        img = nib.load(raw / rel)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), synthetic.imgs[index])
        np.testing.assert_allclose(img.affine, synthetic.affine)
    run1, run2 = (
        np.asanyarray(nib.load(raw / f"sub-03/anat/sub-03_run-{r}_T1w.nii.gz").dataobj)
        for r in (1, 2)
    )
    brain = run1 > 0
    assert ((run2 > 0) == brain).all() and not np.array_equal(run1, run2)
    assert np.corrcoef(run1[brain], run2[brain])[0, 1] > 0.95  # a rescan: same anatomy
    participants = pd.read_csv(raw / "participants.tsv", sep="\t", keep_default_na=False)
    assert participants["participant_id"].tolist() == [f"sub-0{j}" for j in range(n)]
    np.testing.assert_allclose(participants["age"], synthetic.ages[:n], atol=0.005)
    assert participants["site"].tolist() == ["n/a", "n/a", "site2", "site0"]
    sessions = pd.read_csv(raw / "sub-00" / "sub-00_sessions.tsv", sep="\t")
    assert sessions["site"].tolist() == ["site0", "site1", "site2"]
    description = json.loads((raw / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and description["BIDSVersion"]


def test_pybids_validates_and_indexes_every_image(raw):
    layout = bids.BIDSLayout(str(raw), validate=True)
    files = layout.get(suffix="T1w", extension=".nii.gz", return_type="filename")
    assert len(files) == 2 * N_SITES + 3
    assert sorted(layout.get_sessions()) == ["1", "2", "3"]
    # sidecar inheritance: subject-level sidecar for sub-03's two runs, top-level T1w.json
    meta = layout.get_file(str(raw / "sub-03/anat/sub-03_run-2_T1w.nii.gz")).get_metadata()
    assert meta["Manufacturer"] == "Siemens" and meta["MRAcquisitionType"] == "3D"


# -- bids-manifest ----------------------------------------------------------------------------
def test_manifest_sites_from_sidecars_match_the_simulated_sites(raw):
    scanners = bids_manifest(raw, covariates=["age"])
    by_column = bids_manifest(raw, site_column="site")
    assert scanners["path"].tolist() == by_column["path"].tolist()
    pairs = set(zip(by_column["site"], scanners["site"]))
    assert pairs == {
        ("site0", "Siemens_Prisma_3"),
        ("site1", "GE_DISCOVERY MR750_3"),
        ("site2", "Philips_Achieva_1.5"),
    }
    assert list(scanners.columns) == ["path", "site", "subject", "session", "run", "age"]
    assert scanners["subject"].tolist() == ["00"] * 3 + ["01"] * 3 + ["02", "03", "03"]
    assert scanners["run"].tolist()[-2:] == ["1", "2"]
    participants = pd.read_csv(raw / "participants.tsv", sep="\t").set_index("participant_id")
    expected = [participants.loc[f"sub-{s}", "age"] for s in scanners["subject"]]
    np.testing.assert_array_equal(scanners["age"], expected)
    assert scanners["age"].dtype == np.float64


def test_manifest_sessions_tsv_wins_and_filters(raw, tmp_path):
    # a covariate in both tables: the session's value wins, the subject's fills in
    copy = tmp_path / "ds"
    _copy_tree(raw, copy)
    sessions = copy / "sub-00" / "sub-00_sessions.tsv"
    table = pd.read_csv(sessions, sep="\t")
    table["age"] = [40.0, "n/a", 42.5]
    table.to_csv(sessions, sep="\t", index=False)
    table["session_id"] = ["1", "2", "3"]  # ids without their ses- prefix are understood
    table.to_csv(sessions, sep="\t", index=False)
    df = bids_manifest(copy, covariates="age")
    assert df["age"].tolist()[:3] == [40.0, 45.26, 42.5]
    only = bids_manifest(raw, session="1,3")
    assert only["session"].tolist() == ["1", "3", "1", "3"]
    assert bids_manifest(raw, run="2")["path"].map(lambda p: Path(p).name).tolist() == [
        "sub-03_run-2_T1w.nii.gz"
    ]
    fields = bids_manifest(raw, site_from="Manufacturer")
    assert sorted(set(fields["site"])) == ["GE", "Philips", "Siemens"]


def test_manifest_acq_filter_entity_columns_and_skipped_names(tmp_path, caplog):
    root = tmp_path / "ds"
    (root / "sub-a" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    for acq in ("mprage", "fast"):
        nib.save(img, root / "sub-a" / "anat" / f"sub-a_acq-{acq}_rec-norm_T1w.nii.gz")
    (root / "T1w.json").write_text(
        '{"Manufacturer": "GE", "ManufacturersModelName": "M",' + ' "MagneticFieldStrength": 3}'
    )
    df = bids_manifest(root, acquisition="mprage")
    assert df[["site", "subject", "acquisition", "reconstruction"]].values.tolist() == [
        ["GE_M_3", "a", "mprage", "norm"]
    ]
    # a T1w file with a name BIDS does not allow is left out, with a warning naming it
    nib.save(img, root / "sub-a" / "anat" / "sub-a_flavour-x_T1w.nii.gz")
    with caplog.at_level(logging.WARNING, logger="harmonix.bids"):
        assert len(bids_manifest(root)) == 2
    assert "sub-a/anat/sub-a_flavour-x_T1w.nii.gz" in caplog.text


def test_cli_bids_manifest_equals_python_and_feeds_every_command(raw, tmp_path, capsys):
    out = tmp_path / "manifest.csv"
    argv = ["bids-manifest", str(raw), "--out", str(out), "--covariates", "age"]
    assert main(["-q", *argv]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    python = write_bids_manifest(raw, tmp_path / "python.csv", covariates="age")
    assert out.read_text() == python.read_text()
    man = read_manifest(out)  # what fit, transform and benchmark read
    assert [p.resolve() for p in man.paths] == [Path(p) for p in bids_manifest(raw)["path"]]
    assert len(set(man.sites)) == N_SITES and man.ages is not None
    bench = dataset_from_manifest(man)  # what benchmark reads: traveling subjects kept
    assert bench.imgs.shape[0] == len(man) and bench.subjects.tolist()[:3] == ["00"] * 3
    assert len(set(bench.sites[bench.subjects == "00"])) == N_SITES
    assert main(["-q", *argv]) == 1  # no silent overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["-q", *argv, "--overwrite"]) == 0


def test_entity_columns_are_never_covariates(raw, tmp_path):
    table = bids_manifest(raw, covariates="age")
    table["sex"] = ["F", "M"] * (len(table) // 2) + ["F"] * (len(table) % 2)
    csv = tmp_path / "manifest.csv"
    table.to_csv(csv, index=False)
    man = read_manifest(csv)
    assert list(man.extra.columns) == ["sex"]  # not session, run (nor subject)
    assert man.covariates(["age", "sex"])["sex"].tolist() == table["sex"].tolist()
    with pytest.raises(ValueError, match=r"\['session', 'run'\] name BIDS entities"):
        man.covariates(["sex", "session", "run"])


# -- names ------------------------------------------------------------------------------------
def test_names_round_trip_in_bids_order():
    ents = {"run": "02", "subject": "01", "desc": "preproc", "space": SPACE, "session": "a"}
    name = build_name(ents, "T1w", ".nii.gz")
    assert name == f"sub-01_ses-a_run-02_space-{SPACE}_desc-preproc_T1w.nii.gz"
    assert parse_name(name) == ({k: ents[k] for k in parse_name(name)[0]}, "T1w", ".nii.gz")
    assert list(parse_name(name)[0]) == ["subject", "session", "run", "space", "desc"]
    paths = preprocessed_paths({"subject": "01", "session": "a", "run": "1"})
    assert {k: v.as_posix() for k, v in paths.items()} == {
        "image": f"sub-01/ses-a/anat/sub-01_ses-a_run-1_space-{SPACE}_desc-preproc_T1w.nii.gz",
        "json": f"sub-01/ses-a/anat/sub-01_ses-a_run-1_space-{SPACE}_desc-preproc_T1w.json",
        "native_mask": "sub-01/ses-a/anat/sub-01_ses-a_run-1_desc-brain_mask.nii.gz",
        "mask_json": "sub-01/ses-a/anat/sub-01_ses-a_run-1_desc-brain_mask.json",
        "png": f"sub-01/figures/sub-01_ses-a_run-1_space-{SPACE}_desc-preproc_T1w.png",
    }
    prep = {"subject": "01", "space": SPACE, "desc": "preproc"}
    assert harmonized_path(prep).name == f"sub-01_space-{SPACE}_desc-harmonized_T1w.nii.gz"


@pytest.mark.parametrize(
    ("entities", "match"),
    [
        ({"session": "1"}, "no BIDS subject"),
        ({"subject": "0_1"}, "letters and digits"),
        ({"subject": "01", "run": "a"}, "a number"),
        ({"subject": "01", "flavour": "x"}, "Unknown BIDS entity"),
    ],
)
def test_bad_entities_are_refused(entities, match):
    with pytest.raises(ValueError, match=match):
        build_name(entities, "T1w", ".nii.gz")


# -- bids-manifest -> fit -> transform --bids-out ---------------------------------------------
def _sources_resolve(deriv: Path, sources: list[str]) -> list[Path]:
    """Follow BIDS URIs through dataset_description's DatasetLinks to files."""
    links = json.loads((deriv / "dataset_description.json").read_text()).get("DatasetLinks", {})
    out = []
    for uri in sources:
        scheme, name, path = uri.split(":", 2)
        assert scheme == "bids"
        out.append(((deriv / links[name]) if name else deriv).resolve() / path)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def round_trip(raw, tmp_path_factory):
    work = tmp_path_factory.mktemp("round_trip")
    manifest = work / "manifest.csv"
    assert (
        main(["-q", "bids-manifest", str(raw), "--out", str(manifest), "--covariates", "age"]) == 0
    )
    model = work / "combat.npz"
    assert (
        main(["-q", "fit", "--method", "combat", "--manifest", str(manifest), "--out", str(model)])
        == 0
    )
    deriv = raw / "derivatives" / "harmonix"
    argv = ["-q", "transform", "--model", str(model), "--manifest", str(manifest)]
    assert main([*argv, "--bids-out", str(deriv)]) == 0
    assert main([*argv, "--out", str(work / "plain")]) == 0
    return manifest, model, deriv, work


def test_round_trip_outputs_named_for_their_sources(round_trip):
    manifest, model, deriv, work = round_trip
    man = read_manifest(manifest)
    outputs = sorted(_rel(p, deriv) for p in deriv.rglob("*.nii.gz"))
    assert outputs == sorted(_harmonized_rel(p) for p in man.paths)
    # same voxels as transform --out (the BIDS names change nothing else)
    for src in man.paths:
        bids_img = nib.load(deriv / _harmonized_rel(src))
        plain = nib.load(work / "plain" / src.name.replace(".nii.gz", "_harmonized.nii.gz"))
        np.testing.assert_array_equal(bids_img.get_fdata(), plain.get_fdata())


def _harmonized_rel(src: Path) -> str:
    ents, _, _ = parse_name(src.name)
    return harmonized_path(ents).as_posix()


def test_round_trip_pybids_indexes_a_derivative_traceable_to_its_sources(round_trip, raw):
    manifest, model, deriv, _ = round_trip
    layout = bids.BIDSLayout(str(raw), validate=False, derivatives=True)
    pipeline = layout.derivatives.get_pipeline("harmonix")
    files = pipeline.get(desc="harmonized", suffix="T1w", extension=".nii.gz")
    man = read_manifest(manifest)
    assert len(files) == len(man) == 2 * N_SITES + 3
    description = json.loads((deriv / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "harmonix"
    assert description["GeneratedBy"][0]["Version"]
    sites = dict(zip((p.resolve() for p in man.paths), man.sites))
    fitted = load_model(model)
    for f in files:
        meta = f.get_metadata()
        (source,) = _sources_resolve(deriv, meta["Sources"])
        assert source in sites  # every output leads back to its source image
        assert parse_name(source.name)[0] == {
            k: v for k, v in f.get_entities().items() if k in ("subject", "session", "run")
        }
        record = meta["Harmonization"]
        assert record["ModelSHA256"] == _sha256(model)
        assert record["Method"] == "ComBatHarmonizer" and record["Site"] == sites[source]
        assert record["Parameters"] == {k: v for k, v in fitted.get_params().items()}
        assert meta["SkullStripped"] is True


def test_transform_to_bids_python_equals_cli_and_resumes(round_trip, tmp_path):
    manifest, model, deriv, _ = round_trip
    out = tmp_path / "deriv"
    written = transform_manifest_to_bids(
        load_model(model), manifest, out, model_path=model, verbose=False
    )
    for path in written:
        rel = _rel(path, out)
        np.testing.assert_array_equal(
            nib.load(path).get_fdata(), nib.load(deriv / rel).get_fdata()
        )
        left = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        right = json.loads((deriv / rel.replace(".nii.gz", ".json")).read_text())
        assert left["Harmonization"] == right["Harmonization"]
    # both datasets link the raw dataset, each by its own relative path
    assert _sources_resolve(out, left["Sources"]) == _sources_resolve(deriv, right["Sources"])
    # an interrupted CLI run (an image gone, its sidecar left) is finished by --skip-existing
    written[4].unlink()
    stamp = written[0].stat().st_mtime_ns
    argv = ["-q", "transform", "--model", str(model), "--manifest", str(manifest)]
    assert main([*argv, "--bids-out", str(out)]) == 1  # the others exist
    assert main([*argv, "--bids-out", str(out), "--skip-existing"]) == 0
    assert written[0].stat().st_mtime_ns == stamp
    rel = _rel(written[4], out)
    np.testing.assert_array_equal(
        nib.load(written[4]).get_fdata(), nib.load(deriv / rel).get_fdata()
    )


def test_transform_manifest_to_bids_equals_transform_to_bids_with_the_manifest(
    round_trip, tmp_path
):
    """The manifest's entities, sites, ages and the covariates the model was fitted with."""
    manifest, _, _, _ = round_trip
    man = read_manifest(manifest)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table["path"] = [str(p) for p in man.paths]  # absolute: the copy is in another folder
    table["tiv"] = np.linspace(1.2, 1.6, len(man))
    with_tiv = tmp_path / "manifest.csv"
    table.to_csv(with_tiv, index=False)
    model = ComBatHarmonizer().fit(
        [str(p) for p in man.paths], man.sites, man.ages, covariates=table[["tiv"]]
    )
    short = transform_manifest_to_bids(model, with_tiv, tmp_path / "short", verbose=False)
    long = transform_to_bids(
        model,
        man.paths,
        tmp_path / "long",
        entities=manifest_entities(with_tiv),
        sites=man.sites,
        ages=man.ages,
        covariates=table[["tiv"]],
        verbose=False,
    )
    assert [_rel(p, tmp_path / "short") for p in short] == [
        _rel(p, tmp_path / "long") for p in long
    ]
    for left, right in zip(short, long):
        np.testing.assert_array_equal(nib.load(left).get_fdata(), nib.load(right).get_fdata())
        sidecar = left.name.replace(".nii.gz", ".json")
        assert (
            json.loads(left.with_name(sidecar).read_text())["Harmonization"]
            == json.loads(right.with_name(sidecar).read_text())["Harmonization"]
        )


def test_description_is_merged_not_replaced(tmp_path, raw):
    deriv = tmp_path / "d"
    first = DerivativeDataset(deriv)
    first.source(raw / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    first.write_description()
    text = json.loads((deriv / "dataset_description.json").read_text())
    text["Name"] = "mine"
    (deriv / "dataset_description.json").write_text(json.dumps(text))
    again = DerivativeDataset(deriv)
    assert again.source(raw / "participants.tsv") == "bids:raw:participants.tsv"
    assert again.source(deriv / "x.nii.gz") == "bids::x.nii.gz"
    again.write_description()
    merged = json.loads((deriv / "dataset_description.json").read_text())
    assert merged["Name"] == "mine" and list(merged["DatasetLinks"]) == ["raw"]
    assert len(merged["GeneratedBy"]) == 1
    with pytest.raises(ValueError, match="raw BIDS dataset"):
        DerivativeDataset(raw)


# -- preprocess --bids-out -> transform --bids-out -> to-native --bids-out ---------------------
class IdentityChain:
    """A stand-in for T1Preprocessor: the image itself, an identity transform, mask > 0."""

    def __init__(self, **kwargs):
        self.n_threads = None

    def run(self, img):
        from harmonix.preprocessing import PreprocessResult, TemplateTransform

        img = nib.load(img)
        data = img.get_fdata(dtype=np.float32)
        mask = nib.Nifti1Image((data > 0).astype(np.uint8), img.affine)
        eye = np.eye(4)
        transform = TemplateTransform(eye, data.shape, img.affine, data.shape, img.affine, 2.0)
        qc = {"mask_volume_ml": 1200.0, "template_ncc": 0.9, "template_dice": 0.95, "flags": []}
        return PreprocessResult(img, mask, mask, transform, qc, {"all": 0.0})


@pytest.fixture
def identity_chain(monkeypatch):
    import harmonix.preprocessing as prep
    import harmonix.preprocessing._optional as optional

    monkeypatch.setattr(prep, "T1Preprocessor", IdentityChain)
    monkeypatch.setattr(optional, "require", lambda module, purpose: None)


class FailingChain(IdentityChain):
    """The stand-in chain, with sub-02's scan beyond a hard QC limit (as noise would be)."""

    def run(self, img):
        from harmonix.preprocessing.qc import QCFailedError, failures

        result = super().run(img)
        if "sub-02" in Path(img).name:
            numbers = {**result.qc, "template_ncc": 0.1}
            raise QCFailedError(f"QC failed ({', '.join(failures(numbers))})", numbers)
        return result


def test_preprocess_bids_out_leaves_qc_failures_out(raw, monkeypatch, tmp_path):
    import harmonix.preprocessing as prep
    import harmonix.preprocessing._optional as optional

    monkeypatch.setattr(prep, "T1Preprocessor", FailingChain)
    monkeypatch.setattr(optional, "require", lambda module, purpose: None)
    manifest = tmp_path / "raw.csv"
    assert main(["-q", "bids-manifest", str(raw), "--out", str(manifest)]) == 0
    deriv = tmp_path / "derivatives" / "harmonix"
    argv = ["-q", "preprocess", "--manifest", str(manifest), "--bids-out", str(deriv)]
    assert main([*argv, "--no-qc-png"]) == 1  # a scan failed
    written = sorted(_rel(p, deriv) for p in deriv.glob("sub-*/**/*") if p.is_file())
    assert written and not [p for p in written if "sub-02" in p]
    assert not (deriv / "sub-02").exists()
    prep_rows = pd.read_csv(deriv / "desc-preproc_manifest.csv", dtype=str)
    assert len(prep_rows) == len(pd.read_csv(manifest)) - 1
    assert not prep_rows["path"].str.contains("sub-02").any()
    qc = pd.read_csv(deriv / "desc-preproc_qc.tsv", sep="\t")
    failed = qc[qc["status"] == "failed"]
    assert failed["filename"].str.contains("sub-02_").tolist() == [True]
    assert failed["error"].str.startswith("QC failed (template_ncc<0.3").all()
    assert failed["template_ncc"].tolist() == [0.1]
    # a rerun does not write it either, and still exits 1
    assert main([*argv, "--no-qc-png"]) == 1
    assert not (deriv / "sub-02").exists()


def test_preprocess_transform_to_native_chain_traces_back_to_raw(
    raw, identity_chain, tmp_path, capsys
):
    manifest = tmp_path / "raw.csv"
    assert (
        main(["-q", "bids-manifest", str(raw), "--out", str(manifest), "--covariates", "age"]) == 0
    )
    deriv = tmp_path / "derivatives" / "harmonix"
    argv = ["-q", "preprocess", "--manifest", str(manifest), "--bids-out", str(deriv)]
    assert main([*argv, "--no-qc-png"]) == 0
    prep_manifest = deriv / "desc-preproc_manifest.csv"
    prep = pd.read_csv(prep_manifest, dtype=str)
    raw_rows = pd.read_csv(manifest, dtype=str)
    assert (prep["space"] == SPACE).all() and (prep["desc"] == "preproc").all()
    pd.testing.assert_frame_equal(
        prep[["site", "subject", "age"]], raw_rows[["site", "subject", "age"]]
    )
    qc = pd.read_csv(deriv / "desc-preproc_qc.tsv", sep="\t")
    assert qc["status"].tolist() == ["done"] * len(prep)
    assert qc["source"].str.startswith("bids:raw:sub-").all()
    first = deriv / prep["path"][0]
    assert first.name == f"sub-00_ses-1_space-{SPACE}_desc-preproc_T1w.nii.gz"
    sidecar = json.loads(first.with_name(first.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["SkullStripped"] is True and "transform" in sidecar and "qc" in sidecar
    (raw_source,) = _sources_resolve(deriv, sidecar["Sources"])
    assert raw_source == (raw / "sub-00/ses-1/anat/sub-00_ses-1_T1w.nii.gz").resolve()
    mask = deriv / "sub-00/ses-1/anat/sub-00_ses-1_desc-brain_mask.nii.gz"
    assert json.loads(mask.with_suffix("").with_suffix(".json").read_text())["Type"] == "Brain"
    # resuming: nothing is redone
    stamp = first.stat().st_mtime_ns
    assert main([*argv, "--no-qc-png"]) == 0
    assert first.stat().st_mtime_ns == stamp
    assert pd.read_csv(deriv / "desc-preproc_qc.tsv", sep="\t")["status"].eq("skipped").all()

    model = tmp_path / "hm.npz"
    assert (
        main(
            ["-q", "fit", "--method", "hm", "--manifest", str(prep_manifest), "--out", str(model)]
        )
        == 0
    )
    argv = ["-q", "transform", "--model", str(model), "--manifest", str(prep_manifest)]
    assert main([*argv, "--bids-out", str(deriv)]) == 0
    harmonized = deriv / f"sub-00/ses-1/anat/sub-00_ses-1_space-{SPACE}_desc-harmonized_T1w.nii.gz"
    meta = json.loads(
        harmonized.with_name(harmonized.name.replace(".nii.gz", ".json")).read_text()
    )
    assert meta["Sources"] == [f"bids::{_rel(first, deriv)}"]  # same dataset
    assert _sources_resolve(deriv, meta["Sources"]) == [first.resolve()]

    argv = [
        "-q",
        "to-native",
        "--input",
        str(harmonized),
        "--transform",
        str(first.with_name(first.name.replace(".nii.gz", ".json"))),
        "--mask",
        str(mask),
    ]
    assert main([*argv, "--bids-out", str(deriv), "--rescale"]) == 0
    native = deriv / "sub-00/ses-1/anat/sub-00_ses-1_desc-harmonized_T1w.nii.gz"
    assert capsys.readouterr().out.strip().endswith(str(native))
    expected = nib.load(harmonized).get_fdata() / 2.0  # identity transform, scale 2
    np.testing.assert_allclose(nib.load(native).get_fdata(), expected, rtol=1e-6)
    native_meta = json.loads(native.with_name(native.name.replace(".nii.gz", ".json")).read_text())
    first_json = first.with_name(first.name.replace(".nii.gz", ".json"))
    sources = _sources_resolve(deriv, native_meta["Sources"])
    assert sources == [p.resolve() for p in (harmonized, first_json, mask)]
    assert main([*argv, "--bids-out", str(deriv)]) == 1  # exists
    # every harmonized image at once, with the preprocessing files found by name
    batch = ["-q", "to-native", "--bids-out", str(deriv), "--rescale"]
    assert main(batch) == 1 and "exists" in capsys.readouterr().err  # nothing replaced
    assert main([*batch, "--overwrite"]) == 0
    natives = capsys.readouterr().out.split()
    assert len(natives) == len(prep) and str(native) in natives
    np.testing.assert_allclose(nib.load(native).get_fdata(), expected, rtol=1e-6)
    for path in map(Path, natives):
        meta = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        harmonized_src, transform_src, _ = _sources_resolve(deriv, meta["Sources"])
        prep_src = json.loads(transform_src.read_text())["Sources"]
        assert harmonized_src.name.replace("harmonized", "preproc") == transform_src.name.replace(
            ".json", ".nii.gz"
        )
        assert _sources_resolve(deriv, prep_src)[0].name == path.name.replace(
            "_desc-harmonized", ""
        )  # native image -> harmonized -> preprocessed -> raw scan of the same name
    layout = bids.BIDSLayout(str(deriv), validate=False, is_derivative=True)
    assert len(layout.get(desc="harmonized", space=SPACE, extension=".nii.gz")) == len(prep)
    assert len(layout.get(desc="preproc", suffix="T1w", extension=".nii.gz")) == len(prep)
    assert len(layout.get(desc="brain", suffix="mask", extension=".nii.gz")) == len(prep)


def _copy_tree(src: Path, dst: Path) -> None:
    for path in src.rglob("*"):
        if path.is_file() and "derivatives" not in path.parts:
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())


def test_array_parameters_are_recorded_by_shape_and_hash(raw, synthetic, tmp_path):
    from harmonix import HistogramMatchingHarmonizer

    paths = sorted(raw.glob("sub-00/ses-*/anat/*_T1w.nii.gz"))
    mask = synthetic.mask
    model = HistogramMatchingHarmonizer(mask=mask).fit([str(p) for p in paths], ["a", "b", "c"])
    (out,) = transform_to_bids(model, paths[:1], tmp_path / "d", verbose=False)
    meta = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
    recorded = meta["Harmonization"]["Parameters"]["mask"]
    assert recorded["shape"] == list(mask.shape)
    assert recorded["sha256"] == hashlib.sha256(np.ascontiguousarray(mask).tobytes()).hexdigest()
    assert "Model" not in meta["Harmonization"]  # no file given: no file name, no hash
    assert out.name == "sub-00_ses-1_desc-harmonized_T1w.nii.gz"  # entities from the name


def test_symlinked_images_keep_their_dataset_names(raw, tmp_path):
    """DataLad datasets hold links into .git/annex: names and Sources use the links."""
    copy = tmp_path / "ds"
    _copy_tree(raw, copy)
    image = copy / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    annexed = copy / ".git" / "annex" / "objects" / "Xy" / "MD5E-s1--0123.nii.gz"
    annexed.parent.mkdir(parents=True)
    image.rename(annexed)
    image.symlink_to(Path("../../.git/annex/objects/Xy") / annexed.name)
    table = bids_manifest(copy)
    assert str(image) in set(table["path"])
    (out,) = transform_to_bids(
        _identity_model(table), [image], copy / "derivatives" / "harmonix", verbose=False
    )
    meta = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
    assert meta["Sources"] == ["bids:raw:sub-02/anat/sub-02_T1w.nii.gz"]


def _identity_model(table: pd.DataFrame):
    from harmonix import IdentityHarmonizer

    return IdentityHarmonizer().fit(list(table["path"]), list(table["site"]))
