"""`vtsel visualize` on real image files with a really fitted, exported selector."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from tests.conftest import Exported, write_feature_shards
from tests.extract_support import TOWER_SIZE, save_tower
from tests.fit_support import TWINS, fit
from vtsel.cli import main
from vtsel.extract.crops import CenterCrop
from vtsel.extract.encoders import OpenClipEncoder, TransformersEncoder
from vtsel.figures import DROPPED_BRIGHTNESS, SEPARATOR_WIDTH
from vtsel.images import to_rgb
from vtsel.inference import TokenSelector
from vtsel.methods import RandomSelection
from vtsel.models.selector import tokens_for_ratio
from vtsel.visualize import CAPTION_HEIGHT

ENCODER = "open_clip:ViT-S-16:random:layer-2"  # what `vtsel extract` records by default
SIZE, GRID, WIDTH = 224, 14, 384  # ViT-S-16: 224 px input, 14x14 grid of 384-wide tokens
KEEP, SEED = 0.4, 3


@pytest.fixture(scope="module")
def vit_selector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A selector fitted for two steps on shards of the ViT-S-16 contract, exported."""
    root = tmp_path_factory.mktemp("visualize")
    contract = {"feature_dim": WIDTH, "grid": (GRID, GRID), "image_size": 112, "encoder": ENCODER}
    write_feature_shards(root / "shards" / "train", num_samples=8, seed=0, **contract)
    write_feature_shards(root / "shards" / "val", num_samples=4, seed=1, **contract)
    run = fit(
        TWINS[0], root / "shards", root / "runs",
        "--data.encoder", ENCODER,
        "--data.feature_dim", str(WIDTH),
        "--data.grid_size", f"[{GRID}, {GRID}]",
        "--data.image_size", "112",
        "--trainer.max_steps", "2",
    )
    main(["export", "--checkpoint", str(run / "checkpoints" / "last.ckpt"),
          "--out", str(root / "selector")])
    return root / "selector"


@pytest.fixture(scope="module")
def encoder() -> OpenClipEncoder:
    return OpenClipEncoder("ViT-S-16", pretrained=None, layer=-2)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 451x300 photo (non-square, so the centre crop matters)."""
    path = tmp_path_factory.mktemp("images") / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(path, quality=95)
    return path


def visualize(image: Path, selector: Path, out: Path, *extra: str) -> np.ndarray:
    main(["visualize", "--image", str(image), "--selector", str(selector), "--out", str(out),
          "--keep", str(KEEP), "--seed", str(SEED), *extra])
    with Image.open(out) as png:
        assert png.format == "PNG"
        return np.asarray(png.convert("RGB")).astype(int)  # (H, W, 3)


def kept_blocks(panel: np.ndarray, view: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Indices (k,) of the blocks of a grid x grid panel shown unchanged; every other block
    must be darkened."""
    block = view.shape[0] // grid
    blocks = lambda a: a.reshape(grid, block, grid, block, 3).swapaxes(1, 2)  # noqa: E731
    same = (blocks(panel) == blocks(view)).all(axis=(2, 3, 4))  # (H, W)
    darkened = np.abs(blocks(panel) - np.round(blocks(view) * DROPPED_BRIGHTNESS)) <= 1
    darkened = darkened.all(axis=(2, 3, 4))  # (H, W)
    assert (same ^ darkened).all(), "a block is neither kept nor darkened (or a black block)"
    return np.flatnonzero(same)


def test_panels_keep_the_seeded_random_subset_and_the_selector_top_tokens(
    vit_selector: Path, encoder: OpenClipEncoder, photo: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "figures" / "chelsea.png"  # the folder does not exist yet
    figure = visualize(photo, vit_selector, out)
    assert capsys.readouterr().out.strip() == str(out)
    assert figure.shape == (SIZE + CAPTION_HEIGHT, 2 * SIZE + SEPARATOR_WIDTH, 3)

    with Image.open(photo) as opened:
        (crop,) = CenterCrop().crops(to_rgb(opened), SIZE)
    with torch.inference_mode():
        feats = encoder(encoder.normalize(crop.view)[None]).features  # (1, L, C)
    budget = tokens_for_ratio(GRID * GRID, KEEP)
    expected_random = RandomSelection(seed=SEED).select(feats, budget)[0].numpy()
    expected_selector = TokenSelector.from_pretrained(vit_selector).select(feats, keep=KEEP)
    view = np.asarray(crop.view).astype(int)  # (S, S, 3)
    left = figure[CAPTION_HEIGHT:, :SIZE]
    right = figure[CAPTION_HEIGHT:, SIZE + SEPARATOR_WIDTH :]
    np.testing.assert_array_equal(kept_blocks(left, view), expected_random)
    np.testing.assert_array_equal(kept_blocks(right, view), expected_selector.indices[0].numpy())
    assert not np.array_equal(expected_random, expected_selector.indices[0].numpy())
    assert (figure[CAPTION_HEIGHT:, SIZE : SIZE + SEPARATOR_WIDTH] == 255).all()
    for caption in (figure[:CAPTION_HEIGHT, :SIZE], figure[:CAPTION_HEIGHT, SIZE:]):
        assert (caption < 128).any() and (caption == 255).mean() > 0.5  # dark text on white


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grey_and_transparent_images_work(
    vit_selector: Path, photo: Path, tmp_path: Path, mode: str
) -> None:
    with Image.open(photo) as opened:
        image = opened.convert(mode)
    if mode == "RGBA":
        image.putalpha(128)  # half transparent: composited onto white
    source = tmp_path / f"photo-{mode}.png"
    image.save(source)
    figure = visualize(source, vit_selector, tmp_path / "out.png")
    assert figure.shape == (SIZE + CAPTION_HEIGHT, 2 * SIZE + SEPARATOR_WIDTH, 3)
    panels = figure[CAPTION_HEIGHT:]
    if mode == "L":
        assert (panels[..., 0] == panels[..., 2]).all()  # grey in, grey out
    else:
        assert panels.max(axis=-1).min() >= 128 * DROPPED_BRIGHTNESS - 1  # white under alpha


def test_an_unreadable_image_is_named(vit_selector: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"cannot read image {re.escape(str(broken))}"):
        visualize(broken, vit_selector, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_a_selector_of_another_width_is_refused_naming_both(
    exported: Exported, photo: Path, tmp_path: Path
) -> None:
    # tests/test_export.py's selector: 32-wide tokens on a 4x4 grid of encoder "test-encoder"
    with pytest.raises(ValueError, match="'test-encoder', not an open_clip id"):
        visualize(photo, exported.directory, tmp_path / "out.png")
    other_shape = r"gives a 14x14 grid of 384-wide tokens.*takes a 4x4 grid of 32-wide"
    with pytest.raises(ValueError, match=other_shape):
        visualize(photo, exported.directory, tmp_path / "out.png", "--model_name", "ViT-S-16")


def test_weights_named_in_the_encoder_id_must_be_found(
    vit_selector: Path, photo: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "selector"
    copy.mkdir()
    for file in vit_selector.iterdir():
        text = file.read_bytes().replace(b":random:", b":my-weights.bin:")
        (copy / file.name).write_bytes(text)
    with pytest.raises(ValueError, match=r"'my-weights\.bin'.*--pretrained PATH"):
        visualize(photo, copy, tmp_path / "out.png")
    # --pretrained random overrides the recorded weights (and warns that they differ)
    with pytest.warns(UserWarning, match="my-weights.bin"):
        visualize(photo, copy, tmp_path / "out.png", "--pretrained", "random")


def test_an_extraction_config_gives_any_encoder_and_its_crop(
    exported: Exported, photo: Path, tmp_path: Path
) -> None:
    """--extraction builds what `vtsel extract` built: here a transformers tower (the demo's
    encoder class, tiny: 32-wide tokens on a 4x4 grid, the exported selector's contract)."""
    tower = save_tower(tmp_path / "tiny-dinov2")
    config = tmp_path / "extract.yaml"
    config.write_text(
        "images: unused\nout: unused\n"
        "encoder:\n  class_path: vtsel.extract.encoders.TransformersEncoder\n"
        f"  init_args: {{model: {tower}, layer: -2}}\n"
        "crops:\n  class_path: vtsel.extract.crops.CenterCrop\n"
    )
    out = tmp_path / "figure.png"
    with pytest.warns(UserWarning, match="test-encoder"):  # not the encoder it was trained on
        figure = visualize(photo, exported.directory, out, "--extraction", str(config))
    assert figure.shape == (TOWER_SIZE + CAPTION_HEIGHT, 2 * TOWER_SIZE + SEPARATOR_WIDTH, 3)

    encoder = TransformersEncoder(str(tower), layer=-2)
    with Image.open(photo) as opened:
        (crop,) = CenterCrop(encoder.resample).crops(to_rgb(opened), TOWER_SIZE)
    with torch.inference_mode():
        feats = encoder(encoder.normalize(crop.view)[None]).features  # (1, 16, 32)
    expected = TokenSelector.from_pretrained(exported.directory).select(feats, keep=KEEP)
    view = np.asarray(crop.view).astype(int)  # (S, S, 3)
    right = figure[CAPTION_HEIGHT:, TOWER_SIZE + SEPARATOR_WIDTH :]
    kept = kept_blocks(right, view, grid=encoder.grid[0])
    np.testing.assert_array_equal(kept, expected.indices[0].numpy())
