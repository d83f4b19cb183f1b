"""Text recall: text boxes mapped through a crop onto its token grid, on hand-built crops whose
answer is known and on real rendered demo documents and charts (text tokens hold the ink)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vtsel.data.format import SampleMeta
from vtsel.demo import write_demo_images
from vtsel.fidelity.text_recall import TextRegions, text_cover, text_recall

ENCODER_SIDE, GRID = 224, (14, 14)  # the demo encoder: ViT-S/16 at 224 px


def meta(source_key: str, crop_box: tuple[int, int, int, int], grid: tuple[int, int]) -> SampleMeta:
    return SampleMeta("test-encoder", -2, grid, 32, 0, crop_box, source_key)


def write_regions(folder: Path, source_key: str, boxes: list[list[int]]) -> None:
    (folder / f"{source_key}.regions.json").write_text(
        json.dumps({"width": 100, "height": 64, "boxes": boxes})
    )


def test_boxes_map_through_the_crop_box_onto_the_tokens_they_cover(tmp_path: Path) -> None:
    # a 100x64 image whose centre square x in [18, 82) is the crop; 4x4 tokens of 16 px
    write_regions(tmp_path, "page", [[34, 16, 50, 32], [0, 48, 18, 64], [66, 56, 82, 60]])
    regions = TextRegions(tmp_path, min_cover=0.25)
    text = regions.text_tokens([meta("page", (18, 0, 82, 64), (4, 4))])  # (1, 16)
    # box 1 is token (1, 1) exactly; box 2 lies left of the crop; box 3 covers a quarter of
    # token (3, 3)
    assert text[0].nonzero().squeeze(-1).tolist() == [5, 15]
    cover = text_cover([[34, 16, 50, 32], [66, 56, 82, 60]], (18, 0, 82, 64), (4, 4))
    assert cover[1, 1] == 1.0 and cover[3, 3] == pytest.approx(0.25) and cover.sum() == 1.25
    stricter = TextRegions(tmp_path, min_cover=0.5).text_tokens([meta("page", (18, 0, 82, 64),
                                                                      (4, 4))])
    assert stricter[0].nonzero().squeeze(-1).tolist() == [5]


def test_recall_is_the_share_of_text_tokens_kept_and_undefined_without_text(
    tmp_path: Path,
) -> None:
    write_regions(tmp_path, "doc", [[16, 0, 48, 16]])  # tokens (0, 1) and (0, 2)
    regions = TextRegions(tmp_path)
    metas = [meta("doc", (0, 0, 64, 64), (4, 4)), meta("photo", (0, 0, 64, 64), (4, 4))]
    text = regions.text_tokens(metas)  # the photo has no regions file: no text
    keep = torch.zeros(2, 16)
    keep[:, [1, 5, 6, 7]] = 1.0
    recall = text_recall(keep, text)
    assert recall[0].item() == 0.5
    assert torch.isnan(recall[1])


def test_a_missing_regions_folder_and_a_broken_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"regions folder .*nowhere does not exist"):
        TextRegions(tmp_path / "nowhere")
    (tmp_path / "bad.regions.json").write_text(json.dumps({"boxes": [[1, 2, 3]]}))
    with pytest.raises(ValueError, match=r"bad\.regions\.json: every box must be"):
        TextRegions(tmp_path).text_tokens([meta("bad", (0, 0, 8, 8), (2, 2))])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    write_demo_images(str(folder), num_documents=3, num_charts=3, crops_per_photo=0, heldout=True)
    return folder


def test_held_out_layout_keeps_charts_and_other_photo_sources_out_of_training(demo: Path) -> None:
    train = {p.stem for p in (demo / "train").glob("*.png")}
    heldout = {p.stem for p in (demo / "heldout").glob("*.png")}
    assert not train & heldout
    assert {f"doc-{i}" for i in range(3)} <= train
    assert {f"chart-{i}" for i in range(3)} <= heldout
    assert not any(name.startswith("chart") for name in train)
    assert {"photo-mpl-grace_hopper-0", "photo-sklearn-china-0"} <= heldout
    assert "photo-skimage-astronaut-0" in train
    assert not any(name.startswith("photo-skimage") for name in heldout)
    for name in [*train, *heldout]:
        folder = demo / ("train" if name in train else "heldout")
        assert (folder / f"{name}.regions.json").is_file() == (not name.startswith("photo"))


def centre_crop_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The largest centred square, as the demo extraction's ``CenterCrop`` cuts it."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return left, top, left + side, top + side


@pytest.mark.parametrize("kind,folder", [("doc", "train"), ("chart", "heldout")])
def test_demo_text_tokens_hold_the_ink_and_the_print_is_patch_sized(
    demo: Path, kind: str, folder: str
) -> None:
    regions = TextRegions(demo / folder)
    text_std, blank_std, heights = [], [], []
    for path in sorted((demo / folder).glob(f"{kind}-*.png")):
        image = Image.open(path).convert("RGB")
        box = centre_crop_box(image)
        text = regions.text_tokens([meta(path.stem, box, GRID)])[0].view(GRID)  # (14, 14)
        view = image.crop(box).resize((ENCODER_SIDE, ENCODER_SIDE), Image.Resampling.BICUBIC)
        gray = np.asarray(view.convert("L"), dtype=np.float32)
        patch_std = gray.reshape(14, 16, 14, 16).std(axis=(1, 3))  # (14, 14) ink in a patch
        text_std += patch_std[text.numpy()].tolist()
        blank_std += patch_std[~text.numpy()].tolist()
        scale = ENCODER_SIDE / (box[2] - box[0])
        heights += [(y1 - y0) * scale for _, y0, _, y1 in regions.boxes(path.stem)]
    assert 0.05 < len(text_std) / (len(text_std) + len(blank_std)) < 0.95
    assert np.mean(text_std) > 2 * np.mean(blank_std)
    # text about one 16-px patch tall as the encoder sees it, not a few pixels
    assert np.median(heights) >= 9, np.median(heights)
