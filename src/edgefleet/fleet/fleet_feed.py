"""One broker connection that feeds device messages into a FleetMonitor (and telemetry into a
HistoryRecorder): what `watch` and `exporter` listen with.

Telemetry is the volume (one message per device per interval); with a share group it is taken through an
MQTT 5 shared subscription (`$share/GROUP/...`), so several exporters split it between them. Presence,
status and events stay ordinary subscriptions: they are few, and retained messages are not sent to shared
subscriptions, so every member needs its own copy of them.
"""

from __future__ import annotations

import re
import time

import paho.mqtt.client as mqtt

from edgefleet.contract import topics
from edgefleet.contract.errors import EdgefleetError
from edgefleet.fleet.lifecycle import Opened
from edgefleet.fleet.monitor import FleetMonitor
from edgefleet.fleet.session import BrokerSession
from edgefleet.fleet.telemetry_store import HistoryRecorder

_SHARE_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def shared(topic_filter: str, group: str | None) -> str:
    """The MQTT 5 shared-subscription form of `topic_filter` for `group` (unchanged without a group)."""
    if group is None:
        return topic_filter
    if not _SHARE_GROUP.match(group):
        raise EdgefleetError(
            f"share group {group!r} is not valid: use 1-64 characters from A-Z a-z 0-9 _ . - (no / + #)"
        )
    return f"$share/{group}/{topic_filter}"


class FleetFeed(Opened):
    def __init__(
        self,
        broker_url: str,
        role: str,
        monitor: FleetMonitor,
        *,
        recorder: HistoryRecorder | None = None,
        share_group: str | None = None,
    ) -> None:
        self.monitor = monitor
        self.recorder = recorder
        self.telemetry_filter = shared(topics.ALL_TELEMETRY, share_group)
        self.session = BrokerSession(broker_url, role, on_message=self._on_message)

    @property
    def address(self) -> str:
        return str(self.session.address)

    @property
    def connected(self) -> bool:
        return self.session.connected

    def open(self) -> FleetFeed:
        self.session.open()
        try:
            self.session.subscribe([topics.ALL_ONLINE, topics.ALL_STATUS, topics.ALL_EVENTS])
            self.session.subscribe([self.telemetry_filter])
        except Exception:
            self.session.close()
            raise
        return self

    def close(self) -> None:
        self.session.close()

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        # paho's network thread: parse and update memory only; the recorder queues without waiting.
        telemetry = self.monitor.feed(message.topic, bytes(message.payload))
        # a retained report is the latest one again (sent when we subscribed): the history has it already
        if telemetry is not None and self.recorder is not None and not message.retain:
            self.recorder.record(telemetry, time.time())
