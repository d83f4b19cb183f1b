"""The toy task's documents: an image path, a question and one answer word."""

from PIL import Image


def doc_to_visual(doc: dict) -> list[Image.Image]:
    with Image.open(doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": float(results[0].strip() == doc["answer"])}
