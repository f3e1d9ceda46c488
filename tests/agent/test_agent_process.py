"""End-to-end: a real mosquitto, a real `edgefleet agent` process, bundles published as the protocol says."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from agent_helpers import (
    DEVICE,
    OTHER_PROFILE,
    AgentProcess,
    Keys,
    RunningAgent,
    agent_config,
    make_bundle,
    publish_bundle,
    publish_raw,
)

from edgefleet.contract import topics
from edgefleet.contract.tensors import encode_npy, encode_npz
from edgefleet.fleet.broker import MosquittoProcess, free_port

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def _direct(model: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {"image": images})[0])


def _eval_images(reference_dir: Path, n: int = 16) -> np.ndarray:
    return np.load(reference_dir / "eval.npz")["image"][:n]


def test_deploy_v1_then_v2_without_restart(
    running_agent: RunningAgent, bundles: dict[str, Path], reference_dir: Path
) -> None:
    obs = running_agent.observer
    pid = running_agent.process.process.pid  # type: ignore[union-attr]
    images = _eval_images(reference_dir)

    status = running_agent.deploy(bundles["v1"], "1")
    assert status["state"] == "serving"
    assert status["backend"]["engine"] == "onnxruntime"
    assert status["backend"]["providers"] == ["CPUExecutionProvider"]
    assert status["backend"]["fallbacks"] == []
    obs.wait_for("events", lambda e: e["kind"] == "activated" and e["deployment_id"] == "d-v1")
    kinds = [e["kind"] for e in obs.of("events")]
    assert kinds.index("delivery_started") < kinds.index("activated")

    reply = obs.infer(images)
    assert (reply.status, reply.model_version, reply.content_type) == ("ok", "1", "application/x-npz")
    np.testing.assert_allclose(
        reply.tensors()["logits"], _direct(reference_dir / "digits_cnn_v1.onnx", images), rtol=1e-5, atol=1e-5
    )

    # requests keep flowing while v2 is delivered and swapped in: none may fail
    results: list[tuple[str, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            r = obs.infer(images)
            results.append((r.status, r.model_version))

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(0.2)
        status = running_agent.deploy(bundles["v2"], "2")
        deadline = time.monotonic() + 5
        while ("ok", "2") not in results[-5:] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        loader.join()
    assert status["swaps"] == 1
    assert {s for s, _ in results} == {"ok"}, results
    assert {v for _, v in results} == {"1", "2"}
    print(f"requests during the swap: {len(results)}")
    reply = obs.infer(images)
    assert (reply.status, reply.model_version) == ("ok", "2")
    np.testing.assert_allclose(
        reply.tensors()["logits"], _direct(reference_dir / "digits_cnn_v2.onnx", images), rtol=1e-5, atol=1e-5
    )
    assert running_agent.process.process.pid == pid and running_agent.process.alive()  # type: ignore[union-attr]
    assert "event=model_closed version=1" in running_agent.process.log()


def test_telemetry_has_sane_numbers(
    running_agent: RunningAgent, bundles: dict[str, Path], reference_dir: Path
) -> None:
    obs = running_agent.observer
    running_agent.deploy(bundles["v1"], "1")
    images = _eval_images(reference_dir, 1)
    for _ in range(30):
        assert obs.infer(images).status == "ok"
    obs.request(b"garbage")
    sample = obs.wait_for("telemetry", lambda t: t["requests"] >= 31)
    assert sample["device_id"] == DEVICE and sample["model_version"] == "1"
    assert sample["errors"] == 1 and sample["interval_s"] == 0.5
    latency = sample["latency_ms"]
    assert latency["samples"] == 30
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] < 100
    assert 20 < sample["rss_mb"] < 1000
    assert 0 <= sample["cpu_percent"] <= 200
    print(f"telemetry sample: {sample}")

    # Retained and expiring: a command started between two reports sees the latest at once (issue 11:
    # `status` listened 2 s, agents report every 5 s, and healthy devices showed "-").
    from edgefleet.fleet.inventory import collect_inventory

    inventory, _ = collect_inventory(running_agent.broker.url, listen_s=0)
    known = inventory.get(DEVICE)
    assert known is not None and known.telemetry is not None and known.telemetry.requests >= 31


def test_restart_comes_back_with_active_bundle_and_sigterm_says_offline(
    running_agent: RunningAgent, bundles: dict[str, Path], reference_dir: Path
) -> None:
    obs, url, process = running_agent.observer, running_agent.broker.url, running_agent.process
    running_agent.deploy(bundles["v1"], "1")

    assert process.stop(signal.SIGTERM) == 0
    offline = obs.wait_for("online", lambda m: m["online"] is False)
    assert offline["online"] is False
    assert "event=stopped" in process.log()

    # without the desired state on the broker, only the `active` pointer can bring v1 back
    publish_raw(url, topics.desired(DEVICE), b"", retain=True)
    n_online = len(obs.of("online"))
    process.start()
    obs.wait_for("online", lambda m: m["online"] is True and len(obs.of("online")) > n_online)
    reply = obs.infer(_eval_images(reference_dir, 2))
    assert (reply.status, reply.model_version) == ("ok", "1")
    assert "event=restored" in process.log()


def test_bad_bundles_are_rejected_and_the_old_model_keeps_serving(
    running_agent: RunningAgent,
    bundles: dict[str, Path],
    reference_dir: Path,
    other_keys: Keys,
    keys: Keys,
    tmp_path: Path,
) -> None:
    obs, url = running_agent.observer, running_agent.broker.url
    images = _eval_images(reference_dir, 4)
    running_agent.deploy(bundles["v1"], "1")

    untrusted = make_bundle(
        tmp_path / "u.bundle", reference_dir / "digits_cnn_v2.onnx", other_keys.private, "2"
    )
    publish_bundle(url, DEVICE, untrusted, "d-untrusted", version="2")
    event = obs.wait_for("events", lambda e: e["kind"] == "rejected" and e["deployment_id"] == "d-untrusted")
    assert "signed by key" in event["detail"]
    assert obs.infer(images).model_version == "1"

    # the desired state claims our profile, but the signed manifest says another one
    foreign = make_bundle(
        tmp_path / "f.bundle", reference_dir / "digits_cnn_v2.onnx", keys.private, "2", profile=OTHER_PROFILE
    )
    publish_bundle(url, DEVICE, foreign, "d-foreign", version="2")
    event = obs.wait_for("events", lambda e: e["kind"] == "rejected" and e["deployment_id"] == "d-foreign")
    assert f"built for profile '{OTHER_PROFILE}'" in event["detail"]
    status = obs.wait_for("status", lambda s: s["last_error"] and OTHER_PROFILE in s["last_error"])
    assert status["model"]["version"] == "1" and status["state"] == "serving"

    # a desired state for another profile is refused before anything is fetched
    publish_bundle(url, DEVICE, foreign, "d-foreign2", version="2", desired_profile=OTHER_PROFILE)
    event = obs.wait_for("events", lambda e: e["kind"] == "rejected" and e["deployment_id"] == "d-foreign2")
    assert "profile" in event["detail"]
    reply = obs.infer(images)
    assert (reply.status, reply.model_version) == ("ok", "1")


def test_corrupted_chunk_is_dropped_and_refetched(
    running_agent: RunningAgent, bundles: dict[str, Path], reference_dir: Path
) -> None:
    obs, url = running_agent.observer, running_agent.broker.url
    running_agent.deploy(bundles["v1"], "1")

    bundle_id = publish_bundle(url, DEVICE, bundles["v2"], "d-v2", version="2", corrupt_chunk=1)
    warning = obs.wait_for("events", lambda e: e["kind"] == "warning" and "chunk 1" in e["detail"])
    assert "sha256" in warning["detail"]
    time.sleep(1.5)  # at least one refetch of the (still corrupt) retained chunk
    assert obs.infer(_eval_images(reference_dir, 1)).model_version == "1"
    assert not any(e["kind"] == "activated" and e["deployment_id"] == "d-v2" for e in obs.of("events"))

    # the host republishes the good chunk: the agent picks it up and finishes the delivery
    data = bundles["v2"].read_bytes()
    publish_raw(url, topics.bundle_chunk(bundle_id, 1), data[32 * 1024 : 64 * 1024], retain=True)
    obs.wait_active("2")
    assert obs.infer(_eval_images(reference_dir, 1)).model_version == "2"


def test_bad_requests_get_error_replies_and_do_not_disturb(
    running_agent: RunningAgent, bundles: dict[str, Path], reference_dir: Path
) -> None:
    obs, url = running_agent.observer, running_agent.broker.url
    images = _eval_images(reference_dir, 1)
    reply = obs.infer(images)
    assert (reply.status, reply.content_type, reply.error()) == (
        "error",
        "application/json",
        "no model is active",
    )

    running_agent.deploy(bundles["v1"], "1")
    bad = {
        "wrong shape": (encode_npy(np.zeros((1, 64), np.float32)), "application/x-npy", "expected float32"),
        "wrong dtype": (encode_npy(np.zeros((1, 1, 8, 8), np.float64)), "application/x-npy", "got float64"),
        "garbage": (os.urandom(300), "application/x-npy", "not a valid"),
        "wrong name": (encode_npz({"x": images}), "application/x-npz", "missing ['image']"),
        "bad content type": (encode_npy(images), "text/plain", "not supported"),
        "pickled": (b"\x80\x04\x95" + os.urandom(64), None, "not a valid"),
    }
    for what, (payload, content_type, expected) in bad.items():
        reply = obs.request(payload, content_type)
        assert reply is not None and reply.status == "error", what
        assert expected in reply.error(), (what, reply.error())
        assert reply.model_version == "1"
    too_big = obs.request(b"\0" * (16 * 2**20 + 1), "application/x-npy")  # refused before it is queued
    assert too_big is not None and too_big.status == "error" and "limit" in too_big.error()
    assert too_big.model_version == "1"  # the model that would have served it, not an empty version
    obs.request(encode_npy(images), response_topic=False)  # cannot be answered; must not hurt

    # junk on every subscribed topic
    publish_raw(url, topics.desired(DEVICE), os.urandom(200))
    publish_raw(url, topics.desired(DEVICE), b'{"deployment_id": 5}')
    publish_raw(url, topics.bundle_meta("a" * 64), os.urandom(50))
    publish_raw(url, topics.bundle_chunk("a" * 64, 0), os.urandom(50))
    reply = obs.infer(images)
    assert (reply.status, reply.model_version) == ("ok", "1")
    assert running_agent.process.alive()


def test_reconnects_after_broker_restart(
    running_agent: RunningAgent, bundles: dict[str, Path], reference_dir: Path
) -> None:
    obs, broker = running_agent.observer, running_agent.broker
    running_agent.deploy(bundles["v1"], "1")
    broker.stop()
    time.sleep(0.5)
    broker.start()
    deadline = time.monotonic() + 15
    while "event=connected" not in running_agent.process.log().split("broker_disconnected", 1)[-1]:
        assert time.monotonic() < deadline, "agent did not reconnect"
        time.sleep(0.2)
    time.sleep(0.5)  # the observer reconnects too
    reply = obs.infer(_eval_images(reference_dir, 1))
    assert (reply.status, reply.model_version) == ("ok", "1")


def test_unreachable_broker_at_start_is_one_error_line(
    tmp_path: Path, keys: Keys, profiles_dir: Path
) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    process = AgentProcess(tmp_path, agent_config(tmp_path, url, keys), profiles_dir).start()
    assert process.wait(15) == 1
    errors = [line for line in process.log().splitlines() if "level=error" in line]
    assert len(errors) == 1 and "cannot reach the MQTT broker" in errors[0], process.log()


def test_invalid_config_is_one_error_line(
    tmp_path: Path, keys: Keys, profiles_dir: Path, broker: MosquittoProcess
) -> None:
    config = agent_config(tmp_path, broker.url, keys, device_id="no spaces allowed")
    process = AgentProcess(tmp_path, config, profiles_dir).start()
    assert process.wait(15) == 1
    assert "device_id" in process.log() and process.log().count("level=error") == 1
