"""`vtsel vlm-eval`: ANLS and exact match from their definitions, the question file's checks,
resumable predictions, and real generation with a tiny random LLaVA-NeXT saved to disk."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import PreTrainedTokenizerFast, ProcessorMixin

from tests import tiny_vlms
from tests.conftest import Exported
from tests.tiny_vlms import INTERNVL_IMAGE_TOKENS, LLAVA_IMAGE_TOKENS, Stack, chat_template
from vtsel.cli import main
from vtsel.vlm_eval.predictions import PREDICTIONS_FILE, Prediction, PredictionStore
from vtsel.vlm_eval.questions import load_questions
from vtsel.vlm_eval.report import SCORES_MARKDOWN, markdown_tables, summarize, write_scores_csv
from vtsel.vlm_eval.scoring import anls, exact_match, levenshtein, normalized_levenshtein

# The tiny VLMs' whole vocabulary: special and chat words, question words and the answers.
WORDS = ["<unk>", "<pad>", "<s>", "</s>", "<image>", "<IMG_CONTEXT>", "<img>", "</img>",
         "<video>", "USER:", "ASSISTANT:", "what", "is", "the",
         "title", "total", "date", "name", "?", "answer", "with", "one", "word", "invoice",
         "report", "42", "17", "may", "june", "acme", "zeta"]
# (text drawn on the image, question, answers)
PAGES = [
    ("INVOICE", "what is the title ?", ["invoice"]),
    ("TOTAL 42", "what is the total ?", ["42", "42.00"]),
    ("DATE MAY 17", "what is the date ?", ["may 17"]),
    ("ACME REPORT", "what is the name ?", ["acme"]),
    ("ZETA", "what is the title ?", ["zeta"]),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny models' matrices are too small for threads to pay off; on a shared CPU the
    threads' spinning made generation 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- scoring


def test_levenshtein_counts_edits() -> None:
    assert levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert levenshtein("sitting", "kitten") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("flaw", "lawn") == 2  # -f, +n
    assert normalized_levenshtein("", "") == 0.0
    assert normalized_levenshtein("abcd", "abce") == 0.25


def test_anls_follows_its_definition() -> None:
    # Case and outer/inner blanks do not count.
    assert anls("  ITC   Limited ", ["itc limited"]) == 1.0
    # One substitution in 12 characters: 1 - 1/12.
    assert anls("TALKINGHEADZ", ["TALKINGHEADS"]) == pytest.approx(1 - 1 / 12)
    # Two of 12: 1 - 2/12.
    assert anls("TVLKINGHEVDS", ["talkingheads"]) == pytest.approx(1 - 2 / 12)
    # NL = 2/4 is not below the threshold 0.5: a wrong text, no credit.
    assert anls("ab", ["abcd"]) == 0.0
    # NL = 2/5 < 0.5: partial credit 0.6.
    assert anls("abcxy", ["abcde"]) == pytest.approx(0.6)
    # The best of several answers counts.
    assert anls("12.50", ["twelve fifty", "12.5", "$12.50"]) == pytest.approx(1 - 1 / 6)
    assert anls("", ["anything"]) == 0.0
    assert anls("completely different", ["xyz"]) == 0.0


def test_exact_match_is_normalised_equality() -> None:
    assert exact_match("June 5 ", ["june 5"]) == 1.0
    assert exact_match("june", ["june 5", "5 june"]) == 0.0
    assert exact_match("5  JUNE", ["june 5", "5 june"]) == 1.0


# --------------------------------------------------------------------------- question file


def write_questions(folder: Path, lines: list[dict | str]) -> Path:
    path = folder / "questions.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return path


def render_pages(folder: Path) -> list[dict]:
    """The PAGES as 64x48 images with their text, and their question lines."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index, (text, question, answers) in enumerate(PAGES):
        image = Image.new("RGB", (64 + 8 * index, 48), "white")
        ImageDraw.Draw(image).text((2, 16), text, fill="black")
        image.save(folder / f"page{index}.png")
        records.append({"image": f"pages/page{index}.png", "question": question,
                        "answers": answers})
    return records


def test_questions_load_with_relative_images_and_default_ids(tmp_path: Path) -> None:
    records = render_pages(tmp_path / "pages")
    records[2]["id"] = "doc-7"
    path = write_questions(tmp_path, [records[0], "", records[1], records[2]])
    questions = load_questions(path)
    assert [question.id for question in questions] == ["1", "3", "doc-7"]  # line numbers
    assert questions[1].image == tmp_path / "pages" / "page1.png"
    assert questions[1].answers == ("42", "42.00")


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ({"image": "pages/page0.png", "answers": ["x"]},
         r"questions.jsonl:2: missing key 'question'"),
        ({"question": "q"}, r":2: missing key 'image', 'answers'"),
        ('{"image": "pages/page0.png", "question": ', r":2: not valid JSON"),
        ("[1, 2]", r":2: expected a JSON object, got list"),
        ({"image": "pages/page0.png", "question": "q", "answers": "x"},
         r":2: 'answers' must be a non-empty list of strings"),
        ({"image": "pages/page0.png", "question": "q", "answers": []},
         r":2: 'answers' must be a non-empty list"),
        ({"image": "pages/missing.png", "question": "q", "answers": ["x"]},
         r":2: image .*pages/missing.png not found"),
        ({"image": "pages/page0.png", "question": "q", "answers": ["x"], "id": "1"},
         r":2: id '1' already used on line 1"),
    ],
)
def test_question_file_errors_name_the_line_and_key(
    tmp_path: Path, bad_line: dict | str, message: str
) -> None:
    good = render_pages(tmp_path / "pages")[0]
    path = write_questions(tmp_path, [good, bad_line])
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_questions(path)


def test_an_empty_or_missing_question_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"question file .*nope.jsonl not found"):
        load_questions(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="holds no questions"):
        load_questions(write_questions(tmp_path, ["", "  "]))


# --------------------------------------------------------------------------- predictions, report


def row(
    method: str, keep: float, question_id: str, em: float, score: float, tokens: int = 100
) -> Prediction:
    return Prediction(method, keep, question_id, "answer", em, score, tokens)


def test_store_reloads_rows_and_drops_a_line_cut_short(tmp_path: Path) -> None:
    settings = {"model": "m", "questions": "q"}
    store = PredictionStore(tmp_path, settings)
    store.append([row("random", 0.5, "1", 1.0, 1.0), row("random", 0.5, "2", 0.0, 0.4)])
    with (tmp_path / PREDICTIONS_FILE).open("a") as stream:
        stream.write('{"method": "random", "keep": 0.5, "id": "3", "predic')  # killed here
    with pytest.warns(UserWarning, match="dropping an incomplete last line"):
        reopened = PredictionStore(tmp_path, settings)
    assert reopened.done("random", 0.5, "2") and not reopened.done("random", 0.5, "3")
    reopened.append([row("random", 0.5, "3", 1.0, 1.0)])
    lines = (tmp_path / PREDICTIONS_FILE).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["1", "2", "3"]


def test_store_refuses_other_settings_and_foreign_lines(tmp_path: Path) -> None:
    PredictionStore(tmp_path, {"model": "a", "prompt": None})
    with pytest.raises(ValueError, match=r"other settings \(model differ"):
        PredictionStore(tmp_path, {"model": "b", "prompt": None})
    (tmp_path / PREDICTIONS_FILE).write_text('{"not": "a row"}\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl:1 is not a prediction row"):
        PredictionStore(tmp_path, {"model": "a", "prompt": None})


def test_scores_are_means_per_method_and_budget(tmp_path: Path) -> None:
    rows = [
        row("selector", 1.0, "1", 1.0, 1.0, 100), row("selector", 1.0, "2", 0.0, 0.5, 200),
        row("selector", 0.4, "1", 1.0, 0.9, 40), row("selector", 0.4, "2", 0.0, 0.0, 82),
        row("random", 0.4, "1", 0.0, 0.6, 40), row("random", 0.4, "2", 0.0, 0.0, 82),
    ]
    scores = summarize(rows)
    assert [(s.method, s.keep, s.questions) for s in scores] == [
        ("selector", 1.0, 2), ("selector", 0.4, 2), ("random", 0.4, 2)]
    assert scores[1].exact_match == 0.5 and scores[1].anls == pytest.approx(0.45)
    tables = markdown_tables(scores)
    assert "| method | keep 1 | keep 0.4 |" in tables
    assert "| selector | 50.0 | 50.0 |" in tables  # exact match
    assert "| selector | 75.0 | 45.0 |" in tables  # ANLS
    assert "| random | – | 30.0 |" in tables  # no row at keep 1.0
    assert "| selector | 150 | 61 |" in tables  # mean visual tokens per question
    write_scores_csv(scores, tmp_path / "scores.csv")
    with (tmp_path / "scores.csv").open() as stream:
        read = list(csv.DictReader(stream))
    assert read[2] == {"method": "random", "keep": "0.4", "questions": "2",
                       "exact_match": "0.0000", "anls": "0.3000", "visual_tokens": "61.0"}


# --------------------------------------------------------------------------- a real tiny VLM


def tiny_tokenizer(image_tokens: dict[str, str]) -> PreTrainedTokenizerFast:
    """The tiny VLMs' word-level tokenizer over WORDS, with the family's image tokens."""
    return tiny_vlms.word_tokenizer(WORDS, bos_token="<s>", eos_token="</s>", **image_tokens)


def save(model: torch.nn.Module, processor: ProcessorMixin, directory: Path) -> Path:
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# Both vision towers turn a 32 px crop into a 4x4 grid of 32-wide tokens: the contract of the
# `exported` test selector, so the trained selector can prune these models' tokens. (InternVL's
# LLM receives them pixel-shuffled: 2x2 tokens of 128 channels.)
SIDE, PATCH, WIDTH = 32, 8, 32
TOWER = Stack(width=WIDTH, layers=2, heads=2)
LLM = Stack(width=32, layers=2, heads=2)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight LLaVA-NeXT (CLIP tower, Llama LLM) and its processor, saved."""
    model, processor = tiny_vlms.tiny_llava_next(
        tiny_tokenizer(LLAVA_IMAGE_TOKENS), TOWER, LLM, crop=SIDE, patch=PATCH,
        pinpoints=[[SIDE, 2 * SIDE], [2 * SIDE, SIDE], [2 * SIDE, 2 * SIDE]],
        template=chat_template(LLAVA_IMAGE_TOKENS["image_token"]),
    )
    return save(model, processor, tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module")
def tiny_internvl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight InternVL (InternViT tower, Qwen2 LLM) and its processor, saved."""
    model, processor = tiny_vlms.tiny_internvl(
        tiny_tokenizer(INTERNVL_IMAGE_TOKENS), TOWER, LLM, tile=SIDE, patch=PATCH,
        template=chat_template(INTERNVL_IMAGE_TOKENS["context_image_token"]),
    )
    return save(model, processor, tmp_path_factory.mktemp("tiny_internvl"))


@pytest.fixture(scope="module")
def deep_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_llava with an 8-layer LLM: room for FastV's 2 unpruned layers and PyramidDrop's
    stages at layers 2, 4 and 6."""
    model, processor = tiny_vlms.tiny_llava_next(
        tiny_tokenizer(LLAVA_IMAGE_TOKENS), TOWER, Stack(width=32, layers=8, heads=2),
        crop=SIDE, patch=PATCH, pinpoints=[[SIDE, 2 * SIDE], [2 * SIDE, SIDE]],
        template=chat_template(LLAVA_IMAGE_TOKENS["image_token"]),
    )
    return save(model, processor, tmp_path_factory.mktemp("deep_llava"))


@pytest.fixture(params=["tiny_llava", "tiny_internvl"])
def tiny_vlm(request: pytest.FixtureRequest) -> Path:
    """Each tiny VLM family in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def question_file(tmp_path: Path) -> Path:
    return write_questions(tmp_path, render_pages(tmp_path / "pages"))


def test_the_model_answers_a_batch_greedily_and_repeatably(
    tiny_vlm: Path, question_file: Path
) -> None:
    from vtsel.vlm_eval.vlm import VisionLanguageModel

    vlm = VisionLanguageModel(tiny_vlm, device="cpu", instruction="answer with one word")
    image_token = vlm.processor.image_token
    assert vlm.text("what is the total ?") == (
        f"USER: {image_token} what is the total ?\nanswer with one word ASSISTANT:")
    questions = load_questions(question_file)
    first = vlm.answer(questions[:3], max_new_tokens=4)
    assert len(first) == 3
    assert all(len(reply.text.split()) <= 4 for reply in first)  # new tokens only, no prompt
    assert all(reply.visual_tokens > 0 for reply in first)
    assert vlm.answer(questions[:3], max_new_tokens=4) == first


def test_model_folder_and_prompt_errors(tiny_llava: Path, tmp_path: Path) -> None:
    from vtsel.vlm_eval.vlm import VisionLanguageModel

    with pytest.raises(FileNotFoundError, match=r"no config\.json there"):
        VisionLanguageModel(tmp_path, device="cpu")
    with pytest.raises(ValueError, match=r"--prompt must contain '\{question\}'"):
        VisionLanguageModel(tiny_llava, device="cpu", prompt="USER: <image> ASSISTANT:")
    with pytest.raises(ValueError, match="--dtype 'int8' is not one of"):
        VisionLanguageModel(tiny_llava, device="cpu", dtype="int8")


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / PREDICTIONS_FILE).read_text().splitlines()]


def eval_args(
    model: Path, questions: Path, out: Path, *extra: str, max_new_tokens: int = 3
) -> list[str]:
    return ["vlm-eval", "--model", str(model), "--questions", str(questions),
            "--out", str(out), "--device", "cpu", "--max_new_tokens", str(max_new_tokens),
            *extra]


def test_unpruned_run_scores_every_method_and_resumes(
    tiny_llava: Path, question_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    main(eval_args(tiny_llava, question_file, out, "--methods", "random,norm",
                   "--keep", "1.0", "--batch_size", "2"))
    rows = read_rows(out)
    assert sorted((r["method"], r["keep"], r["id"]) for r in rows) == sorted(
        (method, 1.0, str(line)) for method in ("random", "norm") for line in range(1, 6))
    by_method = {m: {r["id"]: r["prediction"] for r in rows if r["method"] == m}
                 for m in ("random", "norm")}
    assert by_method["random"] == by_method["norm"]  # keep 1.0: one unpruned answer each
    answers = {str(line): PAGES[line - 1][2] for line in range(1, 6)}
    for r in rows:
        assert r["anls"] == anls(r["prediction"], answers[r["id"]])
        assert r["exact_match"] == exact_match(r["prediction"], answers[r["id"]])
    before = (out / PREDICTIONS_FILE).read_text()
    main(eval_args(tiny_llava, question_file, out, "--methods", "random,norm",
                   "--keep", "1.0", "--batch_size", "2"))
    assert (out / PREDICTIONS_FILE).read_text() == before  # nothing regenerated
    assert "| random | " in (out / "scores.md").read_text()
    with (out / "scores.csv").open() as stream:
        assert [r["method"] for r in csv.DictReader(stream)] == ["random", "norm"]
    with pytest.raises(ValueError, match="max_new_tokens differ"):
        main(eval_args(tiny_llava, question_file, out, "--methods", "random",
                       "--keep", "1.0", max_new_tokens=4))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "random,magic"], "--methods: unknown magic; valid: random"),
        (["--methods", "selector"], "give --selector <export folder>"),
        (["--keep", "0.5,1.5"], r"--keep takes ratios in \(0, 1\]; got \[1.5\]"),
        (["--keep", "0.5,half"], "--keep: cannot read 'half'"),
        (["--methods", "random", "--batch_size", "0"], "--batch_size must be >= 1"),
    ],
)
def test_bad_plans_are_refused_before_loading(
    tmp_path: Path, question_file: Path, args: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        main(eval_args(tmp_path / "no_model", question_file, tmp_path / "out", *args))
    assert not (tmp_path / "out").exists()


def test_pruned_run_has_a_row_per_method_budget_and_question(
    tiny_vlm: Path, question_file: Path, tmp_path: Path, exported: Exported
) -> None:
    out = tmp_path / "eval"
    args = eval_args(tiny_vlm, question_file, out,
                     "--methods", "selector,random,uniform,divprune",
                     "--selector", str(exported.directory), "--keep", "1.0,0.5,0.25",
                     "--batch_size", "3")
    main(args)
    rows = read_rows(out)
    keys = {(r["method"], r["keep"], r["id"]) for r in rows}
    assert len(rows) == len(keys) == 4 * 3 * 5
    assert all(0.0 <= r["anls"] <= 1.0 and r["exact_match"] in (0.0, 1.0) for r in rows)
    # Every method feeds the LLM the same number of tokens at a budget, fewer at a smaller one.
    tokens = {(r["keep"], r["id"]): set() for r in rows}
    for r in rows:
        tokens[r["keep"], r["id"]].add(r["visual_tokens"])
    assert all(len(counts) == 1 for counts in tokens.values())
    for line in range(1, 6):
        full, half, quarter = (tokens[keep, str(line)].pop() for keep in (1.0, 0.5, 0.25))
        assert full > half > quarter > 0
    # A run killed after part of its rows (the last one cut short) redoes only the rest.
    lines = (out / PREDICTIONS_FILE).read_text().splitlines(keepends=True)
    (out / PREDICTIONS_FILE).write_text("".join(lines[:20]) + lines[20][:15])
    with pytest.warns(UserWarning, match="incomplete last line"):
        main(args)
    resumed = (out / PREDICTIONS_FILE).read_text().splitlines(keepends=True)
    assert resumed[:20] == lines[:20] and len(resumed) == len(lines)
    assert {(r["method"], r["keep"], r["id"]) for r in read_rows(out)} == keys


@pytest.mark.slow
def test_a_sigkilled_evaluation_resumes_without_losing_or_repeating_rows(
    tiny_llava: Path, tmp_path: Path
) -> None:
    """Kill a real `vtsel vlm-eval` process mid-run, then rerun the same command."""
    records = render_pages(tmp_path / "pages")
    questions = write_questions(tmp_path, [records[index % len(records)] for index in range(60)])
    out = tmp_path / "eval"
    args = eval_args(tiny_llava, questions, out, "--methods", "random,norm",
                     "--keep", "1.0,0.5", "--batch_size", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "vtsel.cli", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    predictions = out / PREDICTIONS_FILE
    deadline = time.monotonic() + 120
    while not (predictions.exists() and len(predictions.read_text().splitlines()) >= 3):
        assert process.poll() is None, "the evaluation ended before it could be killed"
        assert time.monotonic() < deadline, "no predictions after 120 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = predictions.read_text()
    complete = before[: before.rfind("\n") + 1]  # rows the kill did not cut short
    assert 3 <= len(complete.splitlines()) < 2 * 2 * 60
    main(args)
    after = predictions.read_text()
    assert after.startswith(complete)  # nothing written before the kill is lost
    keys = [(r["method"], r["keep"], r["id"]) for r in read_rows(out)]
    assert len(keys) == len(set(keys)) == 2 * 2 * 60  # every row once


def test_fastv_and_pdrop_read_the_budgeted_share_on_average_over_the_layers(
    deep_llava: Path, question_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    main(eval_args(deep_llava, question_file, out, "--methods", "fastv,pdrop,uniform",
                   "--keep", "1.0,0.5", "--batch_size", "2"))
    rows = {(r["method"], r["keep"], r["id"]): r for r in read_rows(out)}
    assert len(rows) == 3 * 2 * 5
    for line in map(str, range(1, 6)):
        full = rows["uniform", 1.0, line]["visual_tokens"]
        assert rows["fastv", 1.0, line]["visual_tokens"] == full
        for method in ("fastv", "pdrop"):  # each layer reads half of them on average
            read = rows[method, 0.5, line]["visual_tokens"]
            assert read == pytest.approx(0.5 * full, rel=0.05)
    assert "| fastv |" in (out / SCORES_MARKDOWN).read_text()


def test_a_budget_fastv_cannot_meet_is_refused_before_answering(
    deep_llava: Path, question_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    with pytest.raises(ValueError, match=r"fastv at keep 0.2: its first 2 of 8 layers"):
        main(eval_args(deep_llava, question_file, out, "--methods", "random,fastv",
                       "--keep", "0.5,0.2"))
    assert not (out / PREDICTIONS_FILE).exists() or not read_rows(out)
