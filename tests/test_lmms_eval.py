"""lmms-eval end to end: the `vtsel` model on a tiny random LLaVA-NeXT and a local task.

Runs where the `[lmms]` extra is installed (`make test-lmms`); lmms-eval is a large optional
dependency, so `make test` deselects these tests by their marker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tiny_vlms
from tests.conftest import Exported
from tests.extract_support import write_photos
from tests.tiny_vlms import LLAVA_IMAGE_TOKENS, Stack, chat_template

pytestmark = pytest.mark.lmms

TASK_DIR = Path(__file__).parent / "lmms_task"
WORDS = ("<pad>", "<unk>", "<s>", "</s>", "<image>", "what", "is", "this", "picture")
SIDE, PATCH = 32, 8  # 4x4 tokens of width 32 per crop: the `exported` selector's contract


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight LLaVA-NeXT and its processor, saved to a folder."""
    tokenizer = tiny_vlms.word_tokenizer(WORDS, bos_token="<s>", eos_token="</s>",
                                         **LLAVA_IMAGE_TOKENS)
    model, processor = tiny_vlms.tiny_llava_next(
        tokenizer, Stack(width=32, layers=2, heads=2), Stack(width=32, layers=2, heads=2),
        crop=SIDE, patch=PATCH, pinpoints=[[SIDE, 2 * SIDE], [2 * SIDE, SIDE]],
        template=chat_template(LLAVA_IMAGE_TOKENS["image_token"]),
    )
    directory = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def run_lmms_eval(work: Path, model_args: str) -> tuple[dict, list[dict]]:
    """``lmms-eval --model vtsel`` in ``work`` (which holds questions.jsonl): the results file
    it writes, read back, and the visual-token log of its answers."""
    log = work / f"tokens-{len(list(work.glob('tokens-*')))}.jsonl"
    out = work / f"out-{log.stem}"
    command = [
        str(Path(sys.executable).parent / "lmms-eval"), "--model", "vtsel",
        "--model_args", f"{model_args},visual_tokens_log={log}",
        "--tasks", "vtsel_toy", "--include_path", str(TASK_DIR),
        "--batch_size", "1", "--output_path", str(out), "--log_samples",
    ]
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    finished = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600,
                              env={**os.environ, **offline})
    written = list(out.rglob("*results.json"))  # lmms-eval exits 0 even when a model fails
    assert finished.returncode == 0 and len(written) == 1, finished.stderr[-3000:]
    (results_file,) = written
    tokens = [json.loads(line) for line in log.read_text().splitlines()]
    return json.loads(results_file.read_text()), tokens


def test_lmms_eval_scores_the_pruned_model_and_the_llm_sees_fewer_visual_tokens(
    tiny_llava: Path, exported: Exported, tmp_path: Path
) -> None:
    keys = write_photos(tmp_path / "images", 3)
    with (tmp_path / "questions.jsonl").open("w") as questions:
        for key in keys:
            questions.write(json.dumps({"image": str(tmp_path / "images" / f"{key}.png"),
                                        "question": "what is this", "answer": "picture"}) + "\n")
    base = f"pretrained={tiny_llava},device=cpu"
    full, full_tokens = run_lmms_eval(tmp_path, f"{base},method=selector,"
                                                f"selector={exported.directory},keep=1.0")
    kept, kept_tokens = run_lmms_eval(tmp_path, f"{base},method=selector,"
                                                f"selector={exported.directory},keep=0.4")
    for results in (full, kept):
        score = results["results"]["vtsel_toy"]["exact_match,none"]
        assert 0.0 <= score <= 1.0
        assert results["n-samples"]["vtsel_toy"]["effective"] == len(keys)
    assert [row["doc_id"] for row in full_tokens] == [0, 1, 2]
    for unpruned, pruned in zip(full_tokens, kept_tokens, strict=True):
        assert unpruned["doc_id"] == pruned["doc_id"]
        # 40% of the candidate tokens, rounded per crop: well under half, well over a quarter
        assert 0.3 * unpruned["visual_tokens"] <= pruned["visual_tokens"]
        assert pruned["visual_tokens"] <= 0.5 * unpruned["visual_tokens"]


def test_unknown_model_args_are_named(tiny_llava: Path) -> None:
    from vtsel.vlm_eval.lmms import VtselLMM

    with pytest.raises(ValueError, match=r"vtsel takes no budget"):
        VtselLMM(pretrained=str(tiny_llava), device="cpu", budget="0.4")
