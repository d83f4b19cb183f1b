"""Exact match and ANLS, the scores of DocVQA-style question answering.

ANLS, the Average Normalized Levenshtein Similarity, is defined for ST-VQA by Biten et al.,
"Scene Text Visual Question Answering", ICCV 2019 (arXiv 1905.13648) and adopted by DocVQA
(Mathew et al., WACV 2021, arXiv 2007.00398): a prediction o scores against the ground-truth
answers a_j

    max_j s(a_j, o),   s(a, o) = 1 − NL(a, o)  if NL(a, o) < τ,  else 0,   τ = 0.5

where NL is the Levenshtein distance divided by the longer string's length, and ANLS is the
mean over questions. Answers are compared case-insensitively with outer blanks stripped, as
those benchmarks' evaluations do; runs of inner whitespace are also collapsed to one space so
a model's line breaks do not cost edits. Below τ the answer is taken for a wrong text, not a
misread one, and gets no credit. Exact match (DocVQA's "accuracy") is 1 when the normalised
prediction equals a normalised answer.
"""

from __future__ import annotations

from collections.abc import Sequence

ANLS_THRESHOLD = 0.5


def normalize_answer(text: str) -> str:
    """Lower case, outer blanks stripped, inner whitespace runs as one space."""
    return " ".join(text.lower().split())


def levenshtein(first: str, second: str) -> int:
    """Edits (insertions, deletions, substitutions) turning ``first`` into ``second``."""
    if len(first) < len(second):
        first, second = second, first
    previous = list(range(len(second) + 1))  # distances from first[:0] to each second[:j]
    for i, first_char in enumerate(first, start=1):
        current = [i]
        for j, second_char in enumerate(second, start=1):
            current.append(min(
                previous[j] + 1,  # delete first_char
                current[j - 1] + 1,  # insert second_char
                previous[j - 1] + (first_char != second_char),  # substitute or keep
            ))
        previous = current
    return previous[-1]


def normalized_levenshtein(first: str, second: str) -> float:
    """Levenshtein distance over the longer length, in [0, 1]; 0 for two empty strings."""
    longest = max(len(first), len(second))
    return levenshtein(first, second) / longest if longest else 0.0


def anls(prediction: str, answers: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """One question's ANLS: the best thresholded similarity to any of its answers."""
    predicted = normalize_answer(prediction)
    best = 0.0
    for answer in answers:
        distance = normalized_levenshtein(normalize_answer(answer), predicted)
        if distance < threshold:
            best = max(best, 1.0 - distance)
    return best


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised answer, else 0.0."""
    predicted = normalize_answer(prediction)
    return float(any(normalize_answer(answer) == predicted for answer in answers))
