"""The probation judge of the protocol core: what the agent's Deployer and the simulator's devices ask."""

from __future__ import annotations

from edgefleet.contract.health import HealthPolicy
from edgefleet.protocol.probation import ProbationLimits, RunStats, judge


def test_probation_judgement() -> None:
    limits = ProbationLimits(window_s=10, health=HealthPolicy(max_error_rate=0.05, latency_budget_ms=5))
    fine = RunStats(runs=100, failures=0, bad_outputs=1, p95_ms=1.0)
    assert judge(fine, 3, limits).outcome == "watching"
    assert judge(fine, 10, limits).outcome == "passed"
    errors = RunStats(runs=20, failures=1, bad_outputs=1, p95_ms=1.0)
    failed = judge(errors, 1, limits)
    assert failed.outcome == "failed" and "2 of 20 requests failed (10%" in failed.reason
    slow = judge(RunStats(runs=50, failures=0, bad_outputs=0, p95_ms=7.5), 1, limits)
    assert slow.outcome == "failed" and "p95 run time 7.50 ms over 50 requests exceeds" in slow.reason
    few = RunStats(runs=3, failures=3, bad_outputs=0, p95_ms=9.0)  # too little to judge before the end
    assert judge(few, 5, limits).outcome == "watching"
    ended = judge(few, 10, limits)
    assert ended.outcome == "passed" and "too few to judge" in ended.reason
