"""The agent's MQTT 5 connection: persistent session, last will, subscriptions restored on reconnect,
and messages routed by topic filter to sinks that only enqueue (paho's network thread never waits).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgefleet.agent.log import EventLog
from edgefleet.mqtt import BrokerAddress, BrokerError, connect, new_client, refusal_hint

log = EventLog("session")


@dataclass(frozen=True)
class Envelope:
    """One received message, handed from the network thread to a worker."""

    route: str
    topic: str
    payload: bytes
    properties: Properties | None
    retain: bool

    def prop(self, name: str) -> Any:
        return getattr(self.properties, name, None) if self.properties is not None else None


Sink = Callable[[Envelope], object]  # what it returns is ignored


class MqttSession:
    def __init__(
        self,
        client_id: str,
        address: BrokerAddress,
        *,
        keepalive_s: int,
        session_expiry_s: int,
        will: tuple[str, bytes],
        max_packet_bytes: int | None = None,
    ) -> None:
        self.address = address
        self._keepalive = keepalive_s
        self._session_expiry = session_expiry_s
        self._max_packet_bytes = max_packet_bytes
        self.client = new_client(client_id)
        self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self._exact: dict[str, tuple[str, Sink]] = {}
        self._wildcard: list[tuple[str, str, Sink]] = []
        self._subscriptions: set[str] = set()
        self._lock = threading.Lock()
        self._connack = threading.Event()
        self._connack_reason: str | None = None
        self._connections = 0
        self.connected = False
        self.on_connected: Callable[[], None] | None = None

    # routing -------------------------------------------------------------------------------------
    def route(self, name: str, topic_filter: str, sink: Sink) -> None:
        if "+" in topic_filter or "#" in topic_filter:
            self._wildcard.append((topic_filter, name, sink))
        else:
            self._exact[topic_filter] = (name, sink)

    def _find(self, topic: str) -> tuple[str, Sink] | None:
        if topic in self._exact:
            return self._exact[topic]
        for topic_filter, name, sink in self._wildcard:
            if mqtt.topic_matches_sub(topic_filter, topic):
                return name, sink
        return None

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            found = self._find(msg.topic)
            if found is None:
                log.debug("message_unrouted", topic=msg.topic)
                return
            name, sink = found
            sink(
                Envelope(
                    name, msg.topic, bytes(msg.payload), getattr(msg, "properties", None), bool(msg.retain)
                )
            )
        except Exception as exc:
            log.exception("dispatch_failed", exc, topic=getattr(msg, "topic", None))

    # subscriptions -------------------------------------------------------------------------------
    def subscribe(self, topic_filter: str, resend_retained: bool = True) -> None:
        """Subscribe now if connected, and again after every reconnect."""
        with self._lock:
            self._subscriptions.add(topic_filter)
        if self.connected:
            self._send_subscribe(topic_filter, 0 if resend_retained else 1)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._subscriptions.discard(topic_filter)
        if self.connected:
            self.client.unsubscribe(topic_filter)

    def _send_subscribe(self, topic_filter: str, retain_handling: int) -> None:
        result, _ = self.client.subscribe(
            topic_filter, options=SubscribeOptions(qos=1, retainHandling=retain_handling)
        )
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.warning("subscribe_failed", topic=topic_filter, code=mqtt.error_string(result))

    # connection ----------------------------------------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        try:
            if reason.is_failure:
                self._connack_reason = str(reason)
                log.error("broker_refused", broker=self.address, reason=str(reason))
                self._connack.set()
                return
            self.connected = True
            self._connections += 1
            session_present = bool(getattr(flags, "session_present", False))
            # A fresh process needs the retained messages (desired state) again; after a reconnect with
            # the session kept, retain-handling 1 avoids having them all resent.
            retain_handling = 1 if session_present and self._connections > 1 else 0
            with self._lock:
                subscriptions = sorted(self._subscriptions)
            for topic_filter in subscriptions:
                self._send_subscribe(topic_filter, retain_handling)
            log.info("connected", broker=self.address, session_present=session_present, n=self._connections)
            if self.on_connected is not None:
                self.on_connected()
        except Exception as exc:
            log.exception("on_connect_failed", exc)
        finally:
            self._connack.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected, self.connected = self.connected, False
        if was_connected:
            log.warning("broker_disconnected", broker=self.address, reason=str(reason))

    def start(self, timeout: float = 10.0) -> None:
        """Connect and wait for the CONNACK; BrokerError when the broker is unreachable or refuses us."""
        connect(
            self.client,
            self.address,
            keepalive=self._keepalive,
            clean_start=False,
            session_expiry_s=self._session_expiry,
            max_packet_bytes=self._max_packet_bytes,
        )
        self.client.loop_start()
        if not self._connack.wait(timeout) or self._connack_reason is not None:
            self.client.loop_stop()
            why = self._connack_reason or f"no CONNACK within {timeout:.0f} s"
            raise BrokerError(
                f"the MQTT broker at {self.address} did not accept the connection ({why}){refusal_hint(why)}"
            )

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> mqtt.MQTTMessageInfo | None:
        try:
            return self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except (ValueError, RuntimeError) as exc:
            log.warning("publish_failed", topic=topic, error=str(exc))
            return None

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
