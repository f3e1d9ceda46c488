"""The Prometheus text exposition (format 0.0.4) of the agent's Telemetry, served at GET /metrics.

Same figures as the MQTT telemetry, in Prometheus units: latency in seconds, memory in bytes.
"""

from __future__ import annotations

from edgefleet.agent.telemetry import LatencyTotals
from edgefleet.contract.messages import Telemetry
from edgefleet.prometheus_text import CONTENT_TYPE, family

__all__ = ["CONTENT_TYPE", "render"]

PREFIX = "edgefleet_agent_"


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: list[tuple[dict[str, str], float | int | None]],
        suffixes: dict[str, float | int] | None = None,
    ) -> None:
        self.lines += family(PREFIX + name, kind, help_text, samples, suffixes)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def render(telemetry: Telemetry, totals: LatencyTotals, *, profile: str, ready: bool) -> str:
    """The exposition of one Telemetry (plus the all-time latency totals a summary needs)."""
    t = telemetry
    out = _Exposition()
    device = {"device_id": t.device_id, "profile": profile}
    out.metric("info", "gauge", "Always 1; labels name the device.", [(device, 1)])
    out.metric("ready", "gauge", "1 when a model is active and the agent takes requests.", [({}, int(ready))])
    if t.model_version is not None:
        backend = t.backend
        labels = {
            "name": t.model_name or "",
            "version": t.model_version,
            "engine": backend.engine if backend else "",
            "engine_version": backend.engine_version if backend else "",
            "delegate": (backend.delegate or "") if backend else "",
            "providers": ",".join(backend.providers) if backend else "",
        }
        model_help = "Always 1; labels name the active model and its runtime."
        out.metric("model_info", "gauge", model_help, [(labels, 1)])
        out.metric(
            "backend_fallbacks",
            "gauge",
            "What the profile asked for that this device could not provide (status backend.fallbacks).",
            [({}, len(backend.fallbacks) if backend else 0)],
        )
    out.metric("requests_total", "counter", "Inference requests answered since start.", [({}, t.requests)])
    errors_help = "Requests answered with an error since start."
    out.metric("request_errors_total", "counter", errors_help, [({}, t.errors)])
    client_help = "Of the errors, those that were the client's (bad or refused requests), not the model's."
    out.metric("request_client_errors_total", "counter", client_help, [({}, t.client_errors)])
    latency = t.latency_ms
    out.metric(
        "request_latency_seconds",
        "summary",
        f"Serving time of successful requests, transport excluded; quantiles of the last {latency.samples}.",
        [
            ({"quantile": "0.5"}, _seconds(latency.p50)),
            ({"quantile": "0.95"}, _seconds(latency.p95)),
            ({"quantile": "0.99"}, _seconds(latency.p99)),
        ],
        {"_sum": totals.sum_ms / 1000, "_count": totals.count},
    )
    if t.throughput_rps is not None:
        out.metric(
            "throughput_requests_per_second",
            "gauge",
            f"Requests answered per second over the last telemetry interval ({t.interval_s} s).",
            [({}, t.throughput_rps)],
        )
    rss_bytes = int(t.rss_mb * 1024 * 1024)
    out.metric("resident_memory_bytes", "gauge", "Resident set size of the agent process.", [({}, rss_bytes)])
    cpu_help = "Agent process CPU over the last telemetry interval; 1 = one core (as the exporter's)."
    out.metric("cpu_usage_ratio", "gauge", cpu_help, [({}, t.cpu_percent / 100)])
    if t.soc_temp_c is not None:
        temp_help = "SoC temperature from /sys/class/thermal."
        out.metric("soc_temperature_celsius", "gauge", temp_help, [({}, t.soc_temp_c)])
    out.metric("swaps_total", "counter", "Model swaps since the agent started.", [({}, t.swaps)])
    out.metric("rollbacks_total", "counter", "Swaps that were rollbacks, since start.", [({}, t.rollbacks)])
    return out.text()
