"""FeatureShardDataModule on real tiny shards: batch format, epoch length, DDP splits, bad data,
manifests and stored attention."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from tests.conftest import MakeShards
from tests.extract_support import write_photos
from vtsel.contract import FeatureContractError
from vtsel.data import FeatureShardDataModule
from vtsel.data.format import (
    FEATS,
    SIZES_FILE,
    SampleMeta,
    encode_sample,
    source_key_of,
    write_sizes,
)
from vtsel.data.manifest import MANIFEST_FILE, Manifest, read_manifest, write_manifest
from vtsel.data.shardlist import resolve_shard_urls
from vtsel.extract import extract
from vtsel.extract.crops import CenterCrop
from vtsel.extract.encoders import OpenClipEncoder

FEATURE_DIM, GRID, IMAGE_SIZE = 32, (4, 4), 32


def make_datamodule(train: Path | str | None = None, **overrides: Any) -> FeatureShardDataModule:
    """A DataModule sized for the test shards; ``overrides`` change single arguments."""
    args: dict[str, Any] = dict(
        feature_dim=FEATURE_DIM, grid_size=GRID, image_size=IMAGE_SIZE, batch_size=4,
        num_workers=0,
    )
    args.update(overrides)
    return FeatureShardDataModule(train_shards=None if train is None else str(train), **args)


def train_epoch(datamodule: FeatureShardDataModule) -> list[dict[str, Any]]:
    datamodule.setup("fit")
    return list(datamodule.train_dataloader())


def keys_of(batches: list[dict[str, Any]]) -> list[str]:
    return [key for batch in batches for key in batch["key"]]


def encoded_sample(index: int, feats: np.ndarray | None = None, encoder: str = "test-encoder",
                   attention: np.ndarray | None = None):
    """One sample's tar members, as `encode_sample` writes them, for hand-built shards."""
    rng = np.random.default_rng(index)
    if feats is None:
        feats = rng.standard_normal((GRID[0] * GRID[1], FEATURE_DIM)).astype(np.float32)
    meta = SampleMeta(encoder, -2, GRID, feats.shape[1], 0, (0, 0, 8, 8), f"hand{index:03d}")
    image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")
    return encode_sample(feats, image, meta, attention)


def add_shard(directory: Path, name: str, samples: list[dict[str, Any]]) -> Path:
    """Write one more shard into a ``make_shards`` folder and list it in its sizes.json."""
    path = directory / name
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    sizes = json.loads((directory / SIZES_FILE).read_text())
    sizes[name] = len(samples)
    (directory / SIZES_FILE).write_text(json.dumps(sizes))
    return path


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_batches_have_the_promised_format_and_count(
    tmp_path: Path, make_shards: MakeShards, num_workers: int
) -> None:
    shards = make_shards(tmp_path / "train", num_samples=22, image_size=40)  # resized to 32
    datamodule = make_datamodule(shards, num_workers=num_workers)
    batches = train_epoch(datamodule)
    assert len(batches) == datamodule.train_batches_per_epoch == len(datamodule.train_dataloader())
    assert datamodule.train_batches_per_epoch == (5 if num_workers == 0 else 6)  # 22 // 4, even
    for batch in batches:
        assert set(batch) == {"feats", "image", "key"}
        assert batch["feats"].shape == (4, GRID[0] * GRID[1], FEATURE_DIM)
        assert batch["image"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert batch["feats"].dtype == batch["image"].dtype == torch.float32
        assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
        assert len(batch["key"]) == 4 and all(isinstance(k, str) for k in batch["key"])
    assert batches[0]["feats"].std() > 0.5  # random normal features, not zeros or one copy


def test_val_yields_every_sample_once_with_a_partial_last_batch(
    tmp_path: Path, make_shards: MakeShards
) -> None:
    val = make_shards(tmp_path / "val", num_samples=9)
    datamodule = make_datamodule(val_shards=str(val))
    datamodule.setup("validate")
    batches = list(datamodule.val_dataloader())
    assert [len(b["key"]) for b in batches] == [4, 4, 1]
    assert len(datamodule.val_dataloader()) == 3
    assert len(set(keys_of(batches))) == 9


def test_ranks_read_disjoint_samples_in_equal_numbers(
    tmp_path: Path, make_shards: MakeShards, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = make_shards(tmp_path / "train", num_samples=14)  # shards of 4, 4, 4, 2
    val = make_shards(tmp_path / "val", num_samples=10, seed=1)  # shards of 4, 4, 2
    train_keys, val_keys = [], []
    for rank in (0, 1):  # as torchrun would launch them, without a process group
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        # a buffer of 1 reads no further than it yields, so each rank stays within its shards
        datamodule = make_datamodule(train, val_shards=str(val), batch_size=2, shuffle_buffer=1)
        batches = train_epoch(datamodule)
        assert len(batches) == datamodule.train_batches_per_epoch == 3  # 14 // (2 * 2)
        train_keys.append(set(keys_of(batches)))
        val_keys.append(keys_of(list(datamodule.val_dataloader())))
    assert not train_keys[0] & train_keys[1]
    assert not set(val_keys[0]) & set(val_keys[1])
    assert len(val_keys[0]) + len(val_keys[1]) == len(set(val_keys[0]) | set(val_keys[1])) == 10


def test_brace_glob_and_directory_specs_name_the_same_shards(
    tmp_path: Path, make_shards: MakeShards
) -> None:
    shards = make_shards(tmp_path / "train", num_samples=12)
    by_dir = resolve_shard_urls(str(shards))
    assert len(by_dir) == 3
    assert resolve_shard_urls(f"{shards}/shard-*.tar") == by_dir
    assert resolve_shard_urls(f"{shards}/shard-{{000000..000002}}.tar") == by_dir
    assert resolve_shard_urls(f"{by_dir[0]}::{shards}/shard-00000[12].tar") == by_dir


def test_an_empty_spec_names_the_pattern(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing-here-"):
        resolve_shard_urls(f"{tmp_path}/nothing-here-*.tar")


def test_sample_counts_need_sizes_json_or_an_override(
    tmp_path: Path, make_shards: MakeShards
) -> None:
    shards = make_shards(tmp_path / "train", num_samples=12)
    (shards / SIZES_FILE).write_text(json.dumps({"shard-000000.tar": 4, "shard-000001.tar": 4}))
    with pytest.raises(ValueError, match=r"shard-000002\.tar is not listed"):
        make_datamodule(shards).setup("fit")
    (shards / SIZES_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=SIZES_FILE):
        make_datamodule(shards).setup("fit")
    datamodule = make_datamodule(shards, train_num_samples=12)
    assert len(train_epoch(datamodule)) == 3


def test_pipe_urls_are_streamed_need_a_sample_count_and_log_their_commands(
    tmp_path: Path, make_shards: MakeShards, caplog: pytest.LogCaptureFixture
) -> None:
    shards = make_shards(tmp_path / "train", num_samples=8)
    spec = f"pipe:cat {shards}/shard-{{000000..000001}}.tar"
    with pytest.raises(ValueError, match="train_num_samples"):
        make_datamodule(spec).setup("fit")
    with caplog.at_level(logging.WARNING, logger="vtsel.data"):
        assert len(train_epoch(make_datamodule(spec, train_num_samples=8))) == 2
    assert f"runs 2 shell command(s) to read its tars, e.g. 'cat {shards}/shard-000000.tar'" in (
        caplog.text
    )


def test_corrupt_tars_and_samples_are_counted_and_skipped(
    tmp_path: Path, make_shards: MakeShards, caplog: pytest.LogCaptureFixture
) -> None:
    shards = make_shards(tmp_path / "train", num_samples=24)
    truncated = shards / "shard-000001.tar"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage = add_shard(shards, "shard-000006.tar", [])
    garbage.write_bytes(b"not a tar at all" * 100)
    bad_feats = {**encoded_sample(0), FEATS: b"garbage bytes"}
    add_shard(shards, "shard-000007.tar", [bad_feats, encoded_sample(1)])
    # a buffer of 1 decodes each sample as it is read, so every bad one is met within the epoch
    datamodule = make_datamodule(shards, batch_size=2, max_corrupt=100, shuffle_buffer=1)
    with caplog.at_level(logging.WARNING, logger="vtsel.data"):
        batches = train_epoch(datamodule)
    assert len(batches) == datamodule.train_batches_per_epoch == 13  # 26 listed // 2
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert any(str(truncated) in w for w in warnings)
    assert any(str(garbage) in w for w in warnings)
    assert any("shard-000007.tar" in w and "'hand000-c00'" in w for w in warnings)
    assert all("/100)" in w for w in warnings)


def test_a_sizes_json_claiming_more_than_a_tar_holds_stops_naming_the_tar(
    tmp_path: Path, make_shards: MakeShards
) -> None:
    shards = make_shards(tmp_path / "train", num_samples=8)  # 2 tars of 4
    sizes = json.loads((shards / SIZES_FILE).read_text())
    (shards / SIZES_FILE).write_text(json.dumps({name: 50 * n for name, n in sizes.items()}))
    with pytest.raises(ValueError, match=r"shard-00000[01]\.tar holds 4 samples, but sizes\.json"):
        train_epoch(make_datamodule(shards))


def test_max_corrupt_caps_an_epoch_that_passes_over_the_shards_several_times(
    tmp_path: Path, make_shards: MakeShards
) -> None:
    shards = make_shards(tmp_path / "train", num_samples=4)
    add_shard(shards, "shard-000009.tar", [{**encoded_sample(0), FEATS: b"garbage bytes"}])
    # 20 good samples an epoch from 4 (+1 corrupt): five passes, the bad sample met five times
    datamodule = make_datamodule(shards, train_num_samples=20, max_corrupt=1, shuffle_buffer=1)
    with pytest.raises(RuntimeError, match="more than max_corrupt=1 corrupt samples"):
        train_epoch(datamodule)
    assert len(train_epoch(make_datamodule(shards, train_num_samples=20, max_corrupt=5))) == 5


def test_too_much_corrupt_data_stops_the_run_naming_the_file(
    tmp_path: Path, make_shards: MakeShards
) -> None:
    shards = make_shards(tmp_path / "train", num_samples=12)
    garbage = shards / "shard-000001.tar"
    garbage.write_bytes(b"\0garbage" * 64)
    with pytest.raises(RuntimeError, match=f"max_corrupt=0.*{garbage}"):
        train_epoch(make_datamodule(shards, max_corrupt=0))


def test_non_finite_features_are_skipped_naming_the_key(
    tmp_path: Path, make_shards: MakeShards, caplog: pytest.LogCaptureFixture
) -> None:
    shards = make_shards(tmp_path / "train", num_samples=8)
    feats = np.zeros((GRID[0] * GRID[1], FEATURE_DIM), dtype=np.float16)
    feats[3, 5] = np.nan
    npy = io.BytesIO()
    np.save(npy, feats)  # encode_sample refuses to write NaN, so the bytes are made by hand
    add_shard(shards, "shard-000002.tar", [{**encoded_sample(7), FEATS: npy.getvalue()}])
    with caplog.at_level(logging.WARNING, logger="vtsel.data"):
        keys = keys_of(train_epoch(make_datamodule(shards, batch_size=3, shuffle_buffer=1)))
    assert "hand007-c00" not in keys and len(keys) == 9  # 9 samples listed // 3 batches of 3
    assert any("'hand007-c00'" in r.getMessage() and "(1/10)" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize(
    ("shard_args", "message"),
    [
        ({"feature_dim": 48}, r"'img000_00000-c00' in .*000\.tar holds .*48-wide.*32-wide"),
        ({"encoder": "other-encoder"}, r"'img000_00000-c00' in .*'other-encoder'.*'test-encoder'"),
    ],
)
def test_features_of_another_model_stop_the_run(
    tmp_path: Path, make_shards: MakeShards, shard_args: dict[str, Any], message: str
) -> None:
    shards = make_shards(tmp_path / "train", num_samples=4, **shard_args)
    with pytest.raises(FeatureContractError, match=message):
        train_epoch(make_datamodule(shards, encoder="test-encoder", shuffle_buffer=1))


def test_too_few_shards_for_ranks_or_workers(
    tmp_path: Path, make_shards: MakeShards, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shards = make_shards(tmp_path / "train", num_samples=8)  # 2 shards
    with caplog.at_level(logging.WARNING, logger="vtsel.data"):
        datamodule = make_datamodule(shards, batch_size=2, num_workers=4)
        assert len(train_epoch(datamodule)) == datamodule.train_batches_per_epoch == 4
    assert "using 2 DataLoader worker(s) instead of 4" in caplog.text
    with pytest.raises(ValueError, match="too few for one batch of 16"):
        make_datamodule(shards, batch_size=16).setup("fit")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"2 shard.*3 ranks"):
        make_datamodule(shards).setup("fit")


def _manifest(feature_dim: int = FEATURE_DIM, grid: tuple[int, int] = GRID,
              encoder: str = "test-encoder") -> Manifest:
    return Manifest(encoder=encoder, layer=-2, grid=grid, feature_dim=feature_dim, image_size=64,
                    attention=False, feature_dtype="float16", target_size=IMAGE_SIZE,
                    config={"encoder": {"encoder_id": encoder}}, inputs={"count": 0, "sha256": ""})


@pytest.mark.parametrize(
    ("manifest_args", "message"),
    [
        ({"feature_dim": 48}, r"feature_dim 48 vs 32"),
        ({"grid": (8, 8)}, r"grid 8x8 vs 4x4"),
        ({"encoder": "other-encoder"}, r"encoder 'other-encoder' vs 'test-encoder'"),
    ],
)
def test_a_manifest_of_another_model_stops_setup_naming_the_file(
    tmp_path: Path, make_shards: MakeShards, manifest_args: dict[str, Any], message: str
) -> None:
    shards = make_shards(tmp_path / "out" / "train", num_samples=4)
    write_manifest(tmp_path / "out" / MANIFEST_FILE, _manifest(**manifest_args))
    where = re.escape(str(tmp_path / "out" / MANIFEST_FILE))
    with pytest.raises(FeatureContractError, match=f"{where} describes .*{message}"):
        make_datamodule(shards, encoder="test-encoder").setup("fit")


def test_a_matching_manifest_loads_and_shards_without_one_warn(
    tmp_path: Path, make_shards: MakeShards, caplog: pytest.LogCaptureFixture
) -> None:
    train = make_shards(tmp_path / "out" / "train", num_samples=8)
    write_manifest(tmp_path / "out" / MANIFEST_FILE, _manifest())
    old = make_shards(tmp_path / "old" / "val", num_samples=4, seed=1)
    with caplog.at_level(logging.WARNING, logger="vtsel.data"):
        datamodule = make_datamodule(train, val_shards=str(old), encoder="test-encoder")
        assert len(train_epoch(datamodule)) == 2
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{old} has no manifest.json")


def test_attention_is_batched_when_stored_and_a_mix_is_refused(tmp_path: Path) -> None:
    shards = tmp_path / "val"
    shards.mkdir()
    write_sizes(shards, {})  # add_shard lists each tar it writes
    rng = np.random.default_rng(0)
    attention = rng.random((3, GRID[0] * GRID[1])).astype(np.float32)  # (3, L)
    add_shard(shards, "shard-000000.tar", [
        encoded_sample(i, attention=attention[i]) for i in range(3)
    ])
    datamodule = make_datamodule(val_shards=str(shards), batch_size=3)
    datamodule.setup("validate")
    (batch,) = list(datamodule.val_dataloader())
    assert batch["attention"].shape == (3, GRID[0] * GRID[1])
    np.testing.assert_allclose(batch["attention"].numpy(), attention, rtol=1e-3)
    add_shard(shards, "shard-000001.tar", [encoded_sample(9)])  # no attention
    datamodule = make_datamodule(val_shards=str(shards), batch_size=4)
    datamodule.setup("validate")
    with pytest.raises(FeatureContractError, match=r"have attn\.npy but \['hand009-c00'\]"):
        list(datamodule.val_dataloader())


def test_extracted_attention_reaches_the_batch(tmp_path: Path) -> None:
    """Round trip: the encoder's CLS attention, through `vtsel extract`, to batch["attention"]."""
    keys = write_photos(tmp_path / "images", 3)
    encoder = OpenClipEncoder("ViT-S-16", attention=True)
    extract(str(tmp_path / "images"), str(tmp_path / "out"), encoder=encoder, num_workers=0)
    manifest = read_manifest(tmp_path / "out" / MANIFEST_FILE)
    assert manifest.attention is True
    datamodule = FeatureShardDataModule(
        val_shards=f"{tmp_path}/out/train::{tmp_path}/out/val", feature_dim=384,
        grid_size=(14, 14), image_size=112, encoder=manifest.encoder, batch_size=3,
        num_workers=0,
    )
    datamodule.setup("validate")
    (batch,) = list(datamodule.val_dataloader())
    assert batch["attention"].shape == (3, 196)
    torch.testing.assert_close(batch["attention"].sum(dim=1), torch.ones(3), atol=1e-2, rtol=0)
    for row, key in enumerate(batch["key"]):
        source = Image.open(tmp_path / "images" / f"{source_key_of(key)[0]}.png").convert("RGB")
        (crop,) = CenterCrop().crops(source, 224)
        with torch.inference_mode():
            expected = encoder(encoder.normalize(crop.view)[None]).attention[0]  # (196,)
        torch.testing.assert_close(batch["attention"][row], expected, atol=1e-4, rtol=1e-2)
    assert sorted(source_key_of(k)[0] for k in batch["key"]) == keys


class BatchCounter(L.LightningModule):
    """The least a LightningModule needs to consume batches; counts what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.val_samples = 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self.weight * batch["feats"].mean()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_samples += len(batch["key"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_runs_the_epoch_the_datamodule_promises(
    tmp_path: Path, make_shards: MakeShards
) -> None:
    train = make_shards(tmp_path / "train", num_samples=18)
    val = make_shards(tmp_path / "val", num_samples=6, seed=1)
    datamodule = make_datamodule(train, val_shards=str(val))
    model = BatchCounter()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=datamodule)
    assert trainer.num_training_batches == datamodule.train_batches_per_epoch == 4
    assert trainer.global_step == 2 * 4
    assert model.val_samples == 2 * 6


class KeyRecorder(BatchCounter):
    """Writes each rank's training keys to a file, since spawned ranks share no memory."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.train_keys: list[str] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.train_keys += batch["key"]
        return super().training_step(batch, batch_idx)

    def on_train_end(self) -> None:
        (self.out_dir / f"rank{self.global_rank}.json").write_text(json.dumps(self.train_keys))


@pytest.mark.slow
def test_ddp_ranks_run_equal_epochs_on_disjoint_samples(
    tmp_path: Path, make_shards: MakeShards
) -> None:
    train = make_shards(tmp_path / "train", num_samples=30)  # 8 shards, the last of 2
    datamodule = make_datamodule(train, batch_size=2, num_workers=2, shuffle_buffer=1)
    trainer = L.Trainer(
        strategy="ddp_spawn", devices=2, accelerator="cpu", max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(KeyRecorder(tmp_path), datamodule=datamodule)
    rank_keys = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(rank_keys[0]) == len(rank_keys[1]) == 8 * 2  # ceil((30 // 4) / 2) * 2 batches of 2
    assert not set(rank_keys[0]) & set(rank_keys[1])
