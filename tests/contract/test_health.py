"""The one health rule (contract/health.py) that probation, rollouts and watch share."""

from __future__ import annotations

from edgefleet.contract.health import DEFAULT_MIN_REQUESTS, HealthPolicy
from edgefleet.contract.profiles import load_profile
from edgefleet.fleet.rollout_state import RolloutOptions


def test_too_few_requests_are_not_judged_then_error_rate_before_latency() -> None:
    policy = HealthPolicy(max_error_rate=0.05, latency_budget_ms=10.0, min_requests=20)
    assert policy.problem(19, 19, 500.0) is None  # too few to judge, however bad
    assert policy.problem(20, 1, 9.9) is None  # 5% is allowed
    problem = policy.problem(20, 2, 500.0)
    assert problem is not None and problem.startswith("2 of 20 requests failed (10%; at most 5% allowed)")
    slow = policy.problem(40, 0, 12.5)
    assert slow is not None and "p95 run time 12.50 ms over 40 requests exceeds" in slow and "10 ms" in slow
    assert policy.problem(40, 0, None) is None


def test_the_profile_sets_the_limits_and_an_unknown_budget_skips_latency() -> None:
    profile = load_profile("rpi4")
    policy = HealthPolicy.of(profile)
    assert policy.max_error_rate == profile.max_error_rate
    assert (
        policy.latency_budget_ms == profile.latency_budget_ms and policy.min_requests == DEFAULT_MIN_REQUESTS
    )
    assert HealthPolicy(0.05, None).problem(100, 0, 1e9) is None


def test_a_rollout_judges_every_report_and_by_default_fails_on_any_error() -> None:
    options = RolloutOptions(
        selector="profile=rpi4", canary="1", batch="1", max_failures=0, min_healthy_s=1.0,
        stage_timeout_s=10.0, latency_budget_ms=50.0,
    )  # fmt: skip
    assert options.health().problem(1, 1, 1.0) is not None
    assert options.health().problem(1, 0, 1.0) is None
    tolerant = options.model_copy(update={"max_error_rate": 0.1})
    assert tolerant.health().problem(100, 10, 1.0) is None and tolerant.health().problem(100, 11, 1.0)


def test_a_rate_just_over_the_limit_does_not_read_as_the_limit() -> None:
    policy = HealthPolicy(max_error_rate=0.05, latency_budget_ms=None, min_requests=20)
    problem = policy.problem(7794, 418, None)
    assert problem == "418 of 7794 requests failed (5.4%; at most 5% allowed)"
