"""``vtsel eval``: how much of what matters each selection method keeps, before any VLM runs.

A judge (reconstructors trained on random masks only, ``conf/judge/*.yaml``) scores every
method's kept tokens on held-out shards at the paper's budgets: feature MSE and cosine (eq. 1),
image PSNR and SSIM, and the share of text-bearing tokens kept where text boxes are known.
"""

from vtsel.evaluation.judge import FeatureContract, Judge
from vtsel.evaluation.lineup import BASELINES
from vtsel.evaluation.report import Budget
from vtsel.evaluation.runner import PAPER_KEEP_RATIOS, EvalReport, evaluate

__all__ = [
    "BASELINES",
    "PAPER_KEEP_RATIOS",
    "Budget",
    "EvalReport",
    "FeatureContract",
    "Judge",
    "evaluate",
]
