"""The local HTTP API (Open Inference Protocol v2 REST) of a real agent process, next to its MQTT API."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import DEVICE, AgentProcess, Keys, Observer, RunningAgent, publish_bundle
from agent_http_client import OipClient, http_agent_config, oip_tensor, output_array, wait_http_port

from edgefleet import __version__
from edgefleet.contract.tensors import encode_npy
from edgefleet.fleet.broker import MosquittoProcess

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
LIMIT = 256 * 1024  # max_request_bytes of the agent under test


@pytest.fixture
def http_agent(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path
) -> Iterator[tuple[RunningAgent, OipClient]]:
    observer = Observer(broker.url, DEVICE)
    config = http_agent_config(tmp_path, broker.url, keys, max_request_bytes=LIMIT)
    process = AgentProcess(tmp_path, config, profiles_dir).start()
    client = None
    try:
        client = OipClient(wait_http_port(process))
        observer.wait_for("online", lambda m: m["online"] is True)
        yield RunningAgent(process, observer, broker), client
    finally:
        if client is not None:
            client.close()
        if process.alive():
            process.stop()
        observer.close()
        print(process.log()[-4000:])


def _images(reference_dir: Path, n: int) -> np.ndarray:
    return np.load(reference_dir / "eval.npz")["image"][:n]


def test_oip_endpoints_and_infer_match_the_mqtt_path(
    http_agent: tuple[RunningAgent, OipClient], bundles: dict[str, Path], reference_dir: Path
) -> None:
    agent, client = http_agent
    obs = agent.observer
    images = _images(reference_dir, 16)

    assert client.get("/v2/health/live") == (200, {"live": True})
    assert client.get("/v2/health/ready") == (400, {"error": "no model is active"})
    assert client.infer("digits", {"image": images}) == (503, {"error": "no model is active"})

    agent.deploy(bundles["v1"], "1")
    assert client.get("/v2/health/ready") == (200, {"ready": True})
    server = {"name": "edgefleet-agent", "version": __version__, "extensions": ["binary_tensor_data"]}
    assert client.get("/v2") == (200, server)
    metadata = {
        "name": "digits",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert client.get("/v2/models/digits") == (200, metadata)
    assert client.get("/v2/models/digits/versions/1") == (200, metadata)
    assert client.get("/v2/models/digits/ready") == (200, {"name": "digits", "ready": True})
    assert client.get("/v2/models/digits/versions/1/ready")[0] == 200
    status, body = client.get("/v2/models/digits/versions/9/ready")
    assert status == 400 and "version '9' is not loaded" in body["error"]
    status, body = client.get("/v2/models/resnet")
    assert (
        status == 404
        and body["error"] == "model 'resnet' is not loaded; this agent serves 'digits' version '1'"
    )
    assert client.get("/v2/nothing/here")[0] == 404
    status, body = client.get("/v2/models/digits/infer")
    assert status == 405 and "takes POST" in body["error"]
    for method in ("PATCH", "OPTIONS", "PUT"):  # JSON errors for every method, not the stdlib's HTML page
        status, data, response = client.request(method, "/v2/health/ready")
        assert status == 405 and response.getheader("Content-Type", "").startswith("application/json")
        assert f"takes GET, not {method}" in json.loads(data)["error"]
    status, data, response = client.request("HEAD", "/v2/models/digits")
    assert status == 405 and data == b"" and int(response.getheader("Content-Length", "0")) > 0
    # a refused request's body is never read as the next request on the keep-alive connection
    for method, path in (("PATCH", "/v2/models/digits/infer"), ("POST", "/v2/models/resnet/infer")):
        status, data, response = client.request(method, path, b'{"inputs": []}')
        assert status in (404, 405)
        assert client.get("/v2/health/ready") == (200, {"ready": True})

    # the same request over both APIs gives the same numbers, bit for bit
    status, reply = client.infer("digits", {"image": images}, id="req-7")
    assert status == 200, reply
    assert (reply["model_name"], reply["model_version"], reply["id"]) == ("digits", "1", "req-7")
    assert [(o["name"], o["datatype"], o["shape"]) for o in reply["outputs"]] == [
        ("logits", "FP32", [16, 10])
    ]
    mqtt_reply = obs.infer(images)
    assert mqtt_reply.status == "ok"
    np.testing.assert_array_equal(output_array(reply, "logits"), mqtt_reply.tensors()["logits"])

    # versioned path, nested (not flattened) data, an explicit list of outputs
    nested = {
        "inputs": [{**oip_tensor("image", images[:2]), "data": images[:2].tolist()}],
        "outputs": [{"name": "logits"}],
    }
    status, reply = client.post_json("/v2/models/digits/versions/1/infer", json.dumps(nested).encode())
    assert status == 200, reply
    np.testing.assert_array_equal(output_array(reply, "logits"), mqtt_reply.tensors()["logits"][:2])

    # Triton's binary tensor data extension, as tritonclient sends it by default: raw input, raw output
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [16, 1, 8, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": images.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    status, data, response = client.request(
        "POST", "/v2/models/digits/infer", head + images.tobytes(), headers
    )
    assert status == 200, data[:300]
    json_length = int(response.getheader("Inference-Header-Content-Length"))
    header = json.loads(data[:json_length])
    assert header["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [16, 10], "parameters": {"binary_data_size": 640}}
    ]
    binary_logits = np.frombuffer(data[json_length:], dtype="<f4").reshape(16, 10)
    np.testing.assert_array_equal(binary_logits, mqtt_reply.tensors()["logits"])

    status, reply = client.infer("digits", {"image": images[:1]}, outputs=[{"name": "probs"}])
    assert status == 400 and "requested outputs ['probs'] are not outputs of this model" in reply["error"]
    status, reply = client.infer("digits", {"image": images[:1]}, version="2")
    assert status == 404 and "version '2' is not loaded" in reply["error"]


def _bad_requests(images: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """What a client can get wrong, and the words the 400 reply must contain."""
    good = oip_tensor("image", images[:1])

    def body(*inputs: dict[str, object], **fields: object) -> bytes:
        return json.dumps({"inputs": list(inputs), **fields}).encode()

    return {
        "wrong shape": (
            body({**good, "shape": [1, 64]}),
            "input 'image': expected FP32 [-1,1,8,8] (-1: any size); got FP32 [1,64]",
        ),
        "wrong datatype": (body({**good, "datatype": "FP64"}), "got FP64 [1,1,8,8]"),
        "unknown datatype": (body({**good, "datatype": "BF16"}), "got BF16 [1,1,8,8]"),
        "too few values": (body({**good, "shape": [2, 1, 8, 8]}), "holds 128 values, data has 64"),
        "not numbers": (body({**good, "data": ["x"] * 64}), "data is not a regular array of numbers"),
        "ragged": (body({**good, "data": [[0.0] * 63, [0.0]]}), "data is not a regular array of numbers"),
        "null in data": (body({**good, "data": [None] * 64}), "data holds null, NaN or infinity"),
        "unknown input": (body({**good, "name": "img"}), "input 'img' is not an input of this model"),
        "no inputs": (body(), "inputs: List should have at least 1 item"),
        "not JSON": (b"{'inputs': ", "request body is not valid JSON"),
        "binary data without its header": (
            body({**good, "parameters": {"binary_data_size": 256}}),
            "sets binary_data_size, but the request has no Inference-Header-Content-Length header",
        ),
    }


def test_bad_requests_get_clear_errors_and_do_not_disturb_concurrent_good_ones(
    http_agent: tuple[RunningAgent, OipClient], bundles: dict[str, Path], reference_dir: Path
) -> None:
    agent, client = http_agent
    obs = agent.observer
    agent.deploy(bundles["v1"], "1")
    images = _images(reference_dir, 4)
    status, reply = client.infer("digits", {"image": images})
    assert status == 200
    expected = output_array(reply, "logits")

    stop = threading.Event()
    outcomes: list[tuple[str, bool]] = []

    def http_loop() -> None:
        own = OipClient(client.port)
        while not stop.is_set():
            status, reply = own.infer("digits", {"image": images})
            outcomes.append(
                ("http", status == 200 and np.array_equal(output_array(reply, "logits"), expected))
            )
        own.close()

    def mqtt_loop() -> None:
        while not stop.is_set():
            reply = obs.infer(images)
            outcomes.append(
                ("mqtt", reply.status == "ok" and np.array_equal(reply.tensors()["logits"], expected))
            )

    loops = [
        threading.Thread(target=http_loop),
        threading.Thread(target=http_loop),
        threading.Thread(target=mqtt_loop),
    ]

    def wait_for_more(n: int = 3) -> None:
        """Until each API has answered `n` more good requests: the loops run through the bad requests."""
        start = {api: sum(a == api for a, _ in outcomes) for api in ("http", "mqtt")}
        deadline = time.monotonic() + 15
        while any(sum(a == api for a, _ in outcomes) < start[api] + n for api in start):
            assert time.monotonic() < deadline, "the good-request loops stalled"
            time.sleep(0.01)

    for loop in loops:
        loop.start()
    try:
        wait_for_more()
        for what, (payload, words) in _bad_requests(images).items():
            status, reply = client.post_json("/v2/models/digits/infer", payload)
            assert (status, words in reply.get("error", "")) == (400, True), (what, reply)

        # over max_request_bytes: refused from Content-Length alone; the connection closes, nothing else
        big = np.zeros((1200, 1, 8, 8), np.float32)
        status, reply = client.infer("digits", {"image": big})
        assert status == 400 and f"limit of {LIMIT} bytes (max_request_bytes" in reply["error"], reply
        # the same limit on the MQTT path: a raw .npy over it, and an .npz that only unpacks over it
        reply_mqtt = obs.request(encode_npy(big))
        assert reply_mqtt is not None and reply_mqtt.status == "error"
        assert f"limit of {LIMIT} bytes" in reply_mqtt.error()
        packed = io.BytesIO()
        np.savez_compressed(packed, image=big)
        assert len(packed.getvalue()) < LIMIT
        reply_mqtt = obs.request(packed.getvalue(), "application/x-npz")
        assert reply_mqtt is not None and "the unpacked .npz payload" in reply_mqtt.error()
        wait_for_more()
    finally:
        stop.set()
        for loop in loops:
            loop.join()
    by_api = {api: [ok for a, ok in outcomes if a == api] for api in ("http", "mqtt")}
    assert all(len(oks) >= 6 and all(oks) for oks in by_api.values()), {a: len(o) for a, o in by_api.items()}
    print(f"good requests during the bad ones: http {len(by_api['http'])}, mqtt {len(by_api['mqtt'])}")
    assert client.infer("digits", {"image": images})[0] == 200
    assert agent.process.alive()


def test_a_taken_port_is_an_error_event_and_mqtt_keeps_serving(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path, bundles: dict[str, Path]
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        observer = Observer(broker.url, DEVICE)
        config = http_agent_config(tmp_path, broker.url, keys)
        process = AgentProcess(tmp_path, {**config, "http_port": port}, profiles_dir).start()
        try:
            event = observer.wait_for("events", lambda e: e["kind"] == "error")
            assert event["detail"].startswith(f"the HTTP API cannot listen on 127.0.0.1:{port} (")
            assert "MQTT inference keeps working; change http_host/http_port in" in event["detail"]
            publish_bundle(broker.url, DEVICE, bundles["v1"], "d-v1", version="1")
            observer.wait_active("1")
            reply = observer.infer(np.zeros((1, 1, 8, 8), np.float32))
            assert (reply.status, reply.model_version) == ("ok", "1")
            assert process.log().count("event=http_unavailable") == 1
        finally:
            if process.alive():
                process.stop()
            observer.close()


def test_connections_over_the_cap_get_a_json_503_and_a_freed_slot_serves_again(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path
) -> None:
    """Idle keep-alive connections each hold a thread and a file descriptor: past http_max_connections the
    agent answers 503 at once and closes, instead of running out of descriptors."""
    config = http_agent_config(tmp_path, broker.url, keys, http_max_connections=3)
    process = AgentProcess(tmp_path, config, profiles_dir).start()
    holders: list[OipClient] = []
    try:
        port = wait_http_port(process)
        for _ in range(3):  # three keep-alive connections, each answered and left open
            holder = OipClient(port)
            assert holder.get("/v2/health/live") == (200, {"live": True})
            holders.append(holder)
        extra = OipClient(port)
        status, body = extra.get("/v2/health/live")
        assert status == 503 and "too many connections (at most 3)" in body["error"]
        extra.close()
        holders.pop().close()
        deadline = time.monotonic() + 20  # the server thread sees the close and frees its slot
        while (status := OipClient(port).get("/v2/health/live")[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 200
        assert process.alive()
    finally:
        for holder in holders:
            holder.close()
        process.stop()
