"""Request counters, a rolling latency window and process samples (RSS from /proc, CPU from os.times)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque

import numpy as np

from edgefleet.contract.messages import LatencySummary


class RequestMetrics:
    """Thread-safe counters since start and the run times of the last `window` requests."""

    def __init__(self, window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self.requests = 0
        self.errors = 0

    def record(self, ok: bool, latency_ms: float | None) -> None:
        with self._lock:
            self.requests += 1
            if not ok:
                self.errors += 1
            if latency_ms is not None:
                self._latencies.append(latency_ms)

    def snapshot(self) -> tuple[int, int, LatencySummary]:
        with self._lock:
            samples = np.fromiter(self._latencies, dtype=np.float64)
            requests, errors = self.requests, self.errors
        if samples.size == 0:
            return requests, errors, LatencySummary(p50=None, p95=None, p99=None, samples=0)
        p50, p95, p99 = (round(float(v), 3) for v in np.percentile(samples, [50, 95, 99]))
        return requests, errors, LatencySummary(p50=p50, p95=p95, p99=p99, samples=int(samples.size))


def rss_mb() -> float:
    """Resident set size of this process from /proc/self/status (0.0 where /proc is unavailable)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


class CpuSampler:
    """CPU% of this process between two `sample()` calls (100 = one core)."""

    def __init__(self) -> None:
        self._last = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        times = os.times()
        return times.user + times.system, time.monotonic()

    def sample(self) -> float:
        cpu, wall = self._now()
        last_cpu, last_wall = self._last
        self._last = (cpu, wall)
        elapsed = wall - last_wall
        return round(100.0 * (cpu - last_cpu) / elapsed, 1) if elapsed > 0 else 0.0
