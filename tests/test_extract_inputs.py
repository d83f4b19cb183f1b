"""Inputs as real collections hold them: odd image modes, broken and absurd files, awkward keys,
duplicates, and img2dataset's WebDataset tars. Each is built here as a real file."""

from __future__ import annotations

import io
import json
import logging
import struct
import tarfile
import zlib
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.extract_support import assert_each_once, features_by_key, photo, read_split
from vtsel.data.format import sample_key, source_key_of
from vtsel.extract import extract
from vtsel.extract.decode import UnusableImageError, decode_rgb
from vtsel.extract.encoders import OpenClipEncoder
from vtsel.extract.writer import ExtractionSummary

PIXEL_LIMIT = 1_000_000  # the run's max_image_pixels: huge.png (1200 x 1000) is over it
CONVERTED = {"good", "gray", "rgba", "palette", "palette-clear", "cmyk", "deep16", "a.b", "_x",
             "dup", "sub/scan.v2.final"}
SKIPPED = {"tiny.png": "too small", "huge.png": "too large", "truncated.png": "unreadable",
           "corrupt.jpg": "unreadable", "dup.png": "duplicate key"}


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_inputs(folder: Path) -> None:
    """One file per case; the photo is real, the damage is done by hand."""
    (folder / "sub").mkdir(parents=True)
    photo(0).save(folder / "good.png")
    photo(1).convert("L").save(folder / "gray.png")
    rgba = photo(2).convert("RGBA")
    alpha = np.full((rgba.height, rgba.width), 255, dtype=np.uint8)
    alpha[: rgba.height // 4] = 0  # the top quarter fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "rgba.png")
    photo(3).convert("P").save(folder / "palette.gif")
    clear = photo(5).convert("P")
    clear.info["transparency"] = 0
    clear.save(folder / "palette-clear.png", transparency=0)
    photo(4).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    deep = np.asarray(photo(6).convert("L"), dtype=np.uint16) * 200  # up to 51000: 16-bit
    Image.fromarray(deep).save(folder / "deep16.png")  # mode I;16
    Image.new("RGB", (1, 1), "red").save(folder / "tiny.png")
    Image.new("RGB", (1200, 1000), "blue").save(folder / "huge.png")
    whole = _png_bytes(photo(7))
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    photo(8).save(folder / "a.b.jpg")
    photo(0).save(folder / "_x.png")
    photo(1).save(folder / "dup.jpg")
    photo(2).save(folder / "dup.png")
    photo(3).save(folder / "sub" / "scan.v2.final.jpg")
    (folder / "notes.txt").write_text("not an image, not listed")


@dataclass(frozen=True)
class Run:
    images: Path
    out: Path
    summary: ExtractionSummary
    printed: str
    logged: str


@pytest.fixture(scope="module")
def encoder() -> OpenClipEncoder:
    return OpenClipEncoder("ViT-S-16")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, encoder: OpenClipEncoder) -> Run:
    images = tmp_path_factory.mktemp("odd")
    _write_inputs(images)
    out = tmp_path_factory.mktemp("shards")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("vtsel").addHandler(handler)
    printed = io.StringIO()
    try:
        with redirect_stdout(printed):
            summary = extract(str(images), str(out), encoder=encoder, batch_size=4,
                              unit_size=4, num_workers=0, max_image_pixels=PIXEL_LIMIT)
    finally:
        logging.getLogger("vtsel").removeHandler(handler)
    logged = "\n".join(record.getMessage() for record in records)
    return Run(images, out, summary, printed.getvalue(), logged)


def test_odd_modes_and_keys_are_kept_and_bad_files_skipped(run: Run) -> None:
    assert_each_once(run.out, CONVERTED)
    skipped = {Path(skip.where).name: skip.kind for skip in run.summary.skipped}
    assert skipped == SKIPPED
    for _, sample in read_split(run.out, "train") + read_split(run.out, "val"):
        assert np.isfinite(sample.feats).all() and sample.image.mode == "RGB"


def test_every_skip_is_logged_and_counted_in_the_summary(run: Run) -> None:
    assert "skipped 5 of 16 input(s): 2 unreadable, " in run.printed
    for kind in ("1 too small", "1 too large", "1 duplicate key"):
        assert kind in run.printed
    for name in SKIPPED:
        assert name in run.printed and name in run.logged
    assert "1x1 is under 16 px" in run.printed
    assert f"1200x1000 is 1200000 pixels, over max_image_pixels={PIXEL_LIMIT}" in run.printed
    assert "dup.jpg" in run.printed  # the duplicate names the file that was kept
    written = json.loads((run.out / "skipped.json").read_text())
    assert {Path(s["where"]).name: s["kind"] for s in written} == SKIPPED


def test_keys_are_escaped_reversibly_and_the_original_kept(run: Run) -> None:
    samples = read_split(run.out, "train") + read_split(run.out, "val")
    by_source = {sample.meta.source_key: key for key, sample in samples}
    assert by_source["a.b"] == "a%2Eb-c00"
    assert by_source["_x"] == "%5Fx-c00"
    assert by_source["sub/scan.v2.final"] == "sub%2Fscan%2Ev2%2Efinal-c00"
    for source, key in by_source.items():
        assert "." not in key and not key.startswith("_")
        assert source_key_of(key) == (source, 0)
    assert len({sample_key(k, 0) for k in ("a.b", "a_b", "a%2Eb", "a/b")}) == 4


def test_conversions_look_right(run: Run) -> None:
    targets = {s.meta.source_key: np.asarray(s.image, dtype=np.float64)
               for _, s in read_split(run.out, "train") + read_split(run.out, "val")}
    assert (targets["rgba"][:20] == 255).all()  # transparent onto white, not black
    assert targets["rgba"][-20:].std() > 10
    assert 30 < targets["deep16"].mean() < 225 and targets["deep16"].std() > 10  # not clipped
    square = photo(4)  # 96 x 96: the centre crop is the whole photo
    cmyk_reference = np.asarray(
        square.resize((224, 224), Image.Resampling.BICUBIC)
        .resize((112, 112), Image.Resampling.BICUBIC), dtype=np.float64,
    )
    assert np.abs(targets["cmyk"] - cmyk_reference).mean() < 10  # colours, not inverted ink


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but whose pixel data is one row."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
            ">I", zlib.crc32(kind + payload)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    pixels = zlib.compress(b"\0" + b"\0" * 3 * 16)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(UnusableImageError, match=r"too large: 50000x50000") as caught:
        decode_rgb(_png_header(50000, 50000))  # 2.5 G pixels claimed, never decoded
    assert caught.value.kind == "too large"
    limit = Image.MAX_IMAGE_PIXELS
    assert decode_rgb(_png_bytes(photo(0)), max_pixels=10**6).size == photo(0).size
    assert limit == Image.MAX_IMAGE_PIXELS  # PIL's own guard is restored


def _img2dataset_tar(path: Path, start: int, images: list[bytes]) -> list[str]:
    """A tar as img2dataset writes it: ``<key>.jpg``, ``<key>.json``, ``<key>.txt``."""
    keys = []
    with tarfile.open(path, "w") as tar:
        for offset, data in enumerate(images):
            key = f"{start + offset:09d}"
            members = {
                f"{key}.jpg": data,
                f"{key}.json": json.dumps({"key": key, "status": "success"}).encode(),
                f"{key}.txt": f"caption {key}".encode(),
            }
            for name, payload in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            keys.append(key)
    return keys


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_img2dataset_tars_give_the_same_samples_as_the_files(
    tmp_path: Path, encoder: OpenClipEncoder
) -> None:
    photos = [_jpeg(photo(i)) for i in range(4)]
    shards = tmp_path / "downloaded"
    shards.mkdir()
    keys = _img2dataset_tar(shards / "00000.tar", 0, photos[:2])
    keys += _img2dataset_tar(shards / "00001.tar", 10000, [*photos[2:], b"\xff\xd8 not a jpeg"])
    broken = keys.pop()
    summary = extract(f"{shards}/{{00000..00001}}.tar", str(tmp_path / "from-tars"),
                      encoder=encoder, unit_size=2, num_workers=0)
    assert_each_once(tmp_path / "from-tars", set(keys))
    (skip,) = summary.skipped
    assert skip.where == f"{shards / '00001.tar'}:{broken}.jpg" and skip.kind == "unreadable"
    folder = tmp_path / "files"
    folder.mkdir()
    for key, data in zip(keys, photos, strict=True):
        (folder / f"{key}.jpg").write_bytes(data)
    extract(str(folder), str(tmp_path / "from-files"), encoder=encoder, num_workers=0)
    from_tars, from_files = features_by_key(tmp_path / "from-tars"), features_by_key(
        tmp_path / "from-files"
    )
    assert from_tars.keys() == from_files.keys()
    for key, feats in from_tars.items():
        np.testing.assert_allclose(feats, from_files[key], atol=2e-3, rtol=2e-3)


def test_features_beyond_float16_are_skipped_not_written(tmp_path: Path) -> None:
    """An encoder whose tokens overflow float16 would write Inf that every reader rejects."""
    encoder = OpenClipEncoder("ViT-S-16")
    with torch.no_grad():
        for block in encoder.visual.transformer.resblocks:  # the MLPs write far beyond +-65504
            block.mlp.c_proj.weight.mul_(1e6)
    images = tmp_path / "images"
    images.mkdir()
    photo(0).save(images / "loud.png")
    summary = extract(str(images), str(tmp_path / "out"), encoder=encoder, num_workers=0)
    (skip,) = summary.skipped
    assert (skip.where, skip.kind) == ("loud (crop 0)", "not finite")
    assert "not finite in float16" in skip.detail
    assert summary.samples == {"train": 0, "val": 0}
    assert not list((tmp_path / "out").glob("*/*.tar"))
