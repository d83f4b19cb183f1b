"""`vtsel stages` for real: one `vtsel fit` process per stage on real tiny shards."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.conftest import MakeShards
from vtsel.cli import main
from vtsel.train.stages import DONE_MARKER

REPO = Path(__file__).parents[1]
PRESETS = sorted([*REPO.glob("conf/*.yaml"), *REPO.glob("tests/conf/*.yaml")])
TWIN = REPO / "tests" / "conf" / "demo.yaml"
STEPS_PER_EPOCH = 2  # --trainer.limit_train_batches below
# One epoch each; stage 2 does not move (lr 0), so its weights must be stage 1's best exactly.
SHORT_STAGES = [
    {"name": "stage1", "max_epochs": 1},
    {"name": "stage2", "max_epochs": 1, "args": {"model.lr": 0.0}},
    {"name": "stage3", "max_epochs": 1},
]


def write_twin(path: Path, **changes: Any) -> Path:
    """The demo twin with top-level keys replaced (``stages=None`` drops the key), its data
    section's file named by absolute path (the copy lives elsewhere)."""
    config = yaml.safe_load(TWIN.read_text())
    config["data"] = str((TWIN.parent / config["data"]).resolve())
    config.update(changes)
    path.write_text(yaml.safe_dump({k: v for k, v in config.items() if v is not None}))
    return path


def load(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


@pytest.fixture
def fit_args(tmp_path: Path, make_shards: MakeShards) -> list[str]:
    """Arguments for every stage's fit: real tiny shards, a tmp runs folder, 2 batches/epoch."""
    make_shards(tmp_path / "shards" / "train", num_samples=24, seed=0)
    make_shards(tmp_path / "shards" / "val", num_samples=8, seed=1)
    return [
        "--data.train_shards", str(tmp_path / "shards" / "train"),
        "--data.val_shards", str(tmp_path / "shards" / "val"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.limit_train_batches", str(STEPS_PER_EPOCH),
        "--trainer.enable_progress_bar", "false",
    ]


def test_stages_chain_resume_and_skip(
    tmp_path: Path, fit_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_twin(tmp_path / "twin.yaml", stages=SHORT_STAGES)
    main(["stages", "--config", str(config), *fit_args])

    runs = tmp_path / "runs" / "demo"
    for stage in ("stage1", "stage2", "stage3"):
        assert len(list((runs / stage).glob("events.out.tfevents.*"))) == 1, stage
        assert (runs / stage / "checkpoints" / "last.ckpt").is_file(), stage
        assert (runs / stage / DONE_MARKER).is_file(), stage
    (stage1_best,) = (runs / "stage1" / "checkpoints").glob("best-*.ckpt")
    stage1, stage2 = load(stage1_best), load(runs / "stage2" / "checkpoints" / "last.ckpt")
    assert stage2["global_step"] == STEPS_PER_EPOCH  # its own steps: a new fit, not a resumed one
    assert stage2["hyper_parameters"]["lr"] == 0.0  # the stage's own args reached its fit
    for key, value in stage1["state_dict"].items():
        assert torch.equal(stage2["state_dict"][key], value), key

    # Rerun with stage 3 as if killed before it was marked done: 1-2 skipped, 3 resumed.
    (runs / "stage3" / DONE_MARKER).unlink()
    commands: list[list[str]] = []
    real_run = subprocess.run
    monkeypatch.setattr(
        subprocess, "run", lambda command, **kw: commands.append(command) or real_run(command, **kw)
    )
    main(["stages", "--config", str(config), *fit_args])
    (command,) = commands
    assert command[command.index("--ckpt_path") + 1] == str(
        runs / "stage3" / "checkpoints" / "last.ckpt"
    )
    assert "--model.init_from" not in command  # resuming restores the stage's own weights
    assert (runs / "stage3" / DONE_MARKER).is_file()


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_preset_has_stages_and_fit_runs_stage_one(preset: Path) -> None:
    config = yaml.safe_load(preset.read_text())
    first, *_ = config["stages"]
    assert first["max_epochs"] == config["trainer"]["max_epochs"]
    assert not first.get("args"), "stage 1 must be what `vtsel fit` runs"


def test_fit_accepts_the_stages_key(fit_args: list[str], tmp_path: Path) -> None:
    main(["fit", "--config", str(TWIN), *fit_args, "--trainer.max_steps", "1"])
    (last,) = (tmp_path / "runs").glob("demo/version_*/checkpoints/last.ckpt")
    assert load(last)["global_step"] == 1


def test_a_typo_in_a_stage_is_a_parse_error(tmp_path: Path) -> None:
    config = write_twin(tmp_path / "typo.yaml", stages=[{"name": "stage1", "max_epoch": 2}])
    with pytest.raises(SystemExit) as parse_exit:
        main(["fit", "--config", str(config), "--print_config"])
    assert parse_exit.value.code != 0  # --print_config alone would exit 0


def test_a_bad_argument_in_a_late_stage_stops_before_the_first_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    stages = [*SHORT_STAGES[:2], {"name": "stage3", "max_epochs": 1, "args": {"model.lrr": 0.1}}]
    config = write_twin(tmp_path / "late_typo.yaml", stages=stages)
    with pytest.raises(SystemExit) as parse_exit:
        main(["stages", "--config", str(config), "--trainer.logger.init_args.save_dir", "runs"])
    assert parse_exit.value.code != 0
    assert not Path("runs", "demo").exists()


def test_a_config_without_stages_is_refused_by_name(tmp_path: Path) -> None:
    config = write_twin(tmp_path / "plain.yaml", stages=None)
    with pytest.raises(ValueError, match=r"plain\.yaml has no 'stages' list"):
        main(["stages", "--config", str(config)])
