"""Shared fixtures: real tiny feature shards on disk, written as `vtsel extract` writes them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from vtsel.data.format import SHARD_PATTERN, SampleMeta, encode_sample, write_sizes

MakeShards = Callable[..., Path]


def write_feature_shards(
    directory: Path,
    num_samples: int,
    feature_dim: int = 32,
    grid: tuple[int, int] = (4, 4),
    image_size: int = 32,
    samples_per_shard: int = 4,
    encoder: str = "test-encoder",
    seed: int = 0,
) -> Path:
    """Write ``num_samples`` random samples as ``shard-%06d.tar`` files plus ``sizes.json``.

    Features are standard normal so no two samples are alike (a test that mixes samples up or
    repeats one can tell); the last shard holds the remainder, so shard sizes can be uneven.
    Returns ``directory`` so a call can be passed straight to a DataModule.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = grid
    sizes: dict[str, int] = {}
    with wds.ShardWriter(
        str(directory / SHARD_PATTERN), maxcount=samples_per_shard, verbose=0
    ) as writer:
        for index in range(num_samples):
            feats = rng.standard_normal((h * w, feature_dim)).astype(np.float32)  # (L, C)
            pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
            meta = SampleMeta(
                encoder=encoder,
                layer=-2,
                grid=grid,
                feature_dim=feature_dim,
                crop_index=0,
                crop_box=(0, 0, image_size, image_size),
                source_key=f"img{seed:03d}_{index:05d}",
            )
            writer.write(encode_sample(feats, Image.fromarray(pixels, "RGB"), meta))
            shard_name = Path(writer.fname).name  # the tar this sample just went into
            sizes[shard_name] = sizes.get(shard_name, 0) + 1
    write_sizes(directory, sizes)
    return directory


@pytest.fixture
def make_shards() -> MakeShards:
    """The shard writer as a fixture: ``make_shards(tmp_path / "train", num_samples=10)``."""
    return write_feature_shards


@dataclass(frozen=True)
class Exported:
    checkpoint: Path  # the fit's last.ckpt
    directory: Path  # what `vtsel export` wrote from it


@pytest.fixture(scope="session")
def wired_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real one-step fit of the demo twin (``WIRING``) on its own shards, shared read-only
    by the tests that need a checkpoint to start from: its run folder."""
    from tests.fit_support import TWINS, WIRING, fit

    root = tmp_path_factory.mktemp("wired")
    write_feature_shards(root / "shards" / "train", num_samples=24, seed=0)
    write_feature_shards(root / "shards" / "val", num_samples=8, seed=1)
    return fit(TWINS[0], root / "shards", root / "runs", *WIRING)


@pytest.fixture(scope="session")
def wired_judge_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real one-step judge fit of the demo twin: the evaluation's plumbing (``vtsel eval``,
    the notebook) needs a judge checkpoint, not a good judge. Its run folder."""
    from tests.fit_support import JUDGE_TWIN, WIRING, fit

    root = tmp_path_factory.mktemp("wired_judge")
    write_feature_shards(root / "shards" / "train", num_samples=16, seed=0)
    write_feature_shards(root / "shards" / "val", num_samples=4, seed=1)
    return fit(JUDGE_TWIN, root / "shards", root / "runs", *WIRING)


@pytest.fixture(scope="session")
def exported(wired_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The wired run's export, shared by every test that needs a trained selector (export,
    evaluation, integrations)."""
    from vtsel.cli import main

    checkpoint = wired_run / "checkpoints" / "last.ckpt"
    directory = tmp_path_factory.mktemp("export") / "selector"
    main(["export", "--checkpoint", str(checkpoint), "--out", str(directory)])
    return Exported(checkpoint, directory)


@pytest.fixture
def shards(tmp_path: Path, make_shards: MakeShards) -> Path:
    """Tiny train (24) and val (8) shards of the twins' contract."""
    make_shards(tmp_path / "shards" / "train", num_samples=24, seed=0)
    make_shards(tmp_path / "shards" / "val", num_samples=8, seed=1)
    return tmp_path / "shards"
