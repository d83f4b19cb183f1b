"""``vtsel eval``: how much of what matters each selection method keeps, before any VLM runs.

A judge (reconstructors trained on drawn mask families, never on a trained selector's masks,
``conf/judge/*.yaml``) first passes a sanity gate on the held-out shards, then scores every
method's kept tokens at the paper's budgets: the error on the dropped tokens (eq. 1; kept ones
pass through), feature MSE and cosine over all tokens, image PSNR and SSIM, and the share of
text-bearing tokens kept where text boxes are known.
"""

from vtsel.fidelity.gate import GateReport, check_judge
from vtsel.fidelity.judge import Judge
from vtsel.fidelity.lineup import BASELINES
from vtsel.fidelity.report import EvalReport
from vtsel.fidelity.runner import PAPER_KEEP_RATIOS, JudgeGateError, evaluate

__all__ = [
    "BASELINES",
    "PAPER_KEEP_RATIOS",
    "EvalReport",
    "GateReport",
    "Judge",
    "JudgeGateError",
    "check_judge",
    "evaluate",
]
