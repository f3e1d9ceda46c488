"""Junk on every topic the agent subscribes to - random bytes, bytes that are not UTF-8, JSON of the wrong
shape, pathological nesting, 12 MiB payloads - while it serves requests and has a delivery in progress:
every request is answered, the delivery still completes, and nothing reaches the catch-all handlers.
And a chunk corrupted on the broker itself: dropped, fetched again, finally rejected with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import (
    DEVICE,
    AgentProcess,
    Keys,
    Observer,
    RunningAgent,
    Traffic,
    _connected_client,
    agent_config,
    chunks_logged,
    make_custom_bundle,
    publish_bundle,
    publish_bundle_parts,
    wait_until,
)

from edgefleet.contract import topics
from edgefleet.contract.messages import CONTENT_JSON, CONTENT_NPY, CONTENT_NPZ
from edgefleet.fleet.broker import MosquittoProcess

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
CHUNK = 256 * 1024
HUGE = 12 * 2**20
IMAGES = np.zeros((2, 1, 8, 8), np.float32)


def junk_payloads() -> dict[str, bytes]:
    return {
        "random bytes": os.urandom(300),
        "not UTF-8": b"\xff\xfe\x00\x81 not text",
        "JSON null": b"null",
        "JSON list": b"[1, 2, 3]",
        "JSON number": b"5",
        "wrong field types": b'{"deployment_id": 5, "bundle_id": [], "size": "big", "chunk_size": -1}',
        "bad ids": (
            b'{"deployment_id": "../../etc", "bundle_id": "../../etc/passwd", "name": "x", '
            b'"version": "1", "profile": "test-onnx"}'
        ),
        "deep nesting": b"[" * 200_000,
        "npy header only": (
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (99999999,), }"
        ),
        "huge random": os.urandom(HUGE),
        "huge JSON": b'{"deployment_id": "' + b"x" * HUGE + b'"}',
    }


def test_junk_on_every_subscribed_topic_disturbs_neither_serving_nor_delivery(
    running_agent: RunningAgent,
    bundles: dict[str, Path],
    keys: Keys,
    reference_dir: Path,
    tmp_path: Path,
) -> None:
    obs, url, process = running_agent.observer, running_agent.broker.url, running_agent.process
    state = tmp_path / "state"
    running_agent.deploy(bundles["v1"], "1")
    # a delivery in progress, so the agent is also subscribed to a bundle's meta and chunk topics
    big = make_custom_bundle(
        tmp_path / "big.efb", reference_dir / "digits_cnn_v2.onnx", keys.private, "2", padding_bytes=2**20
    )
    total = -(-big.stat().st_size // CHUNK)
    half = total // 2
    meta = publish_bundle_parts(url, DEVICE, big, "d-2", chunk_size=CHUNK, chunks=range(half), version="2")
    wait_until(lambda: chunks_logged(state, meta.bundle_id) == half, 15, "the first half of the delivery")
    bundle_id = meta.bundle_id
    targets = {
        "desired": topics.desired(DEVICE),
        "infer": topics.infer(DEVICE),
        "meta": topics.bundle_meta(bundle_id),
        "a chunk it has": topics.bundle_chunk(bundle_id, 0),
        "a chunk it lacks": topics.bundle_chunk(bundle_id, half),
        "a chunk out of range": topics.bundle_chunk(bundle_id, 10**9),
        "a chunk topic without an index": f"{topics.PREFIX}/bundles/{bundle_id}/chunks/not-a-number",
    }
    payloads = junk_payloads()
    client = _connected_client(url, "junk")
    error_replies = 0
    with Traffic(obs, IMAGES) as traffic:
        try:
            for topic in targets.values():
                for payload in payloads.values():
                    client.publish(topic, payload, qos=1).wait_for_publish(10)
        finally:
            client.disconnect()
            client.loop_stop()
        # junk requests that can be answered get an error reply each (whatever the content type says)
        for content_type in (CONTENT_NPY, CONTENT_NPZ, CONTENT_JSON, "text/plain", None):
            for name, payload in payloads.items():
                reply = obs.request(payload, content_type, timeout=20)
                assert reply is not None and reply.status == "error", (name, content_type)
                error_replies += 1
    assert traffic.results, "no requests were sent during the junk"
    assert not traffic.failed(), traffic.failed()[:5]
    assert traffic.versions() == {"1"}
    assert process.alive()
    assert error_replies == 5 * len(payloads)

    # the delivery in progress is intact: the rest of the chunks complete it
    publish_bundle_parts(
        url, DEVICE, big, "d-2", chunk_size=CHUNK, chunks=range(half, total), meta=False, desired=False
    )
    wait_until(lambda: obs.infer(IMAGES).model_version == "2", 20, "v2 serving")
    log = process.log()
    assert "event=desired_invalid" in log and "event=meta_invalid" in log and "event=chunk_dropped" in log
    for unexpected in ("event=handler_failed", "event=dispatch_failed", "event=request_failed", "Traceback"):
        assert unexpected not in log, unexpected
    assert not any(e["kind"] == "rejected" for e in obs.of("events")), "junk must not reject the real bundle"


def test_corrupted_chunk_is_refetched_then_rejected_and_a_repaired_redeploy_completes(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path, bundles: dict[str, Path]
) -> None:
    observer = Observer(broker.url, DEVICE)
    config = agent_config(tmp_path, broker.url, keys, delivery_stall_s=1.0)  # refetch backoff from 0.1 s
    process = AgentProcess(tmp_path, config, profiles_dir).start()
    try:
        observer.wait_for("online", lambda m: m["online"] is True)
        publish_bundle(broker.url, DEVICE, bundles["v1"], "d-v1", version="1")
        observer.wait_active("1")
        # chunk 2 is corrupt on the broker (the retained copy itself): every refetch gets the same bad bytes
        bundle_id = publish_bundle(broker.url, DEVICE, bundles["v2"], "d-bad", version="2", corrupt_chunk=2)
        warning = observer.wait_for("events", lambda e: e["kind"] == "warning" and "chunk 2" in e["detail"])
        assert "does not match its sha256" in warning["detail"] and "fetching it again" in warning["detail"]
        rejected = observer.wait_for(
            "events", lambda e: e["kind"] == "rejected" and e["deployment_id"] == "d-bad", timeout=20
        )
        assert "chunk 2 does not match its sha256 in the bundle meta (5 times)" in rejected["detail"]
        log = process.log()
        assert log.count(f"event=chunk_refetch bundle_id={bundle_id[:12]} chunk=2") >= 2  # asked again
        assert log.count(f"event=chunk_dropped bundle_id={bundle_id[:12]} chunk=2") == 4  # the 5th rejects
        assert observer.infer(IMAGES).model_version == "1"  # the old model kept serving
        assert list((tmp_path / "state" / "incoming").iterdir()) == []  # nothing half-done left behind

        # the host publishes the bundle again, intact, as a new deployment: it completes
        publish_bundle(broker.url, DEVICE, bundles["v2"], "d-good", version="2")
        observer.wait_for("events", lambda e: e["kind"] == "activated" and e["deployment_id"] == "d-good")
        assert observer.infer(IMAGES).model_version == "2"
    finally:
        if process.alive():
            process.stop()
        observer.close()
        print(process.log()[-5000:])


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def test_a_message_larger_than_any_request_or_chunk_never_reaches_the_agent(
    running_agent: RunningAgent, bundles: dict[str, Path]
) -> None:
    """The agent tells the broker its maximum packet size (MQTT 5): a 100 MiB message to its request topic
    is dropped by the broker instead of being read whole (it took the agent to 930 MiB before)."""
    obs, url, process = running_agent.observer, running_agent.broker.url, running_agent.process
    running_agent.deploy(bundles["v1"], "1")
    assert process.process is not None
    before = _peak_rss_mib(process.process.pid)
    client = _connected_client(url, "flooder")
    try:
        info = client.publish(topics.infer(DEVICE), b"\0" * (100 * 2**20), qos=1)
        info.wait_for_publish(timeout=60)
    finally:
        client.disconnect()
        client.loop_stop()
    assert obs.infer(IMAGES).status == "ok"  # sent after the big one: the agent is there and serving
    assert _peak_rss_mib(process.process.pid) - before < 50
    assert "request_rejected" not in process.log()  # it never saw the message at all
