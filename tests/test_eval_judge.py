"""The judge: a real fit of the judge presets' twins that never consults a selector.

Hooks on the selector's trunk and head count every call during the fit; a pre-hook on the
feature reconstructor reads each training mask back from its input (dropped tokens are the
mask embedding), so the test sees the keep ratios the reconstructors actually trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import Exported, MakeShards
from tests.test_cli import fit
from vtsel.evaluation import Judge
from vtsel.masking import random_keep_masks
from vtsel.models.selector import tokens_for_ratio

JUDGE_TWINS = sorted(Path(__file__).parent.joinpath("conf", "judge").glob("*.yaml"))
DEMO_JUDGE = Path(__file__).parent / "conf" / "judge" / "demo.yaml"
KEEP_RANGE = (0.05, 0.6)  # the twins' random_keep_range
NUM_TOKENS = 16  # the test shards' 4x4 grid


class SelectorWatch(L.Callback):
    """Counts calls into the selector's trunk and head and records each training mask's keep
    ratio, then writes both to ``record`` (JSON): the CLI builds this callback in its own
    import of this module, so the test reads the file, not the object."""

    def __init__(self, record: str) -> None:
        self.record = Path(record)
        self.calls: list[str] = []
        self.train_keep_ratios: list[float] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name in ("trunk", "head"):
            getattr(pl_module.selector, name).register_forward_hook(
                lambda *_, name=name: self.calls.append(name)
            )

        def record_mask(module: torch.nn.Module, inputs: tuple[torch.Tensor]) -> None:
            if pl_module.training:
                embedding = pl_module.selector.mask_embedding  # (C,)
                kept = (inputs[0] != embedding).any(dim=-1)  # (B, L)
                self.train_keep_ratios += kept.float().mean(dim=-1).tolist()

        pl_module.feature_reconstructor.register_forward_pre_hook(record_mask)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        watched = {"calls": self.calls, "train_keep_ratios": self.train_keep_ratios}
        self.record.write_text(json.dumps(watched))


def fit_watched(config: Path, shards: Path, tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    """``vtsel fit`` with a ``SelectorWatch``; the run folder and what the watch saw."""
    record = tmp_path / "watch.json"
    run = fit(
        config, shards, tmp_path / "runs", *extra,
        "--trainer.callbacks+=tests.test_eval_judge.SelectorWatch",
        "--trainer.callbacks.record", str(record),
    )
    return run, json.loads(record.read_text())


@pytest.fixture
def shards(tmp_path: Path, make_shards: MakeShards) -> Path:
    make_shards(tmp_path / "shards" / "train", num_samples=24, seed=0)
    make_shards(tmp_path / "shards" / "val", num_samples=8, seed=1)
    return tmp_path / "shards"


def test_demo_judge_trains_on_random_masks_across_the_range_and_never_runs_the_selector(
    shards: Path, tmp_path: Path
) -> None:
    run, watched = fit_watched(DEMO_JUDGE, shards, tmp_path)
    assert watched["calls"] == []
    ratios = watched["train_keep_ratios"]
    assert len(ratios) == 2 * 24  # every training crop of both epochs
    low, high = (tokens_for_ratio(NUM_TOKENS, r) / NUM_TOKENS for r in KEEP_RANGE)
    assert all(low <= r <= high for r in ratios)
    assert min(ratios) <= 0.15 and max(ratios) >= 0.5, ratios  # the range is covered
    assert len(set(ratios)) >= 5

    (event_file,) = run.glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/loss", "val/feat_mse/random@25", "train/feature_loss"} <= tags
    assert not any("selector" in tag for tag in tags)
    assert all(e.value == 0.0 for e in events.Scalars("train/regularizer"))

    judge = Judge.from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert judge.keep_range == KEEP_RANGE
    assert judge.contract.encoder == "test-encoder" and judge.contract.grid == (4, 4)
    assert not any(p.requires_grad for p in judge.parameters())


@pytest.mark.parametrize("config", JUDGE_TWINS, ids=[c.stem for c in JUDGE_TWINS])
def test_every_judge_twin_fits_without_its_selector(
    config: Path, shards: Path, tmp_path: Path
) -> None:
    _, watched = fit_watched(config, shards, tmp_path, "--trainer.max_steps", "2")
    assert watched["calls"] == []
    assert len(watched["train_keep_ratios"]) == 2 * 4


def test_a_selector_checkpoint_is_refused_as_judge(exported: Exported) -> None:
    with pytest.raises(ValueError, match=r"masking: selector.*favours that selector"):
        Judge.from_checkpoint(exported.checkpoint)


def test_random_keep_masks_draw_each_row_a_budget_in_the_range() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = random_keep_masks(400, 50, (0.1, 0.5), generator)  # (B, L)
    counts = masks.sum(dim=-1)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert counts.min() == 5 and counts.max() == 25  # both ends of the range are drawn
    again = random_keep_masks(400, 50, (0.1, 0.5), torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)
    assert not torch.equal(masks[0], masks[1])


@pytest.mark.parametrize("keep_range", [(0.0, 0.5), (0.6, 0.5), (0.2, 1.5)])
def test_a_keep_range_outside_the_unit_interval_is_refused(
    keep_range: tuple[float, float],
) -> None:
    with pytest.raises(ValueError, match="random_keep_range"):
        random_keep_masks(2, 16, keep_range)

