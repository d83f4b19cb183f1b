"""vtsel as an lmms-eval model: any local LLaVA-NeXT or InternVL, pruned by any vtsel method.

lmms-eval is the field's harness for the paper's Table 1 benchmarks (DocVQA, ChartQA, InfoVQA,
TextVQA, ScienceQA-img, VizWiz, MMMU). vtsel registers this class under the model name
``vtsel`` (the ``lmms_eval.models`` entry point in pyproject.toml), so one command measures a
method at a budget::

    lmms-eval --model vtsel --tasks docvqa_val \\
        --model_args pretrained=<VLM folder>,method=selector,selector=<export>,keep=0.4

The model loads with ``VisionLanguageModel`` (the same loading and prompting as
``vtsel vlm-eval``), the method is attached with ``vtsel.integrations.attach`` at
``Budget(keep=...)``, and every request is answered with the task's generation settings.
``keep=1.0`` (or ``method=none``) runs the unpruned model. With ``visual_tokens_log=<file>``
each answer appends ``{"task", "doc_id", "visual_tokens"}``: the visual tokens the language
model read per layer (averaged over its layers for ``fastv`` and ``pdrop``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

from vtsel.budget import Budget
from vtsel.images import to_rgb
from vtsel.integrations import attach, prune_inputs
from vtsel.vlm_eval.methods import attach_options, build_methods
from vtsel.vlm_eval.vlm import VisionLanguageModel

UNPRUNED = "none"
MANIFEST = ModelManifest(model_id="vtsel", simple_class_path="vtsel.vlm_eval.lmms.VtselLMM")
"""What the ``lmms_eval.models`` entry point hands lmms-eval: the model name and its class."""


class VtselLMM(lmms):
    """A local VLM whose LLM reads only the visual tokens a vtsel method keeps.

    Args (``--model_args``, all strings on the command line):
        pretrained: Folder of a Hugging Face VLM saved with ``save_pretrained``.
        method: A vtsel method name (``selector``, ``random``, ``divprune``, ..., ``fastv``,
            ``pdrop``) or ``none``.
        keep: Share of the visual tokens the LLM receives, in (0, 1].
        selector: Export folder of ``vtsel export``, for ``method=selector``.
        device, dtype: As ``vtsel vlm-eval`` takes them (``auto`` by default).
        seed: Seed of ``method=random``.
        visual_tokens_log: JSON-lines file each answer's visual-token count is appended to.
        batch_size: lmms-eval's ``--batch_size``; 1, one question at a time.
    """

    def __init__(
        self,
        pretrained: str,
        method: str = UNPRUNED,
        keep: float | str = 1.0,
        selector: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        seed: int | str = 0,
        visual_tokens_log: str | None = None,
        batch_size: int | str = 1,
        **unused: Any,
    ) -> None:
        super().__init__()
        if int(batch_size) != 1:
            raise ValueError(f"--batch_size {batch_size}: vtsel's lmms-eval model answers one "
                             f"question at a time; use --batch_size 1")
        if unused:
            raise ValueError(f"--model_args: vtsel takes no {', '.join(sorted(unused))}")
        self.vlm = VisionLanguageModel(pretrained, device=device, dtype=dtype)
        keep = float(keep)
        if method == UNPRUNED or keep == 1.0:
            self.handle = None
        else:
            (built,) = build_methods([method], self.vlm.model.config, selector, int(seed)).values()
            options = attach_options(self.vlm.model.config, built)
            self.handle = attach(self.vlm.model, built, Budget(keep=keep), **options)
        self.visual_tokens_log = None if visual_tokens_log is None else Path(visual_tokens_log)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """One answer per request, in order, with the task's generation settings."""
        return [self._answer(*request.args) for request in requests]

    @torch.inference_mode()
    def _answer(
        self, context: str, gen_kwargs: dict[str, Any], doc_to_visual: Any, doc_id: int,
        task: str, split: str,
    ) -> str:
        images = [to_rgb(image) for image in doc_to_visual(self.task_dict[task][split][doc_id])]
        if not images:
            raise ValueError(f"{task} doc {doc_id}: no image; vtsel prunes visual tokens")
        if self.vlm.prompt is not None and len(images) > 1:
            raise ValueError(f"{task} doc {doc_id}: {len(images)} images, and a prompt template "
                             f"holds one image token; use the model's chat template")
        batch = self.vlm.encode(images, [self.vlm.text(context, images=len(images))])
        if self.handle is not None:
            batch = prune_inputs(self.handle, batch)
        input_ids = batch["input_ids"]  # (1, T)
        settings = dict(gen_kwargs)
        stops = settings.pop("until", None) or []
        temperature = float(settings.get("temperature") or 0)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
        generated = self.vlm.model.generate(
            **batch,
            max_new_tokens=int(settings.get("max_new_tokens", 32)),
            num_beams=int(settings.get("num_beams") or 1),
            **sampling,
        )  # (1, T + new)
        self._log_visual_tokens(task, doc_id, input_ids)
        text = self.vlm.processor.batch_decode(
            generated[:, input_ids.shape[1]:], skip_special_tokens=True
        )[0]
        for stop in [stops] if isinstance(stops, str) else stops:
            text = text.split(stop)[0]
        return text

    def _log_visual_tokens(self, task: str, doc_id: int, input_ids: torch.Tensor) -> None:
        if self.visual_tokens_log is None:
            return
        (count,) = self.vlm.visual_tokens_read(input_ids, self.handle)
        with self.visual_tokens_log.open("a") as log:
            log.write(json.dumps({"task": task, "doc_id": doc_id, "visual_tokens": count}) + "\n")

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "vtsel's lmms-eval model answers generate_until tasks (DocVQA, ChartQA, InfoVQA, "
            "TextVQA, ScienceQA-img, VizWiz, MMMU); loglikelihood tasks are not supported"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("vtsel's lmms-eval model answers single-round questions only")
