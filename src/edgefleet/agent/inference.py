"""The serving path shared by both inference APIs: pin the active model, convert the request tensors to the
artifact's form, run, convert back, and count the request in the metrics. The MQTT 5 request/response
API lives here too (replies on the ResponseTopic with the CorrelationData echoed); the HTTP API is
http_api.py.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np

from edgefleet.agent.log import EventLog
from edgefleet.agent.model_slot import LoadedModel, ModelSlot
from edgefleet.agent.request_memory import RequestMemory, request_cost
from edgefleet.agent.session import Envelope
from edgefleet.agent.telemetry import RequestMetrics
from edgefleet.contract.errors import ClientError, TensorError
from edgefleet.contract.messages import CONTENT_JSON, CONTENT_NPZ, ErrorReply
from edgefleet.contract.tensors import decode_tensors, encode_npz, from_artifact, to_artifact
from edgefleet.mqtt import publish_properties

log = EventLog("inference")
Publish = Callable[..., object]
T = TypeVar("T")
NO_MODEL = "no model is active"
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_REQUEST_MEMORY = 128 * 1024 * 1024
_MAX_ERROR_CHARS = 600


class RequestError(Exception):
    """A request we answer with an error reply."""


class Unavailable(RequestError):
    """The request was fine but cannot be served now (no model, overloaded, shutting down): retry later."""


class ModelRunError(TensorError):
    """The runtime raised on an input that passed validation: the model's failure, not the client's."""


def is_client_error(exc: BaseException) -> bool:
    """Errors the client caused or that refused it (bad input, no model, overloaded): never the model's.
    A runtime raising on a validated input (ModelRunError) or anything unexpected counts against it."""
    return isinstance(exc, (RequestError, ClientError)) and not isinstance(exc, ModelRunError)


def too_large(size: int, limit: int, what: str = "request payload") -> str:
    return (
        f"{what} is {size} bytes, more than this agent's limit of {limit} bytes "
        "(max_request_bytes in the agent config); send a smaller batch"
    )


def _npz_content_size(payload: bytes, content_type: str | None) -> int:
    """Bytes an .npz payload expands to (its members' declared sizes, which zipfile enforces); 0 otherwise."""
    if not (content_type == CONTENT_NPZ or (content_type is None and payload[:2] == b"PK")):
        return 0
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError):
        return 0  # decode_tensors reports the bad archive


class InferenceService:
    def __init__(
        self,
        slot: ModelSlot,
        metrics: RequestMetrics,
        publish: Publish,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        memory: RequestMemory | None = None,
    ) -> None:
        self.slot = slot
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.memory = memory if memory is not None else RequestMemory(DEFAULT_REQUEST_MEMORY)
        self._publish = publish

    # the serving path ----------------------------------------------------------------------------
    @staticmethod
    def compute_tensors(model: LoadedModel, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Convert to the artifact's form, run, convert back; TensorError for anything wrong with input."""
        feeds: dict[str, np.ndarray] = {}
        as_float = False
        for spec in model.manifest.inputs:
            feeds[spec.name], came_as_float = to_artifact(spec, tensors[spec.name])
            as_float = as_float or came_as_float
        try:
            results = model.run(feeds)
        except Exception as exc:  # runtimes raise their own types for inputs they cannot take
            raise ModelRunError(f"the model could not run on this input: {exc}") from exc
        return {
            spec.name: from_artifact(spec, results[spec.name], as_float) for spec in model.manifest.outputs
        }

    @staticmethod
    def compute(
        model: LoadedModel,
        payload: bytes,
        content_type: str | None,
        max_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> dict[str, np.ndarray]:
        """Decode an .npy/.npz request body (within `max_bytes`, also once unpacked) and compute it."""
        if len(payload) > max_bytes:
            raise TensorError(too_large(len(payload), max_bytes))
        unpacked = _npz_content_size(payload, content_type)
        if unpacked > max_bytes:
            raise TensorError(too_large(unpacked, max_bytes, "the unpacked .npz payload"))
        tensors = decode_tensors(payload, content_type, model.input_names)
        return InferenceService.compute_tensors(model, tensors)

    def serve(self, work: Callable[[LoadedModel], T]) -> T:
        """Run `work` on the active model, pinned so a swap cannot close it underneath, and count the
        request: ok with its serving time, or an error when `work` raises (the exception propagates)."""
        started = time.perf_counter()
        # pin/unpin rather than slot.use(): a generator-based context manager costs on every request
        model = self.slot.pin()
        try:
            if model is None:
                raise Unavailable(NO_MODEL)
            result = work(model)
        except BaseException as exc:
            self.metrics.record(False, None, client_error=is_client_error(exc))
            raise
        finally:
            self.slot.unpin(model)
        self.metrics.record(True, (time.perf_counter() - started) * 1000)
        return result

    def count_refused(self) -> None:
        """A request answered at once without being served (overloaded, shutting down, too large)."""
        self.metrics.record(False, None, client_error=True)

    # MQTT request/response -----------------------------------------------------------------------
    def handle(self, envelope: Envelope) -> None:
        """Serve a request admitted by `admit` and give its memory back."""
        try:
            self._handle(envelope)
        finally:
            self.release(envelope)

    def _handle(self, envelope: Envelope) -> None:
        response_topic = envelope.prop("ResponseTopic")
        correlation = envelope.prop("CorrelationData")
        content_type = envelope.prop("ContentType")
        if not response_topic:
            self.count_refused()
            log.warning("request_without_response_topic", topic=envelope.topic, bytes=len(envelope.payload))
            return
        pinned: list[str] = []

        def work(model: LoadedModel) -> bytes:
            pinned.append(model.version)
            return encode_npz(self.compute(model, envelope.payload, content_type, self.max_request_bytes))

        try:
            body = self.serve(work)
        except (RequestError, TensorError) as exc:
            self._reply_error(response_topic, correlation, "".join(pinned), str(exc))
            return
        except Exception as exc:
            log.exception("request_failed", exc)
            self._reply_error(
                response_topic, correlation, "".join(pinned), f"internal error: {type(exc).__name__}: {exc}"
            )
            return
        self._reply(response_topic, correlation, body, CONTENT_NPZ, "ok", pinned[0])

    def admit(self, envelope: Envelope) -> bool:
        """On the network thread, before queueing: reserve the request's memory (True), or answer it at
        once (False) when it is over the size limit or cannot fit in the request memory, ever or now."""
        size = len(envelope.payload)
        if size > self.max_request_bytes:
            refusal = too_large(size, self.max_request_bytes)
        else:
            refused = self.memory.reserve(request_cost(size), "this request")
            if refused is None:
                return True
            refusal = refused.message
        log.info("request_rejected", reason=refusal.split(" (")[0], bytes=size)
        self._refuse(envelope, refusal)
        return False

    def release(self, envelope: Envelope) -> None:
        """Give back what `admit` reserved for this request."""
        self.memory.release(request_cost(len(envelope.payload)))

    def reply_busy(self, envelope: Envelope) -> None:
        self._refuse(envelope, "the agent is overloaded (request queue full); retry later")

    def reply_shutting_down(self, envelope: Envelope) -> None:
        self._refuse(envelope, "the agent is shutting down; retry later")

    def _refuse(self, envelope: Envelope, message: str) -> None:
        """Answer at once without queueing (called on the network thread: publishing only enqueues)."""
        response_topic = envelope.prop("ResponseTopic")
        self.count_refused()
        if response_topic:
            body = ErrorReply(error=message).to_bytes()
            current = self.slot.current  # the model that would have served it ("" when none is active)
            version = current.version if current is not None else ""
            correlation = envelope.prop("CorrelationData")
            self._reply(response_topic, correlation, body, CONTENT_JSON, "error", version)

    def _reply_error(self, topic: str, correlation: bytes | None, version: str, message: str) -> None:
        if len(message) > _MAX_ERROR_CHARS:
            message = message[:_MAX_ERROR_CHARS] + "..."
        log.info("request_rejected", reason=message)
        self._reply(topic, correlation, ErrorReply(error=message).to_bytes(), CONTENT_JSON, "error", version)

    def _reply(
        self, topic: str, correlation: bytes | None, body: bytes, content_type: str, status: str, version: str
    ) -> None:
        fields: dict[str, object] = {
            "ContentType": content_type,
            "UserProperty": [("status", status), ("model_version", version)],
        }
        if correlation is not None:
            fields["CorrelationData"] = correlation
        if "+" in topic or "#" in topic:
            log.warning("bad_response_topic", response_topic=topic)
            return
        self._publish(topic, body, 1, False, publish_properties(**fields))
