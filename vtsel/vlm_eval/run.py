"""``vtsel vlm-eval``: a VLM's answers at several token budgets and methods, scored and tabled.

For each method and keep ratio the method is attached to the model (``vtsel.integrations``),
the questions are answered in batches by greedy decoding, and every answer is scored (exact
match, ANLS) and appended to ``predictions.jsonl`` as it comes. A rerun skips the rows that
exist, so a killed evaluation resumes where it stopped. At keep 1.0 nothing is dropped, so the
unpruned model answers each question once and that answer stands for every method.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from vtsel.arglists import comma_list
from vtsel.llm_methods import LLMMethod
from vtsel.methods import SelectionMethod
from vtsel.outputs import write_atomically
from vtsel.vlm_eval.methods import VLM_METHODS, attach_options, build_methods
from vtsel.vlm_eval.predictions import Prediction, PredictionStore
from vtsel.vlm_eval.questions import Question, load_questions
from vtsel.vlm_eval.report import (
    SCORES_CSV,
    SCORES_MARKDOWN,
    markdown_tables,
    summarize,
    write_scores_csv,
)
from vtsel.vlm_eval.scoring import anls, exact_match

if TYPE_CHECKING:
    from vtsel.vlm_eval.vlm import Reply, VisionLanguageModel

FULL_KEEP = 1.0
DEFAULT_INSTRUCTION = "Answer the question using a single word or phrase."


def vlm_eval(
    model: str,
    questions: str,
    out: str,
    methods: str = "selector,random",
    keep: str = "1.0,0.5,0.25,0.1",
    selector: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    prompt: str | None = None,
    instruction: str = DEFAULT_INSTRUCTION,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
) -> None:
    """Answer a question file with a local VLM at several budgets and methods; score EM and ANLS.

    Writes into ``out``: ``predictions.jsonl`` (one row per method, keep and question: the
    answer, exact match, ANLS and the visual tokens the LLM received; the run's resumable
    state), ``run.json`` (the settings), ``scores.csv`` and ``scores.md`` (their means per
    method and keep). A rerun with the same settings generates only the missing rows.

    Args:
        model: Folder of a Hugging Face VLM (LLaVA-NeXT, InternVL) with its processor.
        questions: JSONL file, one ``{"image": path, "question": str, "answers": [str, ...]}``
            per line (optional ``"id"``); relative image paths are read from its folder.
        out: Output folder; rerunning into it resumes.
        methods: Comma-separated methods: chosen before the LLM (``selector``, ``random``,
            ``uniform``, ``norm``, ``divprune``, ``visionzip``, ``hiprune``, ``pact``; see
            ``vtsel.methods``) or dropped inside it (``fastv``, ``pdrop``; see
            ``vtsel.llm_methods``, where keep is the LLM layers' average share).
        keep: Comma-separated keep ratios in (0, 1] of each crop's visual tokens.
        selector: Folder of an exported selector (``vtsel export``), needed by ``selector``.
        batch_size: Questions per generate call.
        max_new_tokens: Longest answer generated.
        prompt: Template with ``{question}`` and the image token, for checkpoints without a
            chat template.
        instruction: Appended to each question on its own line; ``""`` for none.
        device: ``auto`` (first GPU, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
        dtype: ``auto`` (bfloat16 on GPU, float32 on CPU), ``bfloat16``, ``float16``,
            ``float32``.
        seed: Seed of the ``random`` method.
    """
    method_names = comma_list(methods, str, "--methods")
    keeps = comma_list(keep, float, "--keep")
    _check_plan(method_names, keeps, selector, batch_size)
    question_list = load_questions(questions)  # every line checked before the model loads
    vlm_module = _vlm_module()
    resolved_dtype = vlm_module.resolve_dtype(dtype, vlm_module.resolve_device(device))
    settings = {
        "model": str(Path(model).resolve()),
        "questions": str(Path(questions).resolve()),
        "selector": str(Path(selector).resolve()) if selector else None,
        "max_new_tokens": max_new_tokens,
        "prompt": prompt,
        "instruction": instruction,
        "seed": seed,
        "dtype": str(resolved_dtype).removeprefix("torch."),  # answers differ across dtypes
    }
    store = PredictionStore(out, settings)
    vlm = vlm_module.VisionLanguageModel(model, device, dtype, prompt, instruction)
    methods = build_methods(method_names, vlm.model.config, selector, seed)
    _check_schedules(methods, keeps, vlm.model.config)
    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        evaluation = _Evaluation(vlm, methods, store, batch_size, max_new_tokens, progress)
        for ratio in sorted(keeps, reverse=True):
            for method_name in method_names:
                evaluation.run(method_name, ratio, question_list)
    scores = summarize(store.rows.values())
    write_scores_csv(scores, store.folder / SCORES_CSV)
    tables = markdown_tables(scores)
    write_atomically(store.folder / SCORES_MARKDOWN, tables)
    console.print(tables)


def _vlm_module() -> ModuleType:
    """``vtsel.vlm_eval.vlm``, imported here: transformers is the optional ``hf`` extra."""
    try:
        from vtsel.vlm_eval import vlm
    except ImportError as err:
        raise ImportError(
            f"vtsel vlm-eval needs transformers: pip install 'vtsel[hf]' ({err})"
        ) from err
    return vlm


def _check_plan(
    method_names: list[str], keeps: list[float], selector: str | None, batch_size: int
) -> None:
    """Refuse a bad plan before anything loads."""
    unknown = [name for name in method_names if name not in VLM_METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown {', '.join(unknown)}; "
                         f"valid: {', '.join(VLM_METHODS)}")
    if len(set(method_names)) != len(method_names):
        raise ValueError(f"--methods lists a method twice: {','.join(method_names)}")
    bad_keeps = [keep for keep in keeps if not 0.0 < keep <= 1.0]
    if bad_keeps:
        raise ValueError(f"--keep takes ratios in (0, 1]; got {bad_keeps}")
    if len(set(keeps)) != len(keeps):
        raise ValueError(f"--keep lists a ratio twice: {keeps}")
    if "selector" in method_names and selector is None:
        raise ValueError("--methods includes selector: give --selector <export folder>")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")


def _check_schedules(
    methods: dict[str, SelectionMethod | LLMMethod], keeps: list[float], model_config: Any
) -> None:
    """Refuse budgets an LLM-side method cannot meet on this LLM before answering anything."""
    layers = model_config.text_config.num_hidden_layers
    for method in methods.values():
        if isinstance(method, LLMMethod):
            for keep in keeps:
                method.schedule(layers, keep)


class _Evaluation:
    """One run's answering: for each (method, keep), the questions without a row yet."""

    def __init__(
        self,
        vlm: VisionLanguageModel,
        methods: dict[str, SelectionMethod | LLMMethod],
        store: PredictionStore,
        batch_size: int,
        max_new_tokens: int,
        progress: Progress,
    ) -> None:
        self.vlm = vlm
        self.methods = methods
        self.store = store
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.progress = progress

    def run(self, method_name: str, keep: float, questions: Sequence[Question]) -> None:
        """Answer, score and store every question of (method, keep) that has no row."""
        todo = [q for q in questions if not self.store.done(method_name, keep, q.id)]
        task = self.progress.add_task(f"{method_name} @ keep {keep:g}", total=len(questions),
                                      completed=len(questions) - len(todo))
        if not todo:
            return
        if keep == FULL_KEEP:
            self._unpruned(method_name, todo, task)
            return
        from vtsel import Budget
        from vtsel.integrations import attach

        method = self.methods[method_name]
        options = attach_options(self.vlm.model.config, method)
        handle = attach(self.vlm.model, method, Budget(keep=keep), **options)
        try:
            for batch in _batches(todo, self.batch_size):
                replies = self.vlm.answer(batch, self.max_new_tokens, handle)
                self.store.append(_scored(method_name, keep, batch, replies))
                self.progress.advance(task, len(batch))
        finally:
            handle.detach()

    def _unpruned(self, method_name: str, todo: Sequence[Question], task: TaskID) -> None:
        """Keep 1.0: reuse another method's unpruned answer where one exists, else generate."""
        answered = {row.id: row for row in self.store.rows.values() if row.keep == FULL_KEEP}
        reused = [replace(answered[q.id], method=method_name) for q in todo if q.id in answered]
        if reused:
            self.store.append(reused)
            self.progress.advance(task, len(reused))
        for batch in _batches([q for q in todo if q.id not in answered], self.batch_size):
            replies = self.vlm.answer(batch, self.max_new_tokens)
            self.store.append(_scored(method_name, FULL_KEEP, batch, replies))
            self.progress.advance(task, len(batch))


def _scored(
    method_name: str, keep: float, questions: Sequence[Question], replies: Sequence[Reply]
) -> list[Prediction]:
    return [
        Prediction(method_name, keep, question.id, reply.text,
                   exact_match(reply.text, question.answers), anls(reply.text, question.answers),
                   reply.visual_tokens)
        for question, reply in zip(questions, replies, strict=True)
    ]


def _batches(questions: Sequence[Question], size: int) -> Iterator[list[Question]]:
    for start in range(0, len(questions), size):
        yield list(questions[start:start + size])
