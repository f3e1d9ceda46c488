"""Helpers for the fleet tests: plain paho clients (not edgefleet code), a simulated device that follows
docs/protocol.md (it fetches the chunks itself, checks them, then reports), and what a real agent process
needs: an fp32 ONNX profile and a signed bundle of the digits model."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgefleet.contract import topics
from edgefleet.contract.messages import (
    ActiveModel,
    BackendInfo,
    BundleMeta,
    DesiredState,
    DeviceEvent,
    DeviceStatus,
    Presence,
)
from edgefleet.contract.profiles import PROFILES_PATH_ENV
from edgefleet.contract.signing import create_key_pair
from edgefleet.fleet.broker import MosquittoProcess


def plain_client(broker: MosquittoProcess, name: str = "test") -> mqtt.Client:
    """A plain paho MQTT 5 client, connected, with its network thread running."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert connected.wait(5), "test client could not connect"
    return client


def publish_wait(client: mqtt.Client, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> None:
    info = client.publish(topic, payload, qos=qos, retain=retain)
    info.wait_for_publish(5)


def wait_until(
    predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition", every_s: float = 0.05
) -> None:
    """Polls `predicate` every `every_s` until it is true; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every_s)


@contextmanager
def repeating(action: Callable[[int], None], every_s: float = 0.05) -> Iterator[None]:
    """Calls action(1), action(2), ... every `every_s` on a background thread while the block runs (a
    device's periodic telemetry); the thread has stopped when the block ends."""
    stop = threading.Event()

    def loop() -> None:
        n = 0
        while not stop.wait(every_s):
            n += 1
            action(n)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def collect_retained(
    broker: MosquittoProcess, topic_filters: list[str], settle_s: float = 0.5, expect: int | None = None
) -> dict[str, Any]:
    """topic -> MQTTMessage of everything retained under the filters (a fresh subscriber's view). With
    `expect`, waits for that many topics (up to 60 s) instead of for a quiet `settle_s`, which a busy
    machine can fake by starving the receiving thread."""
    got: dict[str, Any] = {}
    last = [time.monotonic()]
    client = plain_client(broker, "collector")

    def on_message(client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        got[message.topic] = message
        last[0] = time.monotonic()

    client.on_message = on_message
    client.subscribe([(f, 1) for f in topic_filters])
    deadline = time.monotonic() + 60

    def done() -> bool:
        if expect:
            return len(got) >= expect or time.monotonic() >= deadline
        return time.monotonic() - last[0] >= settle_s

    while not done():
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    return got


def device_status(
    device_id: str, profile: str, model: ActiveModel | None = None, **extra: Any
) -> DeviceStatus:
    backend = None
    if model is not None:
        backend = BackendInfo(
            engine="onnxruntime", engine_version="1.31.1", providers=["CPUExecutionProvider"], threads=2
        )
    return DeviceStatus(
        device_id=device_id,
        profile=profile,
        agent_version="0.1.0",
        state="serving" if model else "idle",
        model=model,
        backend=extra.pop("backend", backend),
        **extra,
    )


class SimulatedDevice:
    """A device made of a plain paho client that answers per docs/protocol.md: on a desired state it
    fetches the meta and the chunks, checks every hash, reports progress, then either reports the bundle
    active (status.model.bundle_id) or publishes a `rejected` event."""

    def __init__(
        self, broker: MosquittoProcess, device_id: str, profile: str, reject: str | None = None
    ) -> None:
        self.device_id = device_id
        self.profile = profile
        self.reject = reject
        self.client = plain_client(broker, device_id)
        self.client.on_message = self._on_message
        self.desired: DesiredState | None = None
        self.meta: BundleMeta | None = None
        self.chunks: dict[int, bytes] = {}
        self.done = threading.Event()
        publish_wait(self.client, topics.online(device_id), Presence(online=True).to_bytes(), retain=True)
        publish_wait(
            self.client, topics.status(device_id), device_status(device_id, profile).to_bytes(), retain=True
        )
        self.client.subscribe(topics.desired(device_id), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _event(self, kind: str, **fields: Any) -> None:
        assert self.desired is not None
        event = DeviceEvent(
            kind=kind, deployment_id=self.desired.deployment_id, version=self.desired.version, **fields
        )  # type: ignore[arg-type]
        self.client.publish(topics.events(self.device_id), event.to_bytes(), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == topics.desired(self.device_id):
            self.desired = DesiredState.model_validate_json(message.payload)
            client.subscribe(topics.bundle_meta(self.desired.bundle_id), qos=1)
        elif self.desired and message.topic == topics.bundle_meta(self.desired.bundle_id):
            self.meta = BundleMeta.model_validate_json(message.payload)
            self._event("delivery_started", chunks_received=0, chunks_total=len(self.meta.chunk_sha256))
            client.subscribe(topics.bundle_chunks(self.desired.bundle_id), qos=1)
        elif self.meta is not None and (index := topics.parse_chunk_index(message.topic)) is not None:
            data = bytes(message.payload)
            if hashlib.sha256(data).hexdigest() == self.meta.chunk_sha256[index]:
                self.chunks[index] = data
            total = len(self.meta.chunk_sha256)
            self._event("delivery_progress", chunks_received=len(self.chunks), chunks_total=total)
            if len(self.chunks) == total:
                self._finish()

    def _finish(self) -> None:
        assert self.desired is not None and self.meta is not None
        whole = b"".join(self.chunks[i] for i in range(len(self.chunks)))
        assert hashlib.sha256(whole).hexdigest() == self.desired.bundle_id
        if self.reject:
            self._event("rejected", detail=self.reject)
        else:
            model = ActiveModel(
                name=self.desired.name,
                version=self.desired.version,
                bundle_id=self.desired.bundle_id,
                format="onnx",
                precision="fp32",
            )
            status = device_status(self.device_id, self.profile, model, swaps=1)
            self.client.publish(topics.status(self.device_id), status.to_bytes(), qos=1, retain=True)
        self.done.set()


ONNX_PROFILE = "fleet-test-onnx"
ONNX_PROFILE_YAML = f"""\
name: {ONNX_PROFILE}
description: test profile, fp32 ONNX on the CPU
artifact: {{format: onnx, precision: fp32, io_dtype: float32}}
runtime: {{engine: onnxruntime, threads: 1, providers: [CPUExecutionProvider]}}
memory_budget_mb: 512
latency_budget_ms: 50
"""


def digits_for_a_real_agent(
    tmp_path: Path, reference_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path, dict[str, str]]:
    """For a real agent process: the profile folder (set for this test through `monkeypatch`, and in the
    returned environment for the agent's process), a signed bundle of the digits CNN v1 for that profile,
    and the public key. Returns (bundle, public key, env)."""
    from support_bundles import make_fp32_bundle

    profiles = tmp_path / "profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / f"{ONNX_PROFILE}.yaml").write_text(ONNX_PROFILE_YAML)
    private, public = create_key_pair(tmp_path / "keys")
    model = reference_dir / "digits_cnn_v1.onnx"
    bundle = make_fp32_bundle(tmp_path / "digits-1.efb", model, private, version="1", profile=ONNX_PROFILE)
    monkeypatch.setenv(PROFILES_PATH_ENV, str(profiles))
    return bundle, public, {PROFILES_PATH_ENV: str(profiles)}
