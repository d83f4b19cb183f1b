"""Pick tokens with an exported selector: torch, safetensors and ``vtsel.models`` only.

Inference code (a VLM's serving stack) loads the folder ``vtsel export`` writes and calls
``select`` on raw encoder features; nothing here imports Lightning or the training code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from vtsel.budget import Budget, mask_from_scores
from vtsel.contract import FeatureContract
from vtsel.models import FeatureSelector, SelectorConfig
from vtsel.versions import check_compatible

EXPORT_FORMAT = "vtsel-selector"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class KeptTokens:
    """The kept tokens of a batch, in spatial (row-major grid) order.

    With ``keep`` or ``k`` every crop keeps the same number of tokens, so both fields are
    tensors: ``indices`` (B, k) long and ``features`` (B, k, C). With ``threshold`` or
    ``per_image`` the number varies per crop, so both are lists of B tensors: ``indices[i]``
    (k_i,) and ``features[i]`` (k_i, C). Unbatched input (L, C) gives crop 0's entry alone:
    ``indices`` (k,), ``features`` (k, C).
    """

    indices: torch.Tensor | list[torch.Tensor]  # positions in the H*W grid, ascending
    features: torch.Tensor | list[torch.Tensor]  # the input's raw features at those positions


class TokenSelector(nn.Module):
    """A trained Feature Selector with its input contract, for use outside training.

    Build it with ``from_pretrained``; move it with ``.to(device)`` like any ``nn.Module``.
    Features go in raw, exactly as the encoder named in ``config["encoder"]`` produced them;
    the per-token normalisation the selector was trained with is applied inside.

    Args:
        selector: The trained selector, weights loaded.
        config: The export's ``config.json`` (input contract and architecture).
    """

    def __init__(self, selector: FeatureSelector, config: dict[str, Any]) -> None:
        super().__init__()
        self.selector = selector.eval()
        self.config = config

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TokenSelector:
        """Load a folder written by ``vtsel export`` (``config.json`` + ``model.safetensors``).

        Raises:
            ValueError: The config is of another format or major vtsel version, or the weights
                do not fit the architecture it describes.
        """
        config_path = Path(directory) / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}: not a `vtsel export` folder")
        try:
            config = json.loads(config_path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{config_path} is not valid JSON ({err}): re-export it") from None
        if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
            raise ValueError(
                f"{config_path} has format "
                f"{config.get('format') if isinstance(config, dict) else None!r}, not "
                f"{EXPORT_FORMAT!r}: "
                f"it is not a selector written by `vtsel export`"
            )
        check_compatible(config, source=str(config_path))
        selector = FeatureSelector(SelectorConfig.from_dict(config, str(config_path)))
        weights_path = config_path.with_name(WEIGHTS_FILE)
        try:
            _check_weights_metadata(weights_path, config, config_path)
            weights = load_file(weights_path)
        except (OSError, SafetensorError) as err:
            raise ValueError(
                f"{weights_path} is not a readable safetensors file ({err}): re-export it"
            ) from None
        try:
            selector.load_state_dict(weights)  # strict: every key and shape
        except RuntimeError as err:
            raise ValueError(f"{weights_path} does not fit {config_path}: {err}") from err
        return cls(selector, config)

    @property
    def contract(self) -> FeatureContract:
        """The features ``select`` takes: the selector's grid and width, from its encoder."""
        config = self.selector.config
        return FeatureContract(config.feature_dim, config.grid_size, self.config.get("encoder"))

    def _as_batch(self, features: torch.Tensor) -> torch.Tensor:
        """(B, L, C) or (L, C) features as (B, L, C), after checking they are a non-empty,
        finite tensor whose L and C fit the selector."""
        if not isinstance(features, torch.Tensor):
            raise TypeError(
                f"features must be a torch.Tensor, got {type(features).__name__} "
                f"(torch.from_numpy converts a numpy array)"
            )
        contract = self.selector.config
        (height, width), feature_dim = contract.grid_size, contract.feature_dim
        num_tokens = contract.num_tokens
        if features.dim() not in (2, 3) or features.shape[-2:] != (num_tokens, feature_dim):
            raise ValueError(
                f"features of shape {tuple(features.shape)} do not fit this selector, which "
                f"takes (B, {num_tokens}, {feature_dim}) or ({num_tokens}, {feature_dim}): a "
                f"{height}x{width} grid of {feature_dim}-wide tokens from encoder "
                f"{self.config.get('encoder')}"
            )
        batched = features if features.dim() == 3 else features.unsqueeze(0)
        if batched.shape[0] == 0:
            raise ValueError("features hold no crop (B=0): nothing to select from")
        finite = torch.isfinite(batched).flatten(1).all(dim=1)  # (B,)
        if not finite.all():
            bad = finite.logical_not().nonzero().flatten().tolist()
            raise ValueError(
                f"features of crop(s) {bad[:10]} hold NaN or Inf: their scores would be NaN "
                f"and the tokens kept arbitrary; fix or drop those crops"
            )
        return batched

    @torch.no_grad()
    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Keep logits of raw features: (B, L, C) -> (B, L), or (L, C) -> (L,). Higher = keep.

        Features are cast to the selector's dtype for scoring (encoders often run in half
        precision); the logits rank tokens, and ``> 0`` is the selector's own keep decision.
        """
        batched = self._as_batch(features)  # (B, L, C)
        weight_dtype = self.selector.head.weight.dtype
        keep_logits = self.selector.scores(batched.to(weight_dtype))  # (B, L)
        return keep_logits if features.dim() == 3 else keep_logits[0]

    def select(
        self,
        features: torch.Tensor,
        keep: float | None = None,
        k: int | None = None,
        threshold: float | None = None,
        per_image: bool = False,
    ) -> KeptTokens:
        """Keep the highest-scoring tokens of raw features (B, L, C) or (L, C).

        Give exactly one budget (the fields of ``vtsel.budget.Budget``). See ``KeptTokens`` for
        when the result holds tensors or lists.

        Args:
            features: Raw encoder features, one row per crop.
            keep: Share of tokens to keep, in (0, 1]; rounded as in training's evaluation
                (``tokens_for_ratio``), at least one token.
            k: Number of tokens to keep.
            threshold: Keep every token whose keep logit exceeds it (0 = the selector's own
                decision); the number kept then varies per crop.
            per_image: The B rows are crops of one image: spend one budget (``keep`` of all
                B*L tokens, or ``k`` in total) across them by their logits, so an informative
                crop keeps more than a blank one. Not with ``threshold``.
        """
        budget = Budget(keep, k, threshold, per_image)
        batched = self._as_batch(features)  # (B, L, C)
        pool = batched.shape[0] * batched.shape[1] if per_image else batched.shape[1]
        if k is not None and k > pool:
            raise ValueError(f"k={k} must lie in [1, {pool}], the tokens to choose from")
        keep_logits = self.scores(batched)  # (B, L)
        keep_mask = mask_from_scores(keep_logits, budget)  # (B, L) bool
        kept_idx = [row.nonzero().squeeze(-1) for row in keep_mask]  # B x (k_i,), ascending
        kept_feats = [row[idx] for row, idx in zip(batched, kept_idx, strict=True)]  # (k_i, C)
        if threshold is None and not per_image:
            selected = KeptTokens(torch.stack(kept_idx), torch.stack(kept_feats))
        else:
            selected = KeptTokens(kept_idx, kept_feats)
        if features.dim() == 3:
            return selected
        return KeptTokens(selected.indices[0], selected.features[0])


def weights_metadata(config: dict[str, Any]) -> dict[str, str]:
    """What ``model.safetensors`` records of the contract it was trained for. The grid shapes
    no weight (positions and the coverage prior are computed), so it is written here and
    checked against ``config.json`` at load."""
    return {"format": EXPORT_FORMAT, "grid_size": json.dumps(list(config["grid_size"]))}


def _check_weights_metadata(
    weights_path: Path, config: dict[str, Any], config_path: Path
) -> None:
    """Refuse a ``config.json`` whose grid is not the one its weights were exported for."""
    with safe_open(weights_path, framework="pt") as weights:
        recorded = (weights.metadata() or {}).get("grid_size")
    if recorded is not None and json.loads(recorded) != list(config["grid_size"]):
        raise ValueError(
            f"{config_path} says grid_size {list(config['grid_size'])}, but {weights_path} was "
            f"exported for {json.loads(recorded)}: the config was edited or mixed up"
        )
