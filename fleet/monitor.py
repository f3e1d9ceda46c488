"""The live monitoring state behind `watch` and `exporter`: device messages (presence, status, telemetry,
events) folded into one record per device, thread-safe, with message counters. Garbage is recorded as
garbage (which topic, why) and never raises.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from edgefleet.contract import topics
from edgefleet.contract.messages import DeviceEvent, DeviceStatus, Presence, Telemetry
from edgefleet.fleet.device_messages import InvalidDeviceMessage, parse_device_message

# Telemetry older than this many intervals means the device (or its link) stopped reporting.
STALE_INTERVALS = 3.0
STALE_MIN_S = 15.0


def telemetry_extra(telemetry: Telemetry, name: str) -> float | None:
    """An optional telemetry field that newer agents send (soc_temp_c, throughput_rps, interval_errors,
    ...); None when the device's agent does not report it."""
    value = getattr(telemetry, name, None)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class DeviceHealth:
    """What the monitor knows of one device. Times are host wall-clock seconds (time.time())."""

    device_id: str
    online: bool | None = None
    status: DeviceStatus | None = None
    telemetry: Telemetry | None = None
    telemetry_at: float | None = None
    telemetry_count: int = 0
    new_errors: int = 0  # errors reported since the previous telemetry message
    last_seen: float | None = None
    invalid: dict[str, str] = field(default_factory=dict)
    invalid_count: int = 0
    events: Counter[str] = field(default_factory=Counter)

    @property
    def profile(self) -> str | None:
        return self.status.profile if self.status else None

    @property
    def model_version(self) -> str | None:
        if self.status is not None and self.status.model is not None:
            return self.status.model.version
        return self.telemetry.model_version if self.telemetry else None

    def stale(self, now: float) -> bool:
        """True when telemetry used to arrive but has not for several of its intervals."""
        if self.telemetry is None or self.telemetry_at is None:
            return False
        limit = max(STALE_MIN_S, STALE_INTERVALS * self.telemetry.interval_s)
        return now - self.telemetry_at > limit

    def copy(self) -> DeviceHealth:
        return replace(self, invalid=dict(self.invalid), events=Counter(self.events))


@dataclass(frozen=True)
class FleetSnapshot:
    """A consistent copy of the monitor's state at `taken_at`."""

    taken_at: float
    devices: list[DeviceHealth]
    messages: int
    telemetry_messages: int
    invalid_messages: int
    started_at: float

    @property
    def online(self) -> int:
        return sum(1 for d in self.devices if d.online)

    @property
    def offline(self) -> int:
        return sum(1 for d in self.devices if d.online is False)

    @property
    def with_garbage(self) -> int:
        return sum(1 for d in self.devices if d.invalid)


class FleetMonitor:
    """Folds device messages into DeviceHealth records. `feed` may be called from paho's network thread
    (it only parses and updates memory); `snapshot` from any other thread."""

    TOPICS = (topics.ALL_ONLINE, topics.ALL_STATUS, topics.ALL_TELEMETRY, topics.ALL_EVENTS)

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceHealth] = {}
        self.started_at = clock()
        self.messages = 0
        self.telemetry_messages = 0
        self.invalid_messages = 0

    def feed(self, topic: str, payload: bytes) -> Telemetry | None:
        """Record one message; returns the telemetry it carried when it was valid telemetry."""
        parsed_topic = topics.parse_device_topic(topic)
        if parsed_topic is None:
            return None
        device_id, leaf = parsed_topic
        now = self._clock()
        try:
            message = parse_device_message(leaf, payload)
            problem = None
            payload_id = getattr(message, "device_id", device_id)
            if payload_id != device_id:
                problem = f"payload says device_id {payload_id!r} but was published on {topic}"
        except InvalidDeviceMessage as exc:
            message, problem = None, str(exc)
        with self._lock:
            self.messages += 1
            device = self._devices.get(device_id)
            if device is None:
                device = self._devices[device_id] = DeviceHealth(device_id)
            device.last_seen = now
            if leaf == "telemetry":
                self.telemetry_messages += 1
            if problem is not None:
                device.invalid[leaf] = problem
                device.invalid_count += 1
                self.invalid_messages += 1
                return None
            device.invalid.pop(leaf, None)
            return self._apply(device, leaf, message, now)

    def _apply(self, device: DeviceHealth, leaf: str, message: object, now: float) -> Telemetry | None:
        if leaf == "online":
            device.online = message.online if isinstance(message, Presence) else None
        elif leaf == "status":
            device.status = message if isinstance(message, DeviceStatus) else None
        elif leaf == "events" and isinstance(message, DeviceEvent):
            device.events[message.kind] += 1
        elif leaf == "telemetry" and isinstance(message, Telemetry):
            previous = device.telemetry
            interval_errors = telemetry_extra(message, "interval_errors")
            if interval_errors is not None:
                device.new_errors = int(interval_errors)
            elif previous is not None:  # older agents: the difference of the counters since start
                device.new_errors = max(0, message.errors - previous.errors)
            else:
                device.new_errors = 0
            device.telemetry = message
            device.telemetry_at = now
            device.telemetry_count += 1
            return message
        return None

    def snapshot(self) -> FleetSnapshot:
        with self._lock:
            devices = [self._devices[key].copy() for key in sorted(self._devices)]
            return FleetSnapshot(
                taken_at=self._clock(),
                devices=devices,
                messages=self.messages,
                telemetry_messages=self.telemetry_messages,
                invalid_messages=self.invalid_messages,
                started_at=self.started_at,
            )
