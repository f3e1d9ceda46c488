"""Broker kill -9 in the middle of a delivery, on a real agent process and a mosquitto whose persistence
really works: when the broker had saved the bundle, the device finishes on its own; when the broker lost
it (killed before its next save), the device reports exactly the chunks it lacks and finishes once the
host publishes just those - it never starts over and never trusted a PUBACK."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import (
    DEVICE,
    AgentProcess,
    Keys,
    Observer,
    RunningAgent,
    agent_config,
    make_custom_bundle,
    publish_bundle_parts,
    saving_broker,
    wait_until,
)

from edgefleet.contract import topics
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.mqtt import BrokerAddress, connect, new_client

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
CHUNK = 256 * 1024
IMAGES = np.zeros((2, 1, 8, 8), np.float32)


def _retained(url: str, topic: str, wait_s: float = 1.0) -> bytes | None:
    """What a fresh subscriber gets as the retained message of `topic` (None: nothing)."""
    got: list[bytes] = []
    arrived = threading.Event()
    client = new_client("retained-probe")
    client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)

    def on_message(client: object, userdata: object, message: object) -> None:
        got.append(bytes(message.payload))  # type: ignore[attr-defined]
        arrived.set()

    client.on_message = on_message
    connect(client, BrokerAddress.parse(url))
    client.loop_start()
    try:
        arrived.wait(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None


def _start(tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path) -> RunningAgent:
    observer = Observer(broker.url, DEVICE)
    config = agent_config(tmp_path, broker.url, keys, delivery_stall_s=1.0)
    process = AgentProcess(tmp_path, config, profiles_dir).start()
    observer.wait_for("online", lambda m: m["online"] is True)
    return RunningAgent(process, observer, broker)


@pytest.fixture
def agent_factory(tmp_path: Path, keys: Keys, profiles_dir: Path) -> Iterator[dict[str, RunningAgent]]:
    made: dict[str, RunningAgent] = {}
    yield made
    for running in made.values():
        if running.process.alive():
            running.process.stop()
        running.observer.close()
        running.broker.stop()
        print(running.process.log()[-8000:])


def _serving(obs: Observer, version: str) -> bool:
    """True when an inference request is answered by `version` (False while the broker is coming back)."""
    try:
        return obs.infer(IMAGES).model_version == version
    except AssertionError:  # no reply in time
        return False


def _stalled_after(obs: Observer, index: int, deployment_id: str) -> dict[str, object] | None:
    for event in obs.of("events")[index:]:
        if event["kind"] == "delivery_stalled" and event["deployment_id"] == deployment_id:
            return event
    return None


def test_broker_that_lost_everything_gets_just_the_missing_chunks_from_the_host(
    tmp_path: Path,
    keys: Keys,
    profiles_dir: Path,
    reference_dir: Path,
    bundles: dict[str, Path],
    agent_factory: dict[str, RunningAgent],
) -> None:
    broker = saving_broker(tmp_path / "broker", autosave_interval=3600).start()  # no save before the kill
    running = agent_factory["a"] = _start(tmp_path, broker, keys, profiles_dir)
    obs, process = running.observer, running.process
    running.deploy(bundles["v1"], "1")
    big = make_custom_bundle(
        tmp_path / "big.efb", reference_dir / "digits_cnn_v2.onnx", keys.private, "2", padding_bytes=4 * 2**20
    )
    total = -(-big.stat().st_size // CHUNK)
    half = total // 2
    meta = publish_bundle_parts(broker.url, DEVICE, big, "d-big", chunks=range(half), version="2")
    first = wait_until(lambda: _stalled_after(obs, 0, "d-big"), 15, "a delivery_stalled event")
    assert first["missing_chunks"] == [[half, total - 1]], first
    assert first["chunks_received"] == half and first["chunks_total"] == total

    n_events = len(obs.of("events"))
    broker.kill()
    broker.start()
    # the loss is real: the restarted broker has neither the meta nor the desired state any more
    assert _retained(broker.url, topics.bundle_meta(meta.bundle_id)) is None
    assert _retained(broker.url, topics.desired(DEVICE)) is None
    # the device reconnects, asks again, and names exactly the chunks it still lacks
    again = wait_until(
        lambda: _stalled_after(obs, n_events, "d-big"), 20, "a delivery_stalled after the restart"
    )
    assert again["missing_chunks"] == [[half, total - 1]] and again["chunks_received"] == half, again
    assert _serving(obs, "1")  # the old model serves all along

    # the host publishes only what the device reported missing: no meta, no desired state, no first half
    publish_bundle_parts(
        broker.url, DEVICE, big, "d-big", chunks=range(half, total), meta=False, desired=False
    )
    wait_until(lambda: _serving(obs, "2"), 20, "v2 serving")
    log = process.log()
    assert log.count(f"event=meta bundle_id={meta.bundle_id[:12]}") == 1, "the delivery never started over"
    assert "event=delivery_reasking" in log and "reason=reconnected" in log
    assert list((tmp_path / "state" / "incoming").iterdir()) == []


def test_broker_killed_mid_delivery_after_a_save_lets_the_device_finish_on_its_own(
    tmp_path: Path,
    keys: Keys,
    profiles_dir: Path,
    reference_dir: Path,
    agent_factory: dict[str, RunningAgent],
) -> None:
    broker = saving_broker(tmp_path / "broker", autosave_interval=1).start()
    running = agent_factory["a"] = _start(tmp_path, broker, keys, profiles_dir)
    obs = running.observer
    big = make_custom_bundle(
        tmp_path / "big.efb",
        reference_dir / "digits_cnn_v1.onnx",
        keys.private,
        "1",
        padding_bytes=16 * 2**20,
    )
    total = -(-big.stat().st_size // CHUNK)
    meta = publish_bundle_parts(broker.url, DEVICE, big, "d-big", desired=False, version="1")
    snapshot = broker.workdir / "mosquitto.db"
    wait_until(
        lambda: snapshot.is_file() and snapshot.stat().st_size > big.stat().st_size,
        10,
        "an autosave that holds the bundle",
    )
    chunk_log = tmp_path / "state" / "incoming" / f"{meta.bundle_id}.chunks"

    def logged_chunks() -> int:
        try:
            return (chunk_log.stat().st_size - 12) // 4  # header 12 bytes, 4 per verified chunk
        except OSError:
            return 0

    publish_bundle_parts(broker.url, DEVICE, big, "d-big", chunks=[], meta=False, version="1")
    wait_until(lambda: logged_chunks() >= 3, 20, "the first chunks on the device", every=0.001)
    broker.kill()
    at_kill = logged_chunks()
    assert 3 <= at_kill < total, f"the kill should land mid-delivery ({at_kill} of {total} chunks)"
    broker.start()
    assert _retained(broker.url, topics.bundle_meta(meta.bundle_id)) is not None  # saved before the kill
    # nobody publishes anything: the device asks the restarted broker for what it lacks and finishes
    wait_until(lambda: _serving(obs, "1"), 30, "v1 serving")
    log = running.process.log()
    assert log.count(f"event=meta bundle_id={meta.bundle_id[:12]}") == 1, "the delivery never started over"
    assert "reason=reconnected" in log
