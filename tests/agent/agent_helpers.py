"""Test helpers for the agent: bundles of the reference ONNX model (no converter), the host side of the
deploy protocol done minimally with a plain paho client, an observer client, and a real agent process.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.subscribeoptions import SubscribeOptions
from support_bundles import chunked_bundle, make_fp32_bundle

from edgefleet.contract import topics
from edgefleet.contract.messages import CONTENT_NPY, BundleMeta, DesiredState
from edgefleet.contract.tensors import encode_npy
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.local_agent import spawn_agent
from edgefleet.mqtt import BrokerAddress, connect, new_client, publish_properties

DEVICE = "dev-1"
TEST_PROFILE = "test-onnx"
OTHER_PROFILE = "other-onnx"
PROFILE_YAML = """\
name: {name}
description: test profile, fp32 ONNX on the CPU
artifact: {{format: onnx, precision: fp32, io_dtype: float32}}
runtime: {{engine: onnxruntime, threads: 1, providers: [{providers}]}}
memory_budget_mb: 256
latency_budget_ms: 50
"""


def write_profiles(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{TEST_PROFILE}.yaml").write_text(
        PROFILE_YAML.format(name=TEST_PROFILE, providers="CPUExecutionProvider")
    )
    (directory / f"{OTHER_PROFILE}.yaml").write_text(
        PROFILE_YAML.format(name=OTHER_PROFILE, providers="CUDAExecutionProvider, CPUExecutionProvider")
    )
    return directory


def make_bundle(
    out: Path, model: Path, private_key: Path, version: str, profile: str = TEST_PROFILE, name: str = "digits"
) -> Path:
    """Pack an fp32 ONNX model as a signed bundle (format onnx, float I/O, no quantization, no perm)."""
    return make_fp32_bundle(out, model, private_key, version=version, profile=profile, name=name)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _connected_client(url: str, name: str) -> mqtt.Client:
    client = new_client(f"{name}-{uuid.uuid4().hex[:8]}")
    ready = threading.Event()
    client.on_connect = lambda *a: ready.set()
    connect(client, BrokerAddress.parse(url))
    client.loop_start()
    assert ready.wait(5), "test client could not connect"
    return client


def publish_bundle(
    url: str,
    device_id: str,
    bundle: Path,
    deployment_id: str,
    *,
    chunk_size: int = 32 * 1024,
    corrupt_chunk: int | None = None,
    desired_profile: str | None = None,
    version: str = "?",
) -> str:
    """The host side of docs/protocol.md: retained chunks, then retained meta, then retained desired."""
    profile = desired_profile or TEST_PROFILE
    chunks, meta = chunked_bundle(bundle.read_bytes(), chunk_size, version=version, profile=profile)
    bundle_id = meta.bundle_id
    messages = [
        (
            topics.bundle_chunk(bundle_id, index),
            bytes(b ^ 0xFF for b in chunk[:16]) + chunk[16:] if index == corrupt_chunk else chunk,
        )
        for index, chunk in enumerate(chunks)
    ]
    desired = DesiredState(
        deployment_id=deployment_id, bundle_id=bundle_id, name="digits", version=version, profile=profile
    )
    messages += [
        (topics.bundle_meta(bundle_id), meta.to_bytes()),
        (topics.desired(device_id), desired.to_bytes()),
    ]
    _publish(url, "test-deployer", messages, retain=True)
    return bundle_id


def _publish(
    url: str, name: str, messages: list[tuple[str, bytes]], retain: bool, timeout: float = 5
) -> None:
    """Publish the (topic, payload) messages in order at QoS 1 from a fresh client named after `name`, and
    wait until the broker has taken every one."""
    client = _connected_client(url, name)
    try:
        infos = [client.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout)
    finally:
        client.disconnect()
        client.loop_stop()


def publish_raw(url: str, topic: str, payload: bytes, retain: bool = False) -> None:
    _publish(url, "test-raw", [(topic, payload)], retain)


@dataclass
class Reply:
    status: str
    model_version: str
    content_type: str | None
    correlation: bytes | None
    payload: bytes

    def tensors(self) -> dict[str, np.ndarray]:
        import io

        with np.load(io.BytesIO(self.payload), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}

    def error(self) -> str:
        return str(json.loads(self.payload)["error"])


@dataclass
class Observer:
    """A host-side client that records everything the device publishes and sends inference requests."""

    url: str
    device_id: str
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    replies: dict[bytes, Reply] = field(default_factory=dict)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client_id = f"obs{uuid.uuid4().hex[:8]}"
        self.reply_topic = topics.replies(self.client_id)
        self.client = new_client(self.client_id)
        ready = threading.Event()

        def on_connect(*_: Any) -> None:
            device = f"{topics.PREFIX}/devices/{self.device_id}"
            for leaf in ("status", "online", "telemetry", "events"):
                self.client.subscribe(f"{device}/{leaf}", options=SubscribeOptions(qos=1))
            self.client.subscribe(self.reply_topic, options=SubscribeOptions(qos=1))
            ready.set()

        self.client.on_connect = on_connect
        self.client.on_message = self._on_message
        connect(self.client, BrokerAddress.parse(self.url))
        self.client.loop_start()
        assert ready.wait(5)
        time.sleep(0.2)  # let the SUBACKs arrive

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            if msg.topic == self.reply_topic:
                props = msg.properties
                user = dict(getattr(props, "UserProperty", []) or [])
                correlation = getattr(props, "CorrelationData", None)
                self.replies[correlation or b""] = Reply(
                    status=user.get("status", ""),
                    model_version=user.get("model_version", ""),
                    content_type=getattr(props, "ContentType", None),
                    correlation=correlation,
                    payload=bytes(msg.payload),
                )
            else:
                self.messages.append((msg.topic, bytes(msg.payload)))
            self.lock.notify_all()

    def of(self, leaf: str) -> list[dict[str, Any]]:
        topic = f"{topics.PREFIX}/devices/{self.device_id}/{leaf}"
        with self.lock:
            return [json.loads(p) for t, p in self.messages if t == topic and p]

    def wait_for(
        self, leaf: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for message in self.of(leaf):
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no {leaf} message matched within {timeout} s; got {self.of(leaf)[-5:]}"
                    )
                self.lock.wait(remaining)

    def wait_active(self, version: str, timeout: float = 20) -> dict[str, Any]:
        return self.wait_for(
            "status", lambda s: s.get("model") is not None and s["model"]["version"] == version, timeout
        )

    def request(
        self,
        payload: bytes,
        content_type: str | None = CONTENT_NPY,
        *,
        response_topic: bool = True,
        timeout: float = 10,
    ) -> Reply | None:
        correlation = uuid.uuid4().bytes
        fields: dict[str, Any] = {"CorrelationData": correlation}
        if response_topic:
            fields["ResponseTopic"] = self.reply_topic
        if content_type:
            fields["ContentType"] = content_type
        self.client.publish(
            topics.infer(self.device_id), payload, qos=1, properties=publish_properties(**fields)
        )
        if not response_topic:
            return None
        deadline = time.monotonic() + timeout
        with self.lock:
            while correlation not in self.replies:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("no inference reply within timeout")
                self.lock.wait(remaining)
            return self.replies.pop(correlation)

    def infer(self, array: np.ndarray) -> Reply:
        reply = self.request(encode_npy(array))
        assert reply is not None
        return reply

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AgentProcess:
    """`python -m edgefleet.cli agent --config ...` as a real child process, logs to a file."""

    def __init__(self, workdir: Path, config: dict[str, Any], profiles_dir: Path) -> None:
        self.workdir = workdir
        self.config_path = workdir / "agent.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "agent.log"
        self.env = {**os.environ, "EDGEFLEET_PROFILES_PATH": str(profiles_dir), "PYTHONUNBUFFERED": "1"}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        self.process = spawn_agent(self.config_path, self.log_path, self.env)
        return self

    def wait(self, timeout: float = 15) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


def agent_config(workdir: Path, broker_url: str, keys: Keys, **extra: object) -> dict[str, object]:
    return {
        "device_id": DEVICE,
        "profile": TEST_PROFILE,
        "broker": broker_url,
        "state_dir": str(workdir / "state"),
        "trusted_key": str(keys.public),
        "telemetry_interval_s": 0.5,
        # no probation unless a test is about it: otherwise the replaced model stays loaded as standby
        "probation_s": 0,
        **extra,
    }


@dataclass
class RunningAgent:
    process: AgentProcess
    observer: Observer
    broker: MosquittoProcess

    def deploy(self, bundle: Path, version: str) -> dict[str, Any]:
        """publish_bundle(bundle) to this agent as deployment d-v<version>; the device's status once that
        version is active."""
        publish_bundle(self.broker.url, DEVICE, bundle, f"d-v{version}", version=version)
        return self.observer.wait_active(version)


@contextmanager
def started_agent(
    workdir: Path,
    broker: MosquittoProcess,
    config: dict[str, object],
    profiles_dir: Path,
    log_tail: int = 5000,
) -> Iterator[RunningAgent]:
    """An agent process running `config` and online on `broker`, stopped afterwards; the last `log_tail`
    characters of its log are printed (pytest shows them for a failed test)."""
    observer = Observer(broker.url, DEVICE)
    process = AgentProcess(workdir, config, profiles_dir).start()
    try:
        observer.wait_for("online", lambda m: m["online"] is True)
        yield RunningAgent(process, observer, broker)
    finally:
        if process.alive():
            process.stop()
        observer.close()
        print(process.log()[-log_tail:])


# -- helpers for the swap, crash and malformed-message tests ---------------------------------------------


def saving_broker(workdir: Path, autosave_interval: int = 1) -> MosquittoProcess:
    """A mosquitto that snapshots its persistence every `autosave_interval` seconds; a long interval makes
    a kill -9 lose everything published since the start."""
    return MosquittoProcess(workdir, autosave_interval=autosave_interval)


def sqrt_model(path: Path, outputs: int = 10) -> Path:
    """logits = sqrt(flatten(image) @ W) with W > 0: finite for non-negative images, NaN for negative ones.
    A model that passes a health check on good samples and fails on other inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(7).uniform(0.01, 0.1, size=(64, outputs)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["scores"]),
            helper.make_node("Sqrt", ["scores"], ["logits"]),
        ],
        "sqrt_model",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", outputs])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_custom_bundle(
    out: Path,
    model: Path,
    private_key: Path,
    version: str,
    *,
    health_samples: np.ndarray | None = None,
    health_reference: tuple[np.ndarray, float] | None = None,
    min_top1_agreement: float | None = None,
    padding_bytes: int = 0,
    profile: str = TEST_PROFILE,
) -> Path:
    """A signed digits-shaped bundle (image [?,1,8,8] -> logits [?,10]) with optional health samples (the
    float form of `image`) and random padding (an extra listed file) to make deliveries long."""
    from support_bundles import fp32_manifest

    from edgefleet.contract.bundle import write_bundle
    from edgefleet.contract.signing import load_private_key

    out.parent.mkdir(parents=True, exist_ok=True)
    files = {"model.onnx": model}
    manifest = fp32_manifest(profile, version, "digits", model.stat().st_size)
    if health_samples is not None:
        samples = out.with_suffix(".samples.npz")
        np.savez(samples, image=health_samples.astype(np.float32))
        files["health_samples.npz"] = samples
        manifest = manifest.model_copy(update={"health_samples": "health_samples.npz"})
    if health_reference is not None:  # (logits of the samples, min SQNR dB)
        from edgefleet.contract.manifest import HealthReference

        reference = out.with_suffix(".reference.npz")
        np.savez(reference, logits=health_reference[0].astype(np.float32))
        files["health_reference.npz"] = reference
        spec = HealthReference(
            outputs="health_reference.npz",
            min_sqnr_db=health_reference[1],
            host_runtime="test",
            min_top1_agreement=min_top1_agreement,
        )
        manifest = manifest.model_copy(update={"health_reference": spec})
    if padding_bytes:
        padding = out.with_suffix(".padding")
        padding.write_bytes(os.urandom(padding_bytes))
        files["padding.bin"] = padding
    write_bundle(out, manifest, files, load_private_key(private_key))
    return out


def publish_bundle_parts(
    url: str,
    device_id: str,
    bundle: Path,
    deployment_id: str,
    *,
    chunk_size: int = 256 * 1024,
    chunks: Any = None,
    meta: bool = True,
    desired: bool = True,
    version: str = "?",
) -> BundleMeta:
    """Like publish_bundle, but only the chunks named by `chunks` (an iterable of indices; None: all), and
    the meta and desired state only when asked: lets a test put a delivery exactly where it wants it."""
    pieces, bundle_meta = chunked_bundle(
        bundle.read_bytes(), chunk_size, version=version, profile=TEST_PROFILE
    )
    bundle_id = bundle_meta.bundle_id
    messages = [
        (topics.bundle_chunk(bundle_id, i), pieces[i])
        for i in (range(len(pieces)) if chunks is None else chunks)
    ]
    if meta:
        messages.append((topics.bundle_meta(bundle_id), bundle_meta.to_bytes()))
    if desired:
        state = DesiredState(
            deployment_id=deployment_id,
            bundle_id=bundle_id,
            name="digits",
            version=version,
            profile=TEST_PROFILE,
        )
        messages.append((topics.desired(device_id), state.to_bytes()))
    _publish(url, "test-parts", messages, retain=True, timeout=10)
    return bundle_meta


def chunks_logged(state: Path, bundle_id: str) -> int:
    """How many chunks of a delivery in progress the agent has verified: the entries of its chunk log
    (agent/delivery.py: a 12-byte header, then 4 bytes a chunk); 0 before the log exists."""
    try:
        return ((state / "incoming" / f"{bundle_id}.chunks").stat().st_size - 12) // 4
    except OSError:
        return 0


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class Traffic:
    """Inference requests sent back to back from a thread while a test does something else; every reply
    is kept as (status, model_version) so the test can check that none failed."""

    def __init__(self, observer: Observer, images: np.ndarray, pause_s: float = 0.0) -> None:
        self.observer = observer
        self.images = images
        self.pause_s = pause_s
        self.results: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            reply = self.observer.infer(self.images)
            self.results.append((reply.status, reply.model_version))
            if self.pause_s:
                self._stop.wait(self.pause_s)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def failed(self) -> list[tuple[str, str]]:
        return [r for r in self.results if r[0] != "ok"]

    def versions(self) -> set[str]:
        return {version for _, version in self.results}


def restart(process: AgentProcess, observer: Observer) -> None:
    """Start the agent process again and wait until it says it is online (a new `online: true`)."""
    seen = len(observer.of("online"))
    process.start()
    wait_until(lambda: any(m["online"] for m in observer.of("online")[seen:]), 20, "the agent online again")
