"""The one fold of device messages (fleet_view.py), in-process with an injected clock: what each topic leaf
changes, garbage and lying payloads recorded on the device, cleared retained messages, the device filter."""

from __future__ import annotations

from datetime import timedelta

from fleet_helpers import device_status

from edgefleet.contract import topics
from edgefleet.contract.messages import DeviceEvent, LatencySummary, Presence, Telemetry, utc_now
from edgefleet.fleet.fleet_view import FleetView


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def telemetry(device_id: str, errors: int = 0) -> Telemetry:
    return Telemetry(
        device_id=device_id,
        interval_s=1.0,
        model_version="2",
        requests=10,
        errors=errors,
        latency_ms=LatencySummary(p50=1.0, p95=2.0, p99=3.0, samples=10),
        rss_mb=50.0,
        cpu_percent=5.0,
        swaps=1,
    )


def test_each_leaf_updates_its_part_of_the_device_and_returns_the_parsed_message() -> None:
    clock = FakeClock()
    view = FleetView(clock)
    received = view.feed(topics.online("a"), Presence(online=True).to_bytes())
    assert received is not None and received.device_id == "a" and received.leaf == "online"
    assert view.online("a") is True
    view.feed(topics.status("a"), device_status("a", "rpi4").to_bytes())
    clock.now = 105.0
    view.feed(topics.telemetry("a"), telemetry("a").to_bytes())
    event = view.feed(topics.events("a"), DeviceEvent(kind="activated").to_bytes())
    assert event is not None and isinstance(event.message, DeviceEvent) and event.received_at == 105.0

    device = view.get("a")
    assert device is not None
    assert device.status is not None and device.status.profile == "rpi4"
    assert device.telemetry is not None and device.telemetry_at == 105.0 and device.heard_at == 105.0
    assert device.last_event is not None and device.last_event.kind == "activated"
    assert not device.invalid and view.messages == 4 and view.invalid_messages == 0
    assert "a" in view and "b" not in view and view.status("b") is None and view.online("b") is None


def test_garbage_is_recorded_on_the_device_of_its_topic_and_a_good_message_clears_it() -> None:
    view = FleetView(FakeClock())
    assert view.feed(topics.telemetry("a"), b"\x00{not json") is None
    assert view.feed(topics.status("a"), b'{"device_id": "a"}') is None
    device = view.get("a")
    assert device is not None and device.telemetry is None and device.status is None
    assert set(device.invalid) == {"telemetry", "status"} and "not valid JSON" in device.invalid["telemetry"]
    assert device.invalid_count == 2 and view.invalid_messages == 2 and view.messages == 2

    view.feed(topics.telemetry("a"), telemetry("a").to_bytes())
    assert set(device.invalid) == {"status"} and device.telemetry is not None


def test_a_payload_naming_another_device_is_garbage_and_changes_neither_device() -> None:
    view = FleetView(FakeClock())
    assert view.feed(topics.status("a"), device_status("b", "rpi4").to_bytes()) is None
    device = view.get("a")
    assert device is not None and device.status is None
    assert "payload says device_id 'b' but was published on" in device.invalid["status"]
    assert view.get("b") is None


def test_an_empty_retained_payload_clears_what_it_stood_for() -> None:
    view = FleetView(FakeClock())
    view.feed(topics.status("a"), device_status("a", "rpi4").to_bytes())
    view.feed(topics.online("a"), Presence(online=True).to_bytes())
    cleared = view.feed(topics.status("a"), b"")
    assert cleared is not None and cleared.message is None
    view.feed(topics.online("a"), b"")
    assert view.status("a") is None and view.online("a") is None


def test_foreign_topics_and_devices_outside_the_filter_are_ignored_uncounted() -> None:
    view = FleetView(FakeClock(), device_ids={"a"})
    assert view.feed("edgefleet/v1/bundles/x/meta", b"{}") is None
    assert view.feed("other/app/topic", b"x") is None
    assert view.feed(topics.status("b"), device_status("b", "rpi4").to_bytes()) is None
    assert view.get("b") is None and view.messages == 0
    view.feed(topics.status("a"), device_status("a", "rpi4").to_bytes())
    assert [d.device_id for d in view.sorted()] == ["a"]


def test_last_seen_is_the_newest_time_the_device_put_on_its_messages() -> None:
    view = FleetView(FakeClock())
    old = utc_now() - timedelta(hours=2)
    view.feed(topics.online("a"), Presence(online=True, at=old).to_bytes())
    device = view.get("a")
    assert device is not None and device.last_seen() == old
    newer = old + timedelta(minutes=30)
    view.feed(topics.telemetry("a"), telemetry("a").model_copy(update={"at": newer}).to_bytes())
    assert device.last_seen() == newer
