"""The judge: frozen reconstructors trained on drawn mask families, which score any kept set.

The paper compares two token subsets by how well a reconstructor R rebuilds the dropped tokens
from each (eq. 1). Validation during training uses the selector's own R, which learned through
that selector; the judge is a ``JudgeModule`` fit (``conf/judge/*.yaml``), so no trained
selector had a hand in it.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from vtsel.contract import FeatureContract
from vtsel.train.checkpoints import read_checkpoint
from vtsel.train.judge_module import JudgeModule
from vtsel.train.task import TASK_KEY


class Judge(nn.Module):
    """The reconstructors of a judge checkpoint, frozen, in eval mode.

    Build it with ``from_checkpoint``; move it with ``.to(device)``.

    Args:
        module: A trained ``JudgeModule``, weights loaded.
        contract: The features it was trained on.
        source: The checkpoint it came from, named in messages.
    """

    def __init__(self, module: JudgeModule, contract: FeatureContract, source: Path) -> None:
        super().__init__()
        self.module = module.eval().requires_grad_(False)
        self.contract = contract
        self.source = source

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Judge:
        """Load a judge checkpoint (``best-*.ckpt`` of ``vtsel stages --config conf/judge/...``).

        Raises:
            ValueError: The checkpoint is a selector fit: its reconstructors learned through its
                selector, which they would favour.
        """
        source = Path(path)
        checkpoint = read_checkpoint(source, role="judge checkpoint")
        task = checkpoint.get(TASK_KEY, "selector")
        if task != JudgeModule.task:
            raise ValueError(
                f"{source} is a {task} fit, not a judge: its reconstructors learned through its "
                f"selector, so they would favour it. Train a judge on drawn masks alone: "
                f"vtsel stages --config conf/judge/<preset>.yaml"
            )
        hparams = dict(checkpoint["hyper_parameters"])
        # hyper_parameters also carries what LightningCLI adds (``_instantiator``)
        accepted = inspect.signature(JudgeModule).parameters
        module = JudgeModule(**{k: v for k, v in hparams.items() if k in accepted})
        module.load_state_dict(checkpoint["state_dict"])
        encoder = checkpoint.get("datamodule_hyper_parameters", {}).get("encoder")
        grid = (int(hparams["grid_size"][0]), int(hparams["grid_size"][1]))
        return cls(module, FeatureContract(int(hparams["feature_dim"]), grid, encoder), source)

    @property
    def image_size(self) -> int:
        """Side S of the images the judge rebuilds."""
        return int(self.module.hparams.image_size)

    @property
    def keep_range(self) -> tuple[float, float]:
        """The keep ratios its training masks were drawn from."""
        low, high = self.module.hparams.keep_range
        return float(low), float(high)

    @property
    def families(self) -> dict[str, float]:
        """The mask families it trained on, with their weights."""
        return dict(self.module.mask_families)

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        """Raw tokens (B, L, C) -> the per-token-normalised tokens the judge rebuilds."""
        return self.module.normalize(feats)

    @torch.no_grad()
    def reconstruct(
        self, normed: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, L, C), kept ones unchanged, and image (B, 3, S, S) from a keep mask (B, L)."""
        return self.module.reconstruct(normed, keep)

    @torch.no_grad()
    def reconstruct_features(self, normed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L, C) alone, kept ones unchanged: half the cost, no image."""
        return self.module.feature_reconstructor(normed, keep)

    @torch.no_grad()
    def interpolate(self, normed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The training-free reference (the gate's): dropped tokens (B, L, C) as the
        inverse-square-distance mean of the kept ones, kept ones unchanged."""
        interpolated = self.module.feature_reconstructor.interpolate(normed, keep, power=2.0)
        kept = keep.unsqueeze(-1).to(normed.dtype)  # (B, L, 1)
        return kept * normed + (1 - kept) * interpolated
