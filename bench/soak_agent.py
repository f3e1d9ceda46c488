"""Soak of one device agent under mixed valid and hostile traffic while deployments and rollbacks keep
arriving (issue 10, "Tests (real parts) and a soak").

A private mosquitto on a free loopback port and one real agent process: profile rpi4 (LiteRT/XNNPACK,
the full-INT8 digits CNN), the HTTP API on, probation, keep_bundles and max_request_bytes at the agent's
defaults, and the open-file limit the systemd unit sets (LimitNOFILE). For --minutes, concurrently:
- valid traffic: MQTT 5 request/response clients (ResponseTopic + CorrelationData) keeping at most
  IN_FLIGHT requests in flight each, and keep-alive HTTP clients (Open Inference Protocol v2), all paced;
- hostile traffic: batch 2 where the artifact takes 1, wrong dims, wrong dtypes, junk bytes, an .npy sent
  as .npz, lying .npy headers (512 GiB, a negative dim), an .npz that unpacks past the limit, pickles,
  bodies just under and just over max_request_bytes (MQTT, and HTTP JSON four at once), one MQTT message
  over the agent's packet limit (the broker drops it: no reply expected), a few hundred idle HTTP
  connections held open, bursts of thousands of valid MQTT requests within a second from one client, and
  floods of hundreds of batch-2 requests within a second (what it takes, under valid load, to push a new
  model's probation over its error rate if malformed requests count as model failures);
- deployments: every ~30-60 s (at most a quarter of the run apart, so short runs get some) a new signed
  version (v1 signed again as v2, v3, ...), an `edgefleet rollback`, or an older version deployed again,
  while the device's status and events are recorded;
- sampling every second: the agent's VmRSS, its open fds, and its state_dir (bytes, bundles unpacked).

A request is LOST when it should get a reply and none came within REPLY_TIMEOUT_S (a reset connection
without a reply counts too). The script never makes a bundle fail and asks for rollbacks only through
`edgefleet rollback`, which the device carries out as an ordinary activation: every `rolled_back` event
is the agent's own decision against a good bundle, i.e. wrongful. Targets (exit code 0 only when all are
met): 0 lost, 0 wrongful rollbacks, peak RSS within the profile's memory_budget_mb, at most keep_bundles
+ 1 complete bundle directories (state_dir/bundles/<id>) at every sample, and the agent up throughout.

    .venv/bin/python bench/soak_agent.py [--minutes 10] [--work DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import io
import itertools
import json
import os
import random
import re
import resource
import socket
import tempfile
import threading
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from bench_agent_http import request_body
from bench_agent_support import (
    DEVICE,
    Agent,
    DeviceWatcher,
    artifact_sample,
    as_version,
    convert_reference,
    float_sample,
    machine_load,
    prepare_work,
    read_vm_rss_kib,
    unpack,
)

from edgefleet.agent.config import AgentConfig
from edgefleet.contract import topics
from edgefleet.contract.ids import is_sha256_hex
from edgefleet.contract.messages import CONTENT_NPY, CONTENT_NPZ, MAX_CHUNK_SIZE, PACKET_HEADROOM
from edgefleet.contract.profiles import load_profile
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.deploy import deploy_bundle
from edgefleet.fleet.errors import DeploymentRejected, DeploymentTimeout
from edgefleet.fleet.rollback import RollbackError, rollback_device
from edgefleet.mqtt import BrokerAddress, connect, new_client, publish_properties

PROFILE = "rpi4"
REPLY_TIMEOUT_S = 30.0  # no reply by then: lost
IN_FLIGHT = 8  # per valid MQTT client
MQTT_CLIENTS, MQTT_RATE = 2, 100.0  # valid MQTT clients, requests/s each
# valid HTTP keep-alive connections (one request in flight each: HTTP/1.1 without pipelining), req/s each
HTTP_CLIENTS, HTTP_RATE = 4, 25.0
HOSTILE_MQTT_RATE, HOSTILE_HTTP_RATE = 20.0, 10.0
ATTACK_EVERY_S = 8.0  # one of the heavier attacks this often (they take turns)
LARGE_HTTP_AT_ONCE = 4
FLOOD_SIZE = 600  # batch-2 requests within a second: what it takes to fail a probation under valid load
OVER_PACKET_LIMIT_AT = 0.3  # the one MQTT message over the agent's packet limit, at this share of the run
BURST_SIZE, BURST_EVERY_S, BURST_FIRST_S = 3000, 20.0, 7.0
IDLE_CONNECTIONS, IDLE_HOLD_S, IDLE_EVERY_S, IDLE_FIRST_S = 300, 20.0, 45.0, 30.0
DEPLOY_TIMEOUT_S = 60.0
REUSE_IDLE_S = 20.0  # a keep-alive connection idle longer is reopened (the agent closes idle ones at 30 s)
UNIT_FILE = Path(__file__).resolve().parents[1] / "systemd" / "edgefleet-agent.service"
DEFAULT_NOFILE = 1024  # the usual soft limit when the unit file cannot be read

VALID_MQTT, VALID_HTTP = "valid mqtt", "valid http"
HOSTILE_MQTT, HOSTILE_HTTP, BURST = "hostile mqtt", "hostile http", "burst mqtt"
GROUPS = (VALID_MQTT, VALID_HTTP, HOSTILE_MQTT, HOSTILE_HTTP, BURST)
Kind = tuple[str, str]  # (group, what was sent)


# -- counting ----------------------------------------------------------------------------------------------


class Counts:
    """Outcomes per kind of request (thread-safe), the first reply text of each, and valid latencies.

    Every request is counted "sent", then once as one of: "ok", "error", "overloaded" (answered), "lost"
    (no reply by its deadline: the only outcome that misses the target), "refused" (never accepted: the
    TCP connection or the broker's PUBACK refused it) or "silent" (no reply, as expected)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tallies: dict[Kind, Counter[str]] = {}
        self.first_reply: dict[Kind, str] = {}
        self.replies: dict[Kind, Counter[str]] = {}  # HTTP status codes, or MQTT reply outcomes
        self.lost_reasons: Counter[tuple[Kind, str]] = Counter()
        self.latency_ms: dict[str, list[float]] = {VALID_MQTT: [], VALID_HTTP: []}

    def add(self, kind: Kind, outcome: str, detail: str = "", ms: float | None = None) -> None:
        with self._lock:
            self.tallies.setdefault(kind, Counter())[outcome] += 1
            if outcome not in ("sent", "lost", "refused", "silent"):
                self.first_reply.setdefault(kind, f"{outcome}: {detail}" if detail else outcome)
                code = detail.split()[1] if detail.startswith("HTTP ") else outcome
                self.replies.setdefault(kind, Counter())[code] += 1
            if outcome == "lost":
                self.lost_reasons[(kind, detail)] += 1
            if ms is not None and outcome == "ok" and kind[0] in self.latency_ms:
                self.latency_ms[kind[0]].append(ms)

    def group(self, group: str) -> Counter[str]:
        with self._lock:
            total: Counter[str] = Counter()
            for (g, _), tally in self.tallies.items():
                if g == group:
                    total.update(tally)
            return total

    def kinds(self, *groups: str) -> list[tuple[Kind, Counter[str]]]:
        with self._lock:
            return sorted(
                ((k, Counter(t)) for k, t in self.tallies.items() if k[0] in groups), key=lambda kt: kt[0]
            )


def reply_outcome(ok: bool, text: str) -> str:
    if ok:
        return "ok"
    return "overloaded" if "overloaded" in text or "too many connections" in text else "error"


# -- payloads ----------------------------------------------------------------------------------------------


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype.hasobject)
    return buffer.getvalue()


def npy_header_only(shape: tuple[int, ...], descr: str = "<f4", data: bytes = b"") -> bytes:
    """An .npy whose header declares `shape`, followed by `data` only (a header that lies)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def npz_of(members: dict[str, bytes], compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@dataclass(frozen=True)
class MqttPayload:
    name: str
    body: bytes
    content_type: str | None
    expect_reply: bool = True


@dataclass(frozen=True)
class HttpRequest:
    name: str
    raw: bytes  # the whole request: request line, headers, body


def http_request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    content_length: bool = True,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def oip_json(shape: list[int], datatype: str, data: Any) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "image", "shape": shape, "datatype": datatype, "data": data}]}
    ).encode()


@dataclass(frozen=True)
class Payloads:
    """Everything the traffic sends, built once (the large bodies too)."""

    valid_mqtt: list[MqttPayload]
    valid_http: list[HttpRequest]
    hostile_mqtt: list[MqttPayload]
    hostile_http: list[HttpRequest]
    mqtt_batch2: MqttPayload
    mqtt_near_limit: MqttPayload
    mqtt_over_limit: MqttPayload
    mqtt_over_packet_limit: MqttPayload
    http_json_near_limit: HttpRequest
    http_over_limit: HttpRequest

    @classmethod
    def build(cls, manifest: Any, limit: int, seed: int) -> Payloads:
        rng = np.random.default_rng(seed)
        as_float, as_int8 = float_sample(manifest, seed), artifact_sample(manifest, seed)
        infer = f"/v2/models/{manifest.name}/infer"
        valid_http = [
            HttpRequest(f"{label}", http_request("POST", infer, *request_body(array, binary)))
            for label, array, binary in (
                ("JSON FP32", as_float, False),
                ("binary INT8", as_int8, True),
            )
        ]
        return cls(
            valid_mqtt=[
                MqttPayload("npy INT8 artifact form", npy(as_int8), CONTENT_NPY),
                MqttPayload("npy FP32 float form", npy(as_float), CONTENT_NPY),
            ],
            valid_http=valid_http,
            hostile_mqtt=hostile_mqtt_payloads(as_float, as_int8, limit, rng),
            hostile_http=hostile_http_requests(infer, as_float, as_int8, rng),
            mqtt_batch2=MqttPayload(
                "batch 2, FP32 [2,1,8,8]", npy(np.concatenate([as_float, as_float])), CONTENT_NPY
            ),
            mqtt_near_limit=MqttPayload(
                "npy just under max_request_bytes (wrong shape)",
                npy(np.zeros((1, (limit - 4096) // 4), np.float32)),
                CONTENT_NPY,
            ),
            mqtt_over_limit=MqttPayload(
                "payload just over max_request_bytes", b"\0" * (limit + 1024), CONTENT_NPY
            ),
            mqtt_over_packet_limit=MqttPayload(
                "payload over the agent's MQTT packet limit (the broker drops it: no reply expected)",
                b"\0" * (max(limit, MAX_CHUNK_SIZE) + PACKET_HEADROOM + 1024 * 1024),
                CONTENT_NPY,
                expect_reply=False,
            ),
            http_json_near_limit=HttpRequest(
                f"JSON just under max_request_bytes, {LARGE_HTTP_AT_ONCE} at once",
                http_request("POST", infer, json_near_limit(limit), {"Content-Type": "application/json"}),
            ),
            http_over_limit=HttpRequest(
                "body just over max_request_bytes",
                http_request("POST", infer, b" " * (limit + 1024), {"Content-Type": "application/json"}),
            ),
        )


def json_near_limit(limit: int) -> bytes:
    """A JSON infer request just under `limit` bytes: 64 values declared, millions of floats sent."""
    head = b'{"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": ['
    tail = b"0.5]}]}"
    count = (limit - len(head) - len(tail) - 1024) // 4
    return head + b"0.5," * count + tail


def hostile_mqtt_payloads(
    as_float: np.ndarray, as_int8: np.ndarray, limit: int, rng: np.random.Generator
) -> list[MqttPayload]:
    junk = rng.integers(0, 256, 600, dtype=np.uint8).tobytes()
    bomb = npy(np.zeros((1, (limit + 4 * 1024 * 1024) // 4), np.float32))
    return [
        MqttPayload("batch 2, FP32 [2,1,8,8]", npy(np.concatenate([as_float, as_float])), CONTENT_NPY),
        MqttPayload("batch 2, INT8 [2,8,8,1]", npy(np.concatenate([as_int8, as_int8])), CONTENT_NPY),
        MqttPayload("wrong dims, FP32 [1,64]", npy(as_float.reshape(1, 64)), CONTENT_NPY),
        MqttPayload("wrong dtype, FP64 [1,1,8,8]", npy(as_float.astype(np.float64)), CONTENT_NPY),
        MqttPayload("wrong dtype, INT32 [1,8,8,1]", npy(as_int8.astype(np.int32)), CONTENT_NPY),
        MqttPayload("junk bytes as .npy", junk, CONTENT_NPY),
        MqttPayload(".npy sent as .npz", npy(as_float), CONTENT_NPZ),
        MqttPayload(".npz member that is not an .npy", npz_of({"image.npy": junk}), CONTENT_NPZ),
        MqttPayload(".npy header claiming 512 GiB", npy_header_only((137_438_953_472,)), CONTENT_NPY),
        MqttPayload(".npy header with a negative dim", npy_header_only((1, -1, 8, 8)), CONTENT_NPY),
        MqttPayload(".npz unpacking past max_request_bytes", npz_of({"image.npy": bomb}, True), CONTENT_NPZ),
        MqttPayload("pickled object array", npy(np.array([{"a": 1}], dtype=object)), CONTENT_NPY),
        MqttPayload("empty payload", b"", CONTENT_NPY),
        MqttPayload("unknown content type", npy(as_float), "text/plain"),
    ]


def hostile_http_requests(
    infer: str, as_float: np.ndarray, as_int8: np.ndarray, rng: np.random.Generator
) -> list[HttpRequest]:
    json_type = {"Content-Type": "application/json"}
    floats = as_float.ravel().tolist()
    short_binary = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 8, 8, 1],
                    "datatype": "INT8",
                    "parameters": {"binary_data_size": 64},
                }
            ]
        }
    ).encode()

    def post(name: str, body: bytes, headers: dict[str, str] | None = None) -> HttpRequest:
        return HttpRequest(name, http_request("POST", infer, body, headers or json_type))

    return [
        post("batch 2, FP32 [2,1,8,8]", oip_json([2, 1, 8, 8], "FP32", floats * 2)),
        post("batch 2, INT8 [2,8,8,1]", oip_json([2, 8, 8, 1], "INT8", as_int8.ravel().tolist() * 2)),
        post("wrong dims, FP32 [1,64]", oip_json([1, 64], "FP32", floats)),
        post("wrong dtype, FP64 [1,1,8,8]", oip_json([1, 1, 8, 8], "FP64", floats)),
        post("negative dim, FP32 [-1,1,8,8]", oip_json([-1, 1, 8, 8], "FP32", floats)),
        post("data count wrong, FP32 [1,1,8,8] with 10 values", oip_json([1, 1, 8, 8], "FP32", floats[:10])),
        post("junk bytes as JSON", rng.integers(0, 256, 600, dtype=np.uint8).tobytes()),
        post(
            "binary data shorter than declared",
            short_binary + b"\0" * 10,
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(short_binary)),
            },
        ),
        post("gzip Content-Encoding", b"\x1f\x8b" + b"\0" * 40, {**json_type, "Content-Encoding": "gzip"}),
        HttpRequest(
            "unknown model",
            http_request("POST", "/v2/models/nope/infer", oip_json([1, 1, 8, 8], "FP32", floats), json_type),
        ),
        HttpRequest("PATCH on infer", http_request("PATCH", infer, b"{}", json_type)),
        HttpRequest("POST without Content-Length", http_request("POST", infer, content_length=False)),
    ]


# -- MQTT 5 request/response -------------------------------------------------------------------------------


@dataclass
class Pending:
    kind: Kind
    sent_at: float
    deadline: float
    expect_reply: bool
    done: Callable[[], None] | None
    mid: int | None = None


class MqttRequester:
    """One MQTT 5 client sending requests to the device (ResponseTopic + CorrelationData, QoS 1) and
    matching replies by correlation data. `expire()` turns requests without a reply by their deadline into
    lost ones; a PUBACK that refuses the request (the broker did not accept it) ends it as refused."""

    def __init__(self, broker_url: str, name: str, counts: Counts, max_inflight: int = 20) -> None:
        self.counts = counts
        self.client_id = f"soak-{name}-{uuid.uuid4().hex[:6]}"
        self.reply_topic = topics.replies(self.client_id)
        self.topic = topics.infer(DEVICE)
        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._pending: dict[bytes, Pending] = {}
        self._by_mid: dict[int, bytes] = {}
        self._early_acks: dict[int, Any] = {}
        self._deadlines: list[tuple[float, bytes]] = []
        self.late_replies = 0
        ready = threading.Event()
        self.client = new_client(self.client_id)
        self.client.max_inflight_messages_set(max_inflight)

        def on_connect(client: mqtt.Client, *_: Any) -> None:
            client.subscribe(self.reply_topic, qos=1)

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_reply
        self.client.on_publish = self._on_puback
        connect(self.client, BrokerAddress.parse(broker_url))
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.client_id} could not subscribe to its reply topic")

    def send(self, kind: Kind, payload: MqttPayload, done: Callable[[], None] | None = None) -> None:
        corr = f"{next(self._ids)}".encode()
        now = time.monotonic()
        pending = Pending(kind, now, now + REPLY_TIMEOUT_S, payload.expect_reply, done)
        with self._lock:
            self._pending[corr] = pending
            heapq.heappush(self._deadlines, (pending.deadline, corr))
        self.counts.add(kind, "sent")
        props = publish_properties(ResponseTopic=self.reply_topic, CorrelationData=corr)
        if payload.content_type is not None:
            props.ContentType = payload.content_type
        # never called with our lock held: paho calls on_publish holding its own lock
        info = self.client.publish(self.topic, payload.body, qos=1, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._finish(corr, "refused", f"not sent: {mqtt.error_string(info.rc)}")
            return
        with self._lock:
            if corr not in self._pending:
                return
            self._pending[corr].mid = info.mid
            self._by_mid[info.mid] = corr
            early = self._early_acks.pop(info.mid, None)
        if early is not None:
            self._check_puback(info.mid, early)

    def _on_puback(self, _client: Any, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        if not (reason.is_failure or reason.value == 16):  # 16: no matching subscribers
            return  # accepted: its reply, or its deadline, ends the request
        with self._lock:
            if mid not in self._by_mid:  # the PUBACK overtook publish() returning its mid
                self._early_acks[mid] = reason
                return
        self._check_puback(mid, reason)

    def _check_puback(self, mid: int, reason: Any) -> None:
        with self._lock:
            corr = self._by_mid.get(mid)
        if corr is not None:
            self._finish(corr, "refused", f"the broker answered PUBACK {reason}")

    def _on_reply(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = message.properties
        corr = bytes(getattr(props, "CorrelationData", b"") or b"")
        status = dict(getattr(props, "UserProperty", None) or []).get("status")
        text = "" if status == "ok" else bytes(message.payload[:300]).decode("utf-8", "replace")
        if not self._finish(corr, reply_outcome(status == "ok", text), text):
            self.late_replies += 1

    def _finish(self, corr: bytes, outcome: str, detail: str) -> bool:
        with self._lock:
            pending = self._pending.pop(corr, None)
            if pending is None:
                return False
            if pending.mid is not None:
                self._by_mid.pop(pending.mid, None)
            self._lock.notify_all()
        ms = (time.monotonic() - pending.sent_at) * 1000
        self.counts.add(pending.kind, outcome, detail, ms)
        if pending.done is not None:
            pending.done()
        return True

    def expire(self) -> None:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._deadlines or self._deadlines[0][0] > now:
                    return
                _, corr = heapq.heappop(self._deadlines)
                pending = self._pending.get(corr)
            if pending is not None:
                if pending.expect_reply:
                    self._finish(corr, "lost", f"no reply within {REPLY_TIMEOUT_S:g} s")
                else:
                    self._finish(corr, "silent", "no reply, as expected")

    def wait_settled(self, timeout: float) -> None:
        """Until every request sent got its reply or its deadline (the reaper expires them)."""
        with self._lock:
            self._lock.wait_for(lambda: not self._pending, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- HTTP ----------------------------------------------------------------------------------------------------


class NoReply(Exception):
    """The connection ended, or timed out, before a whole reply came."""


class NotConnected(Exception):
    """The agent did not accept the TCP connection: the request was never sent."""


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to the agent with a minimal client (requests are prebuilt bytes),
    reopened when the agent closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.last_used = 0.0

    def exchange(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request; (status, body) of the reply. NotConnected, or NoReply when none came."""
        if self.sock is not None and time.monotonic() - self.last_used > REUSE_IDLE_S:
            self.close()
        if self.sock is None:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=REPLY_TIMEOUT_S)
            except OSError as exc:
                raise NotConnected(f"connect: {exc}") from exc
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_used = time.monotonic()
        # the agent may answer (and close) before it read the whole request: its answer is read below
        with contextlib.suppress(OSError):
            self.sock.sendall(raw)
        try:
            status, headers, body = self._read_reply()
        except (OSError, NoReply) as exc:
            self.close()
            raise NoReply(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def _read_reply(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            rest += self._recv()
        body, self.buffer = rest[:length], rest[length:]
        return int(status_line.split()[1]), headers, body

    def _recv(self) -> bytes:
        assert self.sock is not None
        data = self.sock.recv(1 << 20)
        if not data:
            raise NoReply("the agent closed the connection without a reply")
        return data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""


def http_exchange(counts: Counts, kind: Kind, connection: HttpConnection, request: HttpRequest) -> None:
    """Send one request and count what came of it."""
    counts.add(kind, "sent")
    started = time.monotonic()
    try:
        status, body = connection.exchange(request.raw)
    except NotConnected as exc:
        counts.add(kind, "refused", str(exc))
        return
    except NoReply as exc:
        counts.add(kind, "lost", str(exc))
        return
    ms = (time.monotonic() - started) * 1000
    text = "" if status == 200 else f"HTTP {status} {body[:300].decode('utf-8', 'replace')}"
    counts.add(kind, reply_outcome(status == 200, text), text, ms)


# -- the run -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # seconds into the run
    rss_kib: int
    fds: int
    disk_bytes: int
    bundles: int  # complete bundle directories: state_dir/bundles/<64 hex>
    staging: int  # bundles being unpacked: state_dir/bundles/.<id>.tmp
    incoming: int  # files of deliveries in progress: state_dir/incoming/*


@dataclass(frozen=True)
class IdleRound:
    at: float
    opened: int
    not_connected: int
    refused_503: int  # the agent answered 503 (connection cap) and closed
    closed_by_agent: int  # closed (or reset) without a word
    held: int  # still open when let go


class Soak:
    """What the traffic, sampling and deployment threads share: the stop flags, the counts, the samples."""

    def __init__(self, broker_url: str, port: int, payloads: Payloads, seed: int, duration: float) -> None:
        self.broker_url = broker_url
        self.port = port
        self.payloads = payloads
        self.seed = seed
        self.duration = duration
        self.counts = Counts()
        self.stop = threading.Event()  # traffic and deployments end
        self.done = threading.Event()  # every reply is in or expired: sampling and the reaper end
        self.started = time.monotonic()
        self.threads: list[threading.Thread] = []
        self.requesters: list[MqttRequester] = []
        self.samples: list[Sample] = []
        self.idle_rounds: list[IdleRound] = []
        self.bursts: list[float] = []  # seconds each burst took to send
        self.crashes: list[str] = []
        self.agent_died_at: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait_until(self, at_s: float) -> bool:
        """Wait until `at_s` into the run; False when the run is stopping."""
        return not self.stop.wait(max(0.0, self.started + at_s - time.monotonic()))

    def rng(self, salt: int) -> random.Random:
        return random.Random(self.seed * 1000 + salt)

    def requester(self, name: str, max_inflight: int = 20) -> MqttRequester:
        requester = MqttRequester(self.broker_url, name, self.counts, max_inflight)
        self.requesters.append(requester)
        return requester

    def spawn(self, name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        def guarded() -> None:
            try:
                target(*args)
            except Exception as exc:  # a broken traffic thread must show in the summary, not vanish
                self.crashes.append(f"{name}: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread


def paced(stop: threading.Event, rate: float) -> Iterator[int]:
    """0, 1, 2, ... at `rate` per second until `stop` (no catching up in a burst after a stall)."""
    period = 1.0 / rate
    next_at = time.monotonic()
    for i in itertools.count():
        if stop.wait(max(0.0, next_at - time.monotonic())):
            return
        yield i
        next_at = max(next_at + period, time.monotonic() - period)


# -- traffic -----------------------------------------------------------------------------------------------


def valid_mqtt(soak: Soak, requester: MqttRequester) -> None:
    slots = threading.BoundedSemaphore(IN_FLIGHT)
    payloads = soak.payloads.valid_mqtt
    for i in paced(soak.stop, MQTT_RATE):
        if not slots.acquire(timeout=1.0):
            continue  # IN_FLIGHT requests unanswered: this slot is skipped
        payload = payloads[i % len(payloads)]
        requester.send((VALID_MQTT, payload.name), payload, slots.release)


def valid_http(soak: Soak, index: int) -> None:
    connection = HttpConnection(soak.port)
    requests = soak.payloads.valid_http
    for i in paced(soak.stop, HTTP_RATE):
        request = requests[(i + index) % len(requests)]
        http_exchange(soak.counts, (VALID_HTTP, request.name), connection, request)
    connection.close()


def hostile_mqtt(soak: Soak, requester: MqttRequester) -> None:
    rng = soak.rng(1)
    for _ in paced(soak.stop, HOSTILE_MQTT_RATE):
        payload = rng.choice(soak.payloads.hostile_mqtt)
        requester.send((HOSTILE_MQTT, payload.name), payload)


def hostile_http(soak: Soak) -> None:
    rng = soak.rng(2)
    connection = HttpConnection(soak.port)
    for _ in paced(soak.stop, HOSTILE_HTTP_RATE):
        request = rng.choice(soak.payloads.hostile_http)
        http_exchange(soak.counts, (HOSTILE_HTTP, request.name), connection, request)
    connection.close()


def one_shot(soak: Soak, request: HttpRequest) -> None:
    connection = HttpConnection(soak.port)
    http_exchange(soak.counts, (HOSTILE_HTTP, request.name), connection, request)
    connection.close()


def attacks(soak: Soak, requester: MqttRequester) -> None:
    """Every ATTACK_EVERY_S, in turn: an HTTP JSON body just under max_request_bytes (LARGE_HTTP_AT_ONCE at
    once, on their own connections), an MQTT payload just under it, a flood of FLOOD_SIZE batch-2 requests
    within a second (MQTT), an HTTP body over the limit, an MQTT payload over it."""
    p = soak.payloads
    turns = itertools.cycle(["http near", "mqtt near", "flood", "http over", "mqtt over"])
    at = 3.0
    while soak.wait_until(at):
        turn = next(turns)
        if turn == "flood":
            kind = (HOSTILE_MQTT, f"flood: {p.mqtt_batch2.name}, {FLOOD_SIZE} within 1 s")
            send_spread(requester, kind, p.mqtt_batch2, FLOOD_SIZE)
        elif turn.startswith("mqtt"):
            payload = p.mqtt_near_limit if turn == "mqtt near" else p.mqtt_over_limit
            requester.send((HOSTILE_MQTT, payload.name), payload)
        else:
            copies = LARGE_HTTP_AT_ONCE if turn == "http near" else 1
            request = p.http_json_near_limit if turn == "http near" else p.http_over_limit
            senders = [threading.Thread(target=one_shot, args=(soak, request)) for _ in range(copies)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join(REPLY_TIMEOUT_S + 10)
        at += ATTACK_EVERY_S


def send_spread(requester: MqttRequester, kind: Kind, payload: MqttPayload, count: int) -> float:
    """`count` requests spread evenly over one second; returns the seconds it took."""
    started = time.monotonic()
    for i in range(count):
        if i % 50 == 0:
            time.sleep(max(0.0, started + i / count - time.monotonic()))
        requester.send(kind, payload)
    return time.monotonic() - started


def over_packet_limit(soak: Soak, requester: MqttRequester) -> None:
    if soak.wait_until(soak.duration * OVER_PACKET_LIMIT_AT):
        payload = soak.payloads.mqtt_over_packet_limit
        requester.send((HOSTILE_MQTT, payload.name), payload)


def bursts(soak: Soak, requester: MqttRequester) -> None:
    """BURST_SIZE valid requests spread over one second, every BURST_EVERY_S."""
    payload = soak.payloads.valid_mqtt[0]
    kind = (BURST, f"valid .npy, {BURST_SIZE} within 1 s from one client")
    at = BURST_FIRST_S
    while soak.wait_until(at):
        soak.bursts.append(send_spread(requester, kind, payload, BURST_SIZE))
        at += BURST_EVERY_S


def idle_connections(soak: Soak) -> None:
    """IDLE_CONNECTIONS HTTP connections opened and held IDLE_HOLD_S with nothing sent, every IDLE_EVERY_S."""
    at = IDLE_FIRST_S
    while soak.wait_until(at):
        started = soak.elapsed()
        sockets: list[socket.socket] = []
        failed = 0
        for _ in range(IDLE_CONNECTIONS):
            try:
                sockets.append(socket.create_connection(("127.0.0.1", soak.port), timeout=5))
            except OSError:
                failed += 1
        soak.stop.wait(IDLE_HOLD_S)
        fates = Counter(idle_fate(sock) for sock in sockets)
        for sock in sockets:
            sock.close()
        soak.idle_rounds.append(
            IdleRound(started, len(sockets), failed, fates["503"], fates["closed"], fates["held"])
        )
        at += IDLE_EVERY_S


def idle_fate(sock: socket.socket) -> str:
    sock.setblocking(False)
    try:
        data = sock.recv(64)
    except BlockingIOError:
        return "held"
    except OSError:
        return "closed"
    if data.startswith(b"HTTP/1.1 503"):
        return "503"
    return "closed" if not data else "other"


def reaper(soak: Soak) -> None:
    while not soak.done.wait(0.25):
        for requester in soak.requesters:
            requester.expire()


# -- sampling ----------------------------------------------------------------------------------------------


def state_usage(state_dir: Path) -> tuple[int, int, int, int]:
    """(bytes of every file, complete bundles, staging directories, incoming files) under `state_dir`."""
    total = 0
    for root, _, files in os.walk(state_dir):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we walked
                total += os.lstat(os.path.join(root, name)).st_size
    names = os.listdir(state_dir / "bundles") if (state_dir / "bundles").is_dir() else []
    bundles = sum(1 for n in names if is_sha256_hex(n))
    staging = sum(1 for n in names if n.startswith(".") and n.endswith(".tmp"))
    incoming = len(os.listdir(state_dir / "incoming")) if (state_dir / "incoming").is_dir() else 0
    return total, bundles, staging, incoming


def sampler(soak: Soak, agent: Agent, state_dir: Path) -> None:
    while not soak.done.is_set():
        at = soak.elapsed()
        try:
            rss, fds = read_vm_rss_kib(agent.pid), len(os.listdir(f"/proc/{agent.pid}/fd"))
        except (OSError, RuntimeError):
            rss = fds = -1
        if not agent.alive():
            soak.agent_died_at = at
            return
        soak.samples.append(Sample(at, rss, fds, *state_usage(state_dir)))
        soak.done.wait(max(0.0, soak.started + at + 1.0 - time.monotonic()))


def fd_limit(pid: int) -> int | None:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return None if soft == "unlimited" else int(soft)
    return None


def unit_nofile() -> tuple[int, str]:
    """The LimitNOFILE of the systemd unit the agent ships with (and where the figure came from)."""
    try:
        found = re.search(r"^LimitNOFILE=(\d+)", UNIT_FILE.read_text(), re.MULTILINE)
    except OSError:
        found = None
    if found is None:
        return DEFAULT_NOFILE, "no LimitNOFILE in the unit file: the usual soft limit"
    return int(found.group(1)), f"LimitNOFILE of {UNIT_FILE.name}"


def start_with_nofile(agent: Agent, nofile: int) -> Agent:
    """Start the agent with `nofile` as its soft open-file limit, as systemd would (the child inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        return agent.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- deployments -------------------------------------------------------------------------------------------

NEW, ROLLBACK, OLDER = "new version", "edgefleet rollback", "older version again"


@dataclass
class Deployment:
    action: str
    at: float  # seconds into the run
    version: str | None = None
    outcome: str = "pending"  # activated, rejected, timed out, refused, failed
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Deployments:
    """Deployments and rollbacks arriving while the traffic runs: v1 signed again as v2, v3, ... (new
    bundle ids, the same good model), `edgefleet rollback` (rollback_device) and older versions deployed
    again (deploy_bundle of their file), each waited for until the device reports it active."""

    broker_url: str
    v1: Path
    out_dir: Path
    private_key: Path
    public_key: Path
    watcher: DeviceWatcher
    bundles: dict[str, Path] = field(default_factory=dict)
    done: list[Deployment] = field(default_factory=list)

    def run(self, soak: Soak) -> None:
        rng = soak.rng(3)
        self.bundles["1"] = self.v1
        plan = itertools.chain([NEW, NEW, ROLLBACK], itertools.cycle([NEW, OLDER, NEW, ROLLBACK]))

        def gap() -> float:
            return min(rng.uniform(30, 60), soak.duration / 4)

        at = gap()
        for action in plan:
            if at >= soak.duration or not soak.wait_until(at):
                return
            self.done.append(self.perform(action, soak.elapsed(), rng))
            at = max(at + gap(), soak.elapsed() + 1)

    def perform(self, action: str, at: float, rng: random.Random) -> Deployment:
        record = Deployment(action, at)
        started = time.monotonic()
        try:
            if action == ROLLBACK:
                rolled = rollback_device(self.broker_url, DEVICE, wait=True, timeout=DEPLOY_TIMEOUT_S)
                record.version = rolled.to.version
                record.detail = rolled.deployment_id or "already active"
            else:
                record.version = self.next_version() if action == NEW else self.older_version(rng)
                result = deploy_bundle(
                    self.broker_url, self.bundles[record.version], DEVICE, wait=True, timeout=DEPLOY_TIMEOUT_S
                )
                record.detail = result.deployment_id
            record.outcome = "activated"
        except DeploymentRejected as exc:
            record.outcome, record.detail = "rejected", str(exc)
        except DeploymentTimeout as exc:
            record.outcome, record.detail = "timed out", str(exc)
        except RollbackError as exc:
            record.outcome, record.detail = "refused", str(exc)
        except Exception as exc:
            record.outcome, record.detail = "failed", f"{type(exc).__name__}: {exc}"
        record.seconds = time.monotonic() - started
        return record

    def next_version(self) -> str:
        version = str(max(map(int, self.bundles)) + 1)
        out = self.out_dir / f"v{version}.efb"
        self.bundles[version] = as_version(self.v1, version, out, self.private_key, self.public_key)
        return version

    def older_version(self, rng: random.Random) -> str:
        active = active_version(self.watcher)
        return rng.choice(sorted((v for v in self.bundles if v != active), key=int) or ["1"])


def active_version(watcher: DeviceWatcher) -> str | None:
    with watcher.lock:
        for _, status in reversed(watcher.status):
            model = status.get("model")
            return model.get("version") if isinstance(model, dict) else None
    return None


# -- the summary -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What the summary's header and targets need besides the run's own figures."""

    model: str
    threads: int
    budget_mb: int
    keep_bundles: int
    max_request_bytes: int
    nofile: int
    nofile_source: str
    fd_limit: int | None
    loads: list[str]


def short(text: str, size: int = 90) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= size else text[: size - 3] + "..."


def percentile(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.1f}" if values else "-"


def print_traffic(counts: Counts) -> int:
    """The per-kind table; returns the number of lost requests."""
    print(
        "| traffic | sent | ok | error | overloaded | LOST | refused (never accepted) | silent as expected "
        "| ok p50 ms | ok p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    lost = 0
    for group in GROUPS:
        t = counts.group(group)
        lost += t["lost"]
        latency = counts.latency_ms.get(group, [])
        print(
            f"| {group} | {t['sent']} | {t['ok']} | {t['error']} | {t['overloaded']} | {t['lost']} "
            f"| {t['refused']} | {t['silent']} | {percentile(latency, 50)} | {percentile(latency, 99)} |"
        )
    print()
    print("| hostile kind | sent | ok | error | overloaded | LOST | replies | first reply |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, t in counts.kinds(HOSTILE_MQTT, HOSTILE_HTTP, BURST):
        replies = ", ".join(f"{code}: {n}" for code, n in sorted(counts.replies.get(kind, Counter()).items()))
        print(
            f"| {kind[0]}: {kind[1]} | {t['sent']} | {t['ok']} | {t['error']} | {t['overloaded']} "
            f"| {t['lost']} | {replies or '-'} | {short(counts.first_reply.get(kind, '-'))} |"
        )
    for ((group, name), reason), n in sorted(counts.lost_reasons.items()):
        print(f"# LOST {n}: {group}: {name}: {reason}")
    return lost


def print_attacks(soak: Soak) -> None:
    for r in soak.idle_rounds:
        print(
            f"# idle HTTP connections at {r.at:.0f} s: {r.opened} opened ({r.not_connected} not accepted), "
            f"after {IDLE_HOLD_S:g} s: {r.held} still held, {r.refused_503} answered 503 and closed, "
            f"{r.closed_by_agent} closed without a reply"
        )
    if soak.bursts:
        took = ", ".join(f"{s:.2f}" for s in soak.bursts)
        print(f"# bursts: {len(soak.bursts)} of {BURST_SIZE} MQTT requests, sent in {took} s")
    late = sum(r.late_replies for r in soak.requesters)
    print(f"# MQTT replies that came after their request was counted lost: {late}")
    for crash in soak.crashes:
        print(f"# a traffic thread failed: {crash}")


def device_events(watcher: DeviceWatcher) -> tuple[Counter[str], list[dict[str, Any]], int]:
    """(event kinds seen, the `rolled_back` events, the largest `rollbacks` any status reported)."""
    with watcher.lock:
        events = [body for _, body in watcher.events]
        rollbacks = max((int(body.get("rollbacks") or 0) for _, body in watcher.status), default=0)
    kinds = Counter(str(body.get("kind")) for body in events)
    return kinds, [body for body in events if body.get("kind") == "rolled_back"], rollbacks


def print_deployments(deployments: Deployments, watcher: DeviceWatcher) -> int:
    """The deployment table; returns the number of wrongful rollbacks (the agent's own)."""
    print("| at s | deployment | version | outcome | took s | deployment id / detail |")
    print("|---|---|---|---|---|---|")
    for d in deployments.done:
        print(
            f"| {d.at:.0f} | {d.action} | {d.version or '-'} | {d.outcome} | {d.seconds:.1f} "
            f"| {short(d.detail)} |"
        )
    for action in (NEW, ROLLBACK, OLDER):
        mine = [d for d in deployments.done if d.action == action]
        outcomes = Counter(d.outcome for d in mine)
        spread = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())) or "-"
        print(f"# {action}: {len(mine)} sent: {spread}")
    kinds, rolled_back, status_rollbacks = device_events(watcher)
    print(f"# device events: {', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}")
    print(
        f"# rolled back by the agent on its own (wrongful: every bundle was good): {len(rolled_back)} "
        f"`rolled_back` events; largest `rollbacks` in a status: {status_rollbacks}"
    )
    for body in rolled_back:
        print(
            f"#   v{body.get('version')} ({body.get('deployment_id')}): {short(str(body.get('detail')), 300)}"
        )
    return len(rolled_back)


def print_resources(soak: Soak, setup: Setup) -> tuple[float, int]:
    """The resource table; returns (peak RSS MiB, peak complete bundles)."""
    samples = soak.samples or [Sample(0, 0, 0, 0, 0, 0, 0)]

    def peak(attr: str) -> Sample:
        return max(samples, key=lambda s: getattr(s, attr))

    rss, fds, disk, bundles = peak("rss_kib"), peak("fds"), peak("disk_bytes"), peak("bundles")
    first, last = samples[0], samples[-1]
    limit = str(setup.fd_limit) if setup.fd_limit is not None else "unlimited"
    print("| resource (sampled every second) | peak | at s | first / last sample | limit |")
    print("|---|---|---|---|---|")
    print(
        f"| agent RSS MiB | {rss.rss_kib / 1024:.0f} | {rss.at:.0f} | {first.rss_kib / 1024:.0f} / "
        f"{last.rss_kib / 1024:.0f} | {setup.budget_mb} ({PROFILE} memory_budget_mb) |"
    )
    print(
        f"| agent open fds | {fds.fds} | {fds.at:.0f} | {first.fds} / {last.fds} | {limit} "
        f"(soft limit; {setup.nofile_source}: {setup.nofile}) |"
    )
    print(
        f"| state_dir bytes | {disk.disk_bytes} | {disk.at:.0f} | {first.disk_bytes} / "
        f"{last.disk_bytes} | - |"
    )
    print(
        f"| complete bundles (state_dir/bundles/<id>) | {bundles.bundles} | {bundles.at:.0f} | "
        f"{first.bundles} / {last.bundles} | keep_bundles {setup.keep_bundles} + 1 |"
    )
    print(
        f"| bundles being unpacked (.<id>.tmp) / files in incoming/ | {peak('staging').staging} / "
        f"{peak('incoming').incoming} | - | - | - |"
    )
    return rss.rss_kib / 1024, bundles.bundles


def print_agent_log(log: str) -> None:
    found = Counter(re.findall(r"level=(error|warning) component=\S+ event=(\S+)", log))
    if found:
        listed = ", ".join(f"{event} ({level}) {n}" for (level, event), n in found.most_common(12))
        print(f"# agent log, warnings and errors: {listed}")
    emfile = log.count("Too many open files")
    if emfile:
        print(f"# agent log: 'Too many open files' {emfile} times")


def print_targets(targets: list[tuple[str, str, bool]]) -> bool:
    print("| target | value | result |")
    print("|---|---|---|")
    for name, value, met in targets:
        print(f"| {name} | {value} | {'PASS' if met else 'FAIL'} |")
    return all(met for _, _, met in targets)


def report(soak: Soak, deployments: Deployments, watcher: DeviceWatcher, agent: Agent, setup: Setup) -> bool:
    print()
    print(
        f"# soak: profile {PROFILE} ({setup.model}, {setup.threads} runtime threads), {soak.elapsed():.0f} s "
        f"in all ({soak.duration:.0f} s of traffic, then replies awaited), seed {soak.seed}; "
        f"max_request_bytes {setup.max_request_bytes}, keep_bundles {setup.keep_bundles}"
    )
    print(f"# machine: {'; '.join(setup.loads)} (start; end of traffic; end)")
    print(
        f"# valid: {MQTT_CLIENTS} MQTT clients x {MQTT_RATE:g} req/s (at most {IN_FLIGHT} in flight each), "
        f"{HTTP_CLIENTS} HTTP keep-alive connections x {HTTP_RATE:g} req/s; hostile: MQTT "
        f"{HOSTILE_MQTT_RATE:g}/s, HTTP {HOSTILE_HTTP_RATE:g}/s, one heavier attack every "
        f"{ATTACK_EVERY_S:g} s; LOST = no reply within {REPLY_TIMEOUT_S:g} s"
    )
    print()
    lost = print_traffic(soak.counts)
    print_attacks(soak)
    print()
    wrongful = print_deployments(deployments, watcher)
    print()
    peak_rss, peak_bundles = print_resources(soak, setup)
    print_agent_log(agent.log())
    up = soak.agent_died_at is None and agent.alive()
    print()
    return print_targets(
        [
            ("requests lost (every kind)", str(lost), lost == 0),
            ("wrongful rollbacks (`rolled_back` events)", str(wrongful), wrongful == 0),
            (
                "peak agent RSS within memory_budget_mb",
                f"{peak_rss:.0f} MiB vs {setup.budget_mb}",
                peak_rss <= setup.budget_mb,
            ),
            (
                "complete bundles on disk <= keep_bundles + 1",
                f"{peak_bundles} vs {setup.keep_bundles} + 1",
                peak_bundles <= setup.keep_bundles + 1,
            ),
            (
                "agent process up throughout",
                "yes" if up else f"exited at {soak.agent_died_at or soak.elapsed():.0f} s",
                up,
            ),
        ]
    )


# -- main --------------------------------------------------------------------------------------------------


def run_traffic(
    soak: Soak, deployments: Deployments, agent: Agent, state_dir: Path, loads: list[str]
) -> None:
    """Everything concurrently for soak.duration; then wait for every reply (or its deadline)."""
    soak.spawn("sampler", sampler, soak, agent, state_dir)
    soak.spawn("reaper", reaper, soak)
    traffic = [
        *(
            soak.spawn(f"valid-mqtt-{i}", valid_mqtt, soak, soak.requester(f"valid{i}"))
            for i in range(MQTT_CLIENTS)
        ),
        *(soak.spawn(f"valid-http-{i}", valid_http, soak, i) for i in range(HTTP_CLIENTS)),
        soak.spawn("hostile-mqtt", hostile_mqtt, soak, soak.requester("hostile")),
        soak.spawn("hostile-http", hostile_http, soak),
        soak.spawn("attacks", attacks, soak, soak.requester("attacks")),
        soak.spawn("over-packet-limit", over_packet_limit, soak, soak.requester("huge")),
        soak.spawn("bursts", bursts, soak, soak.requester("burst", max_inflight=1000)),
        soak.spawn("idle", idle_connections, soak),
        soak.spawn("deployments", deployments.run, soak),
    ]
    soak.stop.wait(soak.duration)
    soak.stop.set()
    loads.append(machine_load())
    for thread in traffic:
        thread.join(DEPLOY_TIMEOUT_S + REPLY_TIMEOUT_S)
    for requester in soak.requesters:
        requester.wait_settled(REPLY_TIMEOUT_S + 5)
    soak.done.set()
    for requester in soak.requesters:
        requester.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the traffic runs")
    parser.add_argument("--work", type=Path, default=None, help="keep converted bundles here (reused)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    defaults = AgentConfig.model_fields
    keep, limit = int(defaults["keep_bundles"].default), int(defaults["max_request_bytes"].default)
    nofile, nofile_source = unit_nofile()
    loads = [machine_load()]
    with tempfile.TemporaryDirectory(prefix="soak-agent-") as tmp:
        tmp_path = Path(tmp)
        work, threads, private_key, public_key = prepare_work(tmp_path, args.work, PROFILE, None)
        v1 = convert_reference(work, "digits", PROFILE, "1", private_key)
        _, manifest = unpack(v1, tmp_path / "unpacked", public_key)
        payloads = Payloads.build(manifest, limit, args.seed)
        print(f"# payloads built; starting mosquitto and the agent ({nofile_source}: {nofile})", flush=True)
        with MosquittoProcess(tmp_path / "broker") as broker:
            watcher = DeviceWatcher(broker.url)
            agent = Agent(tmp_path / "agent", broker.url, public_key, PROFILE, http_port=0)
            start_with_nofile(agent, nofile)
            try:
                port = agent.http_port()
                deploy_bundle(broker.url, v1, DEVICE, wait=True, timeout=120)
                print(f"# v1 active; soaking for {args.minutes:g} min", flush=True)
                soak = Soak(broker.url, port, payloads, args.seed, args.minutes * 60)
                deployments = Deployments(broker.url, v1, tmp_path, private_key, public_key, watcher)
                run_traffic(soak, deployments, agent, tmp_path / "agent" / "state", loads)
                loads.append(machine_load())
                setup = Setup(
                    model=f"{manifest.name} CNN, {manifest.format.value} {manifest.precision.value}",
                    threads=threads,
                    budget_mb=load_profile(PROFILE).memory_budget_mb,
                    keep_bundles=keep,
                    max_request_bytes=limit,
                    nofile=nofile,
                    nofile_source=nofile_source,
                    fd_limit=fd_limit(agent.pid) if agent.alive() else None,
                    loads=loads,
                )
                passed = report(soak, deployments, watcher, agent, setup)
            finally:
                watcher.close()
                agent.stop()
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
