"""The demo image set: every kind is written, text boxes are right, and runs are repeatable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtsel.demo import write_demo_images

SMALL = {"num_documents": 3, "num_charts": 4, "crops_per_photo": 1, "seed": 7}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    folder = tmp_path_factory.mktemp("demo")
    return folder, write_demo_images(str(folder), **SMALL)


@pytest.fixture(scope="module")
def demo_dir(demo_run: tuple[Path, dict[str, int]]) -> Path:
    return demo_run[0]


def _pngs(folder: Path, prefix: str) -> list[Path]:
    return sorted(folder.glob(f"{prefix}-*.png"))


def test_every_kind_is_written_and_counted(demo_run: tuple[Path, dict[str, int]]) -> None:
    demo_dir, counts = demo_run
    assert counts["doc"] == len(_pngs(demo_dir, "doc")) == SMALL["num_documents"]
    assert counts["chart"] == len(_pngs(demo_dir, "chart")) == SMALL["num_charts"]
    assert counts["photo"] == len(_pngs(demo_dir, "photo")) > 0
    photo_names = [p.name for p in _pngs(demo_dir, "photo")]
    for source in ("skimage", "sklearn", "mpl"):
        assert any(name.startswith(f"photo-{source}-") for name in photo_names), source
    assert "photo-mpl-grace_hopper-0.png" in photo_names
    assert "photo-sklearn-china-1.png" in photo_names
    for path in _pngs(demo_dir, "photo"):
        assert Image.open(path).mode == "RGB"


def test_regions_lie_inside_the_image_and_cover_ink(demo_dir: Path) -> None:
    synthetic = _pngs(demo_dir, "doc") + _pngs(demo_dir, "chart")
    for path in synthetic:
        pixels = np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3)
        regions = json.loads(path.with_suffix(".regions.json").read_text())
        assert (regions["width"], regions["height"]) == (pixels.shape[1], pixels.shape[0])
        assert regions["boxes"], f"{path.name} has no text regions"
        colors, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
        background = colors[counts.argmax()]
        for x0, y0, x1, y1 in regions["boxes"]:
            assert 0 <= x0 < x1 <= pixels.shape[1] and 0 <= y0 < y1 <= pixels.shape[0]
            inside = pixels[y0:y1, x0:x1]
            assert (inside != background).any(axis=-1).mean() > 0.02, (path.name, x0, y0)


def test_same_seed_gives_identical_bytes_and_reruns_overwrite(
    demo_dir: Path, tmp_path: Path
) -> None:
    write_demo_images(str(tmp_path), **SMALL)
    written = sorted(p.name for p in demo_dir.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == written
    for name in written:
        assert (tmp_path / name).read_bytes() == (demo_dir / name).read_bytes(), name
    write_demo_images(str(tmp_path), **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == written
