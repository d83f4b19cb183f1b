"""A fit killed with SIGKILL resumes from its last checkpoint: step, optimizer and schedule."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from tests.conftest import MakeShards
from tests.fit_support import REPO, add_callback, fit_command

KILL_AFTER_STEP = 4
EVERY_N_STEPS = 2
EXTRA_STEPS = 3


class ResumeProbe(Callback):
    """Saves the training state a fit starts from (after any restore) and the step it ends at."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = {
            "global_step": trainer.global_step,
            "optimizer": trainer.optimizers[0].state_dict(),
            "lr_scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        }
        torch.save(start, self.out_dir / "start.pt")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        (self.out_dir / "end_step.txt").write_text(str(trainer.global_step))


def wait_for_step_checkpoint(process: subprocess.Popen, ckpts: Path, step: int) -> None:
    """Block until a periodic checkpoint of ``step`` or later exists (its name holds the step)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, "the fit ended before it could be killed"
        names = (path.name for path in ckpts.glob("*.ckpt"))
        saved_steps = [int(m[1]) for name in names if (m := re.search(r"step=(\d+)", name))]
        if saved_steps and max(saved_steps) >= step:
            return
        time.sleep(0.2)
    raise TimeoutError(f"no checkpoint of step >= {step} in {ckpts} after 180 s")


def wait_for_epoch_in_last(process: subprocess.Popen, last: Path, epoch: int) -> dict[str, Any]:
    """Block until ``last`` holds the state at the end of epoch ``epoch`` (0-based) or later."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, "the fit ended before it could be killed"
        if last.is_file():
            saved = torch.load(last, weights_only=True, map_location="cpu")
            if saved["epoch"] >= epoch:
                return saved
        time.sleep(0.5)
    raise TimeoutError(f"{last} never reached epoch {epoch} in 300 s")


def assert_same_optimizer_state(loaded: dict[str, Any], saved: dict[str, Any]) -> None:
    assert loaded["param_groups"] == saved["param_groups"]
    assert loaded["state"].keys() == saved["state"].keys()
    for index, state in saved["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(loaded["state"][index][name], state[name]), (index, name)


def test_sigkilled_fit_resumes_step_optimizer_and_schedule(
    tmp_path: Path, make_shards: MakeShards
) -> None:
    """Kill a real fit mid-run, then rerun the same command with ``--ckpt_path last``.

    Lightning writes a checkpoint to a temp file and renames it into place, which is atomic only
    on one filesystem: TMPDIR is put next to the checkpoints so a kill mid-write leaves the
    previous ``last.ckpt`` whole. The checkpoint is read after the kill, so it cannot change
    while it is read.
    """
    make_shards(tmp_path / "shards" / "train", num_samples=24, seed=0)
    make_shards(tmp_path / "shards" / "val", num_samples=8, seed=1)
    ckpts, probe, temp = tmp_path / "ckpts", tmp_path / "probe", tmp_path / "tmp"
    probe.mkdir()
    temp.mkdir()
    command = fit_command(
        tmp_path / "shards", tmp_path / "runs",
        "--trainer.max_epochs", "1000",  # far longer than the test waits
        add_callback(
            "lightning.pytorch.callbacks.ModelCheckpoint",
            dirpath=str(ckpts), every_n_train_steps=EVERY_N_STEPS, save_last=True,
        ),
    )
    env = {**os.environ, "TMPDIR": str(temp)}
    with subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.DEVNULL) as killed:
        try:
            # last.ckpt is copied after the step's own file: wait one period more, so the
            # last.ckpt of KILL_AFTER_STEP is surely whole when the kill lands
            wait_for_step_checkpoint(killed, ckpts, KILL_AFTER_STEP + EVERY_N_STEPS)
        finally:
            killed.send_signal(signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    saved = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert saved["global_step"] >= KILL_AFTER_STEP

    target = saved["global_step"] + EXTRA_STEPS
    subprocess.run(
        [
            *command,
            "--ckpt_path", "last",
            "--trainer.max_steps", str(target),
            add_callback("tests.test_resume.ResumeProbe", out_dir=str(probe)),
        ],
        cwd=REPO, env=env, check=True, timeout=300, stderr=subprocess.DEVNULL,
    )
    start = torch.load(probe / "start.pt", weights_only=True)
    assert start["global_step"] == saved["global_step"]  # not a fresh fit from step 0
    assert_same_optimizer_state(start["optimizer"], saved["optimizer_states"][0])
    (saved_schedule,) = saved["lr_schedulers"]
    assert start["lr_scheduler"] == saved_schedule
    assert start["lr_scheduler"]["last_epoch"] == saved["global_step"]
    assert int((probe / "end_step.txt").read_text()) == target


def test_last_ckpt_follows_every_epoch_when_the_monitored_metric_never_improves(
    tmp_path: Path, make_shards: MakeShards
) -> None:
    """With lr 0 the monitored gain never improves after epoch 0, so ModelCheckpoint's own
    ``save_last`` would leave ``last.ckpt`` at epoch 0; the preset's latest-state callback
    must keep it at the newest finished epoch, and a resume must start there."""
    make_shards(tmp_path / "shards" / "train", num_samples=16, seed=0)  # 4 batches per epoch
    make_shards(tmp_path / "shards" / "val", num_samples=4, seed=1)
    runs = tmp_path / "runs"
    command = fit_command(
        tmp_path / "shards", runs, "--trainer.max_epochs", "1000", "--model.lr", "0.0"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # atomic rename next to the checkpoints
    (run,) = [runs / "demo" / "version_0"]
    with subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.DEVNULL) as killed:
        try:
            wait_for_epoch_in_last(killed, run / "checkpoints" / "last.ckpt", epoch=3)
        finally:
            killed.send_signal(signal.SIGKILL)
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    best = sorted(path.name for path in (run / "checkpoints").glob("best-*.ckpt"))
    assert best == ["best-epoch000.ckpt"]  # the metric never improved after epoch 0
    assert saved["epoch"] >= 3 and saved["global_step"] == 4 * (saved["epoch"] + 1)

    probe = tmp_path / "probe"
    probe.mkdir()
    subprocess.run(
        [
            *command,
            "--ckpt_path", "last",
            "--trainer.max_steps", str(saved["global_step"] + 1),
            add_callback("tests.test_resume.ResumeProbe", out_dir=str(probe)),
        ],
        cwd=REPO, env=env, check=True, timeout=300, stderr=subprocess.DEVNULL,
    )
    start = torch.load(probe / "start.pt", weights_only=True)
    assert start["global_step"] == saved["global_step"]  # the last finished epoch, not epoch 0
