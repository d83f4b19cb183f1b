"""What Lightning and the shard reader cost a demo-sized training step, measured in one run.

    .venv/bin/python benchmarks/bench_training.py

1. Lightning overhead: seconds per training step under a Trainer (bare, and with the demo's
   logger and callbacks) over a plain PyTorch loop doing the same forward, backward, gradient
   clipping, Adam and schedule steps on the same in-memory batch. The three are alternated in
   every repeat (in a rotating order) so machine drift hits them alike; the figure is the median.
2. Input headroom: samples/s the real FeatureShardDataModule reads from real demo-sized shards
   over samples/s the bare Lightning step consumes. Below 1 the GPU-less step would wait on data.

Prints the figures and rewrites this benchmark's sections of BENCHMARKS.md at the repo root.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' shard writer is the one real-format writer to reuse

from benchmarks.report import BENCHMARKS_FILE, machine, update_section  # noqa: E402
from tests.conftest import write_feature_shards  # noqa: E402
from vtsel.data import FeatureShardDataModule  # noqa: E402
from vtsel.train.schedule import warmup_cosine  # noqa: E402
from vtsel.train.selector_module import SelectorModule  # noqa: E402

THREADS = 2
BATCH = 32
DEMO = yaml.safe_load((REPO / "conf" / "demo.yaml").read_text())  # the shapes and settings
DEMO_DATA = yaml.safe_load((REPO / "conf" / DEMO["data"]).read_text())
FEATURE_DIM = DEMO_DATA["feature_dim"]
GRID = tuple(DEMO_DATA["grid_size"])
IMAGE_SIZE = DEMO_DATA["image_size"]
MODEL_ARGS: dict[str, Any] = dict(
    DEMO["model"]["init_args"], feature_dim=FEATURE_DIM, grid_size=GRID, image_size=IMAGE_SIZE
)
WARMUP_STEPS, TIMED_STEPS, REPEATS = 3, 8, 5
CLIP = DEMO["trainer"]["gradient_clip_val"]
SHARD_SAMPLES, SHARD_SIZE, LOADER_EPOCHS = 384, 48, 3
Batch = dict[str, Any]


def demo_batch() -> Batch:
    """One batch of the demo's shapes: (B, L, C) features and (B, 3, S, S) crops."""
    generator = torch.Generator().manual_seed(0)
    return {
        "feats": torch.randn(BATCH, GRID[0] * GRID[1], FEATURE_DIM, generator=generator),
        "image": torch.rand(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "key": [f"sample{i}" for i in range(BATCH)],
    }


def plain_step_seconds(batch: Batch) -> float:
    """Seconds per step of a loop with no Trainer: the module's own training_step, clipped
    backward, Adam and the warmup-cosine schedule, as Lightning runs them."""
    torch.manual_seed(0)
    module = SelectorModule(**MODEL_ARGS)
    optimizer = torch.optim.Adam(module.parameters(), lr=module.hparams.lr)
    scheduler = warmup_cosine(optimizer, WARMUP_STEPS + TIMED_STEPS, warmup_fraction=0.05)
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        if step == WARMUP_STEPS:
            start = time.perf_counter()
        optimizer.zero_grad()
        module.training_step(batch, step).backward()  # self.log is a no-op without a Trainer
        torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
    return (time.perf_counter() - start) / TIMED_STEPS


class _SameBatch:
    """An iterable of one batch ``steps`` times (a list would be read as several loaders)."""

    def __init__(self, batch: Batch, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __iter__(self) -> Iterator[Batch]:
        return itertools.repeat(self.batch, self.steps)

    def __len__(self) -> int:
        return self.steps


class _InMemoryData(L.LightningDataModule):
    """The same batch every step; exposes the epoch length the module's schedule reads."""

    def __init__(self, batch: Batch, steps: int) -> None:
        super().__init__()
        self.batches = _SameBatch(batch, steps)
        self.train_batches_per_epoch = steps

    def train_dataloader(self) -> _SameBatch:
        return self.batches


class _StepTimer(Callback):
    """Wall time from the first timed batch's start to the last batch's end, hooks included."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == WARMUP_STEPS:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.end = time.perf_counter()


def lightning_step_seconds(batch: Batch, demo_callbacks: bool, log_dir: Path) -> float:
    """Seconds per step under ``Trainer.fit``, bare or with the demo's logger and callbacks."""
    torch.manual_seed(0)
    timer = _StepTimer()
    steps = WARMUP_STEPS + TIMED_STEPS
    extras: dict[str, Any] = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[timer]
    )
    if demo_callbacks:
        extras = dict(
            logger=TensorBoardLogger(str(log_dir), name="demo"),
            log_every_n_steps=5,
            callbacks=[
                timer,
                ModelCheckpoint(monitor="val/selector_gain@25", mode="max", save_last=True),
                LearningRateMonitor(logging_interval="step"),
                RichProgressBar(),
            ],
        )
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, gradient_clip_val=CLIP,
        enable_model_summary=False, num_sanity_val_steps=0, **extras,
    )
    trainer.fit(SelectorModule(**MODEL_ARGS), datamodule=_InMemoryData(batch, steps))
    return (timer.end - timer.start) / TIMED_STEPS


def measure_step_times(log_dir: Path) -> dict[str, list[float]]:
    """Seconds per step of each runner in every repeat, the runners' order rotating."""
    batch = demo_batch()
    runners: dict[str, Callable[[], float]] = {
        "plain PyTorch loop": lambda: plain_step_seconds(batch),
        "Lightning, bare": lambda: lightning_step_seconds(batch, False, log_dir),
        "Lightning, demo logger + callbacks": lambda: lightning_step_seconds(batch, True, log_dir),
    }
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(REPEATS):
        for name in names[repeat % 3 :] + names[: repeat % 3]:
            times[name].append(runners[name]())
    return times


def loader_samples_per_second(shard_dir: Path) -> float:
    """Samples/s of the real DataModule (2 workers), after a first epoch starts the workers."""
    write_feature_shards(
        shard_dir, SHARD_SAMPLES, feature_dim=FEATURE_DIM, grid=GRID, image_size=IMAGE_SIZE,
        samples_per_shard=SHARD_SIZE,
    )
    datamodule = FeatureShardDataModule(
        train_shards=str(shard_dir), feature_dim=FEATURE_DIM, grid_size=GRID,
        image_size=IMAGE_SIZE, encoder="test-encoder", batch_size=BATCH, num_workers=2,
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    samples, start = 0, 0.0
    for epoch in range(LOADER_EPOCHS):
        if epoch == 1:
            start = time.perf_counter()
        for batch in loader:
            samples += len(batch["key"]) if epoch else 0
    return samples / (time.perf_counter() - start)


def step_section(times: dict[str, list[float]]) -> tuple[str, float]:
    medians = {name: statistics.median(values) for name, values in times.items()}
    plain = medians["plain PyTorch loop"]
    rows = "\n".join(
        f"| {name} | {1000 * m:.1f} | {m / plain:.3f} | "
        + ", ".join(f"{1000 * v:.0f}" for v in times[name]) + " |"
        for name, m in medians.items()
    )
    body = f"""Machine: {machine(THREADS)}.

SelectorModule at demo size (B={BATCH}, C={FEATURE_DIM}, grid {GRID[0]}×{GRID[1]}, image
{IMAGE_SIZE}, dim 128, fp32), one in-memory batch, gradient clipping 1.0, Adam + warmup-cosine.
{REPEATS} repeats, runners alternated in rotating order; each repeat {WARMUP_STEPS} warm-up steps,
then {TIMED_STEPS} timed steps. Goal: Lightning ÷ plain ≤ 1.05.

| runner | median ms/step | ÷ plain | each repeat (ms/step) |
|---|---|---|---|
{rows}
"""
    return body, medians["Lightning, bare"]


def loader_section(samples_per_second: float, step_seconds: float) -> str:
    consumed = BATCH / step_seconds
    ratio = samples_per_second / consumed
    return f"""Machine: {machine(THREADS)}.

FeatureShardDataModule, num_workers 2, batch {BATCH}, on {SHARD_SAMPLES} demo-sized samples
(random features and random-pixel crops, as `tests/conftest.py` writes them) in shards of
{SHARD_SIZE}; {LOADER_EPOCHS - 1} epochs timed after a first one that starts the workers. The
loader runs alone here; in a fit its workers share the same cores with the step.
Goal: loader ÷ step ≥ 5.

| figure | samples/s |
|---|---|
| DataModule reads | {samples_per_second:.0f} |
| bare Lightning step consumes | {consumed:.1f} |
| **ratio** | **{ratio:.1f}** |
"""


def main() -> None:
    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore")  # Lightning's advice: workers, self.log without a Trainer
    with tempfile.TemporaryDirectory() as tmp:
        times = measure_step_times(Path(tmp) / "runs")
        steps_body, lightning_step = step_section(times)
        loader_rate = loader_samples_per_second(Path(tmp) / "shards")
    loader_body = loader_section(loader_rate, lightning_step)
    print(steps_body, loader_body, sep="\n")
    update_section("Lightning step overhead (benchmarks/bench_training.py)", steps_body)
    update_section("DataModule headroom (benchmarks/bench_training.py)", loader_body)
    print(f"updated {BENCHMARKS_FILE}")


if __name__ == "__main__":
    main()
