"""The one fold of what devices publish (presence, status, telemetry, events) into per-device state. `status`,
`devices`, `deploy`, rollouts, `watch` and the exporter all read devices through a FleetView; each adds only
what it alone needs. Free of I/O: fed (topic, payload) pairs and a clock, so it is tested in-process.

A message that is not valid for its topic, or whose payload names another device than its topic, is recorded
as garbage (which leaf, why) on the device of the topic, and never raises.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime

from edgefleet.contract import topics
from edgefleet.contract.messages import DeviceEvent, DeviceStatus, Message, Presence, Telemetry
from edgefleet.fleet.device_messages import InvalidDeviceMessage, parse_device_message


@dataclass(frozen=True)
class DeviceMessage:
    """One valid message from a device, as the view received it (`received_at` on the view's clock)."""

    device_id: str
    leaf: str
    message: Message | None  # None: an empty payload (a cleared retained message)
    received_at: float


@dataclass
class KnownDevice:
    """Everything the view holds about one device; times `*_at` are on the view's clock."""

    device_id: str
    presence: Presence | None = None
    status: DeviceStatus | None = None
    telemetry: Telemetry | None = None
    telemetry_at: float | None = None
    last_event: DeviceEvent | None = None
    heard_at: float | None = None  # the newest message of any kind, garbage included
    invalid: dict[str, str] = field(default_factory=dict)  # topic leaf -> why its last message was refused
    invalid_count: int = 0

    @property
    def online(self) -> bool | None:
        """None: the device never published its presence."""
        return self.presence.online if self.presence else None

    def last_seen(self) -> datetime | None:
        """The newest timestamp the device itself put on anything we received from it."""
        stamps = [m.at for m in (self.presence, self.telemetry, self.last_event) if m is not None]
        if self.status is not None:
            stamps.append(self.status.updated_at)
        return max(stamps) if stamps else None


class FleetView:
    """Folds device messages into one KnownDevice per device. Not thread-safe: a caller that feeds from one
    thread and reads from another holds its own lock around both."""

    TOPICS = (topics.ALL_ONLINE, topics.ALL_STATUS, topics.ALL_TELEMETRY, topics.ALL_EVENTS)

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, device_ids: Collection[str] | None = None
    ) -> None:
        """device_ids: only these devices (anything else is ignored); None for every device."""
        self._clock = clock
        self._only = frozenset(device_ids) if device_ids is not None else None
        self.devices: dict[str, KnownDevice] = {}
        self.messages = 0
        self.invalid_messages = 0
        self.messages_by_leaf: Counter[str] = Counter()  # garbage included

    def feed(self, topic: str, payload: bytes) -> DeviceMessage | None:
        """Record one message; returns it parsed, or None for foreign topics and garbage (garbage is
        recorded on the device)."""
        parsed_topic = topics.parse_device_topic(topic)
        if parsed_topic is None:
            return None
        device_id, leaf = parsed_topic
        if self._only is not None and device_id not in self._only:
            return None
        now = self._clock()
        self.messages += 1
        self.messages_by_leaf[leaf] += 1
        device = self.devices.get(device_id)
        if device is None:
            device = self.devices[device_id] = KnownDevice(device_id)
        device.heard_at = now
        try:
            message = parse_device_message(leaf, payload)
            payload_id = getattr(message, "device_id", device_id)
            if payload_id != device_id:
                claim = f"payload says device_id {payload_id!r}"
                raise InvalidDeviceMessage(f"{claim} but was published on {topic}")
        except InvalidDeviceMessage as exc:
            device.invalid[leaf] = str(exc)
            device.invalid_count += 1
            self.invalid_messages += 1
            return None
        device.invalid.pop(leaf, None)
        if leaf == "status":
            device.status = message if isinstance(message, DeviceStatus) else None
        elif leaf == "online":
            device.presence = message if isinstance(message, Presence) else None
        elif leaf == "telemetry" and isinstance(message, Telemetry):
            device.telemetry, device.telemetry_at = message, now
        elif leaf == "events" and isinstance(message, DeviceEvent):
            device.last_event = message
        return DeviceMessage(device_id, leaf, message, now)

    def get(self, device_id: str) -> KnownDevice | None:
        return self.devices.get(device_id)

    def __contains__(self, device_id: str) -> bool:
        return device_id in self.devices

    def status(self, device_id: str) -> DeviceStatus | None:
        device = self.devices.get(device_id)
        return device.status if device else None

    def online(self, device_id: str) -> bool | None:
        device = self.devices.get(device_id)
        return device.online if device else None

    def sorted(self) -> list[KnownDevice]:
        return [self.devices[key] for key in sorted(self.devices)]
