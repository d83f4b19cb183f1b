"""The real `vtsel` CLI on real tiny shards: fit, read TensorBoard back, validate, init_from."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import Exported
from tests.extract_support import write_photos
from tests.fit_support import LOSS_TAGS, TWINS, WIRING, fit, fit_args
from vtsel.cli import TOOLS, main, run_command
from vtsel.contract import FeatureContractError


def scalar_tags(run: Path) -> set[str]:
    (event_file,) = run.glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    return set(events.Tags()["scalars"])


@pytest.mark.parametrize("config", TWINS, ids=[c.stem for c in TWINS])
def test_fit_writes_checkpoints_and_every_metric_to_tensorboard(
    config: Path, shards: Path, tmp_path: Path
) -> None:
    run = fit(config, shards, tmp_path / "runs", *WIRING)
    tags = scalar_tags(run)
    assert tags >= LOSS_TAGS | {"val/loss", "val/keep_ratio", "val/selector_gain@25"}
    for budget in ("selector@25", "random@25", "selector@10", "random@50"):
        assert tags >= {f"val/{m}/{budget}" for m in ("feat_mse", "feat_cos", "image_psnr")}
    assert any(tag.startswith("lr-") for tag in tags)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()


def test_validate_test_and_predict_reload_the_best_checkpoint(
    wired_run: Path, shards: Path, tmp_path: Path
) -> None:
    config = TWINS[0]
    (best,) = (wired_run / "checkpoints").glob("best-*.ckpt")
    results = {}
    for subcommand in ("validate", "test", "predict"):
        results[subcommand] = run_command(
            [
                subcommand,
                "--config", str(config),
                "--data.val_shards", str(shards / "val"),
                "--trainer.logger", "false",
                "--trainer.default_root_dir", str(tmp_path),  # where the resolved config goes
                "--ckpt_path", str(best),
            ]
        )
    val_mse = results["validate"].trainer.callback_metrics["val/feat_mse/selector@25"]
    test_mse = results["test"].trainer.callback_metrics["test/feat_mse/selector@25"]
    assert torch.equal(val_mse, test_mse)  # test defaults to the validation shards
    predictions = results["predict"].trainer.predict_loop.predictions
    keys = [key for batch in predictions for key in batch["key"]]
    assert len(keys) == len(set(keys)) == 8
    assert all(batch["keep_logits"].shape == (len(batch["key"]), 16) for batch in predictions)


def test_init_from_takes_weights_and_nothing_else(
    wired_run: Path, shards: Path, tmp_path: Path
) -> None:
    source_path = wired_run / "checkpoints" / "last.ckpt"
    source = torch.load(source_path, weights_only=True)
    second = fit(
        TWINS[0], shards, tmp_path / "second",
        *WIRING,
        "--model.lr", "0.0",  # no update: the weights must be the source's exactly
        "--model.init_from", str(source_path),
    )
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 1  # a fresh fit, not a resumed one
    assert resumed["hyper_parameters"]["lr"] == 0.0  # this fit's own settings
    assert "init_from" not in resumed["hyper_parameters"]
    for key, value in source["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


def test_init_from_refuses_another_version_and_another_width(
    wired_run: Path, shards: Path, tmp_path: Path
) -> None:
    config = TWINS[0]
    checkpoint = torch.load(wired_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["vtsel_version"] = "99.0.0"
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    with pytest.raises(ValueError, match=r"vtsel 99\.0\.0"):
        fit(config, shards, tmp_path / "a", "--model.init_from", str(old))
    with pytest.raises(ValueError, match="does not fit this model"):
        fit(
            config, shards, tmp_path / "b",
            "--model.dim", "16",
            "--model.init_from", str(wired_run / "checkpoints" / "last.ckpt"),
        )


def test_shards_of_another_width_stop_the_fit_naming_the_shard(
    shards: Path, tmp_path: Path
) -> None:
    message = r"shard-000000\.tar holds .*32-wide.*config expects .*48-wide"
    with pytest.raises(FeatureContractError, match=message):
        fit(TWINS[0], shards, tmp_path / "runs", "--data.feature_dim", "48")


def test_ckpt_path_last_resumes_the_newest_run_in_its_own_folder(
    shards: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    short = ("--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")
    run = fit(TWINS[0], shards, runs, *short, "--trainer.max_epochs", "1")
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    resumed_run = fit(
        TWINS[0], shards, runs, *short, "--trainer.max_epochs", "2", "--ckpt_path", "last"
    )  # fit() also checks that no second run folder appeared
    assert resumed_run == run
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] > 0
    assert resumed["global_step"] == 2 * first["global_step"]  # one more epoch, not two


def test_ckpt_path_under_other_model_settings_is_refused_naming_them(
    shards: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    run = fit(TWINS[0], shards, runs, *WIRING)
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    for resumed in ("last", str(run / "checkpoints" / "last.ckpt")):
        with pytest.raises(ValueError, match=r"dim: 32 in the checkpoint, 64 here.*init_from"):
            fit(TWINS[0], shards, runs, "--model.dim", "64", "--ckpt_path", resumed)
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before  # nothing trained


def test_a_text_file_as_ckpt_path_is_named(shards: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "readme.txt"
    bogus.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"readme\.txt is not a checkpoint vtsel can read"):
        fit(TWINS[0], shards, tmp_path / "runs", "--ckpt_path", str(bogus))


@pytest.mark.parametrize("command", ["extract", "export", "demo-data"])
def test_an_out_that_is_a_file_is_refused_by_name(
    command: str, exported: Exported, tmp_path: Path
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("someone's file")
    write_photos(tmp_path / "photos", 1)
    args = {
        "extract": ["--images", str(tmp_path / "photos"), "--out", str(taken)],
        "export": ["--checkpoint", str(exported.checkpoint), "--out", str(taken)],
        "demo-data": ["--out", str(taken)],
    }[command]
    with pytest.raises(ValueError, match=rf"--out {re.escape(str(taken))} is a file"):
        main([command, *args])
    assert taken.read_text() == "someone's file"


def test_a_negative_learning_rate_reaches_the_models_own_refusal(
    shards: Path, tmp_path: Path
) -> None:
    # argparse alone reads "-1e-3" as an option: "argument --model.lr: expected one argument"
    with pytest.raises(ValueError, match=r"lr must be >= 0 \(0 freezes the weights\), got -0\.001"):
        fit(TWINS[0], shards, tmp_path / "runs", "--model.lr", "-1e-3")


def test_ckpt_path_last_without_a_run_says_where_it_looked(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no last\.ckpt under"):
        fit(TWINS[0], shards, tmp_path / "runs", "--ckpt_path", "last")


def test_the_console_script_exits_zero_after_a_fit(shards: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "vtsel"  # the entry point pyproject.toml installs
    finished = subprocess.run(
        [str(script), *fit_args(TWINS[0], shards, tmp_path / "runs", *WIRING)],
        capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_tool_runs_its_own_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([name, "--help"])
    assert stopped.value.code == 0
    assert "usage:" in capsys.readouterr().out
