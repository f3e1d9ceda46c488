"""Issue 10 item 4: request handling stays within the device's memory. Requests reserve an estimate of
their peak out of request_memory_mb before their body is read; JSON bodies that could never fit are
refused unread, so four 16 MiB JSON bodies at once no longer take the agent past its profile's budget.
Refused requests are the client's errors, never the model's."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import DEVICE, AgentProcess, Keys, Observer, publish_bundle
from agent_http_client import OipClient, http_agent_config, oip_tensor, wait_http_port

from edgefleet.agent.request_memory import BINARY_FACTOR, JSON_FACTOR, RequestMemory, request_cost
from edgefleet.fleet.broker import MosquittoProcess

MIB = 1024 * 1024


def test_reservations_are_bounded_and_given_back() -> None:
    memory = RequestMemory(100)
    assert request_cost(10, 2) == 10 * BINARY_FACTOR + 2 * JSON_FACTOR
    assert not memory.fits_ever(101)
    assert memory.try_reserve(60) and memory.used == 60
    assert not memory.try_reserve(41)  # would fit alone, not now
    assert memory.try_reserve(40) and memory.used == 100
    memory.release(60)
    memory.release(40)
    assert memory.used == 0 and memory.try_reserve(100)
    assert "request_memory_mb" in memory.too_large(200, "this request")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def _post_raw(port: int, body: bytes) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v2/models/digits/infer", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.slow
def test_huge_json_bodies_at_once_are_refused_unread_and_rss_stays_in_budget(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path, bundles: dict[str, Path]
) -> None:
    budget_mib = 256  # the test profile's memory_budget_mb: requests get a quarter, 64 MiB
    config = http_agent_config(tmp_path, broker.url, keys, max_request_bytes=32 * MIB)
    observer = Observer(broker.url, DEVICE)
    process = AgentProcess(tmp_path, config, profiles_dir).start()
    try:
        port = wait_http_port(process)
        publish_bundle(broker.url, DEVICE, bundles["v1"], "d1", version="1")
        observer.wait_active("1")
        client = OipClient(port)
        good = {"inputs": [oip_tensor("image", np.zeros((1, 1, 8, 8), np.float32))]}
        assert client.post_json("/v2/models/digits/infer", json.dumps(good).encode())[0] == 200
        assert process.process is not None
        before = _peak_rss_mib(process.process.pid)
        # 16 MiB of compact JSON numbers: ~8M elements, ~380 MiB once parsed (the measurement)
        huge = (
            b'{"inputs":[{"name":"image","shape":[8388608],"datatype":"FP32","data":['
            + b"0," * (8 * MIB - 1)
            + b"0]}]}"
        )
        results: list[tuple[int, dict[str, str]]] = []
        senders = [threading.Thread(target=lambda: results.append(_post_raw(port, huge))) for _ in range(4)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(120)
        after = _peak_rss_mib(process.process.pid)
        assert len(results) == 4
        for status, body in results:
            assert status == 400 and "request_memory_mb" in body["error"], body
        assert after - before < 40, f"peak RSS grew {after - before:.0f} MiB on refused bodies"
        assert after < budget_mib
        # still serving
        assert client.post_json("/v2/models/digits/infer", json.dumps(good).encode())[0] == 200
        telemetry = observer.wait_for("telemetry", lambda t: t["errors"] >= 4)
        assert telemetry["client_errors"] == telemetry["errors"]  # none of them the model's
        client.close()
    finally:
        process.stop()
        observer.close()
        print(process.log()[-3000:])
