"""`vtsel extract` with a real (random-weight) open_clip ViT-S-16 on real photos: the shards'
contract, the manifest, the split, resuming, refusing another config, the command line."""

from __future__ import annotations

import errno
import gc
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from tests.extract_support import (
    assert_each_once,
    features_by_key,
    read_split,
    save_tower,
    source_keys,
    tars,
    write_photos,
)
from vtsel.cli import main
from vtsel.data.manifest import config_hash, read_manifest
from vtsel.extract import extract
from vtsel.extract.crops import CenterCrop
from vtsel.extract.encoders import OpenClipEncoder
from vtsel.extract.encoders.openclip import RANDOM_INIT_SEED

EXPECTED_ENCODER = "open_clip:ViT-S-16:random:layer-2"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder() -> OpenClipEncoder:
    """One ViT-S-16 for the module: building it is the slow part of a small extraction."""
    return OpenClipEncoder("ViT-S-16", pretrained=None, layer=-2)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_photos(folder, 6)
    return folder


def _run(images: Path, out: Path, encoder: OpenClipEncoder, **overrides: object):
    args = dict(val_fraction=0.3, batch_size=4, shard_maxcount=2, unit_size=2, num_workers=0)
    args.update(overrides)
    return extract(str(images), str(out), encoder=encoder, **args)


@pytest.fixture(scope="module")
def shards(image_dir: Path, encoder: OpenClipEncoder, tmp_path_factory: pytest.TempPathFactory
           ) -> Path:
    out = tmp_path_factory.mktemp("shards")
    _run(image_dir, out, encoder)
    return out


def test_every_image_is_one_sample_of_the_contract(shards: Path, image_dir: Path) -> None:
    assert_each_once(shards, {p.stem for p in image_dir.glob("*.png")})
    samples = read_split(shards, "train") + read_split(shards, "val")
    for key, sample in samples:
        assert key == f"{sample.meta.source_key}-c00"
        assert sample.feats.shape == (196, 384) and np.isfinite(sample.feats).all()
        assert sample.image.size == (112, 112)
        assert sample.attention is None
        assert sample.meta.encoder == EXPECTED_ENCODER
        assert (sample.meta.grid, sample.meta.feature_dim, sample.meta.layer) == ((14, 14), 384, -2)
    with tarfile.open(tars(shards, "train")[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".feats.npy"))
        on_disk = np.load(io.BytesIO(tar.extractfile(member).read()))
    assert on_disk.dtype == np.float16 and on_disk.shape == (196, 384)
    assert len(tars(shards, "train")) > 2  # units of 2 images, tars of at most 2 samples


def test_manifest_describes_encoder_crops_and_config(
    shards: Path, encoder: OpenClipEncoder
) -> None:
    manifest = read_manifest(shards / "manifest.json")
    assert (manifest.encoder, manifest.layer, manifest.grid) == (EXPECTED_ENCODER, -2, (14, 14))
    assert (manifest.feature_dim, manifest.image_size, manifest.target_size) == (384, 224, 112)
    assert manifest.feature_dtype == "float16" and manifest.attention is False
    assert manifest.config["encoder"] == json.loads(json.dumps(encoder.describe()))
    assert manifest.config["crops"] == CenterCrop().describe()
    assert manifest.inputs["count"] == 6
    written = json.loads((shards / "manifest.json").read_text())
    assert written["config_hash"] == config_hash(manifest.config)


def test_split_is_by_source_and_independent_of_units(
    shards: Path, image_dir: Path, encoder: OpenClipEncoder, tmp_path: Path
) -> None:
    first = source_keys(shards)
    assert first["train"] and first["val"]
    assert not set(first["train"]) & set(first["val"])
    _run(image_dir, tmp_path, encoder, unit_size=4, batch_size=3)
    assert {k: set(v) for k, v in source_keys(tmp_path).items()} == {
        k: set(v) for k, v in first.items()
    }
    again, before = features_by_key(tmp_path), features_by_key(shards)
    for key, feats in before.items():
        np.testing.assert_allclose(again[key], feats, atol=2e-3, rtol=2e-3)


def test_features_match_open_clip_on_the_same_crop(shards: Path, image_dir: Path) -> None:
    _, sample = read_split(shards, "train")[0]
    source = Image.open(image_dir / f"{sample.meta.source_key}.png").convert("RGB")
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


def test_rerun_keeps_committed_units_and_redoes_the_rest(
    shards: Path, image_dir: Path, encoder: OpenClipEncoder, tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    # As if killed after unit 1's tars were moved into place but before its ledger record,
    # and while unit 2 was being written.
    (out / "units" / "unit-000001.json").unlink()
    (out / ".partial" / "unit-000002" / "train").mkdir(parents=True)
    (out / ".partial" / "unit-000002" / "train" / "shard-000002-000.tar").write_bytes(b"half")
    (out / "train" / "sizes.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*/shard-00000[02]-*.tar")}
    redone = {p: p.stat().st_mtime_ns for p in out.glob("*/shard-000001-*.tar")}
    summary = _run(image_dir, out, encoder)
    assert_each_once(out, {p.stem for p in image_dir.glob("*.png")})
    assert kept and all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert redone and all(p.stat().st_mtime_ns != t for p, t in redone.items())
    assert not (out / ".partial").exists()
    assert summary.samples["train"] + summary.samples["val"] == 6


def test_another_config_is_refused_unless_overwrite(
    image_dir: Path, encoder: OpenClipEncoder, tmp_path: Path
) -> None:
    two = tmp_path / "two"
    two.mkdir()
    for name in ("img-00.png", "img-01.png"):
        shutil.copy(image_dir / name, two / name)
    out = tmp_path / "out"
    _run(two, out, encoder)
    with pytest.raises(ValueError, match=r"manifest\.json.*target_size: 112 -> 64"):
        _run(two, out, encoder, target_size=64)
    shutil.copy(image_dir / "img-02.png", two / "img-02.png")
    with pytest.raises(ValueError, match=r"inputs changed.*2 images then, 3 now"):
        _run(two, out, encoder)
    _run(two, out, encoder, target_size=64, overwrite=True)
    assert read_manifest(out / "manifest.json").target_size == 64
    assert_each_once(out, {"img-00", "img-01", "img-02"})
    assert {s.image.size for _, s in read_split(out, "train")} == {(64, 64)}


@pytest.mark.parametrize("where", ["the input folder", "inside it", "around it"])
def test_an_out_overlapping_the_inputs_is_refused_and_nothing_is_deleted(
    image_dir: Path, encoder: OpenClipEncoder, tmp_path: Path, where: str
) -> None:
    images = tmp_path / "photos" / "set"
    write_photos(images / "train", 2)  # a subfolder named like a split: overwrite cleared it
    out = {"the input folder": images, "inside it": images / "shards", "around it": tmp_path}[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=rf"--out {re.escape(str(out))} overlaps the input"):
        _run(images, out, encoder, overwrite=True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_overwrite_removes_only_what_an_extraction_wrote(
    image_dir: Path, encoder: OpenClipEncoder, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _run(image_dir, out, encoder)
    notes = out / "train" / "my-notes.txt"  # a user's file among the shards
    notes.write_text("keep me")
    _run(image_dir, out, encoder, target_size=64, overwrite=True)
    assert notes.read_text() == "keep me"
    assert_each_once(out, {p.stem for p in image_dir.glob("*.png")})


def test_shards_without_a_manifest_are_not_resumed(
    image_dir: Path, encoder: OpenClipEncoder, tmp_path: Path
) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(ValueError, match=r"holds shards but no manifest\.json.*--overwrite"):
        _run(image_dir, tmp_path, encoder)


def test_command_line_takes_encoder_and_crops_as_classes(image_dir: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(image_dir / "img-03.png", one / "img-03.png")
    tower = save_tower(tmp_path / "tiny-dinov2")  # the demo's encoder class, at toy size
    main([
        "extract", "--config", str(REPO / "conf" / "extract" / "demo.yaml"),
        "--images", str(one), "--out", str(tmp_path / "out"), "--num_workers", "0",
        "--encoder.model", str(tower), "--encoder.layer", "-3", "--crops", "Resize",
    ])
    manifest = read_manifest(tmp_path / "out" / "manifest.json")
    assert manifest.encoder == "transformers:tiny-dinov2:layer-3"
    assert manifest.config["crops"]["plan"] == "Resize"
    (_, sample), = read_split(tmp_path / "out", "train") + read_split(tmp_path / "out", "val")
    assert sample.meta.crop_box == (0, 0, 144, 96)  # the whole image, squashed


def test_list_file_input(image_dir: Path, encoder: OpenClipEncoder, tmp_path: Path) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text(
        f"# two photos\n{image_dir / 'img-00.png'}\n\n{image_dir / 'img-04.png'}\n"
        f"{image_dir / 'gone.png'}\n{listing}\n"
    )
    summary = _run(listing, tmp_path / "out", encoder, val_fraction=0.5)
    assert_each_once(tmp_path / "out", {"img-00", "img-04"})
    assert [(Path(s.where).name, s.kind) for s in summary.skipped] == [
        ("gone.png", "missing"), ("images.txt", "not an image or tar"),  # itself: a text file
    ]


@pytest.mark.parametrize("layout", ["glob", "folder of tars", "list file"])
def test_empty_input_names_the_spec(layout: str, tmp_path: Path) -> None:
    if layout == "glob":
        spec, message = str(tmp_path / "nothing-here" / "*.png"), "nothing-here"
    elif layout == "folder of tars":
        (tmp_path / "shards").mkdir()
        (tmp_path / "shards" / "00000.tar").write_bytes(b"")
        spec, message = str(tmp_path / "shards"), r"1 \.tar file.*shards/\*\.tar"
    else:
        (tmp_path / "list.txt").write_text("# nothing\n")
        spec, message = str(tmp_path / "list.txt"), "list.txt"
    with pytest.raises(FileNotFoundError, match=message):
        extract(spec, str(tmp_path / "out"))


def test_device_and_accelerator_must_agree(image_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="device='cpu' and accelerator='gpu' disagree"):
        extract(str(image_dir), str(tmp_path), device="cpu", accelerator="gpu")
    with pytest.raises(ValueError, match=r"cuda:1.*devices=2"):
        extract(str(image_dir), str(tmp_path), device="cuda:1", devices=2)


@pytest.mark.parametrize("preset", ["demo", "llava_next", "internvl"])
def test_presets_parse(preset: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["extract", "--config", str(REPO / "conf" / "extract" / f"{preset}.yaml"),
              "--print_config"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: vtsel.extract.encoders." in printed
    assert "class_path: vtsel.extract.crops." in printed


def test_local_weights_file_is_loaded_and_named(tmp_path: Path) -> None:
    source = open_clip.create_model("ViT-S-16", pretrained=None)
    weights = tmp_path / "my-vit-s.pt"
    torch.save(source.state_dict(), weights)
    encoder = OpenClipEncoder("ViT-S-16", pretrained=str(weights), layer=3)
    assert encoder.encoder_id == "open_clip:ViT-S-16:my-vit-s.pt:layer3"
    torch.testing.assert_close(encoder.visual.conv1.weight, source.visual.conv1.weight)
    assert len(encoder.visual.transformer.resblocks) == 4  # blocks after layer 3 are pruned


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 512 KiB tmpfs: a real full disk (ENOSPC), enlarged by the test with ``remount``."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)  # even with files left open


def test_a_full_disk_is_named_once_and_the_rerun_finishes(
    image_dir: Path, encoder: OpenClipEncoder, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unraisable: list[object] = []  # "Exception ignored in ...": tarfile flushing at collection
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    out = small_disk / "out"
    with pytest.raises(OSError, match=rf"shards of {re.escape(str(out))} failed \(No space left"
                       r" on device\).*free space.*rerun the same command") as failed:
        _run(image_dir, out, encoder)
    assert failed.value.errno == errno.ENOSPC
    gc.collect()
    assert unraisable == []
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    _run(image_dir, out, encoder)
    assert_each_once(out, {p.stem for p in image_dir.glob("*.png")})
