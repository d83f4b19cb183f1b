"""How close `vtsel extract` comes to the bare encoder's speed, measured in one run.

    .venv/bin/python benchmarks/bench_extraction.py

Both sides use the same model (a random-weight open_clip ViT-S-16, 224 px, batches of 16) and
the same JPEG photos (640 x 480, COCO's typical size):

- bare encoder: images decoded, centre-cropped and normalised beforehand (untimed), then only
  the forward passes are timed;
- extraction: the whole `extract` (reading, decoding, cropping and normalising in one DataLoader
  worker, the forward in Lightning's predict loop, PNG targets, float16 features, tars, ledger).
  Its fixed cost (building the trainer, starting the worker, listing) does not grow with the
  data, so the rate is the marginal one: (N_large - N_small) / (t_large - t_small).

Each side is measured in wall-clock images/s and in images per CPU-second (this process and
its finished children, the DataLoader worker). On a machine whose cores other jobs share, the
wall clock mostly measures their load; CPU time measures the work each image costs, so its ratio
is the figure that carries over. The two sides are alternated in every repeat so drift hits both
alike; each figure is the median of the repeats. The goal is extraction/bare >= 0.9: the encoder
barely waits for data. Prints the figures and rewrites this benchmark's section of BENCHMARKS.md
at the repo root.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from resource import RUSAGE_CHILDREN, RUSAGE_SELF

import skimage.data
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import BENCHMARKS_FILE, machine, update_section  # noqa: E402
from vtsel.extract import extract  # noqa: E402
from vtsel.extract.crops import CenterCrop  # noqa: E402
from vtsel.extract.encoders import OpenClipEncoder  # noqa: E402

THREADS = 2
MODEL = "ViT-S-16"
SOURCE_SIZE = (640, 480)
BATCH = 16
NUM_WORKERS = 1
SMALL, LARGE = 32, 192  # images in the two extraction runs
REPEATS = 3
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina")


def write_images(folder: Path, count: int) -> None:
    """``count`` different 640 x 480 JPEG photos (shifted views of scikit-image's photos)."""
    folder.mkdir(parents=True)
    for i in range(count):
        source = Image.fromarray(getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()).convert("RGB")
        source = source.resize((800, 600), Image.Resampling.BILINEAR)
        shift = (i // len(PHOTOS)) * 7 % 160
        view = source.crop((shift, shift // 2, shift + SOURCE_SIZE[0], shift // 2 + SOURCE_SIZE[1]))
        view.save(folder / f"photo-{i:04d}.jpg", quality=90)


@dataclass(frozen=True)
class Cost:
    wall: float  # seconds
    cpu: float  # CPU-seconds of this process and its finished children


@contextlib.contextmanager
def measured() -> Iterator[list[Cost]]:
    """Wall and CPU time of the block, appended to the yielded list when it ends."""
    def cpu() -> float:
        own, children = (resource.getrusage(who) for who in (RUSAGE_SELF, RUSAGE_CHILDREN))
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    costs: list[Cost] = []
    wall, cpu_start = time.perf_counter(), cpu()
    yield costs
    costs.append(Cost(time.perf_counter() - wall, cpu() - cpu_start))


def bare_forward(encoder: OpenClipEncoder, folder: Path) -> Cost:
    """Forward passes only, on inputs prepared beforehand exactly as extraction prepares them."""
    plan = CenterCrop()
    pixels = torch.stack([
        encoder.normalize(plan.crops(Image.open(p).convert("RGB"), encoder.image_size)[0].view)
        for p in sorted(folder.glob("*.jpg"))
    ])  # (N, 3, S, S)
    with measured() as cost, torch.inference_mode():
        for batch in pixels.split(BATCH):
            encoder(batch)
    return cost[0]


def extraction(encoder: OpenClipEncoder, folder: Path, out: Path) -> Cost:
    with measured() as cost, contextlib.redirect_stdout(io.StringIO()):  # progress and summary
        extract(str(folder), str(out), encoder=encoder, batch_size=BATCH,
                num_workers=NUM_WORKERS, unit_size=LARGE, shard_maxcount=64)
    return cost[0]


def main() -> None:
    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore")  # Lightning's advice on worker counts
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # "GPU available: ..."
    encoder = OpenClipEncoder(MODEL)
    rates: dict[str, list[tuple[float, float]]] = {"bare": [], "extraction": []}  # (wall, cpu)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "small", SMALL)
        write_images(root / "large", LARGE)
        for repeat in range(REPEATS):
            bare = bare_forward(encoder, root / "large")
            rates["bare"].append((LARGE / bare.wall, LARGE / bare.cpu))
            small = extraction(encoder, root / "small", root / f"out-small-{repeat}")
            large = extraction(encoder, root / "large", root / f"out-large-{repeat}")
            images = LARGE - SMALL
            rates["extraction"].append(
                (images / (large.wall - small.wall), images / (large.cpu - small.cpu))
            )
            (b_wall, b_cpu), (e_wall, e_cpu) = rates["bare"][-1], rates["extraction"][-1]
            print(f"repeat {repeat}: bare {b_wall:.1f} images/s ({b_cpu:.2f}/CPU-s), "
                  f"extraction {e_wall:.1f} images/s ({e_cpu:.2f}/CPU-s)")
    wall = {side: statistics.median(r[0] for r in values) for side, values in rates.items()}
    cpu = {side: statistics.median(r[1] for r in values) for side, values in rates.items()}
    cpu_ratio, wall_ratio = cpu["extraction"] / cpu["bare"], wall["extraction"] / wall["bare"]
    pairs = list(zip(rates["bare"], rates["extraction"], strict=True))
    repeats = "; ".join(
        f"{b[0]:.1f} / {e[0]:.1f} images/s, {b[1]:.2f} / {e[1]:.2f} images/CPU-s" for b, e in pairs
    )
    spread = ", ".join(f"{e[1] / b[1]:.2f}" for b, e in pairs)
    body = f"""
{machine(THREADS)}; load average {os.getloadavg()[0]:.1f} at the end (other jobs share
the cores). Model: open_clip {MODEL}, random weights, 224 px input, batches of {BATCH}; inputs:
{LARGE} JPEG photos of {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]}; extraction with {NUM_WORKERS}
DataLoader worker, centre crops, 112-px PNG targets, float16 features in tars. Median of
{REPEATS} alternated repeats; extraction's rates are marginal (({LARGE} - {SMALL}) images over
the difference of two runs), so its fixed start-up cost is left out.

| | images per CPU-second | images/s (wall clock) |
|---|---|---|
| bare encoder forward (inputs prepared beforehand) | {cpu["bare"]:.2f} | {wall["bare"]:.1f} |
| `vtsel extract`, end to end | {cpu["extraction"]:.2f} | {wall["extraction"]:.1f} |
| **extraction / bare** (goal >= 0.9) | **{cpu_ratio:.2f}** | {wall_ratio:.2f} |

Each repeat, bare / extraction: {repeats}; the CPU-time ratio of each repeat: {spread}.
The CPU-time ratio is the share of extraction's work that is the forward pass itself; on this
2-core machine the worker's decoding and cropping take cores from it, on a GPU machine they run
beside it. Wall-clock rates swing with the other jobs.
"""
    print(body)
    update_section("Extraction throughput (benchmarks/bench_extraction.py)", body)
    print(f"updated {BENCHMARKS_FILE}")


if __name__ == "__main__":
    main()
