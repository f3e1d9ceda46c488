"""The probation of a newly swapped-in model: for a window after the swap its own run statistics (runs
that raised or gave NaN/inf, p95 run time) are judged against the profile's limits, and a failing model
is rolled back. This module only judges, free of I/O: the agent's Deployer (real runs) and the fleet
simulator's devices (simulated runs) both ask it, so a simulated rollout rolls back when an agent would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgefleet.contract.health import HealthPolicy

Outcome = Literal["watching", "passed", "failed"]


@dataclass(frozen=True)
class RunStats:
    """What one loaded model did on the request path: runs, runs that raised, runs whose float outputs
    held NaN/inf, and the p95 of its recent run times (None before the first run)."""

    runs: int
    failures: int
    bad_outputs: int
    p95_ms: float | None

    @property
    def errors(self) -> int:
        return self.failures + self.bad_outputs

    @property
    def error_rate(self) -> float:
        return self.errors / self.runs if self.runs else 0.0


@dataclass(frozen=True)
class ProbationLimits:
    window_s: float
    health: HealthPolicy


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    reason: str


def judge(stats: RunStats, elapsed_s: float, limits: ProbationLimits) -> Judgement:
    """Fail as soon as the health policy's `min_requests` runs show too many errors (raised, or NaN/inf
    outputs) or a p95 over budget; pass when the window is over. With fewer runs than that at the end there
    is too little to judge: the model passes (it already passed its health check), and the reason says so."""
    health = limits.health
    problem = health.problem(stats.runs, stats.errors, stats.p95_ms)
    if problem is not None:
        return Judgement("failed", f"{problem}: runs that raised or gave NaN/inf count as failed")
    if elapsed_s < limits.window_s:
        return Judgement("watching", "")
    if not health.enough(stats.runs):
        return Judgement(
            "passed",
            f"{stats.runs} runs in {limits.window_s:g} s: too few to judge, kept on its health check",
        )
    p95 = f"{stats.p95_ms:.2f} ms" if stats.p95_ms is not None else "n/a"
    return Judgement(
        "passed", f"{stats.runs} runs, {stats.errors} failed, p95 {p95} in {limits.window_s:g} s"
    )
