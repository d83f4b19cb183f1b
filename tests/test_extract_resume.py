"""`vtsel extract` as a real command: killed with SIGKILL mid-run and rerun, and run by two CPU
processes (DDP over gloo) against one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.extract_support import assert_each_once, features_by_key, tars, write_photos
from vtsel.data import FeatureShardDataModule
from vtsel.extract import extract

VTSEL = str(Path(sys.executable).with_name("vtsel"))
NUM_IMAGES, UNIT_SIZE = 24, 2  # 12 units


def _command(images: Path, out: Path, *extra: str) -> list[str]:
    return [VTSEL, "extract", "--images", str(images), "--out", str(out),
            "--unit_size", str(UNIT_SIZE), "--batch_size", "2", "--shard_maxcount", "1",
            "--val_fraction", "0.25", *extra]


def _committed(out: Path) -> int:
    return len(list((out / "units").glob("unit-*.json")))


def _kill_after_some_units(command: list[str], out: Path, log: Path) -> int:
    """Start ``command``, SIGKILL its whole process group (DataLoader workers too) once a unit
    is committed, and return how many units were committed by then."""
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + 300
    while _committed(out) < 1:
        assert process.poll() is None, f"extract ended before the kill:\n{log.read_text()}"
        assert time.monotonic() < deadline, "no unit committed in 300 s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return _committed(out)


def test_sigkill_mid_run_then_rerun_holds_every_image_once(tmp_path: Path) -> None:
    keys = set(write_photos(tmp_path / "images", NUM_IMAGES))
    out = tmp_path / "shards"
    command = _command(tmp_path / "images", out, "--num_workers", "1")
    committed = _kill_after_some_units(command, out, tmp_path / "first.log")
    assert 0 < committed < NUM_IMAGES // UNIT_SIZE
    # What the kill left is never readable as a finished extraction ...
    assert not (out / "train" / "sizes.json").exists()
    datamodule = FeatureShardDataModule(train_shards=str(out / "train"), feature_dim=384,
                                        grid_size=(14, 14), image_size=112, num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"sizes\.json"):
        datamodule.setup("fit")
    # ... and every tar in a split folder is whole (unfinished ones live in .partial/).
    for tar in tars(out, "train") + tars(out, "val"):
        with tarfile.open(tar) as opened:
            assert opened.getmembers()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming: {committed} of 12 work unit(s) already done" in rerun.stdout
    assert_each_once(out, keys)
    assert _committed(out) == NUM_IMAGES // UNIT_SIZE
    assert not (out / ".partial").exists()


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while listed
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux's")
def test_the_workers_of_a_sigkilled_extract_die_with_it(tmp_path: Path) -> None:
    write_photos(tmp_path / "images", NUM_IMAGES)
    out = tmp_path / "shards"
    with open(tmp_path / "run.log", "w") as log:
        process = subprocess.Popen(_command(tmp_path / "images", out, "--num_workers", "1"),
                                   stdout=log, stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while _committed(out) < 1:
            assert process.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, "no unit committed in 300 s"
            time.sleep(0.02)
        workers = _children(process.pid)
        assert workers, "the extraction runs no worker process"
        process.send_signal(signal.SIGKILL)  # the parent only, as `kill -9 <pid>` does
        process.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their parent"
    finally:  # never leave a process behind, whatever failed
        process.kill()
        for pid in [*workers, *_children(process.pid)]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_two_cpu_processes_write_the_samples_one_process_writes(tmp_path: Path) -> None:
    keys = set(write_photos(tmp_path / "images", 8))
    two = subprocess.run(
        _command(tmp_path / "images", tmp_path / "two", "--num_workers", "0",
                 "--accelerator", "cpu", "--devices", "2"),
        capture_output=True, text=True, timeout=900,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "MEMBER: 2/2" in two.stderr  # Lightning started a second rank
    extract(str(tmp_path / "images"), str(tmp_path / "one"), unit_size=UNIT_SIZE, batch_size=2,
            shard_maxcount=1, val_fraction=0.25, num_workers=0)
    for out in ("one", "two"):
        assert_each_once(tmp_path / out, keys)
    for split in ("train", "val"):
        assert (tmp_path / "one" / split / "sizes.json").read_text() == (
            tmp_path / "two" / split / "sizes.json"
        ).read_text()
    one, two_feats = features_by_key(tmp_path / "one"), features_by_key(tmp_path / "two")
    assert one.keys() == two_feats.keys()
    for key, feats in one.items():
        np.testing.assert_allclose(two_feats[key], feats, atol=2e-3, rtol=2e-3)
