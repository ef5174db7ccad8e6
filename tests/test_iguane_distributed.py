"""Data-parallel IGUANe training: 2 processes under torchrun (gloo) vs one process.

One torchrun job (tests/ddp_worker.py, float64 networks) trains 2 steps, resumes to 4 and
tries processes given different data; the tests compare what its processes wrote with
single-process trainings run here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from harmonix.iguane.training import loop as T
from harmonix.iguane.training.checkpoints import CHECKPOINT_NAME, load_checkpoint
from harmonix.iguane.training.config import TrainConfig
from harmonix.iguane.training.distributed import launched_by_torchrun, setup_distributed

TESTS = Path(__file__).parent
#: float64 runs agree to rounding (measured: 4e-14 after 4 steps); other trainings differ
#: by about 1e-3 (batch 1 instead of 2).
TOLERANCE = 1e-9

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()) or sys.platform == "win32",
    reason="needs torch.distributed with gloo",
)


def _torchrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    _torchrun(str(TESTS / "ddp_worker.py"), str(out))
    return out


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(before)
    torch.set_num_threads(threads)


def _single(batch_size: int, **kwargs) -> T.TrainResult:
    import ddp_worker as W

    vols, sites, ages = W.volumes()
    config = TrainConfig(**{**W.CONFIG, "batch_size": batch_size})
    return T.train(
        vols, sites, W.REFERENCE, ages, config, random_state=W.SEED, device="cpu", **kwargs
    )


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _weight_diff(result: T.TrainResult, saved: dict) -> float:
    state = result.generator.state_dict()
    return max(float((state[k] - v).abs().max()) for k, v in saved["state"].items())


def _assert_histories_close(a: dict, b: dict) -> None:
    for key in ("loss_discriminator", "loss_generator", "loss_cycle", "val_score"):
        np.testing.assert_allclose(a[key], b[key], rtol=TOLERANCE, atol=TOLERANCE)
    assert a["val_step"] == b["val_step"] and a["best_step"] == b["best_step"]
    assert a["val_baseline"] == pytest.approx(b["val_baseline"], rel=TOLERANCE)


def test_processes_hold_identical_replicas(ddp_out):
    for step in (2, 4):
        r0, r1 = (_load(ddp_out / f"rank{r}_step{step}.pt") for r in (0, 1))
        for k, v in r0["state"].items():
            assert torch.equal(v, r1["state"][k]), k
        assert r0["history"] == r1["history"]
        assert len(r0["history"]["loss_generator"]) == step


def test_two_processes_equal_one_process_with_twice_the_batch(ddp_out, float64):
    for step in (2, 4):  # step 4 went through a distributed resume
        saved = _load(ddp_out / f"rank0_step{step}.pt")
        result = _single(batch_size=2, max_steps=step)
        assert _weight_diff(result, saved) <= TOLERANCE
        _assert_histories_close(result.history, saved["history"])
    # the comparison can tell trainings apart: batch 1 in one process is another training
    assert _weight_diff(_single(batch_size=1, max_steps=4), saved) > 1e-5


def test_distributed_checkpoint_resumes_in_one_process(ddp_out, float64, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ddp_out / "ckpt_step2", ckpt)
    assert load_checkpoint(ckpt / CHECKPOINT_NAME)["trainer"]["step"] == 2
    with pytest.raises(ValueError, match="global batch_size=2 .now 1"):
        _single(batch_size=1, checkpoint_dir=ckpt, resume=True)
    result = _single(batch_size=2, checkpoint_dir=ckpt, resume=True)
    saved = _load(ddp_out / "rank0_step4.pt")
    assert result.step == 4
    assert _weight_diff(result, saved) <= TOLERANCE
    _assert_histories_close(result.history, saved["history"])


def test_only_process_zero_writes_one_checkpoint(ddp_out):
    assert sorted(p.name for p in (ddp_out / "ckpt").iterdir()) == [CHECKPOINT_NAME]
    state = load_checkpoint(ddp_out / "ckpt" / CHECKPOINT_NAME)
    assert state["trainer"]["step"] == 4


def test_processes_given_different_data_fail_together(ddp_out):
    for rank in (0, 1):
        message = (ddp_out / f"rank{rank}_mismatch.txt").read_text()
        assert "got different data or settings (ranks [1] differ from rank 0)" in message


def test_cli_fit_under_torchrun_saves_one_model(tmp_path):
    from _helpers import make_tiny_images

    from harmonix import IGUANeHarmonizer
    from harmonix.io import save_img

    imgs, sites, ages, _ = make_tiny_images(shape=(16, 16, 16), n_subjects=3, n_sites=2)
    rows = ["path,site,age"]
    for i, (img, site, age) in enumerate(zip(imgs, sites, ages)):
        path = tmp_path / f"img{i}.nii.gz"
        save_img(img, path, affine=np.eye(4))
        rows.append(f"{path},{site},{age}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    params = [
        "n_epochs=1",
        "steps_per_epoch=2",
        "base_width=2",
        "val_fraction=0.0",
        "reference_site='site0'",
        "random_state=0",
    ]
    proc = _torchrun(
        "-m",
        "harmonix",
        "--quiet",
        "fit",
        "--method",
        "iguane",
        "--manifest",
        str(tmp_path / "manifest.csv"),
        "--out",
        str(tmp_path / "model.pt"),
        *[f"--param={p}" for p in params],
        cwd=tmp_path,
    )
    assert proc.stdout.split() == [str(tmp_path / "model.pt")]  # printed by process 0 only
    assert sorted(p.name for p in tmp_path.glob("*.pt*")) == ["model.pt"]
    model = IGUANeHarmonizer.load(tmp_path / "model.pt")
    assert model.batch_size == 1 and len(model.history_["loss_generator"]) == 2


def test_distributed_true_needs_several_processes(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_torchrun()
    cpu = torch.device("cpu")
    assert setup_distributed(None, cpu) == (None, cpu)
    assert setup_distributed(False, cpu) == (None, cpu)
    with pytest.raises(ValueError, match="torchrun"):
        setup_distributed(True, cpu)
    with pytest.raises(ValueError, match="distributed must be None, True or False"):
        _single(batch_size=1, distributed="yes")
    monkeypatch.setenv("WORLD_SIZE", "2")  # an incomplete launch environment is not one
    assert not launched_by_torchrun()
