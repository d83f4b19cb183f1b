"""The judge: a frozen reconstructor trained on random masks, which scores any kept set (eq. 1).

The paper compares two token subsets by how well a reconstructor R rebuilds every token from
each. Validation during training uses the selector's own R, which learned that selector's habits;
the judge is a ``SelectorModule`` fitted with ``masking: random`` (``conf/judge/*.yaml``), so no
selection method had a hand in training it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vtsel.checkpoints import read_checkpoint
from vtsel.module import SelectorModule


@dataclass(frozen=True)
class FeatureContract:
    """The features a judge (or a selector) was trained on: what the shards must hold."""

    encoder: str | None
    feature_dim: int
    grid: tuple[int, int]

    def describe(self) -> str:
        height, width = self.grid
        return f"encoder {self.encoder!r}, {height}x{width} grid of {self.feature_dim}-wide tokens"


class Judge(nn.Module):
    """The reconstructors of a judge checkpoint, frozen, in eval mode.

    Build it with ``from_checkpoint``; move it with ``.to(device)``.

    Args:
        module: A ``SelectorModule`` trained with ``masking: random``, weights loaded.
        contract: The features it was trained on.
        source: The checkpoint it came from, named in messages.
    """

    def __init__(self, module: SelectorModule, contract: FeatureContract, source: Path) -> None:
        super().__init__()
        self.module = module.eval().requires_grad_(False)
        self.contract = contract
        self.source = source

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Judge:
        """Load a judge checkpoint (``best-*.ckpt`` of ``vtsel stages --config conf/judge/...``).

        Raises:
            ValueError: The checkpoint was trained with a selector's masks, so its reconstructor
                favours that selector and cannot judge fairly.
        """
        source = Path(path)
        checkpoint = read_checkpoint(source, role="judge checkpoint")
        hparams = dict(checkpoint["hyper_parameters"])
        if hparams.get("masking") != "random":
            raise ValueError(
                f"{source} was trained with its selector's masks (masking: "
                f"{hparams.get('masking', 'selector')}), so its reconstructor favours that "
                f"selector. Train a judge on random masks: vtsel stages --config "
                f"conf/judge/<preset>.yaml"
            )
        # hyper_parameters also carries what LightningCLI adds (``_instantiator``)
        accepted = inspect.signature(SelectorModule).parameters
        module = SelectorModule(**{k: v for k, v in hparams.items() if k in accepted})
        module.load_state_dict(checkpoint["state_dict"])
        encoder = checkpoint.get("datamodule_hyper_parameters", {}).get("encoder")
        grid = (int(hparams["grid_size"][0]), int(hparams["grid_size"][1]))
        return cls(module, FeatureContract(encoder, int(hparams["feature_dim"]), grid), source)

    @property
    def image_size(self) -> int:
        """Side S of the images the judge rebuilds."""
        return int(self.module.hparams.image_size)

    @property
    def keep_range(self) -> tuple[float, float]:
        """The keep ratios its random training masks were drawn from."""
        low, high = self.module.hparams.random_keep_range
        return float(low), float(high)

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        """Raw tokens (B, L, C) -> the per-token-normalised tokens the judge rebuilds."""
        return self.module.selector.normalize(feats)

    @torch.no_grad()
    def reconstruct(
        self, normed: torch.Tensor, keep_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, L, C) and image (B, 3, S, S) rebuilt from the tokens ``keep_mask`` keeps.

        Args:
            normed: Normalised tokens (B, L, C).
            keep_mask: (B, L), 1 = kept; dropped tokens become the judge's learned embedding.
        """
        selected = self.module.selector.apply_mask(normed, keep_mask)  # (B, L, C)
        return self.module.reconstruct(selected)
