"""`edgefleet exporter` against a real mosquitto: per-device Prometheus metrics from MQTT telemetry (garbage
shown as garbage), several exporters splitting the telemetry through an MQTT 5 shared subscription, the
history they record, and the Grafana dashboard using the metric names the exporter serves."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fleet_helpers import device_status, plain_client, publish_wait, wait_until
from prometheus_lint import problems, rule_problems

from edgefleet.cli import main
from edgefleet.contract import topics
from edgefleet.contract.messages import ActiveModel, LatencySummary, Presence, Telemetry
from edgefleet.fleet.broker import MosquittoProcess, free_port
from edgefleet.fleet.exporter import Exporter, render_metrics
from edgefleet.fleet.telemetry_store import query_metric

pytestmark = pytest.mark.mqtt

MODEL = ActiveModel(name="digits", version="3", bundle_id="c" * 64, format="onnx", precision="int8")
REPO = Path(__file__).resolve().parents[2]
_SAMPLE = re.compile(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$")


def telemetry(device_id: str, requests: int, p95: float = 0.35, **extra: object) -> bytes:
    return Telemetry(
        device_id=device_id,
        interval_s=1.0,
        model_version="3",
        requests=requests,
        errors=2,
        latency_ms=LatencySummary(p50=0.2, p95=p95, p99=0.5, samples=100),
        rss_mb=64.0,
        cpu_percent=25.0,
        swaps=1,
        **extra,  # type: ignore[arg-type]
    ).to_bytes()


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text exposition -> {(name, labels): value}; fails on any line that is not well formed."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = _SAMPLE.match(line)
        assert match, f"malformed exposition line: {line!r}"
        name, label_text, value = match.groups()
        labels = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', label_text or ""))
        samples[(name, labels)] = float(value)
    return samples


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The exporter's metrics; what promtool's checks would refuse fails the test."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    assert problems(text) == []
    return parse_metrics(text)


def one(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def test_exporter_serves_per_device_metrics_and_shows_garbage_as_garbage(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    client = plain_client(broker)
    publish_wait(client, topics.online("cam-1"), Presence(online=True).to_bytes(), retain=True)
    publish_wait(
        client, topics.status("cam-1"), device_status("cam-1", "rpi4", MODEL).to_bytes(), retain=True
    )
    publish_wait(client, topics.online("cam-2"), Presence(online=False).to_bytes(), retain=True)
    publish_wait(client, topics.status("junk-1"), b"\xff\xfe not json", retain=True)
    db = tmp_path / "history.sqlite"
    with Exporter(broker.url, bind="127.0.0.1:0", history=db) as exporter:
        publish_wait(
            client, topics.telemetry("cam-1"), telemetry("cam-1", 10, soc_temp_c=51.5, throughput_rps=9.5)
        )
        publish_wait(client, topics.telemetry("cam-1"), telemetry("cam-1", 20, p95=0.4))
        publish_wait(client, topics.telemetry("junk-1"), b'{"device_id": "junk-1"}')
        wait_until(lambda: exporter.monitor.snapshot().telemetry_messages == 3, timeout=10)
        metrics = scrape(exporter.url)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(exporter.url.replace("/metrics", "/nothing"), timeout=5)
    client.disconnect()
    client.loop_stop()

    cam = {"device_id": "cam-1"}
    assert one(metrics, "edgefleet_device_online", **cam) == 1
    assert one(metrics, "edgefleet_device_online", device_id="cam-2") == 0
    assert (
        one(metrics, "edgefleet_device_info", **cam, profile="rpi4", model="digits", model_version="3") == 1
    )
    assert one(metrics, "edgefleet_device_latency_seconds", **cam, percentile="p95") == pytest.approx(0.0004)
    assert one(metrics, "edgefleet_device_latency_seconds", **cam, percentile="p50") == pytest.approx(0.0002)
    assert one(metrics, "edgefleet_device_requests_total", **cam) == 20
    assert one(metrics, "edgefleet_device_errors_total", **cam) == 2
    assert one(metrics, "edgefleet_device_resident_memory_bytes", **cam) == 64 * 1024 * 1024
    assert one(metrics, "edgefleet_device_cpu_usage_ratio", **cam) == pytest.approx(0.25)
    assert one(metrics, "edgefleet_device_telemetry_messages_total", **cam) == 2
    # The second message had no temperature: the device's latest sample is what is exported.
    assert not [k for k in metrics if k[0] == "edgefleet_device_soc_temperature_celsius"]
    assert one(metrics, "edgefleet_device_invalid", device_id="junk-1", topic="status") == 1
    assert one(metrics, "edgefleet_device_invalid", device_id="junk-1", topic="telemetry") == 1
    assert one(metrics, "edgefleet_device_invalid_messages_total", device_id="junk-1") == 2
    assert one(metrics, "edgefleet_exporter_invalid_messages_total") == 2
    assert one(metrics, "edgefleet_exporter_broker_connected") == 1
    assert one(metrics, "edgefleet_exporter_devices") == 3
    # Both valid telemetry messages reached the history, with the optional fields where they were sent.
    p95 = query_metric(db, "cam-1", "p95_ms", since=0)
    assert [p.value for p in p95] == [0.35, 0.4]
    assert [p.value for p in query_metric(db, "cam-1", "soc_temp_c", since=0)] == [51.5, None]


def test_exporters_in_a_share_group_split_the_telemetry(broker: MosquittoProcess) -> None:
    client = plain_client(broker)
    devices = [f"dev-{i}" for i in range(5)]
    for device in devices:
        publish_wait(
            client, topics.status(device), device_status(device, "rpi4", MODEL).to_bytes(), retain=True
        )
    with (
        Exporter(broker.url, bind="127.0.0.1:0", share_group="exp") as first,
        Exporter(broker.url, bind="127.0.0.1:0", share_group="exp") as second,
    ):
        sent = 0
        for n in range(40):
            for device in devices:
                # QoS 1 end to end, so the split can be counted exactly.
                client.publish(topics.telemetry(device), telemetry(device, n), qos=1)
                sent += 1
        counts = lambda: [e.monitor.snapshot().telemetry_messages for e in (first, second)]  # noqa: E731
        wait_until(lambda: sum(counts()) >= sent, timeout=10)
        a, b = counts()
        metrics_a, metrics_b = scrape(first.url), scrape(second.url)
    client.disconnect()
    client.loop_stop()
    assert a + b == sent and a > 0 and b > 0  # each message went to exactly one member
    # Retained status is not split: every member knows every device.
    for metrics in (metrics_a, metrics_b):
        assert {dict(k[1])["device_id"] for k in metrics if k[0] == "edgefleet_device_info"} == set(devices)


def test_exporter_command_runs_and_reports(
    broker: MosquittoProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "h.sqlite"
    code = main(
        [
            "exporter",
            "--broker",
            broker.url,
            "--bind",
            "127.0.0.1:0",
            "--history",
            str(db),
            "--duration",
            "0.3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "serving http://127.0.0.1:" in out and f"history in {db}" in out
    assert "exporter: 0 telemetry messages from 0 devices" in out
    assert main(["exporter", "--broker", broker.url, "--bind", "nonsense", "--no-history"]) == 2
    assert "--bind 'nonsense' is not valid" in capsys.readouterr().err
    assert main(["exporter", "--broker", broker.url, "--share-group", "a/b", "--no-history"]) == 2
    assert "share group 'a/b' is not valid" in capsys.readouterr().err


def _served_metrics() -> set[str]:
    """Every metric name the exporter serves for a fleet with one device of each kind of message."""
    from edgefleet.fleet.exporter import ExporterStats
    from edgefleet.fleet.monitor import FleetMonitor

    monitor = FleetMonitor()
    monitor.feed(topics.online("x"), Presence(online=True).to_bytes())
    monitor.feed(topics.status("x"), device_status("x", "rpi4", MODEL).to_bytes())
    monitor.feed(
        topics.telemetry("x"), telemetry("x", 5, soc_temp_c=40.0, throughput_rps=2.0, interval_errors=0)
    )
    monitor.feed(topics.events("x"), b'{"kind": "activated"}')
    monitor.feed(topics.telemetry("y"), b"garbage")
    return {
        line.split("{")[0].split(" ")[0]
        for line in render_metrics(monitor.snapshot(), ExporterStats(True, 1, 0)).splitlines()
        if not line.startswith("#")
    }


def test_grafana_dashboard_uses_only_metrics_the_exporter_serves() -> None:
    served = _served_metrics()
    dashboard_path = REPO / "docs" / "grafana" / "edgefleet-dashboard.json"
    dashboard = json.loads(dashboard_path.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v.get("query", "") for v in dashboard["templating"]["list"] if isinstance(v.get("query"), str)]
    used = {name for expr in exprs for name in re.findall(r"\bedgefleet_[a-z_]+", expr)}
    assert used, "the dashboard queries no edgefleet metric"
    assert used <= served, f"the dashboard uses metrics the exporter does not serve: {sorted(used - served)}"
    # the profile and device variables filter every per-device panel (issue 11: the top row ignored them)
    panels = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    unfiltered = [
        e for e in panels if "edgefleet_device_" in e and "$device" not in e and "$profile" not in e
    ]
    assert unfiltered == [], unfiltered


@pytest.mark.mqtt
def test_an_exporter_started_before_its_broker_serves_disconnected_then_connects(tmp_path: Path) -> None:
    """Issue 11: the exporter exited when the broker was down at start. It serves broker_connected 0 and
    connects when the broker comes up (a Prometheus target that is up says the broker is not)."""
    port = free_port()
    with Exporter(f"mqtt://127.0.0.1:{port}", bind="127.0.0.1:0", reconnect_s=0.1) as exporter:
        assert (
            exporter.waiting_for_broker is not None
            and "cannot reach the MQTT broker" in exporter.waiting_for_broker
        )
        with urllib.request.urlopen(exporter.url, timeout=5) as response:
            assert "edgefleet_exporter_broker_connected 0" in response.read().decode()
        with MosquittoProcess(tmp_path / "late-broker", port=port):
            deadline = time.monotonic() + 30
            while exporter.waiting_for_broker is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert exporter.waiting_for_broker is None
            assert "edgefleet_exporter_broker_connected 1" in exporter.metrics_text()


def test_alert_rules_use_only_metrics_the_exporter_serves_and_the_unit_runs_a_real_command() -> None:
    """docs/prometheus/edgefleet-alerts.yml and systemd/edgefleet-exporter.service (issue 11): promtool
    accepts the rules, and they use only metric names the exporter serves."""
    import shlex

    import yaml

    from edgefleet.cli import build_parser

    rules_file = REPO / "docs" / "prometheus" / "edgefleet-alerts.yml"
    assert rule_problems(rules_file) == []
    rules = yaml.safe_load(rules_file.read_text())
    (group,) = rules["groups"]
    alerts = {rule["alert"]: rule for rule in group["rules"]}
    assert {"EdgefleetDeviceOffline", "EdgefleetErrorRate", "EdgefleetLatencyOverBudget"} <= set(alerts)
    assert "EdgefleetRollback" in alerts and all("summary" in r["annotations"] for r in alerts.values())
    used = {name for rule in alerts.values() for name in re.findall(r"\bedgefleet_[a-z_]+", rule["expr"])}
    assert used <= _served_metrics(), sorted(used - _served_metrics())
    assert all("quantile=" not in rule["expr"] for rule in alerts.values())

    unit = (REPO / "systemd" / "edgefleet-exporter.service").read_text().replace("\\\n", " ")
    (exec_line,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_line.removeprefix("ExecStart="))[1:]
    argv = [
        {"${EDGEFLEET_BROKER}": "mqtt://broker:1883", "${EDGEFLEET_BIND}": "127.0.0.1:9479"}.get(a, a)
        for a in argv
    ]
    args = build_parser().parse_args(argv)
    assert args.command == "exporter" and str(args.history).endswith("telemetry.sqlite")
