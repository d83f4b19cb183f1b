"""The judge's sanity gate: can it judge these shards, and does it favour what it saw?

A judge that cannot use the kept tokens scores every method alike (its error barely moves with
the budget); a judge that learned one kind of mask scores that kind well and every other badly.
``vtsel eval`` measures both on the very shards it evaluates, before any method is scored:

1. **Budget response**: its error on the dropped tokens of random subsets must fall clearly
   from the smallest budget to the largest (at 50% at most ``MAX_BUDGET_RATIO`` of the error
   at 5.6%).
2. **Better than interpolation, on seen and unseen masks**: at a middle budget its error must
   be below that of the training-free inverse-distance interpolation of the kept tokens, both
   on the family it saw most and on ``masking.HELD_OUT_FAMILY``, which it never saw.
3. **No favourite**: its advantage over that interpolation (1 - judge error / interpolation
   error) on the held-out family must not fall more than ``FAVOUR_TOLERANCE`` below its
   advantage on the family it saw most. The interpolation is the same for every family, so a
   judge that learned its most-seen family's habits shows up as a larger advantage there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from vtsel.fidelity.judge import Judge
from vtsel.models.selector import tokens_for_ratio
from vtsel.train.masking import HELD_OUT_FAMILY, family_draw
from vtsel.train.objective import dropped_token_mse

SMALL_BUDGET, LARGE_BUDGET, MIDDLE_BUDGET = 0.056, 0.50, 0.222  # the paper's, from Table 1
MAX_BUDGET_RATIO = 0.7
FAVOUR_TOLERANCE = 0.05


@dataclass
class GateReport:
    """What the gate measured, and which checks failed (none: the judge may judge)."""

    small_budget_error: float  # dropped-token MSE, random subsets at SMALL_BUDGET
    large_budget_error: float  # the same at LARGE_BUDGET
    seen_family: str
    judge_error: dict[str, float]  # family -> dropped-token MSE at MIDDLE_BUDGET
    interpolation_error: dict[str, float]  # family -> the same for the interpolation
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def budget_ratio(self) -> float:
        return self.large_budget_error / self.small_budget_error

    def advantage(self, family: str) -> float:
        """1 - judge error / interpolation error on ``family``: what the training adds."""
        return 1.0 - self.judge_error[family] / self.interpolation_error[family]

    def lines(self) -> list[str]:
        """The gate's figures, one Markdown bullet each, for the report."""
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"- judge sanity gate {verdict}: dropped-token error on random subsets "
            f"{self.small_budget_error:.4f} at {100 * SMALL_BUDGET:g}% -> "
            f"{self.large_budget_error:.4f} at {100 * LARGE_BUDGET:g}% (ratio "
            f"{self.budget_ratio:.2f}, at most {MAX_BUDGET_RATIO})",
        ]
        for family in (self.seen_family, HELD_OUT_FAMILY):
            seen = "most seen" if family == self.seen_family else "never seen"
            lines.append(
                f"- at {100 * MIDDLE_BUDGET:g}%, {family} masks ({seen}): judge "
                f"{self.judge_error[family]:.4f} vs training-free interpolation "
                f"{self.interpolation_error[family]:.4f} (advantage "
                f"{100 * self.advantage(family):.1f}%)"
            )
        lines += [f"- gate failure: {failure}" for failure in self.failures]
        return lines


def check_judge(judge: Judge, batches: Iterable[torch.Tensor], seed: int = 0) -> GateReport:
    """Run the gate on raw feature batches (B, L, C) of the shards to be evaluated."""
    seen_family = max(judge.families, key=judge.families.get)
    families = (seen_family, HELD_OUT_FAMILY)
    checks = [("small", SMALL_BUDGET, "random"), ("large", LARGE_BUDGET, "random")]
    checks += [(f"mid/{family}", MIDDLE_BUDGET, family) for family in families]
    sums: dict[str, float] = dict.fromkeys([name for name, _, _ in checks], 0.0)
    sums.update({f"interp/{family}": 0.0 for family in families})
    count = 0
    generator = torch.Generator().manual_seed(seed)
    device = judge.module.device
    for feats in batches:
        normed = judge.normalize(feats.to(device))  # (B, L, C)
        batch, num_tokens = normed.shape[:2]
        for name, ratio, family in checks:
            counts = torch.full((batch,), tokens_for_ratio(num_tokens, ratio))
            keep, shown = family_draw(family, counts, judge.contract.grid, generator, feats.cpu())
            keep = keep.to(device)  # (B, L)
            rebuilt = judge.reconstruct_features(judge.normalize(shown.to(device)), keep)
            judged = dropped_token_mse(rebuilt, normed, keep)
            sums[name] += float(judged.sum())
            if name.startswith("mid/"):
                interpolated = dropped_token_mse(judge.interpolate(normed, keep), normed, keep)
                sums[f"interp/{family}"] += float(interpolated.sum())
        count += batch
    if count == 0:
        raise ValueError("the judge's sanity gate got no crops to check")
    report = GateReport(
        small_budget_error=sums["small"] / count,
        large_budget_error=sums["large"] / count,
        seen_family=seen_family,
        judge_error={f: sums[f"mid/{f}"] / count for f in families},
        interpolation_error={f: sums[f"interp/{f}"] / count for f in families},
    )
    report.failures = _failures(report)
    return report


def _failures(report: GateReport) -> list[str]:
    failures = []
    if report.budget_ratio > MAX_BUDGET_RATIO:
        failures.append(
            f"its error barely falls with the budget (ratio {report.budget_ratio:.2f} > "
            f"{MAX_BUDGET_RATIO}): it does not use what is kept; train it longer or wider"
        )
    for family in (report.seen_family, HELD_OUT_FAMILY):
        if report.advantage(family) <= 0:
            failures.append(
                f"on {family} masks it is no better than training-free interpolation "
                f"({report.judge_error[family]:.4f} vs {report.interpolation_error[family]:.4f})"
            )
    gap = report.advantage(report.seen_family) - report.advantage(HELD_OUT_FAMILY)
    if gap > FAVOUR_TOLERANCE:
        failures.append(
            f"it favours the {report.seen_family} masks it saw most: its advantage over "
            f"interpolation there exceeds that on never-seen {HELD_OUT_FAMILY} masks by "
            f"{100 * gap:.1f} points (> {100 * FAVOUR_TOLERANCE:g})"
        )
    return failures
