"""Pick tokens with an exported selector: torch, safetensors, huggingface_hub and
``vtsel.models`` only.

Inference code (a VLM's serving stack) loads the folder ``vtsel export`` writes, or its copy on
the Hugging Face Hub, and calls ``select`` on raw encoder features; nothing here imports
Lightning or the training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelHubMixin, hf_hub_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from torch import nn

from vtsel.budget import Budget, mask_from_scores
from vtsel.contract import FeatureContract
from vtsel.export_format import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    read_config,
    read_selector,
    write_selector,
)
from vtsel.model_card import model_card
from vtsel.models import FeatureSelector


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


class TokenSelector(nn.Module, ModelHubMixin, library_name="vtsel"):
    """A trained Feature Selector with its input contract, for use outside training.

    Build it with ``from_pretrained``; move it with ``.to(device)`` like any ``nn.Module``.
    ``huggingface_hub.ModelHubMixin`` gives it ``save_pretrained`` (the export folder plus
    its model card) and ``push_to_hub`` (that folder, uploaded); vtsel keeps reading and
    writing the files, with their checks (``vtsel.export_format``).
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
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
    ) -> TokenSelector:
        """Load a selector from a Hub id (``"org/name"``) or a folder written by ``vtsel
        export`` or ``save_pretrained`` (``config.json`` + ``model.safetensors``).

        An existing folder is read in place; anything else that is a valid repo id is
        downloaded (the keyword arguments are ``huggingface_hub.hf_hub_download``'s). This
        replaces the mixin's ``from_pretrained``, which parses ``config.json`` itself before
        any hook runs (a damaged file would surface as a bare JSON error), so that both
        sources go through the same checks.

        Raises:
            FileNotFoundError: A local folder without ``config.json``.
            ValueError: The config is damaged, of another format or major vtsel version, or
                the weights are not safetensors fitting the architecture it describes.
        """
        source = str(pretrained_model_name_or_path)
        hub_args = {"revision": revision, "cache_dir": cache_dir, "force_download": force_download,
                    "token": token, "local_files_only": local_files_only}

        def fetch(filename: str) -> Path:
            if not _is_hub_id(source):
                return Path(source) / filename
            return Path(hf_hub_download(source, filename, **hub_args))

        config_path = fetch(CONFIG_FILE)
        config = read_config(config_path)  # before the weights are downloaded
        return cls(read_selector(fetch(WEIGHTS_FILE), config, config_path), config)

    def _save_pretrained(self, save_directory: Path) -> None:
        """``config.json`` and ``model.safetensors`` as ``vtsel export`` writes them; the
        mixin's ``save_pretrained`` adds the card (``generate_model_card``) and
        ``push_to_hub`` uploads the folder."""
        write_selector(save_directory, self.selector, self.config)

    def generate_model_card(self, repo_id: str | None = None) -> ModelCard:
        """The card made from ``config.json`` (``vtsel.model_card``), so a loaded selector
        pushes the card its export wrote; ``repo_id`` (``model_card_kwargs``) goes into the
        loading example."""
        return model_card(self.config, repo_id)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Keep logits of raw features (B, L, C) -> (B, L), unchecked: the traceable core of
        ``scores``, which ``vtsel export --onnx / --torch_export`` write out."""
        return self.selector.scores(features.to(self.selector.head.weight.dtype))

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
        keep_logits = self(self._as_batch(features))  # (B, L)
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


def _is_hub_id(source: str) -> bool:
    """Whether ``source`` names a Hub repo rather than a folder: it does not exist here and
    is a valid repo id (``org/name``; a path like ``/a/b`` or ``./a`` is not)."""
    if Path(source).exists():
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True
