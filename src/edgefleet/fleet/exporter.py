"""`edgefleet exporter`: per-device metrics from MQTT telemetry on a Prometheus endpoint (`/metrics`, text
exposition format 0.0.4), and the telemetry history written to SQLite as it arrives.

Several exporters can share the load with `--share-group`: the broker hands each telemetry message to one
member of the group (MQTT 5 shared subscription). Each member then exposes the latest sample it received
per device; as every sample is a full snapshot (counters since the agent started, current percentiles),
dashboards take `max by (device_id)` across exporters, or the freshest by
`edgefleet_device_telemetry_timestamp_seconds`.
"""

from __future__ import annotations

import argparse
import signal
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgefleet.contract.errors import EdgefleetError
from edgefleet.fleet.describe import describe_backend
from edgefleet.fleet.fleet_feed import FleetFeed
from edgefleet.fleet.history import parse_duration
from edgefleet.fleet.lifecycle import Started
from edgefleet.fleet.monitor import FleetMonitor, FleetSnapshot, telemetry_extra
from edgefleet.fleet.stop_signals import stop_on_signals
from edgefleet.fleet.telemetry_store import HistoryRecorder, default_history_path
from edgefleet.mqtt import BrokerError
from edgefleet.prometheus_text import CONTENT_TYPE, family

DEFAULT_BIND = "127.0.0.1:9479"
RECONNECT_S = 5.0  # a broker not there at start is tried again this often


class ExporterError(EdgefleetError):
    """The exporter cannot start as configured."""


@dataclass
class MetricFamily:
    name: str
    kind: str  # gauge | counter
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: float | None) -> None:
        if value is not None:
            self.samples.append((labels, value))

    def render(self) -> Iterable[str]:
        if not self.samples:
            return
        yield from family(self.name, self.kind, self.help, self.samples)


@dataclass(frozen=True)
class ExporterStats:
    connected: bool
    history_written: int | None
    history_dropped: int | None


def render_metrics(snapshot: FleetSnapshot, stats: ExporterStats) -> str:
    """The Prometheus text exposition of every device the monitor knows, plus the exporter's own health."""
    families = {
        name: MetricFamily(name, kind, text)
        for name, kind, text in [
            ("edgefleet_device_info", "gauge", "1 per device, labelled with its profile, model and agent"),
            ("edgefleet_device_online", "gauge", "1 when the device's retained presence says online, else 0"),
            ("edgefleet_device_silent", "gauge", "1 when telemetry stopped arriving (3 intervals, >= 15 s)"),
            ("edgefleet_device_latency_seconds", "gauge", "model run time percentile over the last samples"),
            ("edgefleet_device_latency_samples", "gauge", "requests the latency percentiles cover"),
            ("edgefleet_device_requests_total", "counter", "inference requests answered since agent start"),
            ("edgefleet_device_errors_total", "counter", "requests answered with an error since agent start"),
            ("edgefleet_device_resident_memory_bytes", "gauge", "agent process resident memory"),
            (
                "edgefleet_device_cpu_usage_ratio",
                "gauge",
                "agent process CPU over the last interval, 1 = a core",
            ),
            (
                "edgefleet_device_soc_temperature_celsius",
                "gauge",
                "SoC temperature (devices that have a sensor)",
            ),
            ("edgefleet_device_throughput_requests_per_second", "gauge", "requests/s over the last interval"),
            ("edgefleet_device_rollbacks_total", "counter", "automatic model rollbacks since agent start"),
            ("edgefleet_device_model_swaps_total", "counter", "model swaps since agent start"),
            (
                "edgefleet_device_last_seen_timestamp_seconds",
                "gauge",
                "when anything from the device arrived",
            ),
            ("edgefleet_device_telemetry_timestamp_seconds", "gauge", "when its latest telemetry arrived"),
            (
                "edgefleet_device_telemetry_messages_total",
                "counter",
                "telemetry messages this exporter received",
            ),
            (
                "edgefleet_device_invalid_messages_total",
                "counter",
                "messages from it that were not understood",
            ),
            (
                "edgefleet_device_invalid",
                "gauge",
                "1 while the latest message on this topic was not understood",
            ),
            ("edgefleet_device_events_total", "counter", "device events received, by kind"),
            ("edgefleet_exporter_devices", "gauge", "devices this exporter knows"),
            ("edgefleet_exporter_messages_total", "counter", "device messages received"),
            ("edgefleet_exporter_telemetry_messages_total", "counter", "telemetry messages received"),
            ("edgefleet_exporter_invalid_messages_total", "counter", "device messages not understood"),
            ("edgefleet_exporter_broker_connected", "gauge", "1 while the MQTT connection is up"),
            ("edgefleet_exporter_start_time_seconds", "gauge", "when this exporter started (unix time)"),
            ("edgefleet_exporter_history_rows_written_total", "counter", "telemetry rows written to SQLite"),
            (
                "edgefleet_exporter_history_rows_dropped_total",
                "counter",
                "rows dropped: the writer fell behind",
            ),
        ]
    }

    def add(name: str, labels: dict[str, str], value: float | None) -> None:
        families[name].add(labels, value)

    now = snapshot.taken_at
    for device in snapshot.devices:
        who = {"device_id": device.device_id}
        status = device.status
        if status is not None:
            model = status.model
            info = {
                **who,
                "profile": status.profile,
                "model": model.name if model else "",
                "model_version": model.version if model else "",
                "agent_version": status.agent_version,
                "backend": describe_backend(status.backend, with_fallbacks=False) if status.backend else "",
                "state": status.state,
            }
            add("edgefleet_device_info", info, 1)
        if device.online is not None:
            add("edgefleet_device_online", who, 1 if device.online else 0)
        add("edgefleet_device_last_seen_timestamp_seconds", who, device.last_seen)
        add("edgefleet_device_invalid_messages_total", who, device.invalid_count)
        for leaf in device.invalid:
            add("edgefleet_device_invalid", {**who, "topic": leaf}, 1)
        for kind, count in sorted(device.events.items()):
            add("edgefleet_device_events_total", {**who, "kind": kind}, count)
        tele = device.telemetry
        if tele is None:
            continue
        add("edgefleet_device_silent", who, 1 if device.stale(now) else 0)
        # a gauge per percentile: `quantile` is reserved for summaries, which need a _sum and _count the
        # device's telemetry does not carry
        for percentile, ms in (
            ("p50", tele.latency_ms.p50),
            ("p95", tele.latency_ms.p95),
            ("p99", tele.latency_ms.p99),
        ):
            add(
                "edgefleet_device_latency_seconds",
                {**who, "percentile": percentile},
                None if ms is None else ms / 1000,
            )
        add("edgefleet_device_latency_samples", who, tele.latency_ms.samples)
        add("edgefleet_device_requests_total", who, tele.requests)
        add("edgefleet_device_errors_total", who, tele.errors)
        add("edgefleet_device_resident_memory_bytes", who, round(tele.rss_mb * 1024 * 1024))
        add("edgefleet_device_cpu_usage_ratio", who, tele.cpu_percent / 100)
        add("edgefleet_device_soc_temperature_celsius", who, telemetry_extra(tele, "soc_temp_c"))
        add("edgefleet_device_throughput_requests_per_second", who, telemetry_extra(tele, "throughput_rps"))
        add("edgefleet_device_rollbacks_total", who, telemetry_extra(tele, "rollbacks"))
        add("edgefleet_device_model_swaps_total", who, tele.swaps)
        add("edgefleet_device_telemetry_timestamp_seconds", who, device.telemetry_at)
        add("edgefleet_device_telemetry_messages_total", who, device.telemetry_count)
    add("edgefleet_exporter_devices", {}, len(snapshot.devices))
    add("edgefleet_exporter_messages_total", {}, snapshot.messages)
    add("edgefleet_exporter_telemetry_messages_total", {}, snapshot.telemetry_messages)
    add("edgefleet_exporter_invalid_messages_total", {}, snapshot.invalid_messages)
    add("edgefleet_exporter_broker_connected", {}, 1 if stats.connected else 0)
    add("edgefleet_exporter_start_time_seconds", {}, snapshot.started_at)
    add("edgefleet_exporter_history_rows_written_total", {}, stats.history_written)
    add("edgefleet_exporter_history_rows_dropped_total", {}, stats.history_dropped)
    lines = [line for family in families.values() for line in family.render()]
    return "\n".join(lines) + "\n"


def parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ExporterError(f"--bind {text!r} is not valid; use HOST:PORT, e.g. 0.0.0.0:9479")
    return host.strip("[]") or "0.0.0.0", int(port)


class Exporter(Started):
    """Listens to the broker and serves /metrics until `stop()`."""

    def __init__(
        self,
        broker_url: str,
        *,
        bind: str = DEFAULT_BIND,
        share_group: str | None = None,
        history: Path | None = None,
        retention_s: float | None = None,
        reconnect_s: float = RECONNECT_S,
    ) -> None:
        self.monitor = FleetMonitor()
        self.recorder = HistoryRecorder(history, retention_s=retention_s) if history else None
        self._new_feed = lambda: FleetFeed(
            broker_url, "exporter", self.monitor, recorder=self.recorder, share_group=share_group
        )
        self.feed = self._new_feed()
        self._bind = parse_bind(bind)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._reconnect_s = reconnect_s
        self._stopping = threading.Event()
        self._waiting: threading.Thread | None = None
        self.waiting_for_broker: str | None = None  # why the first connection has not been made yet

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self._bind[0]}:{self._server.server_port}/metrics"

    def metrics_text(self) -> str:
        recorder = self.recorder
        stats = ExporterStats(
            connected=self.feed.connected,
            history_written=recorder.written if recorder else None,
            history_dropped=recorder.dropped if recorder else None,
        )
        return render_metrics(self.monitor.snapshot(), stats)

    def start(self) -> Exporter:
        try:
            self._server = ThreadingHTTPServer(self._bind, _handler(self))
        except OSError as exc:
            host, port = self._bind
            raise ExporterError(
                f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); pick another --bind"
            ) from exc
        self._server.daemon_threads = True
        try:
            if self.recorder is not None:
                self.recorder.start()
            self._open_feed()
        except BaseException:
            self._server.server_close()
            if self.recorder is not None:
                self.recorder.stop()
            raise
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        return self

    def _open_feed(self) -> None:
        """Connect; a broker that is not there (yet) is waited for in the background while /metrics says
        `broker_connected 0`. A broker that refuses us (credentials, TLS) is an error at once."""
        try:
            self.feed.open()
        except BrokerError as exc:
            if not isinstance(exc.__cause__, OSError) or isinstance(exc.__cause__, ssl.SSLError):
                raise
            self.waiting_for_broker = str(exc)
            self._waiting = threading.Thread(
                target=self._wait_for_broker, name="exporter-connect", daemon=True
            )
            self._waiting.start()

    def _wait_for_broker(self) -> None:
        while not self._stopping.wait(self._reconnect_s):
            feed = self._new_feed()
            try:
                feed.open()
            except BrokerError as exc:
                self.waiting_for_broker = str(exc)
                continue
            self.feed, self.waiting_for_broker = feed, None
            print(f"exporter: connected to {feed.address}", flush=True)
            return

    def stop(self) -> None:
        self._stopping.set()
        if self._waiting is not None:
            self._waiting.join(timeout=10)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.feed.close()
        if self.recorder is not None:
            self.recorder.stop()


def _handler(exporter: Exporter) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, status, kind = exporter.metrics_text().encode(), 200, CONTENT_TYPE
            elif path == "/":
                body, status, kind = b"edgefleet exporter: metrics at /metrics\n", 200, "text/plain"
            else:
                body, status, kind = b"not found; metrics are at /metrics\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per scrape is noise

    return MetricsHandler


def run_exporter(args: argparse.Namespace) -> int:
    """CLI entry point (edgefleet exporter)."""
    history = None if args.no_history else Path(args.history) if args.history else default_history_path()
    retention = parse_duration(args.retention) if args.retention else None
    stop = threading.Event()
    exporter = Exporter(
        args.broker, bind=args.bind, share_group=args.share_group, history=history, retention_s=retention
    )
    with stop_on_signals(stop, signal.SIGTERM, signal.SIGINT), exporter:
        group = f" (share group {args.share_group})" if args.share_group else ""
        print(f"exporter: serving {exporter.url} from {exporter.feed.address}{group}", flush=True)
        if exporter.waiting_for_broker is not None:
            print(
                f"exporter: {exporter.waiting_for_broker}; serving broker_connected 0 and trying again "
                f"every {RECONNECT_S:g} s",
                flush=True,
            )
        if history is not None:
            print(f"exporter: recording telemetry history in {history}", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.wait(0.5):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if exporter.recorder is not None and exporter.recorder.failed:
                raise ExporterError(exporter.recorder.failed)
        snapshot = exporter.monitor.snapshot()
    print(
        f"exporter: {snapshot.telemetry_messages} telemetry messages from {len(snapshot.devices)} devices "
        f"({snapshot.invalid_messages} not understood)",
        flush=True,
    )
    return 0
