"""``vtsel vlm-eval``: a local VLM's answers to a question file at several token budgets and
selection methods, scored by exact match and ANLS (DocVQA/ChartQA-style tables).

``scoring`` holds the metrics, ``questions`` the question file, ``predictions`` the resumable
per-answer rows, ``report`` the tables, ``vlm`` the model, and ``run`` the command.
"""

from vtsel.vlm_eval.questions import Question, load_questions
from vtsel.vlm_eval.scoring import anls, exact_match

__all__ = ["Question", "anls", "exact_match", "load_questions"]
