"""A real agent process under the systemd protocols: READY/WATCHDOG/STOPPING over a datagram socket the
test binds (as systemd does), and SIGTERM with requests in flight on both APIs."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import statistics
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import DEVICE, AgentProcess, Keys, Observer, Reply, publish_bundle
from agent_http_client import http_agent_config, oip_tensor, output_array, wait_http_port

from edgefleet.fleet.broker import MosquittoProcess

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
WATCHDOG_USEC = 1_000_000  # systemd would kill the agent after 1 s without a ping


def test_ready_watchdog_and_stopping_over_an_abstract_notify_socket(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path
) -> None:
    name = f"edgefleet-notify-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(b"\0" + name.encode())
        notify.settimeout(20)
        observer = Observer(broker.url, DEVICE)
        # a long telemetry interval: the watchdog alone sets the main loop's pace
        config = http_agent_config(tmp_path, broker.url, keys, telemetry_interval_s=60)
        process = AgentProcess(tmp_path, config, profiles_dir)
        process.env.update({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        process.start()
        received: list[tuple[float, bytes]] = []
        try:
            while sum(m == b"WATCHDOG=1" for _, m in received) < 5:
                received.append((time.monotonic(), notify.recv(4096)))
            # READY comes first, once the broker connection is up and the HTTP API listens
            assert received[0][1] == b"READY=1\nSTATUS=no model yet"
            log = process.log()
            assert log.index("event=connected") < log.index("event=http_listening")
            observer.wait_for("online", lambda m: m["online"] is True)
            pings = [at for at, message in received if message == b"WATCHDOG=1"]
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            # pings every WATCHDOG_USEC/2; systemd only acts when a gap reaches WATCHDOG_USEC
            assert max(gaps) < WATCHDOG_USEC / 1e6, gaps
            assert 0.4 <= statistics.median(gaps) <= 0.6, gaps

            process.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            rest: list[bytes] = []
            while b"STOPPING=1" not in [m.split(b"\n")[0] for m in rest]:
                rest.append(notify.recv(4096))
            assert rest[-1] == b"STOPPING=1\nSTATUS=finishing in-flight requests"
            assert process.wait(15) == 0
            observer.wait_for("online", lambda m: m["online"] is False)
        finally:
            if process.alive():
                process.stop()
            observer.close()
            print(process.log()[-3000:])


def test_sigterm_finishes_in_flight_requests_says_offline_and_exits_0(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path, bundles: dict[str, Path]
) -> None:
    observer = Observer(broker.url, DEVICE)
    config = http_agent_config(tmp_path, broker.url, keys, inference_workers=1, telemetry_interval_s=60)
    process = AgentProcess(tmp_path, config, profiles_dir).start()
    try:
        port = wait_http_port(process)
        publish_bundle(broker.url, DEVICE, bundles["v1"], "d-v1", version="1")
        observer.wait_active("1")
        big = np.random.default_rng(0).random((2000, 1, 8, 8), dtype=np.float32)  # ~40 ms per run
        expected = observer.infer(big[:8]).tensors()["logits"]

        # HTTP: a request whose body is still arriving when SIGTERM comes is in flight for sure
        body = json.dumps({"inputs": [oip_tensor("image", big[:8])]}).encode()
        slow = socket.create_connection(("127.0.0.1", port), timeout=20)
        head = f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        slow.sendall(head.encode() + body[:100])

        # MQTT: heavy requests queue behind one worker
        replies: dict[int, tuple[float, Reply]] = {}

        def ask(index: int) -> None:
            reply = observer.infer(big)
            replies[index] = (time.monotonic(), reply)

        askers = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for asker in askers:
            asker.start()
        deadline = time.monotonic() + 15
        while not replies:
            assert time.monotonic() < deadline, "no MQTT reply"
            time.sleep(0.005)
        signalled = time.monotonic()
        process.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        while "event=stopping" not in process.log():
            assert time.monotonic() < deadline, "the agent did not start stopping"
            time.sleep(0.01)
        slow.sendall(body[100:])
        response = slow.makefile("rb").read()  # the agent answers, then closes (it is shutting down)
        slow.close()
        for asker in askers:
            asker.join(20)
        assert process.wait(20) == 0
        offline = observer.wait_for("online", lambda m: m["online"] is False)
    finally:
        if process.alive():
            process.stop()
        observer.close()
        print(process.log()[-4000:])

    head_bytes, _, payload = response.partition(b"\r\n\r\n")
    assert head_bytes.startswith(b"HTTP/1.1 200"), response[:300]
    assert b"Connection: close" in head_bytes
    np.testing.assert_array_equal(output_array(json.loads(payload), "logits"), expected)

    assert len(replies) == 8  # every MQTT request was answered: served, or refused as shutting down
    late_ok = [r for at, r in replies.values() if at > signalled and r.status == "ok"]
    assert late_ok, "no queued request was finished after SIGTERM"
    for _, reply in replies.values():
        assert reply.status == "ok" or reply.error() == "the agent is shutting down; retry later"
    assert offline["online"] is False
    log = process.log()
    assert (
        log.index("event=stopping")
        < log.index("event=http_stopped unfinished=0")
        < log.index("event=stopped")
    )
    print(f"MQTT replies finished after SIGTERM: {len(late_ok)} of {len(replies)}")
