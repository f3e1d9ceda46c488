"""Inference requests over MQTT 5 request/response: decode the tensors, convert them to the artifact's
form, run the pinned model, and reply on the ResponseTopic with the CorrelationData echoed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from edgefleet.agent.log import EventLog
from edgefleet.agent.model_slot import LoadedModel, ModelSlot
from edgefleet.agent.session import Envelope
from edgefleet.agent.telemetry import RequestMetrics
from edgefleet.contract.errors import TensorError
from edgefleet.contract.messages import CONTENT_JSON, CONTENT_NPZ, ErrorReply
from edgefleet.contract.tensors import decode_tensors, encode_npz, from_artifact, to_artifact
from edgefleet.mqtt import publish_properties

log = EventLog("inference")
Publish = Callable[..., object]
NO_MODEL = "no model is active"
_MAX_ERROR_CHARS = 600


class RequestError(Exception):
    """A request we answer with an error reply."""


class InferenceService:
    def __init__(self, slot: ModelSlot, metrics: RequestMetrics, publish: Publish) -> None:
        self.slot = slot
        self.metrics = metrics
        self._publish = publish

    @staticmethod
    def compute(model: LoadedModel, payload: bytes, content_type: str | None) -> dict[str, np.ndarray]:
        """Decode, convert, run and convert back; TensorError for anything wrong with the request."""
        specs = model.manifest.inputs
        tensors = decode_tensors(payload, content_type, [s.name for s in specs])
        feeds: dict[str, np.ndarray] = {}
        as_float = False
        for spec in specs:
            feeds[spec.name], came_as_float = to_artifact(spec, tensors[spec.name])
            as_float = as_float or came_as_float
        try:
            results = model.run(feeds)
        except Exception as exc:  # runtimes raise their own types for inputs they cannot take
            raise TensorError(f"the model could not run on this input: {exc}") from exc
        return {
            spec.name: from_artifact(spec, results[spec.name], as_float) for spec in model.manifest.outputs
        }

    def handle(self, envelope: Envelope) -> None:
        response_topic = envelope.prop("ResponseTopic")
        correlation = envelope.prop("CorrelationData")
        content_type = envelope.prop("ContentType")
        if not response_topic:
            self.metrics.record(False, None)
            log.warning("request_without_response_topic", topic=envelope.topic, bytes=len(envelope.payload))
            return
        version = ""
        started = time.perf_counter()
        try:
            with self.slot.use() as model:
                if model is None:
                    raise RequestError(NO_MODEL)
                version = model.version
                outputs = self.compute(model, envelope.payload, content_type)
                body = encode_npz(outputs)
            latency_ms = (time.perf_counter() - started) * 1000
        except (RequestError, TensorError) as exc:
            self._reply_error(response_topic, correlation, version, str(exc))
            return
        except Exception as exc:
            log.exception("request_failed", exc)
            self._reply_error(
                response_topic, correlation, version, f"internal error: {type(exc).__name__}: {exc}"
            )
            return
        self.metrics.record(True, latency_ms)
        self._reply(response_topic, correlation, body, CONTENT_NPZ, "ok", version)

    def reply_busy(self, envelope: Envelope) -> None:
        self._refuse(envelope, "the agent is overloaded (request queue full); retry later")

    def reply_shutting_down(self, envelope: Envelope) -> None:
        self._refuse(envelope, "the agent is shutting down; retry later")

    def _refuse(self, envelope: Envelope, message: str) -> None:
        """Answer at once without queueing (called on the network thread: publishing only enqueues)."""
        response_topic = envelope.prop("ResponseTopic")
        self.metrics.record(False, None)
        if response_topic:
            body = ErrorReply(error=message).to_bytes()
            self._reply(response_topic, envelope.prop("CorrelationData"), body, CONTENT_JSON, "error", "")

    def _reply_error(self, topic: str, correlation: bytes | None, version: str, message: str) -> None:
        self.metrics.record(False, None)
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
