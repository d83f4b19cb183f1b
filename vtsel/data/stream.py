"""WebDataset pipelines that turn feature shards into training and validation batches.

A batch is ``{"feats": (B, L, C) float32, "image": (B, 3, S, S) float32 in [0, 1], "key": [B]}``,
plus ``"attention": (B, L) float32`` when the shards store each token's CLS attention and
``"received_attention": (B, 2, L) float32`` when they store the attention tokens receive.
The DataModule decides how many batches each worker makes; this module only builds the streams.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from vtsel.contract import FeatureContract, FeatureContractError
from vtsel.data.format import (
    ATTN,
    RECV_ATTN,
    SIZES_FILE,
    CorruptSampleError,
    DecodedSample,
    decode_sample,
)
from vtsel.methods.base import CLS_ATTENTION, RECEIVED_ATTENTION
from vtsel.seeds import stream_seed

log = logging.getLogger(__name__)

Sample = dict[str, Any]


@dataclass(frozen=True)
class SampleSpec:
    """What every sample must look like to feed the configured model."""

    contract: FeatureContract
    image_size: int


class CorruptionBudget:
    """Skips corrupt samples and unreadable tars, but stops a run whose data is rotten.

    One budget lives in each DataLoader worker (the pipeline is copied into every worker), and its
    count restarts with each epoch (``epoch``), not with each pass over the shards an epoch may
    make: a long run must not die because the same few bad samples come round again every
    epoch, and within one epoch the cap is the cap.
    """

    def __init__(self, max_corrupt: int) -> None:
        self.max_corrupt = max_corrupt
        self.count = 0
        self.current_url = "?"  # the tar being read: WebDataset's errors do not reliably name it
        self.current_url_failed = False
        self.failed_urls: set[str] = set()  # tars cut short: their sample counts are not checked

    def epoch(self, source: Iterable[Sample]) -> Iterator[Sample]:
        """Pipeline source: ``source`` once, the count reset first (one call per epoch)."""
        self.count = 0
        yield from source

    def track_shards(self, shards: Iterable[Sample]) -> Iterator[Sample]:
        """Pipeline stage in front of the tar reader: shards pass through.

        The tar reader asks for the next shard only after finishing the last, so the URL seen
        last here is the one a tar-reading error belongs to.
        """
        for shard in shards:
            self.current_url, self.current_url_failed = shard["url"], False
            yield shard

    def skip_tar_error(self, exn: Exception) -> bool:
        """WebDataset exception handler: count a broken tar once, then go on to the next one.

        One truncated tar raises twice (reading the member, then at the shard level); only the
        first says anything new.
        """
        if not self.current_url_failed:
            self.current_url_failed = True
            self.failed_urls.add(self.current_url)
            message = exn.args[0] if exn.args else ""
            self.record(self.current_url, "the rest of the tar", f"{type(exn).__name__}: {message}")
        return True

    def record(self, url: str, what: str, reason: object) -> None:
        """Count one skipped piece of data; past ``max_corrupt``, stop the run."""
        self.count += 1
        if self.count > self.max_corrupt:
            raise RuntimeError(
                f"more than max_corrupt={self.max_corrupt} corrupt samples in one worker this "
                f"epoch; the last: {what} in {url}: {reason}"
            )
        log.warning(
            "skipping %s in %s (%d/%d): %s", what, url, self.count, self.max_corrupt, reason
        )


def split_by_rank(shards: Iterable[Sample], rank: int, world_size: int) -> Iterator[Sample]:
    """``wds.split_by_node`` with the rank given, not detected.

    ``wds.split_by_node`` reads RANK/WORLD_SIZE from the environment or torch.distributed, which
    need not agree with the Lightning trainer (and is not initialised in spawned workers). The
    batch counts are computed from the trainer's rank and world, so the split must use them too.
    """
    yield from islice(shards, rank, None, world_size)


def image_to_tensor(image: Image.Image, image_size: int) -> torch.Tensor:
    """RGB image -> (3, S, S) float32 in [0, 1], resized if it was stored at another size."""
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32) / 255.0  # (S, S, 3)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (3, S, S)


def decode_readable(
    raw_samples: Iterable[Sample], budget: CorruptionBudget
) -> Iterator[tuple[str, str, DecodedSample]]:
    """(shard URL, key, sample) of every raw sample that decodes; the others are counted in
    ``budget`` (which stops the run past its limit), never silently dropped."""
    for raw in raw_samples:
        url, key = raw.get("__url__", "?"), raw.get("__key__", "?")
        try:
            yield url, key, decode_sample(raw)
        except CorruptSampleError as err:
            budget.record(url, f"sample {key!r}", err)


def decode_and_check(
    raw_samples: Iterable[Sample], spec: SampleSpec, budget: CorruptionBudget
) -> Iterator[Sample]:
    """Raw tar members -> tensors; skip corrupt samples, stop at once on a contract breach."""
    for url, key, sample in decode_readable(raw_samples, budget):
        spec.contract.check(
            sample.contract, f"sample {key!r} in {url} holds", "the config expects",
            "extract features with the encoder the config is for, or use the config that "
            "matches these shards",
        )
        yield sample_tensors(key, sample, spec.image_size)


def sample_tensors(key: str, sample: DecodedSample, image_size: int) -> Sample:
    """One decoded sample as the tensors a batch stacks (``collate``)."""
    tensors = {
        "feats": torch.from_numpy(sample.feats),  # (L, C)
        "image": image_to_tensor(sample.image, image_size),  # (3, S, S)
        "key": key,
    }
    if sample.attention is not None:
        tensors[CLS_ATTENTION] = torch.from_numpy(sample.attention)  # (L,)
    if sample.received_attention is not None:
        tensors[RECEIVED_ATTENTION] = torch.from_numpy(sample.received_attention)  # (2, L)
    return tensors


def collate(samples: list[Sample]) -> Sample:
    """Stack samples; each attention map only if every sample has it (one extraction's shards
    do): ``attention`` (B, L) from ``attn.npy``, ``received_attention`` (B, 2, L) from
    ``recv_attn.npy``.

    Entries other than the tensors (``key``, and ``meta`` where an evaluation adds it) become
    lists in sample order.
    """
    batch: Sample = {
        "feats": torch.stack([s["feats"] for s in samples]),  # (B, L, C)
        "image": torch.stack([s["image"] for s in samples]),  # (B, 3, S, S)
    }
    maps = {CLS_ATTENTION: ATTN, RECEIVED_ATTENTION: RECV_ATTN}
    for name in samples[0].keys() - {"feats", "image", *maps}:
        batch[name] = [s[name] for s in samples]
    for name, member in maps.items():
        with_map = [s["key"] for s in samples if name in s]
        if len(with_map) == len(samples):
            batch[name] = torch.stack([s[name] for s in samples])
        elif with_map:
            without = [s["key"] for s in samples if name not in s]
            raise FeatureContractError(
                f"samples {with_map[:3]} have {member} but {without[:3]} do not: the shards "
                f"mix extractions with and without attention"
            )
    return batch


def read_tars(budget: CorruptionBudget) -> list[Any]:
    """Pipeline stages: shard dicts -> raw samples, unreadable tars counted against
    ``budget``."""
    return [budget.track_shards, wds.tarfile_to_samples(handler=budget.skip_tar_error)]


def check_tar_sizes(
    samples: Iterable[Sample], sizes: dict[str, int], budget: CorruptionBudget
) -> Iterator[Sample]:
    """Raw samples pass through; each whole tar must hold what ``sizes.json`` says.

    The epoch's length comes from ``sizes.json``: a count that claims more than a tar holds
    would fill the epoch with repeats without a word. Tars cut short by corruption are
    counted by the budget instead.
    """
    current, count = None, 0
    for sample in samples:
        if sample["__url__"] != current:
            _check_tar_size(current, count, sizes, budget)
            current, count = sample["__url__"], 0
        count += 1
        yield sample
    _check_tar_size(current, count, sizes, budget)


def _check_tar_size(
    url: str | None, count: int, sizes: dict[str, int], budget: CorruptionBudget
) -> None:
    if url is None or url in budget.failed_urls or url not in sizes or sizes[url] == count:
        return
    raise ValueError(
        f"{url} holds {count} samples, but {SIZES_FILE} next to it says {sizes[url]}: the epoch "
        f"length would be wrong; rewrite {SIZES_FILE} (vtsel extract writes it) or pass the "
        f"true count with --data.train_num_samples"
    )


def train_stream(
    urls: list[str],
    spec: SampleSpec,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    batches_per_worker: int,
    shuffle_buffer: int,
    max_corrupt: int,
    seed: int,
    shard_sizes: list[int] | None = None,
) -> wds.DataPipeline:
    """An endless stream per worker, cut to ``batches_per_worker`` full batches per epoch.

    Endless so that every worker of every rank yields the same number of batches whatever its
    shards hold (unequal batch counts hang DDP). Shards are dealt to ranks once, before any
    shuffle, so the ranks' samples stay disjoint in every pass; each pass then reorders the
    worker's own shards and shuffles its samples in a buffer that drains at the end of the
    pass, so no sample of the next pass is mixed into this one. A sample repeats within an
    epoch only when its worker's share is smaller than the epoch. ``shard_sizes`` (per URL,
    from ``sizes.json``) are checked against what each tar holds.
    """
    budget = CorruptionBudget(max_corrupt)
    sizes = {} if shard_sizes is None else dict(zip(urls, shard_sizes, strict=True))
    one_pass = wds.DataPipeline(
        wds.SimpleShardList(urls),
        partial(split_by_rank, rank=rank, world_size=world_size),
        wds.split_by_worker,
        wds.detshuffle(bufsize=len(urls), initial=len(urls), seed=seed),
        *read_tars(budget),
        partial(check_tar_sizes, sizes=sizes, budget=budget),
        # raw bytes are shuffled, not decoded tensors: a buffer of them takes far less memory.
        # Per-rank seed: ranks read different samples, so they need not shuffle in lockstep.
        wds.shuffle(shuffle_buffer, rng=random.Random(stream_seed(seed, rank))),
        partial(decode_and_check, spec=spec, budget=budget),
    ).repeat()
    return wds.DataPipeline(
        partial(budget.epoch, one_pass),
        wds.batched(batch_size, partial=False, collation_fn=collate),
    ).with_epoch(batches_per_worker)


def val_stream(
    urls: list[str], spec: SampleSpec, *, rank: int, world_size: int, batch_size: int,
    max_corrupt: int,
) -> wds.DataPipeline:
    """Each of this rank's samples once, in shard order, keeping the last partial batch."""
    budget = CorruptionBudget(max_corrupt)
    return wds.DataPipeline(
        partial(budget.epoch, wds.SimpleShardList(urls)),
        partial(split_by_rank, rank=rank, world_size=world_size),
        wds.split_by_worker,
        *read_tars(budget),
        partial(decode_and_check, spec=spec, budget=budget),
        wds.batched(batch_size, partial=True, collation_fn=collate),
    )
