"""The model card (``README.md``) of an exported selector, made from its ``config.json`` alone.

The card is a view of the config: what the Hub shows and what a reader needs to feed the
selector (encoder, layer, grid), how it was trained and scored, and how to load it. Made from
the config, the card that ``push_to_hub`` uploads from a loaded selector is the one
``vtsel export`` wrote, with no template engine (Jinja2 is not a dependency of the library).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard, ModelCardData

LIBRARY = "vtsel"
TAGS = ["vtsel", "visual-token-selection", "token-pruning", "vision-language-model"]
PLACEHOLDER_ID = "<hub id or folder>"


def model_card(config: dict[str, Any], repo_id: str | None = None) -> ModelCard:
    """The card of the selector ``config`` describes.

    Args:
        config: The export's ``config.json``; ``encoder_layer``, ``trained_on`` and
            ``evaluation`` are optional (exports before them, or not recorded).
        repo_id: What the loading example passes to ``from_pretrained``.
    """
    height, width = config["grid_size"]
    data = ModelCardData(
        library_name=LIBRARY,
        tags=TAGS,
        encoder=config.get("encoder"),
        encoder_layer=config.get("encoder_layer"),
        grid_size=[height, width],
        feature_dim=config["feature_dim"],
        vtsel_version=config["vtsel_version"],
    )
    sections = [
        f"# Visual-token selector for {config.get('encoder') or 'an unnamed encoder'}",
        "A Feature Selector trained with vtsel: it scores every token of a vision encoder's "
        "output grid and keeps the most informative ones before they reach the language "
        "model. It takes raw encoder features and normalises them inside.",
        "## Input",
        _input_section(config),
        "## Training",
        _training_section(config.get("trained_on")),
        "## Evaluation",
        _evaluation_section(config.get("evaluation")),
        "## How to load it",
        _usage_section(config, repo_id or PLACEHOLDER_ID),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def _input_section(config: dict[str, Any]) -> str:
    height, width = config["grid_size"]
    layer = config.get("encoder_layer")
    return "\n".join([
        f"- encoder: `{config.get('encoder')}`",
        f"- layer: {layer if layer is not None else 'not recorded'}",
        f"- grid: {height}x{width} = {height * width} tokens per crop, "
        f"{config['feature_dim']} channels each: features (B, {height * width}, "
        f"{config['feature_dim']})",
        f"- normalisation inside: {config['normalisation']}",
        f"- selector: {config['depth']} layers of width {config['dim']}, "
        f"{config['num_heads']} heads, coverage prior weight {config['coverage']}",
    ])


def _training_section(trained_on: dict[str, Any] | None) -> str:
    if not trained_on:
        return "Not recorded in this export."
    return "\n".join(f"- {key.replace('_', ' ')}: {value}" for key, value in trained_on.items())


def _evaluation_section(evaluation: dict[str, Any] | None) -> str:
    if not evaluation:
        return "No `vtsel eval` report was given to `vtsel export` (`--eval_report`)."
    return (
        f"`vtsel eval` on held-out shards ({evaluation['report']}), the mean over crops at "
        f"each token budget; best of each column in bold.\n\n{evaluation['tables'].strip()}"
    )


def _usage_section(config: dict[str, Any], repo_id: str) -> str:
    tokens, channels = config["grid_size"][0] * config["grid_size"][1], config["feature_dim"]
    return "\n".join([
        "```python",
        "import torch",
        "from vtsel import TokenSelector",
        "",
        f'selector = TokenSelector.from_pretrained("{repo_id}")',
        f"features = torch.randn(2, {tokens}, {channels})  # (B, L, C) raw encoder features",
        "kept = selector.select(features, keep=0.25)  # kept.indices (B, k), kept.features",
        "```",
        "",
        "`pip install vtsel` is enough (torch, safetensors, huggingface_hub). If the folder "
        "holds `selector.onnx` or `selector.pt2` (`vtsel export --onnx true` / "
        "`--torch_export true`), they map features (B, L, C) float32 to `keep_logits` (B, L) "
        "for ONNX Runtime, TensorRT or `torch.export.load`.",
    ])
