"""A minimal Open Inference Protocol v2 REST client (what tritonclient/KServe clients send, over plain
http.client), an agent config with the HTTP API on, and finding the port an agent bound."""

from __future__ import annotations

import http.client
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from agent_helpers import AgentProcess, Keys, agent_config

_OIP_DATATYPE = {"float32": "FP32", "float64": "FP64", "int8": "INT8", "uint8": "UINT8", "int32": "INT32"}


def http_agent_config(workdir: Path, broker_url: str, keys: Keys, **extra: object) -> dict[str, object]:
    """The agent config of agent_helpers with the HTTP API on an OS-chosen loopback port."""
    return agent_config(workdir, broker_url, keys, http_port=0, **extra)


def wait_http_port(process: AgentProcess, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"event=http_listening host=\S+ port=(\d+)", process.log())
        if found:
            return int(found.group(1))
        assert process.alive(), f"agent exited:\n{process.log()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"the agent did not log http_listening:\n{process.log()[-3000:]}")


def oip_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": _OIP_DATATYPE[array.dtype.name],
        "data": array.ravel().tolist(),
    }


class OipClient:
    """One keep-alive connection; reconnects when the server closed it (e.g. after a refused body)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 20) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
        except (http.client.HTTPException, ConnectionError):
            self.close()
            raise
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        return response.status, data, response

    def get(self, path: str) -> tuple[int, Any]:
        status, data, response = self.request("GET", path)
        is_json = response.getheader("Content-Type", "").startswith("application/json")
        return status, json.loads(data) if is_json else data.decode()

    def post_json(self, path: str, body: bytes) -> tuple[int, Any]:
        status, data, _ = self.request("POST", path, body, {"Content-Type": "application/json"})
        return status, json.loads(data)

    def infer(
        self, model: str, inputs: dict[str, np.ndarray], version: str | None = None, **fields: Any
    ) -> tuple[int, Any]:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        body = {"inputs": [oip_tensor(name, array) for name, array in inputs.items()], **fields}
        return self.post_json(path, json.dumps(body).encode())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def output_array(reply: dict[str, Any], name: str) -> np.ndarray:
    (out,) = [o for o in reply["outputs"] if o["name"] == name]
    dtype = {"FP32": np.float32, "INT8": np.int8, "UINT8": np.uint8}[out["datatype"]]
    return np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
