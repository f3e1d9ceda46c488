"""Latency the agent's local HTTP API (Open Inference Protocol v2 REST) adds over the bare runtime: a real
agent process (profile rpi4, full-INT8 TFLite) behind a private mosquitto serves the digits CNN, then the
MobileNetV2-style model; this process sends OIP infer requests over one keep-alive connection and, in
between, runs the same model file on the bare runtime (ai_edge_litert Interpreter, same thread count).

Request forms: JSON tensor data and Triton's binary tensor data extension (binary outputs asked for too),
each with the input in the source model's float form (FP32, NCHW: the agent transposes and quantizes it) and
in the artifact's own form (INT8, NHWC: passed through). Request bodies are built once before timing (a
client's own encoding is not the agent's latency); the timed request includes reading and parsing the
reply. Printed: p50 of each path and the p50 added latency (target: under 0.3 ms).

    .venv/bin/python bench/bench_agent_http.py [--threads N] [--seconds 8] [--work DIR]
"""

from __future__ import annotations

import json
import random
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_agent_support import (
    DEVICE,
    Agent,
    BareRuntime,
    Summary,
    agent_bench_parser,
    artifact_sample,
    float_sample,
    machine_load,
    prepare_work,
    reference_bundles,
    unpack,
)

from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.deploy import deploy_bundle

TARGET_MS = 0.3
HEADER_LENGTH = "Inference-Header-Content-Length"
OIP_TYPE = {"float32": "FP32", "int8": "INT8", "uint8": "UINT8"}


class OipConnection:
    """One keep-alive HTTP/1.1 connection (TCP_NODELAY) with a minimal client: requests are pre-built
    bytes, replies are read by Content-Length. Python's http.client would add its own ~50-100 us of header
    parsing per reply here, which is the client's cost, not the agent's."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    @staticmethod
    def build(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def exchange(self, request: bytes) -> tuple[int, bytes, str | None]:
        """Send one request; (status, body, Inference-Header-Content-Length) of the reply."""
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
        length = int(headers["content-length"])
        while len(rest) < length:
            rest += self._recv()
        body, self.buffer = rest[:length], rest[length:]
        return int(status_line.split()[1]), body, headers.get(HEADER_LENGTH.lower())

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 20)
        if not data:
            raise RuntimeError("the agent closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


def request_body(array: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    tensor: dict[str, Any] = {
        "name": "image",
        "shape": list(array.shape),
        "datatype": OIP_TYPE[array.dtype.name],
    }
    if not binary:
        tensor["data"] = array.ravel().tolist()
        body = json.dumps({"inputs": [tensor]}).encode()
        return body, {"Content-Type": "application/json"}
    tensor["parameters"] = {"binary_data_size": array.nbytes}
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return head + array.astype(array.dtype.newbyteorder("<")).tobytes(), headers


def parse_reply(status: int, data: bytes, json_length: str | None) -> np.ndarray:
    """The `logits` output of an OIP infer reply (JSON or binary)."""
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {data[:300]!r}")
    split = int(json_length) if json_length is not None else len(data)
    head = json.loads(data[:split])
    (out,) = [o for o in head["outputs"] if o["name"] == "logits"]
    dtype = {"FP32": "<f4", "INT8": "i1", "UINT8": "u1"}[out["datatype"]]
    if json_length is None:
        return np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
    return np.frombuffer(data[split:], dtype=dtype).reshape(out["shape"])


def measure_pair(
    http_call: Callable[[], object], bare_call: Callable[[], object], seconds: float
) -> tuple[list[float], list[float]]:
    """The HTTP request and the bare run, one each per round in a random order, for `seconds`."""
    samples: dict[str, list[float]] = {"http": [], "bare": []}
    calls = {"http": http_call, "bare": bare_call}
    order = list(calls)
    rng = random.Random(0)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(samples["http"]) < 30:
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            calls[name]()
            samples[name].append((time.perf_counter() - start) * 1000)
    return samples["http"], samples["bare"]


def main() -> None:
    parser = agent_bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per model and form")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        tmp_path = Path(tmp)
        work, threads, private_key, public_key = prepare_work(tmp_path, args.work, args.profile, args.threads)
        bundles = reference_bundles(work, args.profile, private_key)
        rows: list[str] = []
        loads = [machine_load()]
        with MosquittoProcess(tmp_path / "broker") as broker:
            agent = Agent(
                tmp_path / "agent", broker.url, public_key, args.profile, http_port=0, probation_s=0
            ).start()
            try:
                port = agent.http_port()
                for label, bundle in bundles.items():
                    deploy_bundle(broker.url, bundle, DEVICE, wait=True, timeout=120)
                    _, manifest = unpack(bundle, tmp_path / "unpacked", public_key)
                    bare = BareRuntime(tmp_path / "unpacked" / manifest.artifact, threads)
                    rows += measure_model(label, manifest, bare, port, args.seconds)
                    loads.append(machine_load())
            finally:
                agent.stop()

        print(f"# profile {args.profile}, {threads} runtime threads in the agent and the bare runtime")
        print(f"# machine: {'; '.join(loads)} (at start and after each model)")
        print(
            "| model | request form | requests | bare runtime p50 ms | HTTP p50 ms | added p50 ms "
            "| paired diff p50 ms | HTTP p99 ms | target | met |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            print(row)


def measure_model(label: str, manifest: Any, bare: BareRuntime, port: int, seconds: float) -> list[str]:
    path = f"/v2/models/{manifest.name}/infer"
    as_float, as_int8 = float_sample(manifest), artifact_sample(manifest)
    expected = bare.run(as_int8).copy()
    rows = []
    client = OipConnection(port)
    try:
        for form, array, binary in (
            ("JSON, FP32 float form", as_float, False),
            ("JSON, INT8 artifact form", as_int8, False),
            ("binary, FP32 float form", as_float, True),
            ("binary, INT8 artifact form", as_int8, True),
            ("GET /v2/health/live (no inference: the HTTP floor)", None, False),
        ):
            if array is None:
                request = client.build("GET", "/v2/health/live")
            else:
                body, headers = request_body(array, binary)
                request = client.build("POST", path, body, headers)
            if array is not None and array.dtype == np.int8:
                # same model, same input: the agent must answer exactly what the runtime does
                got = parse_reply(*client.exchange(request))
                if not np.array_equal(got, expected):
                    raise RuntimeError(f"{label} {form}: the agent answered {got}, the runtime {expected}")

            def http_call(request: bytes = request, infer: bool = array is not None) -> object:
                reply = client.exchange(request)
                return parse_reply(*reply) if infer else reply

            def bare_call() -> np.ndarray:
                return bare.run(as_int8)

            for _ in range(10):
                http_call()
                bare_call()
            http_ms, bare_ms = measure_pair(http_call, bare_call, seconds)
            web, base = Summary.of(http_ms), Summary.of(bare_ms)
            added = web.p50 - base.p50
            paired = float(np.median(np.subtract(http_ms, bare_ms)))
            met = "met" if added < TARGET_MS else "missed"
            if array is None:
                met = "(context)"
            rows.append(
                f"| {label} | {form} ({len(request) / 1024:.1f} KiB request) | {web.samples} "
                f"| {base.p50:.3f} | {web.p50:.3f} | {added:.3f} | {paired:.3f} | {web.p99:.3f} "
                f"| < {TARGET_MS} | {met} |"
            )
    finally:
        client.close()
    return rows


if __name__ == "__main__":
    main()
