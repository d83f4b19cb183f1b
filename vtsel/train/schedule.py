"""Learning-rate schedule of the paper (linear warmup over 5% of steps, then cosine decay)."""

from __future__ import annotations

import lightning as L
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_fraction: float) -> LRScheduler:
    """Linear warmup for ``warmup_fraction`` of ``total_steps``, then cosine decay to zero.

    Built from torch's own schedulers so its state checkpoints and resumes like any other.
    """
    if total_steps < 1:
        raise ValueError(f"the schedule needs at least one optimizer step, got {total_steps}")
    warmup_steps = max(1, round(warmup_fraction * total_steps))
    decay_steps = max(1, total_steps - warmup_steps)
    warmup = LinearLR(optimizer, start_factor=1.0 / (warmup_steps + 1), total_iters=warmup_steps)
    decay = CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=0.0)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])


def fit_optimizer_steps(trainer: L.Trainer, batches_per_epoch: int) -> int:
    """Optimizer steps this fit will take.

    With a streaming (iterable) dataset ``trainer.estimated_stepping_batches`` only knows
    ``max_steps``, so the length comes from the data: batches per epoch per rank (from the
    shards' ``sizes.json``), over gradient accumulation, times ``max_epochs``; ``max_steps``
    wins when it is set and shorter.
    """
    per_epoch = max(1, batches_per_epoch // trainer.accumulate_grad_batches)
    if trainer.limit_train_batches is not None and isinstance(trainer.limit_train_batches, int):
        per_epoch = min(per_epoch, max(1, trainer.limit_train_batches))
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    from_epochs = per_epoch * epochs if epochs else None
    max_steps = trainer.max_steps if trainer.max_steps > 0 else None
    candidates = [n for n in (from_epochs, max_steps) if n is not None]
    if not candidates:
        raise ValueError("set trainer.max_epochs or trainer.max_steps: the schedule needs a length")
    return min(candidates)
