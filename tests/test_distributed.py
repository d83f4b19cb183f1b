"""Multi-process and mixed-precision fits through the real `vtsel` CLI on real tiny shards."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import MakeShards
from tests.fit_support import LOSS_TAGS, REPO, TWINS, add_callback, fit, fit_command

TWIN_CONFIGS = {config.stem: config for config in TWINS}
BATCH_SIZE = 4  # the twins' data.batch_size
TRAIN_SAMPLES = 30  # 8 shards of 4, the last of 2: uneven on purpose


@pytest.fixture
def uneven_shards(tmp_path: Path, make_shards: MakeShards) -> Path:
    make_shards(tmp_path / "shards" / "train", num_samples=TRAIN_SAMPLES, seed=0)
    make_shards(tmp_path / "shards" / "val", num_samples=8, seed=1)  # one shard per rank
    return tmp_path / "shards"


def weights_sha256(module: L.LightningModule) -> str:
    """One digest of every tensor in the state dict, so ranks compare weights through a file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class KeyRecorder(Callback):
    """Writes this rank's training batches (their keys) and final weights' digest to a file.

    DDP ranks are separate processes, so what each one saw can only reach the test on disk.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.batches: list[list[str]] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batches.append(list(batch["key"]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {
            "batches": self.batches,
            "global_step": trainer.global_step,
            "weights_sha256": weights_sha256(pl_module),
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
@pytest.mark.parametrize(
    "shuffle_buffer",
    ["1", "16"],
    ids=["no-shuffle-buffer", "twin-shuffle-buffer"],
)
def test_ddp_fit_trains_ranks_in_lockstep_on_disjoint_samples(
    uneven_shards: Path, tmp_path: Path, shuffle_buffer: str
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    subprocess.run(
        fit_command(
            uneven_shards, tmp_path / "runs",
            "--trainer.strategy", "ddp",  # Lightning's own launcher re-runs this command
            "--trainer.devices", "2",
            "--trainer.accelerator", "cpu",
            "--trainer.max_epochs", "1",  # ranks' shares are disjoint within a pass of shards
            "--data.shuffle_buffer", shuffle_buffer,
            add_callback("tests.test_distributed.KeyRecorder", out_dir=str(records)),
        ),
        cwd=REPO, check=True, timeout=300,
    )
    rank0, rank1 = (json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1))
    batches_per_rank = TRAIN_SAMPLES // (2 * BATCH_SIZE)
    assert len(rank0["batches"]) == len(rank1["batches"]) == batches_per_rank
    assert rank0["global_step"] == rank1["global_step"] == batches_per_rank
    keys0 = [key for batch in rank0["batches"] for key in batch]
    keys1 = [key for batch in rank1["batches"] for key in batch]
    assert len(set(keys0)) == len(keys0) == len(set(keys1)) == len(keys1)
    assert not set(keys0) & set(keys1), "both ranks trained on the same samples"
    assert rank0["weights_sha256"] == rank1["weights_sha256"], "DDP replicas diverged"


def test_bf16_mixed_fit_has_finite_losses_and_saves_float32_weights(
    uneven_shards: Path, tmp_path: Path
) -> None:
    """The GPU presets train in bf16-mixed: autocast must not overflow a loss term, and the
    checkpoint must hold the float32 master weights, not bf16 copies."""
    config = TWIN_CONFIGS["llava_next"]
    assert "bf16-mixed" in config.read_text()  # the twin test_cli already fits end to end
    run = fit(config, uneven_shards, tmp_path / "runs", "--trainer.max_epochs", "1")
    (event_file,) = run.glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    for tag in sorted(LOSS_TAGS | {"val/loss"}):
        values = [event.value for event in events.Scalars(tag)]
        assert values and all(math.isfinite(v) for v in values), (tag, values)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    weights = checkpoint["state_dict"]
    dtypes = {name: t.dtype for name, t in weights.items() if t.is_floating_point()}
    assert set(dtypes.values()) == {torch.float32}, dtypes
