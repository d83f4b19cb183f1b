"""``vtsel vlm-eval``: a local VLM's answers to a question file at several token budgets and
selection methods, scored by exact match and ANLS (DocVQA/ChartQA-style tables).

``scoring`` holds the metrics, ``questions`` the question file, ``predictions`` the resumable
per-answer rows, ``report`` the tables, ``vlm`` the model, and ``run`` the command.
"""
