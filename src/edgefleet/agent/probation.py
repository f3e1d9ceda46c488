"""The probation of a newly swapped-in model: for a window after the swap its own run statistics (runs
that raised or gave NaN/inf, p95 run time) are judged against the profile's limits, and a failing model
is rolled back. This module only judges; the Deployer swaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgefleet.agent.model_slot import RunStats

Outcome = Literal["watching", "passed", "failed"]


@dataclass(frozen=True)
class ProbationLimits:
    window_s: float
    min_requests: int
    max_error_rate: float
    latency_budget_ms: float


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    reason: str


def judge(stats: RunStats, elapsed_s: float, limits: ProbationLimits) -> Judgement:
    """Fail as soon as `min_requests` runs show too many errors or a p95 over budget; pass when the
    window is over. With fewer runs than `min_requests` at the end there is too little to judge: the
    model passes (it already passed its health check), and the reason says so."""
    if stats.runs >= limits.min_requests:
        if stats.error_rate > limits.max_error_rate:
            return Judgement(
                "failed",
                f"{stats.errors} of {stats.runs} runs failed or gave NaN/inf "
                f"({stats.error_rate:.0%}, the profile allows {limits.max_error_rate:.0%})",
            )
        if stats.p95_ms is not None and stats.p95_ms > limits.latency_budget_ms:
            return Judgement(
                "failed",
                f"p95 run time {stats.p95_ms:.2f} ms over {stats.runs} runs exceeds the profile's latency "
                f"budget of {limits.latency_budget_ms:g} ms",
            )
    if elapsed_s < limits.window_s:
        return Judgement("watching", "")
    if stats.runs < limits.min_requests:
        return Judgement(
            "passed",
            f"{stats.runs} runs in {limits.window_s:g} s: too few to judge, kept on its health check",
        )
    p95 = f"{stats.p95_ms:.2f} ms" if stats.p95_ms is not None else "n/a"
    return Judgement(
        "passed", f"{stats.runs} runs, {stats.errors} failed, p95 {p95} in {limits.window_s:g} s"
    )
