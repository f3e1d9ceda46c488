"""Telemetry and the Prometheus /metrics endpoint: the same figures, from a real agent under real traffic;
the exposition format; the SoC temperature read from a sysfs-shaped tree."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import DEVICE, OTHER_PROFILE, AgentProcess, Keys, Observer, make_bundle, publish_bundle
from agent_http_client import OipClient, http_agent_config, wait_http_port
from prometheus_lint import problems

from edgefleet.agent.prometheus import render
from edgefleet.agent.telemetry import LatencyTotals, soc_temperature_c
from edgefleet.contract.messages import BackendInfo, LatencySummary, Telemetry
from edgefleet.contract.tensors import encode_npy
from edgefleet.fleet.broker import MosquittoProcess

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"(?:,|$)')


def parse_exposition(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A strict reader of the text format: every sample is preceded by HELP and TYPE of its family."""
    assert text.endswith("\n")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ")
            assert kind in ("counter", "gauge", "summary") and family not in typed, line
            typed[family] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name = match["name"]
        family = next((f for f in typed if name == f or name in (f + "_sum", f + "_count")), None)
        assert family is not None, f"{name} has no TYPE line before it"
        labels = tuple((m["key"], m["value"]) for m in _LABEL.finditer(match["labels"] or ""))
        samples[(name, labels)] = float(match["value"])
    return samples


def test_exposition_is_valid_and_escapes_labels() -> None:
    telemetry = Telemetry(
        device_id="pi-1",
        interval_s=5,
        model_name='we"ird\\name\n',
        model_version="2",
        backend=BackendInfo(engine="litert", engine_version="2.3.0", delegate="xnnpack", threads=4),
        requests=10,
        errors=1,
        latency_ms=LatencySummary(p50=1.5, p95=2.0, p99=4.0, samples=9),
        interval_requests=10,
        interval_errors=1,
        throughput_rps=2.0,
        rss_mb=50.0,
        cpu_percent=12.5,
        soc_temp_c=48.3,
        swaps=3,
        rollbacks=1,
    )
    text = render(telemetry, LatencyTotals(count=9, sum_ms=18.0), profile="rpi4", ready=True)
    assert problems(text) == []  # what promtool's checks would refuse
    samples = parse_exposition(text)
    assert r'name="we\"ird\\name\n"' in text
    assert samples[("edgefleet_agent_request_latency_seconds", (("quantile", "0.95"),))] == 0.002
    assert samples[("edgefleet_agent_request_latency_seconds_sum", ())] == 0.018
    assert samples[("edgefleet_agent_soc_temperature_celsius", ())] == 48.3
    assert samples[("edgefleet_agent_resident_memory_bytes", ())] == 50 * 1024 * 1024
    assert samples[("edgefleet_agent_rollbacks_total", ())] == 1

    idle = telemetry.model_copy(update={"model_version": None, "soc_temp_c": None, "throughput_rps": None})
    idle = idle.model_copy(update={"latency_ms": LatencySummary(p50=None, p95=None, p99=None, samples=0)})
    samples = parse_exposition(render(idle, LatencyTotals(0, 0.0), profile="rpi4", ready=False))
    assert math.isnan(samples[("edgefleet_agent_request_latency_seconds", (("quantile", "0.5"),))])
    names = {name for name, _ in samples}
    assert not names & {
        "edgefleet_agent_model_info",
        "edgefleet_agent_soc_temperature_celsius",
        "edgefleet_agent_throughput_requests_per_second",
    }
    assert samples[("edgefleet_agent_ready", ())] == 0


def _zone(root: Path, index: int, kind: str, temp: str | None) -> None:
    zone = root / f"thermal_zone{index}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    if temp is not None:
        (zone / "temp").write_text(temp + "\n")


def test_soc_temperature_prefers_the_cpu_zone(tmp_path: Path) -> None:
    assert soc_temperature_c(tmp_path / "missing") is None
    assert soc_temperature_c(tmp_path) is None
    _zone(tmp_path, 0, "acpitz", "61000")
    assert soc_temperature_c(tmp_path) == 61.0  # no CPU/SoC zone: take what there is
    _zone(tmp_path, 1, "cpu-thermal", "48312")  # Raspberry Pi
    _zone(tmp_path, 2, "soc0", "49876")  # one of a Jetson's zones
    _zone(tmp_path, 3, "CPU-therm", "not a number")
    _zone(tmp_path, 4, "GPU-therm", None)
    assert soc_temperature_c(tmp_path) == 49.9


@pytest.mark.mqtt
@pytest.mark.slow
def test_telemetry_and_metrics_report_the_same_figures_and_the_backend(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path, reference_dir: Path
) -> None:
    """An agent whose profile asks for CUDA: the fallback is a warning event and in status, telemetry and
    /metrics; counts, latency quantiles and rates agree between telemetry and /metrics."""
    bundle = make_bundle(
        tmp_path / "v1.bundle", reference_dir / "digits_cnn_v1.onnx", keys.private, "1", profile=OTHER_PROFILE
    )
    observer = Observer(broker.url, DEVICE)
    config = http_agent_config(tmp_path, broker.url, keys, profile=OTHER_PROFILE, telemetry_interval_s=0.5)
    process = AgentProcess(tmp_path, config, profiles_dir).start()
    try:
        client = OipClient(wait_http_port(process))
        publish_bundle(broker.url, DEVICE, bundle, "d-1", version="1", desired_profile=OTHER_PROFILE)
        status = observer.wait_active("1")
        (fallback,) = status["backend"]["fallbacks"]
        assert "CUDAExecutionProvider requested but not available" in fallback
        assert status["backend"]["requested"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        observer.wait_for("events", lambda e: e["kind"] == "warning" and e["detail"] == fallback)

        images = np.load(reference_dir / "eval.npz")["image"][:2]
        for _ in range(20):
            assert client.infer("digits", {"image": images})[0] == 200
        for _ in range(10):
            assert observer.infer(images).status == "ok"
        bad = np.zeros((1, 64), np.float32)
        assert client.infer("digits", {"image": bad})[0] == 400
        assert client.infer("digits", {"image": bad})[0] == 400
        assert observer.request(encode_npy(bad)) is not None

        busy = observer.wait_for("telemetry", lambda t: (t["interval_requests"] or 0) > 0)
        assert busy["throughput_rps"] == pytest.approx(
            busy["interval_requests"] / busy["interval_s"], rel=0.5
        )
        # traffic has stopped: once a telemetry interval passed without requests, both views are still
        settled = observer.wait_for(
            "telemetry", lambda t: t["requests"] == 33 and t["interval_requests"] == 0
        )
        before = len(observer.of("telemetry"))
        scraped = parse_exposition(client.get("/metrics")[1])
        time.sleep(0.3)  # a telemetry interval closing during the scrape is published by now
        around_scrape = observer.of("telemetry")[before - 1 :]
    finally:
        if process.alive():
            process.stop()
        observer.close()
        print(process.log()[-3000:])

    assert (settled["errors"], settled["swaps"], settled["rollbacks"]) == (3, 0, 0)
    assert (settled["model_name"], settled["model_version"]) == ("digits", "1")
    assert settled["backend"]["providers"] == ["CPUExecutionProvider"]
    assert settled["backend"]["fallbacks"] == [fallback]
    here = soc_temperature_c()  # None where /sys/class/thermal has no zones (this CI machine)
    assert (settled["soc_temp_c"] is None) == (here is None)

    def metric(name: str, *labels: tuple[str, str]) -> float:
        return scraped[(f"edgefleet_agent_{name}", tuple(labels))]

    assert metric("requests_total") == settled["requests"] == 33
    assert metric("request_errors_total") == settled["errors"]
    assert metric("swaps_total") == 0 and metric("rollbacks_total") == 0
    assert metric("ready") == 1 and metric("backend_fallbacks") == 1
    for quantile, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
        assert metric("request_latency_seconds", ("quantile", quantile)) == pytest.approx(
            settled["latency_ms"][key] / 1000, rel=1e-9
        )
    assert metric("request_latency_seconds_count") == settled["latency_ms"]["samples"] == 30
    assert 0 < metric("request_latency_seconds_sum") < 30 * settled["latency_ms"]["p99"] / 1000 + 1e-9
    # rates are over the last closed interval: the scrape reports the telemetry published with it
    assert metric("throughput_requests_per_second") == 0
    assert any(metric("cpu_usage_ratio") == pytest.approx(t["cpu_percent"] / 100) for t in around_scrape)
    rss = [t["rss_mb"] * 1024 * 1024 for t in around_scrape]
    assert min(rss) * 0.9 <= metric("resident_memory_bytes") <= max(rss) * 1.1
    (info,) = [labels for name, labels in scraped if name == "edgefleet_agent_model_info"]
    assert dict(info) == {
        "name": "digits",
        "version": "1",
        "engine": "onnxruntime",
        "engine_version": settled["backend"]["engine_version"],
        "delegate": "",
        "providers": "CPUExecutionProvider",
    }
