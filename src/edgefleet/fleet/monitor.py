"""The live monitoring state behind `watch` and `exporter`: the fleet view (fleet_view.py) behind a lock,
with message counters and, per device, telemetry and event counts. Garbage is recorded as garbage (which
topic, why) and never raises.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from edgefleet.contract.messages import DeviceEvent, DeviceStatus, Telemetry
from edgefleet.fleet.fleet_view import FleetView, KnownDevice

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


@dataclass
class _Counts:
    """What the monitor adds to the fleet view for one device."""

    telemetry_count: int = 0
    new_errors: int = 0  # errors reported since the previous telemetry message
    errors_total: int | None = None  # the error counter of the previous telemetry
    events: Counter[str] = field(default_factory=Counter)

    def count_telemetry(self, telemetry: Telemetry) -> None:
        interval_errors = telemetry_extra(telemetry, "interval_errors")
        if interval_errors is not None:
            self.new_errors = int(interval_errors)
        elif self.errors_total is not None:  # older agents: the difference of the counters since start
            self.new_errors = max(0, telemetry.errors - self.errors_total)
        else:
            self.new_errors = 0
        self.errors_total = telemetry.errors
        self.telemetry_count += 1


class FleetMonitor:
    """The fleet view behind a lock, plus per-device counters. `feed` may be called from paho's network
    thread (it only parses and updates memory); `snapshot` from any other thread."""

    TOPICS = FleetView.TOPICS

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._view = FleetView(clock)
        self._counts: dict[str, _Counts] = {}
        self.started_at = clock()

    def feed(self, topic: str, payload: bytes) -> Telemetry | None:
        """Record one message; returns the telemetry it carried when it was valid telemetry."""
        with self._lock:
            received = self._view.feed(topic, payload)
            if received is None:
                return None
            counts = self._counts.setdefault(received.device_id, _Counts())
            message = received.message
            if isinstance(message, DeviceEvent):
                counts.events[message.kind] += 1
            elif isinstance(message, Telemetry):
                counts.count_telemetry(message)
                return message
            return None

    @property
    def telemetry_messages(self) -> int:
        """Messages on telemetry topics, garbage included."""
        return self._view.messages_by_leaf["telemetry"]

    def snapshot(self) -> FleetSnapshot:
        with self._lock:
            return FleetSnapshot(
                taken_at=self._clock(),
                devices=[self._health(device) for device in self._view.sorted()],
                messages=self._view.messages,
                telemetry_messages=self.telemetry_messages,
                invalid_messages=self._view.invalid_messages,
                started_at=self.started_at,
            )

    def _health(self, device: KnownDevice) -> DeviceHealth:
        counts = self._counts.get(device.device_id) or _Counts()
        return DeviceHealth(
            device_id=device.device_id,
            online=device.online,
            status=device.status,
            telemetry=device.telemetry,
            telemetry_at=device.telemetry_at,
            telemetry_count=counts.telemetry_count,
            new_errors=counts.new_errors,
            last_seen=device.heard_at,
            invalid=dict(device.invalid),
            invalid_count=device.invalid_count,
            events=Counter(counts.events),
        )
