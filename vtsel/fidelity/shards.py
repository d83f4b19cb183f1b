"""Held-out shards for evaluation: every sample once, in shard order, with its metadata.

Training batches carry features, image and key only; an evaluation also needs where each crop
sits in its source image (``crop_box``, ``source_key``) to find the text in it, so it keeps
each sample's ``meta`` in the batch. Tar reading, decoding, the corruption budget, the contract
check and the collate are training's own (``vtsel.data.stream``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

import torch
import webdataset as wds

from vtsel.contract import FeatureContract, FeatureContractError
from vtsel.data.format import ATTN, RECV_ATTN, DecodedSample, SampleMeta
from vtsel.data.shardlist import load_shard_set
from vtsel.data.stream import (
    CorruptionBudget,
    Sample,
    collate,
    decode_readable,
    read_tars,
    sample_tensors,
)
from vtsel.methods.base import CLS_ATTENTION, RECEIVED_ATTENTION


@dataclass
class EvalBatch:
    """Up to ``batch_size`` held-out crops."""

    keys: list[str]
    feats: torch.Tensor  # (B, L, C) raw encoder tokens
    images: torch.Tensor  # (B, 3, S, S) in [0, 1]
    metas: list[SampleMeta]  # each crop's metadata (crop_box, source_key, grid)
    attention: torch.Tensor | None  # (B, L) CLS→patch attention, if the shards have it
    received_attention: torch.Tensor | None  # (B, 2, L) attention received (HiPrune's layers)

    @classmethod
    def of(cls, batch: Sample) -> EvalBatch:
        """The batch ``collate`` stacked from samples carrying their ``meta``."""
        return cls(batch["key"], batch["feats"], batch["image"], batch["meta"],
                   batch.get(CLS_ATTENTION), batch.get(RECEIVED_ATTENTION))

    def attention_maps(self, device: torch.device) -> dict[str, torch.Tensor | None]:
        """The stored maps on ``device``, keyed as ``vtsel.methods.base.attention_input``
        reads them."""
        maps = {CLS_ATTENTION: self.attention, RECEIVED_ATTENTION: self.received_attention}
        return {name: None if m is None else m.to(device) for name, m in maps.items()}


class HeldOutShards:
    """The samples of a shard spec, checked against the features a judge was trained on.

    Args:
        spec: Shards as training takes them: a folder, glob, brace pattern, ``::``-joined list.
        contract: Encoder, grid and width every sample must have.
        image_size: Side the stored crops are resized to (the judge's image size).
        max_corrupt: Corrupt samples skipped (with a warning) before the evaluation stops.
    """

    def __init__(
        self, spec: str, contract: FeatureContract, image_size: int, max_corrupt: int = 10
    ) -> None:
        try:
            shard_set = load_shard_set(spec, None)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"no held-out shards to evaluate: {err}") from err
        if shard_set.num_samples == 0:
            raise ValueError(
                f"the held-out shards {spec!r} hold no samples (sizes.json counts 0): extract "
                f"images into them first, e.g. with val_fraction 1.0"
            )
        self.spec = spec
        self.urls = shard_set.urls
        self.num_samples = shard_set.num_samples
        self.contract = contract
        self.image_size = image_size
        self.max_corrupt = max_corrupt
        first = next(self._samples(), None)
        if first is None:
            raise ValueError(f"the held-out shards {spec!r} hold no readable sample")
        self.has_attention = first[2].attention is not None
        self.has_received_attention = first[2].received_attention is not None

    def _samples(self) -> Iterator[tuple[str, str, DecodedSample]]:
        """(shard URL, key, sample) of every readable sample, checked against the contract."""
        budget = CorruptionBudget(self.max_corrupt)
        raw_samples = wds.DataPipeline(wds.SimpleShardList(self.urls), *read_tars(budget))
        for url, key, sample in decode_readable(raw_samples, budget):
            self._check(sample, f"sample {key!r} in {url}")
            yield url, key, sample

    def _check(self, sample: DecodedSample, where: str) -> None:
        self.contract.check(
            sample.contract, f"{where} holds", "the judge was trained on",
            "evaluate with a judge trained on these shards' encoder",
        )

    def _check_same_maps(self, sample: DecodedSample, where: str) -> None:
        """Refuse a sample whose attention members differ from the first sample's."""
        for member, has, first_has in (
            (ATTN, sample.attention is not None, self.has_attention),
            (RECV_ATTN, sample.received_attention is not None, self.has_received_attention),
        ):
            if has != first_has:
                raise FeatureContractError(
                    f"{where} {'has' if has else 'lacks'} {member} unlike the first sample: "
                    f"the shards mix two extractions"
                )

    def batches(self, batch_size: int, skip: Collection[str] = ()) -> Iterator[EvalBatch]:
        """Batches in shard order, leaving out the sample keys in ``skip`` (already scored)."""
        pending: list[Sample] = []
        for url, key, sample in self._samples():
            if key in skip:
                continue
            self._check_same_maps(sample, f"sample {key!r} in {url}")
            pending.append({**sample_tensors(key, sample, self.image_size), "meta": sample.meta})
            if len(pending) == batch_size:
                yield EvalBatch.of(collate(pending))
                pending = []
        if pending:
            yield EvalBatch.of(collate(pending))
