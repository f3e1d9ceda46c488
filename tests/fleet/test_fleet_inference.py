"""InferenceClient against responders made of plain paho clients that answer per docs/protocol.md."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from fleet_helpers import plain_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.contract import topics
from edgefleet.contract.messages import CONTENT_JSON, CONTENT_NPY, CONTENT_NPZ, ErrorReply
from edgefleet.contract.tensors import encode_npz
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.errors import InferenceError, InferenceTimeout
from edgefleet.fleet.inference import InferenceClient

pytestmark = pytest.mark.mqtt


_NP_LOAD = threading.Lock()


class EchoResponder:
    """Answers `infer` requests: .npy float32 (N,1,8,8) -> logits = 2x the first 10 pixels; .npz -> every
    array doubled; anything else -> an error reply. `silent` devices take requests and never answer."""

    def __init__(self, broker: MosquittoProcess, device_id: str, silent: bool = False) -> None:
        self.device_id = device_id
        self.silent = silent
        self.seen: list[dict[str, Any]] = []
        self.client = plain_client(broker, device_id)
        self.client.on_message = self._on_message
        info = self.client.subscribe(topics.infer(device_id), qos=1)
        assert info[0] == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.1)  # let the SUBACK arrive before requests are sent

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = message.properties
        request = {
            "response_topic": getattr(props, "ResponseTopic", None),
            "correlation": getattr(props, "CorrelationData", None),
            "content_type": getattr(props, "ContentType", None),
        }
        self.seen.append(request)
        if self.silent:
            return
        reply = Properties(PacketTypes.PUBLISH)
        if request["correlation"] is not None:
            reply.CorrelationData = request["correlation"]
        try:
            outputs = self._run(bytes(message.payload), request["content_type"])
        except ValueError as exc:
            reply.ContentType = CONTENT_JSON
            reply.UserProperty = [("status", "error"), ("model_version", "1")]
            body = ErrorReply(error=str(exc)).to_bytes()
        else:
            reply.ContentType = CONTENT_NPZ
            reply.UserProperty = [("status", "ok"), ("model_version", "1")]
            body = encode_npz(outputs)
        client.publish(request["response_topic"], body, qos=1, properties=reply)

    @staticmethod
    def _run(payload: bytes, content_type: str | None) -> dict[str, np.ndarray]:
        with _NP_LOAD:  # np.load parses headers with ast; see _HEADER_PARSE_LOCK in contract/tensors.py
            return EchoResponder._decode_and_run(payload, content_type)

    @staticmethod
    def _decode_and_run(payload: bytes, content_type: str | None) -> dict[str, np.ndarray]:
        if content_type == CONTENT_NPY:
            x = np.load(io.BytesIO(payload), allow_pickle=False)
            if x.dtype != np.float32 or x.shape[1:] != (1, 8, 8):
                raise ValueError(f"input 'image': expected float32 (?,1,8,8), got {x.dtype} {x.shape}")
            return {"logits": 2 * x.reshape(len(x), 64)[:, :10]}
        if content_type == CONTENT_NPZ:
            with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
                return {name: 2 * archive[name] for name in archive.files}
        raise ValueError(f"content type {content_type!r} is not supported")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def responders(broker: MosquittoProcess):
    made = [
        EchoResponder(broker, "dev-a"),
        EchoResponder(broker, "dev-b"),
        EchoResponder(broker, "dev-mute", True),
    ]
    yield {r.device_id: r for r in made}
    for responder in made:
        responder.close()


def test_round_trip_single_array_and_named_inputs(broker: MosquittoProcess, responders) -> None:
    x = np.arange(128, dtype=np.float32).reshape(2, 1, 8, 8)
    with InferenceClient(broker.url) as client:
        out = client.infer("dev-a", x, timeout=5)
        assert set(out) == {"logits"}
        np.testing.assert_array_equal(out["logits"], 2 * x.reshape(2, 64)[:, :10])

        named = client.infer("dev-b", {"a": np.ones(3, np.int8), "b": np.full((2, 2), 0.5, np.float32)})
        np.testing.assert_array_equal(named["a"], np.full(3, 2, np.int8))
        np.testing.assert_array_equal(named["b"], np.ones((2, 2), np.float32))

    seen = responders["dev-a"].seen[0]
    assert seen["response_topic"] == client.reply_topic == topics.replies(client.client_id)
    assert seen["content_type"] == CONTENT_NPY and seen["correlation"]
    assert responders["dev-b"].seen[0]["content_type"] == CONTENT_NPZ


def test_error_reply_raises_with_the_devices_text(broker: MosquittoProcess, responders) -> None:
    with InferenceClient(broker.url) as client:
        with pytest.raises(InferenceError) as info:
            client.infer("dev-a", np.zeros((1, 64)), timeout=5)
        assert info.value.device_id == "dev-a"
        assert info.value.detail == "input 'image': expected float32 (?,1,8,8), got float64 (1, 64)"
        # A bad request does not disturb the next one.
        assert client.infer("dev-a", np.zeros((1, 1, 8, 8), np.float32))["logits"].shape == (1, 10)


def test_many_requests_in_flight_to_several_devices(broker: MosquittoProcess, responders) -> None:
    with InferenceClient(broker.url) as client:
        started = time.monotonic()
        futures = []
        for i in range(400):
            device = ("dev-a", "dev-b")[i % 2]
            futures.append((i, client.submit(device, np.full((1, 1, 8, 8), i, np.float32), timeout=20)))
        for i, future in futures:
            np.testing.assert_array_equal(future.result()["logits"], np.full((1, 10), 2 * i, np.float32))
        elapsed = time.monotonic() - started
    print(f"400 requests over 2 responders in {elapsed:.3f} s")
    assert len(responders["dev-a"].seen) == len(responders["dev-b"].seen) == 200
    correlations = [r["correlation"] for r in responders["dev-a"].seen + responders["dev-b"].seen]
    assert len(set(correlations)) == 400


def test_timeout_and_device_without_subscriber(broker: MosquittoProcess, responders) -> None:
    with InferenceClient(broker.url) as client:
        started = time.monotonic()
        with pytest.raises(
            InferenceTimeout, match=r"device dev-mute: inference failed: no reply within 0.3 s"
        ):
            client.infer("dev-mute", np.zeros((1, 1, 8, 8), np.float32), timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 2

        started = time.monotonic()
        with pytest.raises(InferenceError, match=r"nobody listens on .*/devices/ghost/infer"):
            client.infer("ghost", np.zeros((1, 1, 8, 8), np.float32), timeout=10)
        assert time.monotonic() - started < 2  # PUBACK "no matching subscribers": no need to wait it out

        with pytest.raises(ValueError, match="device id 'a/b' is not valid"):
            client.submit("a/b", np.zeros(1, np.float32))
