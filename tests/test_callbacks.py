"""SelectionImages: the paper's Figure 1 and the reconstruction in TensorBoard, read back."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from tests.conftest import write_feature_shards
from tests.fit_support import TWINS, fit
from vtsel.train.callbacks import DROPPED_BRIGHTNESS, SEPARATOR_WIDTH, overlay_mask, side_by_side

KEEP_RATIO = 0.4  # as the twins configure the callback
IMAGE_SIZE, GRID = 32, 4  # tests/conf/demo.yaml on tests/conftest.py shards
EPOCHS = 2
STEPS_PER_EPOCH = 24 // 4  # training crops / batch size of the twin


def test_overlay_darkens_exactly_the_dropped_blocks() -> None:
    image = torch.rand(1, 3, 4, 6)  # (B, 3, S, S') with 2x3 pixel blocks for a 2x2 grid
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B, H, W)
    out = overlay_mask(image, mask)
    dropped = torch.zeros(4, 6, dtype=torch.bool)
    dropped[:2, 3:] = dropped[2:, :3] = True
    assert torch.equal(out[..., ~dropped], image[..., ~dropped])
    assert torch.allclose(out[..., dropped], image[..., dropped] * DROPPED_BRIGHTNESS)
    panels = side_by_side(out[0], image[0])
    assert panels.shape == (3, 4, 2 * 6 + SEPARATOR_WIDTH)
    assert torch.equal(panels[:, :, 6 : 6 + SEPARATOR_WIDTH], torch.ones(3, 4, SEPARATOR_WIDTH))


def decode(event: object) -> np.ndarray:
    """An image event's PNG -> (H, W, 3) int array."""
    png = Image.open(io.BytesIO(event.encoded_image_string))
    return np.asarray(png.convert("RGB")).astype(int)


def panels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return pixels[:, :IMAGE_SIZE], pixels[:, IMAGE_SIZE + SEPARATOR_WIDTH :]


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> EventAccumulator:
    """One real fit of the demo twin, read back; the tests below only read it."""
    tmp_path = tmp_path_factory.mktemp("fit")
    write_feature_shards(tmp_path / "shards" / "train", num_samples=24, seed=0)
    write_feature_shards(tmp_path / "shards" / "val", num_samples=8, seed=1)
    run = fit(TWINS[0], tmp_path / "shards", tmp_path / "runs", "--trainer.max_epochs", str(EPOCHS))
    (event_file,) = run.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_every_validation_writes_random_vs_selector_and_reconstruction(
    events: EventAccumulator,
) -> None:
    # global_step after each training epoch (24 crops in batches of 4); Lightning's own val
    # scalars sit one step earlier, at the last training batch's step
    val_steps = [STEPS_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]
    tags = set(events.Tags()["images"])
    assert tags == {f"{kind}/{i}" for kind in ("selection", "reconstruction") for i in range(4)}
    for tag in tags:
        images = events.Images(tag)
        assert [e.step for e in images] == val_steps  # one per validation epoch, none at sanity
        sizes = {(e.width, e.height) for e in images}
        assert sizes == {(2 * IMAGE_SIZE + SEPARATOR_WIDTH, IMAGE_SIZE)}  # panel | panel

    target, _ = panels(decode(events.Images("reconstruction/0")[-1]))
    random_panel, selector_panel = panels(decode(events.Images("selection/0")[-1]))
    assert not np.array_equal(random_panel, selector_panel)
    block = IMAGE_SIZE // GRID
    for panel in (random_panel, selector_panel):
        darkened = (panel != target).any(axis=-1)  # (S, S): kept pixels are the target's exactly
        assert abs(darkened.mean() - (1 - KEEP_RATIO)) <= 1 / GRID**2  # a block's rounding
        blocks = darkened.reshape(GRID, block, GRID, block)
        assert (blocks.all(axis=(1, 3)) | ~blocks.any(axis=(1, 3))).all()  # whole tokens
        expected = np.round(target[darkened] * DROPPED_BRIGHTNESS)
        assert np.abs(panel[darkened] - expected).max() <= 1


def test_fit_end_puts_the_final_gain_in_the_hparams_metric(events: EventAccumulator) -> None:
    content = events.PluginTagToContent("hparams")
    experiment = hparams_metadata.parse_experiment_plugin_data(
        content[hparams_metadata.EXPERIMENT_TAG]
    )
    assert [m.name.tag for m in experiment.metric_infos] == ["hp_metric"]
    assert {h.name for h in experiment.hparam_infos} >= {"lr", "p", "q", "tau"}
    final_gain = events.Scalars("val/selector_gain@25")[-1]
    placeholder, hp_metric = events.Scalars("hp_metric")  # the HPARAMS tab shows the last
    assert placeholder.value == -1  # Lightning's default_hp_metric, written at fit start
    assert hp_metric.value == pytest.approx(final_gain.value)
    assert hp_metric.step == STEPS_PER_EPOCH * EPOCHS  # after the -1 Lightning writes at start


def test_without_tensorboard_the_fit_runs_and_writes_no_images(
    shards: Path, tmp_path: Path
) -> None:
    run = fit(
        TWINS[0], shards, tmp_path / "runs",
        "--trainer.max_epochs", "1",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
    )
    assert (run / "metrics.csv").is_file()
    assert not list(run.glob("events.out.tfevents.*"))
