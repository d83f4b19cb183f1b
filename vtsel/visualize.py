"""``vtsel visualize``: the paper's Figure 1 for any image file, from an exported selector.

The image is encoded as ``vtsel extract`` encodes it (one centre crop, the selector's encoder),
and the tokens a seeded random subset and the selector keep at the same budget are shown side
by side, dropped tokens darkened. Only the exported selector is needed, not its checkpoint.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import open_clip
import torch
from PIL import Image, ImageDraw, ImageFont

from vtsel.contract import FeatureContract
from vtsel.extract.crops import CenterCrop
from vtsel.extract.encoders import OpenClipEncoder, VisionEncoder
from vtsel.extract.run import extraction_parts
from vtsel.figures import overlay_mask, side_by_side, to_uint8
from vtsel.images import to_rgb
from vtsel.inference import CONFIG_FILE, TokenSelector
from vtsel.methods import RandomSelection
from vtsel.models.selector import tokens_for_ratio
from vtsel.outputs import atomic_open

CAPTION_HEIGHT = 16  # white rows above the panels holding "random 40%" | "selector 40%"
RANDOM_WEIGHTS = "random"  # the weights part of an encoder id for seeded random weights
_OPEN_CLIP_ID = re.compile(r"open_clip:(?P<model>[^:]+):(?P<weights>[^:]+):layer(?P<layer>-?\d+)")


class EncoderArgs(NamedTuple):
    """What ``OpenClipEncoder`` is built from."""

    model_name: str
    pretrained: str | None
    layer: int


def visualize(
    image: str,
    selector: str,
    out: str,
    keep: float = 0.4,
    extraction: str | None = None,
    model_name: str | None = None,
    pretrained: str | None = None,
    layer: int | None = None,
    seed: int = 0,
) -> None:
    """Write a PNG of the tokens a random subset and the selector keep of one image.

    Left panel: the centre crop with the tokens a seeded random subset drops darkened; right
    panel: the same for the selector's top tokens; both keep ``tokens_for_ratio(H*W, keep)``
    tokens, and each token is the S/H-pixel block the encoder's patch covers. The panels are at
    the encoder's input size S, under a caption row ("random 40%" | "selector 40%").

    The encoder and crop are those of ``extraction``, the extraction config the selector's
    features came from (any encoder). Without it, an open_clip encoder is rebuilt from the
    selector's config.json ``encoder`` id (``open_clip:<model>:<weights>:layer<N>``), and the
    open_clip arguments below replace parts of it. An encoder whose token width or grid differs
    from the selector's is refused.

    Args:
        image: Image file in any format and mode PIL reads (grey, RGBA and 16-bit included).
        selector: Folder written by ``vtsel export``.
        out: PNG file to write; its folder is created if missing.
        keep: Share of tokens kept in both panels, in (0, 1].
        extraction: Extraction config (``conf/extract/*.yaml``) whose encoder and crop plan
            made the selector's features, e.g. ``conf/extract/demo.yaml``.
        model_name: open_clip architecture, e.g. ``ViT-S-16``; default: the selector's.
        pretrained: Encoder weights: an open_clip tag, the path of a local weights file, or
            ``random`` for seeded random weights; default: the selector's (for weights trained
            from a file, give that file's path here).
        layer: Transformer block whose tokens are selected; default: the selector's, else -2.
        seed: Seed of the random subset.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep={keep} must lie in (0, 1]")
    token_selector = TokenSelector.from_pretrained(selector)
    config_path = Path(selector) / CONFIG_FILE
    view = _load(Path(image))
    if extraction is not None:
        encoder, crops = extraction_parts(extraction)
    else:
        encoder_args = _encoder_args(
            token_selector.config.get("encoder"), config_path, model_name, pretrained, layer
        )
        encoder = OpenClipEncoder(*encoder_args)
        crops = CenterCrop(encoder.resample)
    _check_contract(encoder, token_selector, config_path)
    crop = crops.crops(view, encoder.image_size)[0]  # the first: the whole image's view
    with torch.inference_mode():
        feats = encoder(encoder.normalize(crop.view)[None]).features  # (1, L, C)
    num_tokens = feats.shape[1]
    budget = tokens_for_ratio(num_tokens, keep)
    random_idx = RandomSelection(seed=seed).select(feats, budget)  # (1, k)
    selector_idx = token_selector.select(feats, keep=keep).indices  # (1, k)
    figure = _figure(crop.view, encoder.grid, random_idx[0], selector_idx[0], keep)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_path, "wb") as file:
        figure.save(file, format="PNG")
    print(out_path)


def _encoder_args(
    encoder_id: str | None,
    config_path: Path,
    model_name: str | None,
    pretrained: str | None,
    layer: int | None,
) -> EncoderArgs:
    """The encoder to build: the given arguments, the rest from the selector's encoder id.

    The id's weights and layer are used only with the id's own architecture: weights of one
    model mean nothing for another.
    """
    match = _OPEN_CLIP_ID.fullmatch(encoder_id or "")
    if model_name is None and match is None:
        raise ValueError(
            f"{config_path} records encoder {encoder_id!r}, not an open_clip id of the form "
            f"'open_clip:<model>:<weights>:layer<N>': give --extraction, the extraction config "
            f"its features came from (or --model_name of an open_clip encoder)"
        )
    if match is None or model_name not in (None, match["model"]):
        resolved_layer = -2 if layer is None else layer
        return EncoderArgs(model_name, _weights(pretrained), resolved_layer)
    model = match["model"]
    if pretrained is None:
        pretrained = _recorded_weights(match["weights"], model, encoder_id, config_path)
    return EncoderArgs(model, _weights(pretrained), int(match["layer"]) if layer is None else layer)


def _weights(pretrained: str | None) -> str | None:
    """``OpenClipEncoder``'s ``pretrained``: ``random`` and None both mean random weights."""
    return None if pretrained in (None, RANDOM_WEIGHTS) else pretrained


def _recorded_weights(weights: str, model: str, encoder_id: str, config_path: Path) -> str:
    """The ``pretrained`` an encoder id's weights part stands for: random, a tag, or a file."""
    if weights == RANDOM_WEIGHTS or weights in open_clip.list_pretrained_tags_by_model(model):
        return weights
    if Path(weights).is_file():
        return weights
    raise ValueError(
        f"{config_path} records encoder {encoder_id!r}, whose weights {weights!r} are neither "
        f"an open_clip tag of {model} nor a file here: give --pretrained PATH of that file"
    )


def _load(path: Path) -> Image.Image:
    """The image file as RGB (transparency onto white, wide ints stretched), or a clear error."""
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: a truncated file fails here
            return to_rgb(opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL signals broken files with any of these (SyntaxError for malformed PNG chunks).
        raise ValueError(f"cannot read image {path}: {err}") from err


def _check_contract(encoder: VisionEncoder, selector: TokenSelector, config_path: Path) -> None:
    """Refuse an encoder whose tokens the selector cannot take; warn if it is another one."""
    config = selector.config
    # Another encoder id only warns (below): an encoder of the same shape may stand in.
    FeatureContract(selector.contract.feature_dim, selector.contract.grid).check(
        FeatureContract(encoder.feature_dim, encoder.grid), f"encoder {encoder.encoder_id} gives",
        f"the selector of {config_path} (encoder {config.get('encoder')!r}) takes",
        "pick the encoder it was trained on with --extraction or --model_name/--pretrained/"
        "--layer",
    )
    if config.get("encoder") not in (None, encoder.encoder_id):
        warnings.warn(
            f"the selector of {config_path} was trained on features of {config['encoder']!r}, "
            f"and these come from {encoder.encoder_id!r}: the selection may mean little",
            stacklevel=3,
        )


def _figure(
    view: Image.Image,
    grid: tuple[int, int],
    random_idx: torch.Tensor,
    selector_idx: torch.Tensor,
    keep: float,
) -> Image.Image:
    """Caption row over random | selector panels of the crop (S, S) for kept indices (k,)."""
    unit = torch.from_numpy(np.asarray(view, dtype=np.float32) / 255.0).permute(2, 0, 1)
    images = unit[None].expand(2, -1, -1, -1)  # (2, 3, S, S) in [0, 1]
    masks = torch.zeros(2, grid[0] * grid[1])  # (2, H*W): row 0 random, row 1 selector
    masks[0, random_idx] = 1.0
    masks[1, selector_idx] = 1.0
    left, right = overlay_mask(images, masks.view(2, *grid))  # (3, S, S) each
    panels = to_uint8(side_by_side(left, right)).permute(1, 2, 0).numpy()  # (S, 2S + sep, 3)
    height, width = panels.shape[:2]
    figure = Image.new("RGB", (width, CAPTION_HEIGHT + height), "white")
    figure.paste(Image.fromarray(panels), (0, CAPTION_HEIGHT))
    draw, font = ImageDraw.Draw(figure), ImageFont.load_default()
    panel_width = view.width
    for name, x0 in (("random", 0), ("selector", width - panel_width)):
        draw.text(
            (x0 + panel_width / 2, CAPTION_HEIGHT / 2),
            f"{name} {keep:.0%}",
            fill="black",
            font=font,
            anchor="mm",  # centred over its panel
        )
    return figure
