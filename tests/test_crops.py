"""Crop plans against transformers' own LLaVA-NeXT and InternVL image processors.

The processors are built from arguments (no download) with rescaling and normalisation off, so
their output is the resized uint8 pixels the VLM would normalise: a plan's views must equal them
exactly, crop for crop, in both of transformers' backends.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageDraw, ImageFont
from transformers import (
    GotOcr2ImageProcessor,
    GotOcr2ImageProcessorPil,
    LlavaNextImageProcessor,
    LlavaNextImageProcessorPil,
)

from vtsel.extract.crops import CenterCrop, CropPlan, InternVLTiles, LlavaNextAnyres, Resize

LLAVA_SIZE, INTERNVL_SIZE = 336, 448  # LLaVA-1.6's CLIP-336 crops, InternVL3's 448-px tiles
HF_LLAVA = {"pil": LlavaNextImageProcessorPil, "torchvision": LlavaNextImageProcessor}
HF_INTERNVL = {"pil": GotOcr2ImageProcessorPil, "torchvision": GotOcr2ImageProcessor}
RAW = {"do_rescale": False, "do_normalize": False}  # processors return the resized pixels


def _rendered_page(width: int, height: int) -> Image.Image:
    """A document-like image: coloured blocks and lines of text, so every region differs."""
    page = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(page), ImageFont.load_default()
    rng = np.random.default_rng(0)
    for top in range(0, height, 40):
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        draw.rectangle((8, top + 4, width // 3, top + 30), fill=colour)
        draw.text((width // 3 + 12, top + 10), f"line {top // 40}: total {top * 7}", "black", font)
    return page


IMAGES = {
    "wide": Image.fromarray(skimage.data.chelsea()),  # 451x300
    "square": Image.fromarray(skimage.data.astronaut()),  # 512x512
    "tall": Image.fromarray(skimage.data.coffee()).transpose(Image.Transpose.TRANSPOSE),  # 400x600
    "extreme": Image.fromarray(skimage.data.astronaut()).crop((0, 200, 512, 260)),  # 512x60
    "rendered_tall": _rendered_page(260, 900),
    "rendered_wide": _rendered_page(500, 230),  # fits 672 x 309.12: rounded up, to 310
    "rendered_big": _rendered_page(1000, 1000),
    "tiny": Image.fromarray(skimage.data.chelsea()).resize((13, 9)),
}


def _pixels(plan: CropPlan, image: Image.Image, size: int) -> torch.Tensor:
    views = [np.asarray(crop.view) for crop in plan.crops(image, size)]
    return torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float()  # (N, 3, S, S)


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
@pytest.mark.parametrize("name", list(IMAGES))
def test_llava_next_crops_are_the_processors_pixels(name: str, backend: str) -> None:
    processor = HF_LLAVA[backend](
        size={"shortest_edge": LLAVA_SIZE},
        crop_size={"height": LLAVA_SIZE, "width": LLAVA_SIZE},
        **RAW,
    )
    expected = processor(IMAGES[name], return_tensors="pt")["pixel_values"][0]  # (N, 3, S, S)
    got = _pixels(LlavaNextAnyres(backend=backend), IMAGES[name], LLAVA_SIZE)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected.float(), atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
@pytest.mark.parametrize("name", list(IMAGES))
def test_internvl_tiles_are_the_processors_pixels(name: str, backend: str) -> None:
    processor = HF_INTERNVL[backend](
        size={"height": INTERNVL_SIZE, "width": INTERNVL_SIZE}, crop_to_patches=True, **RAW
    )
    expected = processor(IMAGES[name], return_tensors="pt")["pixel_values"]  # (N, 3, S, S)
    got = _pixels(InternVLTiles(backend=backend), IMAGES[name], INTERNVL_SIZE)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected.float(), atol=0, rtol=0)


def test_llava_next_2x2_best_fit_is_base_plus_four_quadrants() -> None:
    image = IMAGES["square"]  # 512x512: the 672x672 canvas keeps every pixel, so 2x2 wins
    plan = LlavaNextAnyres()
    assert plan.canvas(*image.size) == (672, 672)
    crops = plan.crops(image, LLAVA_SIZE)
    assert len(crops) == 5  # 5 x 576 tokens with a 24x24-token tower
    assert [crop.index for crop in crops] == list(range(5))
    assert crops[0].box == (0, 0, 512, 512)  # the base image first
    assert [crop.box for crop in crops[1:]] == [
        (0, 0, 256, 256), (256, 0, 512, 256), (0, 256, 256, 512), (256, 256, 512, 512)
    ]


@pytest.mark.parametrize(
    ("name", "grid"),
    [
        ("wide", (3, 2)),  # 451/300 = 1.50: 3:2 exactly
        ("extreme", (9, 1)),  # 512/60 = 8.53: 9:1 is closer than 8:1
        ("tall", (2, 3)),  # 400/600 = 0.67: 2:3 exactly
        ("rendered_tall", (1, 4)),  # 260/900 = 0.289: 1:4 (0.25) beats 1:3 (0.33)
        ("square", (1, 1)),  # 1:1; 2x2 would cover more than twice its area
        ("rendered_big", (3, 3)),  # 1:1, and 1e6 px exceed half of 3x3 tiles (903,168 px)
    ],
)
def test_internvl_tile_grid_follows_its_rules(name: str, grid: tuple[int, int]) -> None:
    image = IMAGES[name]
    plan = InternVLTiles()
    assert plan.tile_grid(*image.size, INTERNVL_SIZE) == grid
    crops = plan.crops(image, INTERNVL_SIZE)
    tiles = grid[0] * grid[1]
    assert len(crops) == (tiles + 1 if tiles > 1 else 1)  # a thumbnail follows several tiles
    assert len(InternVLTiles(thumbnail=False).crops(image, INTERNVL_SIZE)) == tiles
    if tiles > 1:
        assert crops[-1].box == (0, 0, *image.size)


@pytest.mark.parametrize(
    ("plan", "size"),
    [(LlavaNextAnyres(), LLAVA_SIZE), (InternVLTiles(), INTERNVL_SIZE), (CenterCrop(), 224),
     (Resize(), 224)],
    ids=lambda value: type(value).__name__ if isinstance(value, CropPlan) else str(value),
)
@pytest.mark.parametrize("name", ["wide", "square", "tall", "extreme", "rendered_tall"])
def test_boxes_are_the_source_regions_the_views_show(plan: CropPlan, size: int, name: str) -> None:
    """A view matches its box cut from the source (black outside, as the VLM pads), and not the
    box shifted by a quarter of its size."""
    image = IMAGES[name]
    for crop in plan.crops(image, size):
        assert crop.view.size == (size, size) and crop.view.mode == "RGB"
        x0, y0, x1, y1 = crop.box
        shift_x, shift_y = (x1 - x0) // 4, (y1 - y0) // 4
        shifted = (x0 + shift_x, y0 + shift_y, x1 + shift_x, y1 + shift_y)
        assert _mean_error(image, crop.box, crop.view) < 8, crop
        assert _mean_error(image, shifted, crop.view) > 25, crop


def _mean_error(image: Image.Image, box: tuple[int, int, int, int], view: Image.Image) -> float:
    region = image.crop(box).resize(view.size, Image.Resampling.BICUBIC)
    return float(np.abs(np.asarray(region, float) - np.asarray(view, float)).mean())


def test_padding_boxes_reach_beyond_the_image() -> None:
    # 451x300 on a 672x336 canvas: resized to ceil(451 * 336/300) = 506 x 336, 83-px bars;
    # a tile's 336 canvas px are 336 * 451/506 = 299.5 source px, starting 83 px left of x=0.
    image = IMAGES["wide"]
    tiles = LlavaNextAnyres().crops(image, LLAVA_SIZE)[1:]
    assert [tile.box for tile in tiles] == [(-74, 0, 226, 300), (226, 0, 525, 300)]
    left, right = np.asarray(tiles[0].view), np.asarray(tiles[1].view)
    assert (left[:, :83] == 0).all() and (right[:, -83:] == 0).all()  # the bars are black
    assert left[:, 84:].mean() > 50 and right[:, :-84].mean() > 50


def test_center_crop_and_resize() -> None:
    image = IMAGES["tall"]  # 400x600
    (crop,) = CenterCrop().crops(image, 224)
    assert crop.box == (0, 100, 400, 500)
    (whole,) = Resize(resample="bilinear").crops(image, 224)
    assert whole.box == (0, 0, 400, 600)
    expected = image.resize((224, 224), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(whole.view), np.asarray(expected))


def test_describe_is_json_and_tells_plans_apart() -> None:
    plans = [
        LlavaNextAnyres(),
        LlavaNextAnyres(grid_pinpoints=[[336, 336], [336, 672]]),
        LlavaNextAnyres(backend="torchvision"),
        InternVLTiles(),
        InternVLTiles(max_tiles=6),
        InternVLTiles(thumbnail=False),
        CenterCrop(),
        Resize(),
    ]
    described = [json.dumps(plan.describe(), sort_keys=True) for plan in plans]
    assert len(set(described)) == len(plans)
    assert json.loads(described[0])["grid_pinpoints"][2] == [672, 672]


def test_bad_settings_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="resample='cubic'"):
        CenterCrop(resample="cubic")
    with pytest.raises(ValueError, match="backend='cv2'"):
        Resize(backend="cv2")
    with pytest.raises(ValueError, match="min_tiles <= max_tiles"):
        InternVLTiles(min_tiles=4, max_tiles=2)
    with pytest.raises(ValueError, match=r"500x672.*multiple of the crop size 336"):
        LlavaNextAnyres(grid_pinpoints=[(500, 672)]).crops(IMAGES["wide"], LLAVA_SIZE)
    with pytest.raises(ValueError, match="mode 'L'"):
        Resize().crops(IMAGES["wide"].convert("L"), 224)
