"""One host-side MQTT connection: connect and wait for CONNACK, subscribe and publish waiting for the
broker's acknowledgements, and hand received messages to the caller without blocking paho's thread.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgefleet.contract import topics
from edgefleet.fleet.fleet_view import FleetView
from edgefleet.fleet.lifecycle import Opened
from edgefleet.mqtt import BrokerAddress, BrokerError, connect, new_client, refusal_hint

log = logging.getLogger(__name__)

MessageHandler = Callable[[mqtt.MQTTMessage], None]
PublishHandler = Callable[[int, ReasonCode], None]

# PUBLISH fixed header + topic + properties stay far below this; used to check the broker's packet limit.
_PACKET_OVERHEAD = 1024


class _AckBoard:
    """Acknowledgements by message id. paho may deliver a PUBACK/SUBACK before `publish()`/`subscribe()`
    has returned the id to us, so results that nobody waits for yet are kept until they are asked for.

    Message ids wrap after 65,535; an ack nobody took (a publish no one waited on) must not answer a later
    request that reuses its id. `issued(mid, since)` drops a result for `mid` that arrived before `since`,
    the moment just before the request that got `mid` went out, so only that request's own ack counts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._clock = clock
        self._results: dict[int, tuple[float, Any]] = {}

    def done(self, mid: int, result: Any) -> None:
        with self._cond:
            self._results[mid] = (self._clock(), result)
            self._cond.notify_all()

    def issued(self, mid: int, since: float) -> None:
        with self._cond:
            arrived = self._results.get(mid)
            if arrived is not None and arrived[0] < since:
                del self._results[mid]

    def take(self, mid: int, timeout: float, alive: Callable[[], str | None]) -> Any:
        """The ack for `mid`; raises BrokerError on timeout or when `alive()` reports a fatal problem."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._results:
                problem = alive()
                if problem:
                    raise BrokerError(problem)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self._cond.wait(min(remaining, 0.25))
            return self._results.pop(mid)[1]

    def now(self) -> float:
        return self._clock()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class BrokerSession(Opened):
    """A connected paho client with its own network thread.

    Received messages go to `on_message` if given, else into the `messages` queue. Subscriptions are
    remembered and made again after a reconnect (we connect with a clean start).
    """

    def __init__(
        self,
        broker_url: str,
        role: str,
        *,
        on_message: MessageHandler | None = None,
        on_publish: PublishHandler | None = None,
        connect_timeout: float = 10.0,
        ack_timeout: float = 30.0,
    ) -> None:
        self.address = BrokerAddress.parse(broker_url)
        self.client_id = f"edgefleet-{role}-{uuid.uuid4().hex[:12]}"
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.max_packet_size: int | None = None
        self.receive_maximum: int = 65535
        self._on_message_hook = on_message
        self._on_publish_hook = on_publish
        self._acks = _AckBoard()
        self._connected = threading.Event()
        self._fatal: str | None = None
        self._disconnected_reason: str | None = None
        self._subscriptions: list[tuple[str, SubscribeOptions]] = []
        self._sync_counter = itertools.count()
        self._sync_waiters: dict[bytes, threading.Event] = {}
        self._sync_topic = topics.sync(self.client_id)
        self._client = new_client(self.client_id)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_log = self._handle_log
        self._last_socket_error: str | None = None
        self._ever_connected = False
        self._loop_started = False

    # -- lifecycle ---------------------------------------------------------------------------------
    def open(self) -> BrokerSession:
        connect(self._client, self.address)
        self._client.loop_start()
        self._loop_started = True
        deadline = time.monotonic() + self.connect_timeout
        while not self._connected.wait(0.05):
            if self._fatal:
                self.close()
                raise BrokerError(self._fatal)
            if time.monotonic() > deadline:
                self.close()
                raise BrokerError(
                    f"the MQTT broker at {self.address} accepted the TCP connection but did not answer the "
                    f"MQTT 5 handshake within {self.connect_timeout:.0f} s; is it an MQTT 5 broker"
                    f"{'' if self.address.tls else ', or does that port want TLS (mqtts://)'}?"
                )
        # paho formats every packet's log line while on_log is set; it was only needed for the handshake.
        self._client.on_log = None
        return self

    def close(self) -> None:
        if self._loop_started:
            self._client.disconnect()
            self._client.loop_stop()
            self._loop_started = False

    # -- operations --------------------------------------------------------------------------------
    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK; a refused topic filter raises BrokerError."""
        wanted = [(topic, SubscribeOptions(qos=qos)) for topic in topics]
        if not wanted:
            return
        self._subscriptions.extend(wanted)
        since = self._acks.now()
        result, mid = self._client.subscribe(wanted)
        if mid is not None:
            self._acks.issued(mid, since)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"cannot subscribe at {self.address}: {mqtt.error_string(result)}")
        codes = self._take_ack(mid, f"subscription to {wanted[0][0]}")
        refused = [(topic, code) for (topic, _), code in zip(wanted, codes, strict=False) if code.is_failure]
        if refused:
            topic, code = refused[0]
            raise BrokerError(f"the broker at {self.address} refused the subscription to {topic}: {code}")

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        """Queue a publish and return its message id (wait for the PUBACK with `wait_published`)."""
        if self.max_packet_size is not None and len(payload) + _PACKET_OVERHEAD > self.max_packet_size:
            # paho does not enforce the broker's limit: an oversized publish would loop on reconnect.
            raise BrokerError(
                f"a {len(payload)}-byte message to {topic} exceeds the broker's maximum packet size "
                f"({self.max_packet_size} bytes)"
            )
        since = self._acks.now()
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BrokerError(f"cannot publish to {topic}: {mqtt.error_string(info.rc)}")
        self._acks.issued(info.mid, since)
        return info.mid

    def wait_published(self, mid: int, what: str) -> None:
        """Wait for the PUBACK of `mid`; a failure reason code (e.g. not authorized) raises BrokerError.

        Not available when the session was given its own `on_publish` handler.
        """
        code: ReasonCode = self._take_ack(mid, what)
        if code.is_failure:
            raise BrokerError(f"the broker at {self.address} refused {what}: {code}")

    def sync(self) -> None:
        """Return once every message the broker queued for us before this call has been received.

        A QoS 1 message to our own topic comes back after everything the broker sent us earlier (the
        retained messages of earlier subscriptions included), so its arrival is a barrier.
        """
        topic = self._sync_topic
        token = f"{next(self._sync_counter)}".encode()
        if not any(t == topic for t, _ in self._subscriptions):
            self.subscribe([topic])
        arrived = self._sync_waiters[token] = threading.Event()
        try:
            mid = self.publish(topic, token)
            if self._on_publish_hook is None:
                self.wait_published(mid, "the sync message")  # its ack is ours to collect
            if not arrived.wait(self.ack_timeout):
                raise BrokerError(
                    f"the broker at {self.address} did not deliver our own message back within "
                    f"{self.ack_timeout:.0f} s"
                )
        finally:
            del self._sync_waiters[token]

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- paho callbacks (network thread: never block here) -------------------------------------------
    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._fatal = (
                f"the MQTT broker at {self.address} refused the connection: {reason}{refusal_hint(reason)}"
            )
            self._acks.wake()
            return
        if properties is not None:
            self.max_packet_size = getattr(properties, "MaximumPacketSize", None)
            self.receive_maximum = getattr(properties, "ReceiveMaximum", 65535)
        if self._subscriptions:
            # A reconnect with a clean start lost them: subscribe again (no waiting on this thread).
            client.subscribe(list(self._subscriptions))
        self._disconnected_reason = None
        self._ever_connected = True
        self._connected.set()

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self._disconnected_reason = str(reason)
        if not self._ever_connected and self._fatal is None:
            # Closed before any CONNACK: a TLS-level refusal (e.g. a client certificate is required) or
            # not an MQTT 5 broker. Waiting for paho's reconnects would only hide the reason.
            why = self._last_socket_error or str(reason)
            hint = ""
            if self.address.tls and not self.address.security.cert_file:
                hint = "; if the broker requires client certificates, pass one with --cert/--key"
            self._fatal = (
                f"the MQTT broker at {self.address} closed the connection before accepting it ({why}){hint}"
            )
        self._acks.wake()

    def _handle_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._last_socket_error = text

    def _handle_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self._sync_topic:
            event = self._sync_waiters.get(bytes(message.payload))
            if event is not None:
                event.set()
            return
        if self._on_message_hook is not None:
            try:
                self._on_message_hook(message)
            except Exception:  # one bad handler must not kill the network loop
                log.exception("message handler failed on %s", message.topic)
        else:
            self.messages.put(message)

    def _handle_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties | None
    ) -> None:
        if self._on_publish_hook is not None:
            try:
                self._on_publish_hook(mid, reason)
            except Exception:
                log.exception("publish handler failed for message id %s", mid)
        else:
            self._acks.done(mid, reason)

    def _handle_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._acks.done(mid, reasons)

    def _take_ack(self, mid: int, what: str) -> Any:
        def alive() -> str | None:
            return self._fatal

        try:
            return self._acks.take(mid, self.ack_timeout, alive)
        except TimeoutError:
            state = (
                "the connection is up"
                if self.connected
                else f"the connection was lost ({self._disconnected_reason or 'no reason given'})"
            )
            raise BrokerError(
                f"the broker at {self.address} did not acknowledge {what} within {self.ack_timeout:.0f} s; "
                f"{state}"
            ) from None


def collect_device_messages(broker_url: str, client_name: str, listen_s: float, view: FleetView) -> str:
    """Feed every device's retained presence and status, then `listen_s` seconds of live telemetry, to
    `view`. Returns the broker address. Shared by `edgefleet status` and `edgefleet devices`."""
    with BrokerSession(broker_url, client_name) as session:
        session.subscribe([topics.ALL_ONLINE, topics.ALL_STATUS, topics.ALL_TELEMETRY])
        session.sync()
        deadline = time.monotonic() + max(0.0, listen_s)
        while True:
            remaining = deadline - time.monotonic()
            try:
                message = session.messages.get(timeout=max(0.0, min(remaining, 0.25)))
            except queue.Empty:
                if remaining <= 0:
                    break
                continue
            view.feed(message.topic, bytes(message.payload))
        return str(session.address)
