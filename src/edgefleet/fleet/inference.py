"""Host-side inference over MQTT 5 request/response: one connection, many requests in flight to any
number of devices, each a Future resolved by the reply with the same correlation data.
"""

from __future__ import annotations

import heapq
import itertools
import json
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.contract import topics
from edgefleet.contract.errors import TensorError
from edgefleet.contract.messages import CONTENT_JSON, CONTENT_NPY, CONTENT_NPZ, ErrorReply
from edgefleet.contract.tensors import decode_npz, encode_npy, encode_npz
from edgefleet.fleet.errors import InferenceError, InferenceTimeout
from edgefleet.fleet.lifecycle import Opened
from edgefleet.fleet.session import BrokerSession
from edgefleet.mqtt import publish_properties

Inputs = Union[np.ndarray, Mapping[str, np.ndarray]]  # noqa: UP007 - a runtime alias on Python 3.10
Outputs = dict[str, np.ndarray]

# PUBACK reason 16: the broker had no subscriber for the request, so no reply can ever come.
_NO_MATCHING_SUBSCRIBERS = 16


@dataclass
class _Pending:
    device_id: str
    future: Future[Outputs]
    deadline: float
    timeout: float
    mid: int | None = None


@dataclass
class _Dispatcher:
    """State of the requests in flight, owned by one thread: paho's callbacks and `submit` only post
    events to its queue, so nothing blocks the network thread and no locks are needed."""

    events: queue.Queue[tuple] = field(default_factory=queue.Queue)
    pending: dict[bytes, _Pending] = field(default_factory=dict)
    by_mid: dict[int, bytes] = field(default_factory=dict)
    early_acks: dict[int, ReasonCode] = field(default_factory=dict)
    deadlines: list[tuple[float, bytes]] = field(default_factory=list)
    late_replies: int = 0

    def run(self) -> None:
        while True:
            wait = None
            if self.deadlines:
                wait = max(0.0, self.deadlines[0][0] - time.monotonic())
            try:
                event = self.events.get(timeout=wait)
            except queue.Empty:
                event = None
            if event is not None:
                if event[0] == "stop":
                    self._fail_all(event[1])
                    return
                getattr(self, f"_on_{event[0]}")(*event[1:])
            self._expire()

    def _on_register(self, corr: bytes, pending: _Pending) -> None:
        self.pending[corr] = pending
        heapq.heappush(self.deadlines, (pending.deadline, corr))

    def _on_sent(self, corr: bytes, mid: int) -> None:
        pending = self.pending.get(corr)
        if pending is None:
            return
        pending.mid = mid
        self.by_mid[mid] = corr
        if mid in self.early_acks:
            self._on_puback(mid, self.early_acks.pop(mid))

    def _on_puback(self, mid: int, reason: ReasonCode) -> None:
        corr = self.by_mid.pop(mid, None)
        if corr is None:
            # The PUBACK overtook `publish()` returning its message id; match it when _on_sent comes.
            if len(self.early_acks) < 10_000:
                self.early_acks[mid] = reason
            return
        pending = self.pending.get(corr)
        if pending is None:
            return
        if reason.is_failure:
            self._finish(
                corr, error=InferenceError(pending.device_id, f"the broker refused the request: {reason}")
            )
        elif reason.value == _NO_MATCHING_SUBSCRIBERS:
            self._finish(
                corr,
                error=InferenceError(
                    pending.device_id,
                    f"nobody listens on {topics.infer(pending.device_id)}: the device is offline or not "
                    "running an agent",
                ),
            )

    def _on_fail(self, corr: bytes, error: BaseException) -> None:
        self._finish(corr, error=error)

    def _on_reply(self, message: mqtt.MQTTMessage) -> None:
        props = message.properties
        corr = bytes(getattr(props, "CorrelationData", b"") or b"")
        pending = self.pending.get(corr)
        if pending is None:
            self.late_replies += 1  # timed out already, or not ours
            return
        user = dict(getattr(props, "UserProperty", None) or [])
        content_type = getattr(props, "ContentType", None)
        payload = bytes(message.payload)
        if user.get("status") == "error" or content_type == CONTENT_JSON:
            self._finish(corr, error=InferenceError(pending.device_id, _error_text(payload)))
            return
        try:
            outputs = decode_npz(payload)
        except TensorError as exc:
            self._finish(corr, error=InferenceError(pending.device_id, f"unreadable reply ({exc})"))
            return
        self._finish(corr, result=outputs)

    def _expire(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, corr = heapq.heappop(self.deadlines)
            pending = self.pending.get(corr)
            if pending is not None and pending.deadline <= now:
                self._finish(
                    corr,
                    error=InferenceTimeout(
                        pending.device_id,
                        f"no reply within {pending.timeout:g} s",
                    ),
                )

    def _finish(
        self, corr: bytes, *, result: Outputs | None = None, error: BaseException | None = None
    ) -> None:
        pending = self.pending.pop(corr, None)
        if pending is None:
            return
        if pending.mid is not None:
            self.by_mid.pop(pending.mid, None)
        try:
            if error is not None:
                pending.future.set_exception(error)
            else:
                pending.future.set_result(result or {})
        except InvalidStateError:
            pass  # cancelled by the caller

    def _fail_all(self, reason: str) -> None:
        for corr in list(self.pending):
            self._finish(corr, error=InferenceError(self.pending[corr].device_id, reason))


def _error_text(payload: bytes) -> str:
    try:
        return ErrorReply.model_validate_json(payload).error
    except ValueError:
        try:
            return json.dumps(json.loads(payload))
        except ValueError:
            return payload[:200].decode("utf-8", "replace") or "error reply without a body"


def encode_request(inputs: Inputs) -> tuple[bytes, str]:
    """The request body and its content type: one array -> .npy, a dict of named arrays -> .npz."""
    if isinstance(inputs, np.ndarray):
        _check_plain(inputs, "input")
        return encode_npy(inputs), CONTENT_NPY
    if not inputs:
        raise TensorError("no inputs given")
    for name, array in inputs.items():
        _check_plain(np.asarray(array), f"input '{name}'")
    return encode_npz({name: np.asarray(a) for name, a in inputs.items()}), CONTENT_NPZ


def _check_plain(array: np.ndarray, what: str) -> None:
    if array.dtype.hasobject:
        raise TensorError(f"{what}: object arrays cannot be sent (the device refuses pickled data)")


class InferenceClient(Opened):
    """Send inference requests to devices and get their outputs back.

    >>> with InferenceClient("mqtt://127.0.0.1:1883") as client:
    ...     logits = client.infer("pi-kitchen", image)["logits"]
    """

    def __init__(self, broker_url: str, *, default_timeout: float = 10.0) -> None:
        self.default_timeout = default_timeout
        self._dispatcher = _Dispatcher()
        events = self._dispatcher.events
        self._session = BrokerSession(
            broker_url,
            "infer",
            on_message=lambda message: events.put(("reply", message)),
            on_publish=lambda mid, reason: events.put(("puback", mid, reason)),
        )
        self.client_id = self._session.client_id
        self.reply_topic = topics.replies(self.client_id)
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        self._thread: threading.Thread | None = None
        self._closed = False

    def open(self) -> InferenceClient:
        self._session.open()
        self._thread = threading.Thread(target=self._dispatcher.run, name="edgefleet-infer", daemon=True)
        self._thread.start()
        self._session.subscribe([self.reply_topic])
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._session.close()
        if self._thread is not None:
            self._dispatcher.events.put(("stop", "the inference client was closed"))
            self._thread.join(timeout=5)

    def submit(self, device_id: str, inputs: Inputs, timeout: float | None = None) -> Future[Outputs]:
        """Send one request; the Future resolves to the outputs or raises InferenceError."""
        if self._thread is None or self._closed:
            raise InferenceError(device_id, "the inference client is not open (use it as a context manager)")
        topic = topics.infer(device_id)
        body, content_type = encode_request(inputs)
        timeout = self.default_timeout if timeout is None else timeout
        corr = f"{self._prefix}-{next(self._ids)}".encode()
        future: Future[Outputs] = Future()
        future.set_running_or_notify_cancel()
        self._dispatcher.events.put(
            ("register", corr, _Pending(device_id, future, time.monotonic() + timeout, timeout))
        )
        props = publish_properties(
            ResponseTopic=self.reply_topic, CorrelationData=corr, ContentType=content_type
        )
        try:
            mid = self._session.publish(topic, body, qos=1, properties=props)
        except Exception as exc:
            self._dispatcher.events.put(("fail", corr, InferenceError(device_id, str(exc))))
        else:
            self._dispatcher.events.put(("sent", corr, mid))
        return future

    def infer(self, device_id: str, inputs: Inputs, timeout: float | None = None) -> Outputs:
        """Send one request and wait for its outputs."""
        return self.submit(device_id, inputs, timeout).result()

    @property
    def late_replies(self) -> int:
        """Replies that arrived after their request had timed out (or were not ours)."""
        return self._dispatcher.late_replies
