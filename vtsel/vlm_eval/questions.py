"""The question file of ``vtsel vlm-eval``: one JSON object per line, checked before any model
is loaded, so a typo on line 9,000 fails in a second rather than after hours of generation.

    {"image": "docs/0001.png", "question": "What is the total?", "answers": ["$12.50", "12.50"]}

``image`` is a path, relative paths are read from the question file's folder; ``id`` is
optional (default: the line number) and names the question in the predictions file, so it
must be unique. Blank lines are skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REQUIRED_KEYS = ("image", "question", "answers")


@dataclass(frozen=True)
class Question:
    """One question about one image, with every answer that counts as right."""

    id: str
    image: Path
    question: str
    answers: tuple[str, ...]


def load_questions(path: str | Path) -> list[Question]:
    """Every question of a JSONL file, in file order, after checking each line.

    Raises:
        FileNotFoundError: The file, or an image a line names, does not exist.
        ValueError: A line is not a JSON object, lacks a key, has a value of the wrong type,
            or repeats an id; the message names the file, the line and the key.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"question file {source} not found")
    questions: list[Question] = []
    seen_ids: dict[str, int] = {}
    for line_number, line in enumerate(source.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        question = _parse_line(line, f"{source}:{line_number}", source.parent, line_number)
        if question.id in seen_ids:
            raise ValueError(
                f"{source}:{line_number}: id {question.id!r} already used on line "
                f"{seen_ids[question.id]}; ids name rows of the predictions file"
            )
        seen_ids[question.id] = line_number
        questions.append(question)
    if not questions:
        raise ValueError(f"question file {source} holds no questions")
    return questions


def _parse_line(line: str, where: str, folder: Path, line_number: int) -> Question:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ValueError(
            f"{where}: missing key {', '.join(repr(key) for key in missing)} "
            f"(every line needs {', '.join(REQUIRED_KEYS)})"
        )
    image, question, answers = record["image"], record["question"], record["answers"]
    if not isinstance(image, str) or not isinstance(question, str):
        raise ValueError(f"{where}: 'image' and 'question' must be strings")
    if (
        not isinstance(answers, list)
        or not answers
        or not all(isinstance(answer, str) for answer in answers)
    ):
        raise ValueError(f"{where}: 'answers' must be a non-empty list of strings, got {answers!r}")
    image_path = Path(image) if Path(image).is_absolute() else folder / image
    if not image_path.is_file():
        raise FileNotFoundError(f"{where}: image {image_path} not found")
    question_id = str(record.get("id", line_number))
    return Question(question_id, image_path, question, tuple(answers))
