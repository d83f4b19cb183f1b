"""The judge: a real fit of the judge presets' twins, on drawn mask families only.

A pre-hook on the feature reconstructor reads every training mask it is given, so the test sees
the keep ratios and the shapes of the masks the judge actually trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import Exported, MakeShards
from tests.fit_support import fit
from vtsel.fidelity import Judge
from vtsel.methods import PACT, VisionZipStyle
from vtsel.models.selector import tokens_for_ratio
from vtsel.train.fit import resolve_fit_config
from vtsel.train.judge_module import JudgeModule
from vtsel.train.masking import (
    HELD_OUT_FAMILY,
    check_families,
    family_draw,
    mixture_masks,
    random_keep_counts,
)

JUDGE_TWINS = sorted(Path(__file__).parent.joinpath("conf", "judge").glob("*.yaml"))
DEMO_JUDGE = Path(__file__).parent / "conf" / "judge" / "demo.yaml"
KEEP_RANGE = (0.05, 0.6)  # the twins' keep_range
NUM_TOKENS = 16  # the test shards' 4x4 grid


class MaskWatch(L.Callback):
    """Records each training mask the feature reconstructor gets, then writes them to
    ``record`` (JSON): the CLI builds this callback in its own import of this module, so the
    test reads the file, not the object."""

    def __init__(self, record: str) -> None:
        self.record = Path(record)
        self.train_masks: list[list[float]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def record_mask(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if pl_module.training:
                self.train_masks += inputs[1].tolist()  # (B, L) keep mask

        pl_module.feature_reconstructor.register_forward_pre_hook(record_mask)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record.write_text(json.dumps({"train_masks": self.train_masks}))


def fit_watched(config: Path, shards: Path, tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    """``vtsel fit`` with a ``MaskWatch``; the run folder and what the watch saw."""
    record = tmp_path / "watch.json"
    run = fit(
        config, shards, tmp_path / "runs", *extra,
        "--trainer.callbacks+=tests.test_eval_judge.MaskWatch",
        "--trainer.callbacks.record", str(record),
    )
    return run, json.loads(record.read_text())


@pytest.fixture
def shards(tmp_path: Path, make_shards: MakeShards) -> Path:
    make_shards(tmp_path / "shards" / "train", num_samples=24, seed=0)
    make_shards(tmp_path / "shards" / "val", num_samples=8, seed=1)
    return tmp_path / "shards"


def test_demo_judge_trains_on_masks_across_the_range_and_logs_dropped_token_error(
    shards: Path, tmp_path: Path
) -> None:
    run, watched = fit_watched(DEMO_JUDGE, shards, tmp_path)
    masks = torch.tensor(watched["train_masks"])  # (2 epochs x 24 crops, L)
    assert masks.shape == (2 * 24, NUM_TOKENS)
    ratios = masks.mean(dim=-1)
    low, high = (tokens_for_ratio(NUM_TOKENS, r) / NUM_TOKENS for r in KEEP_RANGE)
    assert ((ratios >= low) & (ratios <= high)).all()
    assert ratios.min() <= 0.15 and ratios.max() >= 0.5, ratios  # the range is covered
    assert len(set(ratios.tolist())) >= 5

    (event_file,) = run.glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/loss", "val/dropped_mse/random@25", "train/dropped_mse"} <= tags
    assert not any("selector" in tag or "keep_ratio" in tag for tag in tags)

    judge = Judge.from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert judge.keep_range == KEEP_RANGE
    assert judge.contract.encoder == "test-encoder" and judge.contract.grid == (4, 4)
    assert HELD_OUT_FAMILY not in judge.families and max(judge.families.values()) == 2
    assert not any(p.requires_grad for p in judge.parameters())


@pytest.mark.parametrize("config", JUDGE_TWINS, ids=[c.stem for c in JUDGE_TWINS])
def test_every_judge_twin_fits(config: Path, shards: Path, tmp_path: Path) -> None:
    _, watched = fit_watched(config, shards, tmp_path, "--trainer.max_steps", "2")
    assert len(watched["train_masks"]) == 2 * 4


def test_a_selector_fit_is_refused_as_judge(exported: Exported) -> None:
    with pytest.raises(ValueError, match=r"is a selector fit, not a judge.*favour"):
        Judge.from_checkpoint(exported.checkpoint)


def test_the_held_out_family_and_unknown_families_are_refused() -> None:
    with pytest.raises(ValueError, match=f"{HELD_OUT_FAMILY!r} is held out"):
        JudgeModule(feature_dim=32, grid_size=(4, 4), image_size=32, dim=32, num_heads=2,
                    mask_families={"random": 1, HELD_OUT_FAMILY: 1})
    with pytest.raises(ValueError, match=r"unknown mask families \['fancy'\]"):
        check_families({"fancy": 1.0})
    with pytest.raises(ValueError, match="not all 0"):
        check_families({"random": 0.0})


def test_each_family_keeps_exactly_the_budget_and_families_differ() -> None:
    generator = torch.Generator().manual_seed(0)
    counts = torch.tensor([1, 5, 12, 30, 64])
    feats = torch.randn(5, 64, 16)
    masks = {
        family: family_draw(family, counts, (8, 8), generator, feats)[0]
        for family in ("random", "clustered", "blocky", "projection", "uniform", "spread",
                       "norm", "divprune")
    }
    for family, mask in masks.items():
        assert torch.equal(mask.sum(dim=-1), counts.float()), family
        assert set(mask.unique().tolist()) <= {0.0, 1.0}, family
    # clustered and blocky masks are spatially coherent: far more kept neighbours than random
    def kept_neighbour_pairs(mask: torch.Tensor) -> float:
        grid = mask.view(-1, 8, 8)
        return float((grid[:, :, 1:] * grid[:, :, :-1]).sum() + (grid[:, 1:] * grid[:, :-1]).sum())

    random_pairs = kept_neighbour_pairs(masks["random"][2:4])
    assert kept_neighbour_pairs(masks["clustered"][2:4]) > random_pairs
    assert kept_neighbour_pairs(masks["blocky"][2:4]) > random_pairs


def test_attention_families_need_attention() -> None:
    with pytest.raises(ValueError, match="'visionzip' ranks tokens by encoder attention"):
        family_draw("visionzip", torch.tensor([4]), (4, 4), None, torch.randn(1, 16, 8))


def test_a_mixture_draws_families_by_weight() -> None:
    generator = torch.Generator().manual_seed(0)
    counts = torch.full((600,), 8)
    feats = torch.randn(600, 16, 8)
    masks, shown = mixture_masks({"uniform": 1.0, "random": 2.0}, counts, (4, 4), generator,
                                 feats)
    assert torch.equal(shown, feats)  # neither family merges: the tokens are shown as they are
    uniform, _ = family_draw("uniform", torch.tensor([8]), (4, 4), None, torch.randn(1, 16, 8))
    share = (masks == uniform).all(dim=-1).float().mean().item()  # random: 1 in 12870
    assert 0.25 < share < 0.42  # a third of the crops


def test_merging_families_show_what_the_method_hands_on() -> None:
    """A judge trained on VisionZip's (or PACT's) masks sees its merged tokens at the kept
    positions, as vtsel eval will show them; the dropped positions keep the raw tokens."""
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 16, 8)
    attention = torch.rand(6, 16)
    counts = torch.full((6,), 5)
    for family, method in (("visionzip", VisionZipStyle()), ("pact", PACT())):
        masks, shown = mixture_masks({family: 1.0}, counts, (4, 4), generator, feats, attention)
        kept_idx = masks.nonzero()[:, 1].view(6, 5)
        rows_attention = attention if method.needs_attention else None
        assert torch.equal(kept_idx, method.select(feats, 5, rows_attention))
        expected = method.kept_on_grid(feats, kept_idx, rows_attention)
        torch.testing.assert_close(shown, expected)
        dropped = masks == 0
        assert torch.equal(shown[dropped], feats[dropped])
        assert not torch.equal(shown[~dropped], feats[~dropped])  # merged, not raw


def test_random_keep_counts_cover_the_range_and_repeat_with_the_seed() -> None:
    counts = random_keep_counts(400, 50, (0.1, 0.5), torch.Generator().manual_seed(0))
    assert counts.min() == 5 and counts.max() == 25  # both ends of the range are drawn
    again = random_keep_counts(400, 50, (0.1, 0.5), torch.Generator().manual_seed(0))
    assert torch.equal(counts, again)


@pytest.mark.parametrize("keep_range", [(0.0, 0.5), (0.6, 0.5), (0.2, 1.5)])
def test_a_keep_range_outside_the_unit_interval_is_refused(
    keep_range: tuple[float, float],
) -> None:
    with pytest.raises(ValueError, match="keep_range"):
        random_keep_counts(2, 16, keep_range)


@pytest.mark.parametrize("preset", ["demo", "llava_next", "internvl"])
@pytest.mark.parametrize("conf", ["conf", "tests/conf"])
def test_a_judge_preset_reads_the_features_its_selector_preset_trains_on(
    preset: str, conf: str
) -> None:
    """vtsel eval refuses a judge of another encoder, grid or width than the shards: the two
    presets of one encoder read one data file, so they resolve to the same data section."""
    root = Path(__file__).resolve().parents[1] / conf
    selector = resolve_fit_config(["--config", str(root / f"{preset}.yaml")]).data
    judge = resolve_fit_config(["--config", str(root / "judge" / f"{preset}.yaml")]).data
    files = {Path(data["__path__"].absolute).resolve() for data in (selector, judge)}
    assert files == {(root / "data" / f"{preset}.yaml").resolve()}
    assert judge.clone(with_meta=False) == selector.clone(with_meta=False)
