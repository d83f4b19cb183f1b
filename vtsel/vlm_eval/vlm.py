"""A local Hugging Face VLM (LLaVA-NeXT, InternVL, ...) asked questions about images, greedily.

Model and processor load from one folder with the ``Auto*`` classes, so any checkpoint saved by
``save_pretrained`` with an image-text-to-text head works; the prompt comes from the
processor's chat template (or a ``{question}`` template for checkpoints without one).
Generation is greedy, so a rerun of the same batch gives the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoModelForImageTextToText, AutoProcessor, BatchFeature

from vtsel.images import to_rgb
from vtsel.vlm_eval.questions import Question

if TYPE_CHECKING:
    from vtsel.integrations.handle import PruningHandle
    from vtsel.integrations.llm_pruning import LLMPruningHandle

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on GPU and float32 on CPU (CPU half precision is slow)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass(frozen=True)
class Reply:
    """The model's answer to one question, and how many visual tokens its LLM received."""

    text: str
    visual_tokens: float  # what the LLM read per layer after any pruning, averaged over layers


class VisionLanguageModel:
    """A VLM and its processor from one local folder, ready to answer batches of questions.

    Args:
        directory: Folder written by ``save_pretrained`` holding the model and its processor.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        prompt: A template with ``{question}`` and the processor's image token, for
            checkpoints without a chat template; ``None`` uses the chat template.
        instruction: Text appended to every question on a new line (e.g. the "single word or
            phrase" instruction of LLaVA's DocVQA evaluation); empty for none.
    """

    def __init__(
        self,
        directory: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        prompt: str | None = None,
        instruction: str = "",
    ) -> None:
        folder = Path(directory)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"--model {folder}: no config.json there; give the folder a Hugging Face VLM "
                f"was saved to (save_pretrained / a downloaded checkpoint)"
            )
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.processor = AutoProcessor.from_pretrained(folder)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"--model {folder}: its processor has no tokenizer")
        tokenizer.padding_side = "left"  # batched generation continues every row at the end
        self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=self.dtype)
        self.model.to(self.device).eval()
        if prompt is None and not getattr(self.processor, "chat_template", None):
            raise ValueError(
                f"--model {folder}: the processor has no chat template; give --prompt, "
                f"e.g. 'USER: <image>\\n{{question}} ASSISTANT:'"
            )
        if prompt is not None and "{question}" not in prompt:
            raise ValueError(f"--prompt must contain '{{question}}', got {prompt!r}")
        self.prompt = prompt
        self.instruction = instruction

    def text(self, question: str, images: int = 1) -> str:
        """The model's full prompt for one question about ``images`` images (the chat
        template's; a ``--prompt`` template holds its own image token, one image)."""
        asked = f"{question}\n{self.instruction}" if self.instruction else question
        if self.prompt is not None:
            return self.prompt.format(question=asked)
        content = [{"type": "image"}] * images + [{"type": "text", "text": asked}]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def inputs(self, questions: Sequence[Question]) -> BatchFeature:
        """Processor outputs for a batch of questions, read from their image files."""
        images = [_read_image(question.image) for question in questions]
        return self.encode(images, [self.text(question.question) for question in questions])

    def encode(self, images: Sequence[Image.Image], texts: Sequence[str]) -> BatchFeature:
        """Processor outputs for prompts and their images (tokens padded on the left), on the
        model's device."""
        batch = self.processor(images=list(images), text=list(texts), padding=True,
                               return_tensors="pt")
        return batch.to(self.device, dtype=self.dtype)  # casts only the floating tensors

    @torch.inference_mode()
    def answer(
        self,
        questions: Sequence[Question],
        max_new_tokens: int,
        handle: PruningHandle | LLMPruningHandle | None = None,
    ) -> list[Reply]:
        """Greedy answers to a batch of questions, one each, in order.

        Args:
            questions: The batch.
            max_new_tokens: Longest answer generated.
            handle: The pruning attached to the model (``vtsel.integrations.attach``), whose
                ``prune_inputs`` the processor's outputs go through; ``None`` keeps every token.
        """
        batch = self.inputs(questions)
        if handle is not None:
            batch = handle.prune_inputs(batch)
        input_ids = batch["input_ids"]  # (B, T)
        generated = self.model.generate(
            **batch, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens
        )  # (B, T + new) for decoder-only LLMs
        visual_tokens = self.visual_tokens_read(input_ids, handle)  # (B,)
        texts = self.processor.batch_decode(
            generated[:, input_ids.shape[1]:], skip_special_tokens=True
        )
        return [Reply(text, count) for text, count in zip(texts, visual_tokens, strict=True)]


    def visual_tokens_read(
        self, input_ids: torch.Tensor, handle: PruningHandle | LLMPruningHandle | None
    ) -> list[float]:
        """Visual tokens the LLM read per row of ``input_ids`` (B, T) just generated from, per
        layer on average: the handle's count, or every placeholder when nothing is pruned."""
        if handle is not None:
            return handle.visual_tokens_read(input_ids)
        return (input_ids == self.processor.image_token_id).sum(dim=1).tolist()


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
