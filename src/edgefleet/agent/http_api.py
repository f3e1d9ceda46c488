"""The agent's local HTTP API: Open Inference Protocol v2 REST (the API of Triton and KServe, so their
clients can call the agent) and the Prometheus /metrics endpoint, on one stdlib ThreadingHTTPServer.

GET  /v2/health/live, /v2/health/ready, /v2
GET  /v2/models/{name}[/versions/{v}], .../ready
POST /v2/models/{name}[/versions/{v}]/infer
GET  /metrics
Tensor data as JSON or as Triton's binary tensor data extension (see oip.py). Errors are the OIP error
body {"error": "..."}: 400 for a bad request (shape, datatype, size, JSON), 404 for an unknown model or
path, 500 when the model failed on a valid request, 503 while no model is active, when overloaded or
shutting down.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from edgefleet import __version__
from edgefleet.agent import oip
from edgefleet.agent.inference import InferenceService, ModelRunError, RequestError, Unavailable, too_large
from edgefleet.agent.log import EventLog
from edgefleet.agent.model_slot import LoadedModel
from edgefleet.agent.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edgefleet.agent.request_memory import request_cost
from edgefleet.contract.errors import TensorError

log = EventLog("http")
JSON = "application/json"
SERVER_NAME = "edgefleet-agent"
IDLE_TIMEOUT_S = 30.0  # an idle keep-alive connection gives its thread back after this
# an oversized body up to this size is read and dropped, so the client gets our 400 rather than a reset
DISCARD_LIMIT = 64 * 1024 * 1024
_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?/?$"
)

OCTET_STREAM = "application/octet-stream"
HEADER_LENGTH = "Inference-Header-Content-Length"  # Triton's binary tensor data extension
Response = tuple[int, bytes, str, dict[str, str]]  # status, body, content type, extra headers


def _json(status: int, body: dict[str, Any]) -> Response:
    return status, json.dumps(body).encode(), JSON, {}


def _error(status: int, message: str) -> Response:
    return status, oip.error_body(message), JSON, {}


class _ClosingError(Exception):
    """The request cannot be read to its end: answer it and close the connection."""

    def __init__(self, response: Response) -> None:
        super().__init__(response[1].decode())
        self.response = response


class HttpApi:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        service: InferenceService,
        metrics_text: Callable[[], str],
        max_request_bytes: int,
        max_inflight: int,
        max_connections: int = 64,
    ) -> None:
        self.host = host
        self.max_connections = max_connections
        self.requested_port = port
        self.service = service
        self.metrics_text = metrics_text
        self.max_request_bytes = max_request_bytes
        self.closing = False
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._inflight = 0
        self._idle = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind and serve in a background thread; OSError when the address cannot be bound."""
        server_cls = _Server6 if ":" in self.host else _Server
        self._server = server_cls((self.host, self.requested_port), _Handler)
        self._server.api = self
        self._server.connection_slots = threading.BoundedSemaphore(self.max_connections)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True
        )
        self._thread.start()
        log.info(
            "http_listening", host=self.host, port=self.port, url=f"http://{self._url_host}:{self.port}/v2"
        )

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.requested_port

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, drain_s: float = 10.0) -> int:
        """Stop accepting, let in-flight requests finish (up to `drain_s`); returns how many did not."""
        self.closing = True
        if self._server is None:
            return 0
        self._server.shutdown()
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=drain_s)
            left = self._inflight
        self._server.server_close()
        log.info("http_stopped", unfinished=left)
        return left

    @contextmanager
    def _tracked(self) -> Iterator[None]:
        with self._idle:
            self._inflight += 1
        try:
            yield
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    # routing -------------------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, handler: _Handler) -> Response:
        path = urlsplit(raw_path).path
        if path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/", "/metrics"):
            if method != "GET":
                return _error(405, f"{path} takes GET, not {method}")
            return self._get_simple(path)
        match = _MODEL_PATH.match(path)
        if match is None:
            return _error(
                404,
                f"no endpoint {path}; this agent serves Open Inference Protocol v2 (/v2/...) and /metrics",
            )
        name = unquote(match["name"])
        version = unquote(match["version"]) if match["version"] else None
        action = match["action"]
        if action == "/infer":
            if method != "POST":
                return _error(405, f"{path} takes POST, not {method}")
            with self._tracked():
                return self._infer(handler, name, version)
        if method != "GET":
            return _error(405, f"{path} takes GET, not {method}")
        model = self.service.slot.current
        problem = self._mismatch(model, name, version)
        if problem is not None:
            return _error(404 if action is None else 400, problem)
        assert model is not None
        if action == "/ready":
            if self.closing:
                return _error(400, "the agent is shutting down")
            return _json(200, {"name": name, "ready": True})
        return _json(200, oip.model_metadata(model.manifest))

    def _get_simple(self, path: str) -> Response:
        if path == "/v2/health/live":
            return _json(200, {"live": True})
        if path == "/v2/health/ready":
            if self.closing:
                return _error(400, "the agent is shutting down")
            if self.service.slot.current is None:
                return _error(400, "no model is active")
            return _json(200, {"ready": True})
        if path == "/metrics":
            return 200, self.metrics_text().encode(), METRICS_CONTENT_TYPE, {}
        return _json(200, {"name": SERVER_NAME, "version": __version__, "extensions": oip.EXTENSIONS})

    @staticmethod
    def _mismatch(model: LoadedModel | None, name: str, version: str | None) -> str | None:
        if model is None:
            return f"model '{name}' is not loaded: no model is active"
        active = f"this agent serves '{model.manifest.name}' version '{model.version}'"
        if name != model.manifest.name:
            return f"model '{name}' is not loaded; {active}"
        if version is not None and version != model.version:
            return f"model '{name}' version '{version}' is not loaded; {active}"
        return None

    def _infer(self, handler: _Handler, name: str, version: str | None) -> Response:
        if self.closing:
            self.service.count_refused()
            return _error(503, "the agent is shutting down; retry later")
        if not self._slots.acquire(blocking=False):
            self.service.count_refused()
            return _error(503, "the agent is overloaded (too many requests in flight); retry later")
        try:
            try:
                body, header_length, cost = self._read_within_memory(handler)
            except _ClosingError:
                self.service.count_refused()
                raise
            try:
                return self._serve(body, header_length, name, version)
            finally:
                self.service.memory.release(cost)
        finally:
            self._slots.release()

    def _read_within_memory(self, handler: _Handler) -> tuple[bytes, int | None, int]:
        """Reserve what the request will hold (from its declared sizes), then read its body; returns the
        body, where its JSON ends, and the reservation. A body that cannot fit is dropped unread with a
        client error."""
        length = handler.declared_length(self.max_request_bytes)
        header_length = handler.json_header_length()
        json_bytes = length if header_length is None else min(header_length, length)
        cost = request_cost(length - json_bytes, json_bytes)
        memory = self.service.memory
        refusal = memory.reserve(cost, "this request")
        if refusal is not None:
            handler.refuse_body(length, 503 if refusal.retry else 400, refusal.message)
        try:
            return handler.read_declared(length), header_length, cost
        except BaseException:
            memory.release(cost)
            raise

    def _serve(self, body: bytes, header_length: int | None, name: str, version: str | None) -> Response:
        def work(model: LoadedModel) -> tuple[bytes, int | None]:
            problem = self._mismatch(model, name, version)
            if problem is not None:
                raise oip.OipError(problem, 404)
            request = oip.parse_request(body, header_length)
            arrays = oip.input_arrays(request, model.manifest.inputs)
            names = oip.requested_outputs(request, model.manifest.outputs)
            outputs = self.service.compute_tensors(model, arrays)
            binary = oip.binary_outputs(request, names)
            return oip.infer_response(model.manifest.name, model.version, request.id, outputs, names, binary)

        try:
            payload, json_length = self.service.serve(work)
        except oip.OipError as exc:
            return _error(exc.status, str(exc))
        except Unavailable as exc:
            return _error(503, str(exc))
        except ModelRunError as exc:  # a valid request the model failed on: the server's error
            return _error(500, str(exc))
        except (RequestError, TensorError) as exc:
            return _error(400, str(exc))
        if json_length is None:
            return 200, payload, JSON, {}
        return 200, payload, OCTET_STREAM, {HEADER_LENGTH: str(json_length)}


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most `connection_slots` of them: a connection over the cap gets a
    JSON 503 and is closed at once (idle keep-alive connections must not take every thread and file
    descriptor of the device)."""

    daemon_threads = True
    request_queue_size = 128
    api: HttpApi
    connection_slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connection_slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connection_slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connection_slots.release()

    def _refuse(self, request: socket.socket) -> None:
        status, body, _, _ = _error(503, f"too many connections (at most {self.api.max_connections}); retry")
        head = (
            f"HTTP/1.1 {status} Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            request.settimeout(1.0)
            request.sendall(head.encode() + body)
        except OSError:
            pass
        self.shutdown_request(request)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client pays the TCP handshake once, not per request
    server_version = SERVER_NAME
    sys_version = ""
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # headers and body go out as two writes; Nagle would hold the second
    server: _Server
    body_read = False  # set per request: whether its body was read (or dropped) to its end

    def json_header_length(self) -> int | None:
        """Where the JSON ends in a body with binary tensor data (None: all JSON)."""
        text = self.headers.get(HEADER_LENGTH)
        if text is None:
            return None
        if not text.strip().isdigit():
            raise _ClosingError(_error(400, f"{HEADER_LENGTH} must be a byte count, got {text!r}"))
        return int(text)

    def declared_length(self, limit: int) -> int:
        """The body's Content-Length, checked (identity encoding, within `limit`) before it is read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _ClosingError(_error(411, "chunked request bodies are not supported; send Content-Length"))
        text = self.headers.get("Content-Length")
        if text is None or not text.strip().isdigit():
            raise _ClosingError(_error(411, "a request body with a valid Content-Length is required"))
        length = int(text)
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            unsupported = f"Content-Encoding {encoding} is not supported; send the body as is"
            self.refuse_body(length, 400, unsupported)
        if length > limit:
            self.refuse_body(length, 400, too_large(length, limit, "request body"))
        return length

    def read_declared(self, length: int) -> bytes:
        self.body_read = True
        try:
            body = self.rfile.read(length)
        except OSError as exc:  # the client stalled past the socket timeout, or went away
            raise _ClosingError(_error(400, f"the request body did not arrive ({exc})")) from exc
        if len(body) != length:
            raise _ClosingError(_error(400, f"the request body has {len(body)} of its {length} bytes"))
        return body

    def refuse_body(self, length: int, status: int, message: str) -> NoReturn:
        """Answer without reading the body into memory (it is read and dropped), then close."""
        self._discard(length)
        raise _ClosingError(_error(status, message))

    def _discard(self, length: int) -> None:
        """Read and drop a body we refuse, so the client gets our reply rather than a connection reset."""
        left = min(length, DISCARD_LIMIT)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1024 * 1024))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass  # the connection is closed after the reply anyway

    def _body_left_unread(self) -> bool:
        """A body the reply did not need (a 404 or 405 to a POST...): its bytes would be read as the next
        request on this keep-alive connection, so the connection is closed after the reply."""
        if self.body_read:
            return False
        length = self.headers.get("Content-Length", "0").strip()
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower() or length not in ("", "0")

    def _dispatch(self, method: str) -> None:
        api = self.server.api
        self.body_read = False
        close = False
        try:
            status, body, content_type, headers = api.handle(method, self.path, self)
        except _ClosingError as exc:
            (status, body, content_type, headers), close = exc.response, True
        except Exception as exc:
            log.exception("http_failed", exc, method=method, path=self.path)
            status, body, content_type, headers = _error(500, f"internal error: {type(exc).__name__}: {exc}")
        close = close or self._body_left_unread()
        if status >= 400:
            log.debug("http_error", method=method, path=self.path, status=status)
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            if close or api.closing:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if method != "HEAD":  # a HEAD reply has the headers of the reply, never a body
                self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client went away; nothing to tell it

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # every other method gets the documented JSON 405 from the router, not the stdlib's HTML 501 page
    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http_request", client=self.client_address[0], line=format % args)
