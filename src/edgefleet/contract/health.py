"""What "healthy" means for a model on a device, in one place: the agent's probation, a rollout and `watch`
judge request counts and the p95 run time with the same HealthPolicy, built from the device's profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.contract.profiles import DeviceProfile

DEFAULT_MIN_REQUESTS = 20


@dataclass(frozen=True)
class HealthPolicy:
    max_error_rate: float  # errors / requests above this is unhealthy
    latency_budget_ms: float | None  # p95 above this is unhealthy; None: the profile is not known here
    min_requests: int = DEFAULT_MIN_REQUESTS  # fewer requests than this are too few to judge

    @classmethod
    def of(cls, profile: DeviceProfile, min_requests: int = DEFAULT_MIN_REQUESTS) -> HealthPolicy:
        return cls(profile.max_error_rate, profile.latency_budget_ms, min_requests)

    def enough(self, requests: int) -> bool:
        return requests >= self.min_requests

    def problem(self, requests: int, errors: int, p95_ms: float | None) -> str | None:
        """Why `errors` in `requests` with this p95 is unhealthy; None when it is healthy or when there are
        too few requests to judge."""
        if not self.enough(requests):
            return None
        rate = errors / requests
        if rate > self.max_error_rate:
            return (
                f"{errors} of {requests} requests failed ({_percent(rate)}; at most "
                f"{_percent(self.max_error_rate)} allowed)"
            )
        if p95_ms is not None and self.latency_budget_ms is not None and p95_ms > self.latency_budget_ms:
            return (
                f"p95 run time {p95_ms:.2f} ms over {requests} requests exceeds the profile's latency budget "
                f"of {self.latency_budget_ms:g} ms"
            )
        return None


def _percent(rate: float) -> str:
    """10%, 5.4%, 0.1%: whole percents stay whole, a rate just over a limit never reads as the limit."""
    text = f"{rate * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"
