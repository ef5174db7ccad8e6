"""Killed training (SIGKILL) resumes from the last checkpoint, losing at most one interval."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from harmonix import IGUANeHarmonizer
from harmonix.iguane.training.checkpoints import CHECKPOINT_NAME, load_checkpoint

N_STEPS = 16
SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from _helpers import make_tiny_images
    from harmonix import IGUANeHarmonizer
    imgs, sites, ages, _ = make_tiny_images(shape=(16, 16, 16))
    IGUANeHarmonizer(n_epochs=1, steps_per_epoch={n}, base_width=2, val_fraction=0.0,
                     checkpoint_dir={ckpt!r}, checkpoint_every=2, random_state=0,
                     voxel_size=1.0).fit(imgs, sites, ages)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_then_resume(tmp_path):
    from _helpers import make_tiny_images

    ckpt_dir = tmp_path / "ckpt"
    script = SCRIPT.format(tests=os.path.dirname(__file__), n=N_STEPS, ckpt=str(ckpt_dir))
    proc = subprocess.Popen([sys.executable, "-c", script])
    ckpt = ckpt_dir / CHECKPOINT_NAME
    # wait for the step-4 checkpoint however slow the machine is (the cap only stops a
    # hung child): a deadline of seconds made this test fail on busy machines
    deadline = time.monotonic() + 1800
    try:
        while proc.poll() is None:
            if ckpt.exists() and load_checkpoint(ckpt)["trainer"]["step"] >= 4:
                break
            assert time.monotonic() < deadline, "no checkpoint of step 4 after 30 minutes"
            time.sleep(0.05)
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()  # no-op once killed; stops the child if an assertion failed
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # the last good checkpoint is intact (loads) and no temporary file replaced it
    saved_step = load_checkpoint(ckpt)["trainer"]["step"]
    assert 4 <= saved_step < N_STEPS

    imgs, sites, ages, _ = make_tiny_images(shape=(16, 16, 16))
    est = IGUANeHarmonizer(
        n_epochs=1,
        steps_per_epoch=N_STEPS,
        base_width=2,
        val_fraction=0.0,
        checkpoint_dir=ckpt_dir,
        checkpoint_every=2,
        resume=True,
        random_state=0,
        voxel_size=1.0,
    ).fit(imgs, sites, ages)
    assert load_checkpoint(ckpt)["trainer"]["step"] == N_STEPS
    # the resumed run continued from the checkpoint: the loss history covers every step once
    assert len(est.history_["loss_generator"]) == N_STEPS
    out = est.transform(imgs)
    assert np.isfinite(out).all()
