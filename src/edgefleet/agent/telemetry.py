"""What the agent measures about itself: request counters and a rolling latency window, process samples
(RSS from /proc, CPU from os.times), the SoC temperature from /sys/class/thermal, and the Telemetry message
built from them, which MQTT telemetry and the Prometheus /metrics endpoint both report.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.agent.model_slot import ModelSlot
from edgefleet.contract.messages import LatencySummary, Telemetry

THERMAL_ROOT = Path("/sys/class/thermal")
# zone types that name the SoC/CPU sensor on the boards we target (Pi: cpu-thermal, Jetson: CPU-therm or
# soc0 ..., i.MX 8M: cpu-thermal); other zones (battery, wifi, gpu) are used only when none of these exist
_SOC_ZONE_HINTS = ("cpu", "soc")


@dataclass(frozen=True)
class RequestCounts:
    """Requests answered since start, of them error replies, and of those the client's."""

    requests: int
    errors: int
    client_errors: int


@dataclass(frozen=True)
class LatencyTotals:
    """Successful requests since start and their summed serving time (a Prometheus summary's _count/_sum)."""

    count: int
    sum_ms: float


class RequestMetrics:
    """Thread-safe counters since start and the run times of the last `window` requests."""

    def __init__(self, window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self.requests = 0
        self.errors = 0
        self.client_errors = 0  # of `errors`: the client's (bad request, refused), not the model's
        self._latency_count = 0
        self._latency_sum_ms = 0.0

    def record(self, ok: bool, latency_ms: float | None, client_error: bool = False) -> None:
        with self._lock:
            self.requests += 1
            if not ok:
                self.errors += 1
                if client_error:
                    self.client_errors += 1
            if latency_ms is not None:
                self._latencies.append(latency_ms)
                self._latency_count += 1
                self._latency_sum_ms += latency_ms

    def snapshot(self) -> tuple[RequestCounts, LatencySummary]:
        """The counters, read together (client_errors never exceeds the errors it is part of), and the
        latency percentiles of the window."""
        with self._lock:
            samples = np.fromiter(self._latencies, dtype=np.float64)
            counts = RequestCounts(self.requests, self.errors, self.client_errors)
        if samples.size == 0:
            return counts, LatencySummary(p50=None, p95=None, p99=None, samples=0)
        p50, p95, p99 = (round(float(v), 3) for v in np.percentile(samples, [50, 95, 99]))
        return counts, LatencySummary(p50=p50, p95=p95, p99=p99, samples=int(samples.size))

    def totals(self) -> LatencyTotals:
        with self._lock:
            return LatencyTotals(self._latency_count, self._latency_sum_ms)


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


def soc_temperature_c(root: Path = THERMAL_ROOT) -> float | None:
    """The SoC temperature in degrees C from `root`/thermal_zone*/{type,temp} (millidegrees), or None.

    Prefers zones whose type names the CPU/SoC and takes the hottest of them; None where the kernel
    exposes no thermal zone (containers, most x86 VMs) or none can be read.
    """
    readings: list[tuple[bool, float]] = []
    try:
        zones = sorted(root.glob("thermal_zone*"))
    except OSError:
        return None
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip().lower()
            millidegrees = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue  # a zone may exist but not be readable (sensor off, no permission)
        readings.append((any(hint in kind for hint in _SOC_ZONE_HINTS), millidegrees / 1000))
    if not readings:
        return None
    preferred = [t for is_soc, t in readings if is_soc] or [t for _, t in readings]
    return round(max(preferred), 1)


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


@dataclass(frozen=True)
class _IntervalRates:
    requests: int
    errors: int
    throughput_rps: float
    cpu_percent: float


class TelemetryCollector:
    """Builds Telemetry messages. `sample()` closes an interval (throughput and CPU% are over it) and is
    called once per telemetry_interval_s; `current()` gives live counters with the last interval's rates,
    so a /metrics scrape never shortens the interval the MQTT telemetry reports."""

    def __init__(
        self,
        device_id: str,
        interval_s: float,
        metrics: RequestMetrics,
        slot: ModelSlot,
        thermal_root: Path = THERMAL_ROOT,
    ) -> None:
        self.device_id = device_id
        self.interval_s = interval_s
        self.metrics = metrics
        self.slot = slot
        self.thermal_root = thermal_root
        self._lock = threading.Lock()
        self._cpu = CpuSampler()
        self._mark = (time.monotonic(), 0, 0)  # start of the current interval: time, requests, errors
        self._rates: _IntervalRates | None = None

    def _build(self, rates: _IntervalRates | None) -> Telemetry:
        counts, latency = self.metrics.snapshot()
        model = self.slot.current
        return Telemetry(
            device_id=self.device_id,
            interval_s=self.interval_s,
            model_name=model.manifest.name if model else None,
            model_version=model.version if model else None,
            backend=model.info if model else None,
            requests=counts.requests,
            errors=counts.errors,
            client_errors=counts.client_errors,
            latency_ms=latency,
            interval_requests=rates.requests if rates else None,
            interval_errors=rates.errors if rates else None,
            throughput_rps=rates.throughput_rps if rates else None,
            rss_mb=rss_mb(),
            cpu_percent=rates.cpu_percent if rates else 0.0,
            soc_temp_c=soc_temperature_c(self.thermal_root),
            swaps=self.slot.swaps,
            rollbacks=self.slot.rollbacks,
        )

    def sample(self) -> Telemetry:
        with self._lock:
            now = time.monotonic()
            requests, errors = self.metrics.requests, self.metrics.errors
            started, last_requests, last_errors = self._mark
            elapsed = now - started
            answered = requests - last_requests
            self._rates = _IntervalRates(
                requests=answered,
                errors=errors - last_errors,
                throughput_rps=round(answered / elapsed, 2) if elapsed > 0 else 0.0,
                cpu_percent=self._cpu.sample(),
            )
            self._mark = (now, requests, errors)
            rates = self._rates
        return self._build(rates)

    def current(self) -> Telemetry:
        with self._lock:
            rates = self._rates
        return self._build(rates)
