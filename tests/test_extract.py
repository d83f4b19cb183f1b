"""Feature extraction with a real (random-weight) open_clip ViT-S-16 on a handful of images."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import webdataset as wds
from PIL import Image

from vtsel.data.format import decode_sample
from vtsel.demo import write_demo_images
from vtsel.extract import OpenClipEncoder, extract
from vtsel.extract.encoders import RANDOM_INIT_SEED
from vtsel.images import to_rgb

EXPECTED_ENCODER = "open_clip:ViT-S-16:random:layer-2"
# Inputs that must be skipped, and the keys of those that must be converted and kept.
BROKEN = ("corrupt.png", "truncated.jpg", "tiny.png")
CONVERTED = ("gray", "rgba", "palette", "cmyk", "deep16", "sub/scan.v2.final")


def _write_odd_inputs(folder: Path, photo: Image.Image) -> None:
    """Files in the modes and states real image folders contain."""
    (folder / "sub").mkdir()
    photo.convert("L").save(folder / "gray.png")
    photo.convert("RGBA").save(folder / "rgba.png")
    photo.convert("P").save(folder / "palette.gif")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    deep = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")  # mode I;16
    photo.save(folder / "sub" / "scan.v2.final.jpg")
    Image.new("RGB", (1, 1), "red").save(folder / "tiny.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    photo.save(folder / "whole.jpg")
    whole = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (folder / "whole.jpg").unlink()
    (folder / "notes.txt").write_text("not an image, not listed")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    demo = tmp_path_factory.mktemp("demo")
    write_demo_images(str(demo), num_documents=2, num_charts=2, crops_per_photo=0)
    folder = tmp_path_factory.mktemp("images")
    for name in ("doc-0", "doc-1", "chart-0", "chart-1", "photo-mpl-grace_hopper-0"):
        shutil.copy(demo / f"{name}.png", folder / f"{name}.png")
    _write_odd_inputs(folder, Image.open(demo / "photo-sklearn-china-0.png"))
    return folder


def _run(image_dir: Path, out: Path) -> None:
    extract(str(image_dir), str(out), val_fraction=0.3, batch_size=4, shard_maxcount=3)


@pytest.fixture(scope="module")
def shards(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    _run(image_dir, out)
    return out


def _tars(shard_dir: Path) -> list[str]:
    return sorted(str(p) for p in shard_dir.glob("*.tar"))


def _samples(out: Path, split: str) -> list:
    return [decode_sample(raw) for raw in wds.WebDataset(_tars(out / split), shardshuffle=False)]


def _keys_by_split(out: Path) -> dict[str, set[str]]:
    return {split: {s.meta.source_key for s in _samples(out, split)} for split in ("train", "val")}


def test_shards_decode_with_the_expected_contract(shards: Path) -> None:
    samples = _samples(shards, "train") + _samples(shards, "val")
    kept = {"doc-0", "doc-1", "chart-0", "chart-1", "photo-mpl-grace_hopper-0", *CONVERTED}
    assert {s.meta.source_key for s in samples} == kept
    for sample in samples:
        assert sample.feats.shape == (196, 384)
        assert np.isfinite(sample.feats).all()
        assert sample.image.size == (112, 112)
        assert sample.meta.encoder == EXPECTED_ENCODER
        assert (sample.meta.grid, sample.meta.feature_dim, sample.meta.layer) == ((14, 14), 384, -2)
    with tarfile.open(_tars(shards / "train")[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".feats.npy"))
        on_disk = np.load(io.BytesIO(tar.extractfile(member).read()))
    assert on_disk.dtype == np.float16 and on_disk.shape == (196, 384)


def test_sizes_json_counts_every_tar(shards: Path) -> None:
    for split in ("train", "val"):
        sizes = json.loads((shards / split / "sizes.json").read_text())
        assert sorted(sizes) == sorted(Path(t).name for t in _tars(shards / split))
        for tar_name, count in sizes.items():
            with tarfile.open(shards / split / tar_name) as tar:
                assert count == len({m.name.split(".")[0] for m in tar.getmembers()})
        assert sum(sizes.values()) == len(_samples(shards, split))
    assert len(_tars(shards / "train")) > 1  # shard_maxcount=3 rolls over


def test_split_is_by_source_and_repeatable(shards: Path, image_dir: Path, tmp_path: Path) -> None:
    first = _keys_by_split(shards)
    assert first["train"] and first["val"]
    assert not first["train"] & first["val"]
    _run(image_dir, tmp_path)
    assert _keys_by_split(tmp_path) == first


def test_features_match_open_clip_on_the_same_crop(shards: Path, image_dir: Path) -> None:
    sample = next(s for s in _samples(shards, "train") + _samples(shards, "val"))
    source = to_rgb(Image.open(next(image_dir.glob(sample.meta.source_key + ".*"))))
    x0, y0, x1, y1 = sample.meta.crop_box
    side = min(source.size)
    assert (x1 - x0, y1 - y0) == (side, side)  # the centred square
    assert (x0, y0) == ((source.width - side) // 2, (source.height - side) // 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = open_clip.create_model("ViT-S-16", pretrained=None).eval()
    cfg = model.visual.preprocess_cfg
    transform = open_clip.image_transform(224, is_train=False, mean=cfg["mean"], std=cfg["std"])
    pixels = transform(source.crop(sample.meta.crop_box))[None]  # (1, 3, 224, 224)
    with torch.inference_mode():
        out = model.visual.forward_intermediates(
            pixels, indices=[-2], intermediates_only=True, output_fmt="NLC"
        )
    expected = out["image_intermediates"][0][0].numpy()  # (196, 384)
    np.testing.assert_allclose(sample.feats, expected, atol=1e-2, rtol=1e-2)


def test_bad_inputs_are_skipped_and_named(
    image_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        _run(image_dir, tmp_path)
    printed = capsys.readouterr().out
    assert f"skipped {len(BROKEN)} of" in printed
    for name in BROKEN:
        assert name in printed and name in caplog.text
    assert "1x1" in printed


def test_list_file_input(image_dir: Path, tmp_path: Path) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text(f"{image_dir / 'doc-0.png'}\n{image_dir / 'sub' / 'scan.v2.final.jpg'}\n")
    extract(str(listing), str(tmp_path / "out"), val_fraction=0.5)
    keys = _keys_by_split(tmp_path / "out")
    assert keys["train"] | keys["val"] == {"doc-0", "sub/scan.v2.final"}
    assert len(keys["val"]) == 1


def test_empty_glob_names_the_pattern(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nothing-here" / "*.png")
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        extract(pattern, str(tmp_path / "out"))


def test_duplicate_keys_name_both_files(tmp_path: Path) -> None:
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match=r"a\.jpg.*a\.png"):
        extract(str(tmp_path), str(tmp_path / "out"))


def test_local_weights_file_is_loaded_and_named(tmp_path: Path) -> None:
    source = open_clip.create_model("ViT-S-16", pretrained=None)
    weights = tmp_path / "my-vit-s.pt"
    torch.save(source.state_dict(), weights)
    encoder = OpenClipEncoder("ViT-S-16", pretrained=str(weights), layer=3)
    assert encoder.encoder_id == "open_clip:ViT-S-16:my-vit-s.pt:layer3"
    torch.testing.assert_close(encoder.visual.conv1.weight, source.visual.conv1.weight)
    assert len(encoder.visual.transformer.resblocks) == 4  # blocks after layer 3 are pruned
