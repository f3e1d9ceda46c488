"""MQTT topic names: the only place they are built or parsed. See docs/protocol.md."""

from __future__ import annotations

import re

PREFIX = "edgefleet/v1"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BUNDLE_ID = re.compile(r"^[0-9a-f]{64}$")


def check_device_id(device_id: str) -> str:
    if not _ID.match(device_id):
        raise ValueError(f"device id {device_id!r} is not valid: use 1-64 characters from A-Z a-z 0-9 _ -")
    return device_id


def _device(device_id: str, leaf: str) -> str:
    return f"{PREFIX}/devices/{check_device_id(device_id)}/{leaf}"


# device -> host
def status(device_id: str) -> str:
    """Retained DeviceStatus."""
    return _device(device_id, "status")


def online(device_id: str) -> str:
    """Retained Presence; the agent's last will sets it offline."""
    return _device(device_id, "online")


def telemetry(device_id: str) -> str:
    return _device(device_id, "telemetry")


def events(device_id: str) -> str:
    return _device(device_id, "events")


# host -> device
def desired(device_id: str) -> str:
    """Retained DesiredState: which bundle the device should run."""
    return _device(device_id, "desired")


def infer(device_id: str) -> str:
    """Inference requests (MQTT 5 request/response)."""
    return _device(device_id, "infer")


# bundles, shared by every device that runs them (retained)
def bundle_meta(bundle_id: str) -> str:
    return f"{PREFIX}/bundles/{_check_bundle(bundle_id)}/meta"


def bundle_chunk(bundle_id: str, index: int) -> str:
    return f"{PREFIX}/bundles/{_check_bundle(bundle_id)}/chunks/{index}"


def bundle_chunks(bundle_id: str) -> str:
    """Wildcard matching every chunk of a bundle."""
    return f"{PREFIX}/bundles/{_check_bundle(bundle_id)}/chunks/+"


def replies(client_id: str) -> str:
    """Where a host client asks for its inference replies."""
    return f"{PREFIX}/clients/{check_device_id(client_id)}/replies"


ALL_STATUS = f"{PREFIX}/devices/+/status"
ALL_ONLINE = f"{PREFIX}/devices/+/online"
ALL_TELEMETRY = f"{PREFIX}/devices/+/telemetry"
ALL_EVENTS = f"{PREFIX}/devices/+/events"


def _check_bundle(bundle_id: str) -> str:
    if not _BUNDLE_ID.match(bundle_id):
        raise ValueError(f"bundle id {bundle_id!r} is not a sha256 hex digest")
    return bundle_id


def parse_device_topic(topic: str) -> tuple[str, str] | None:
    """(device_id, leaf) for a device topic, None for anything else."""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:2]) == PREFIX and parts[2] == "devices" and _ID.match(parts[3]):
        return parts[3], parts[4]
    return None


def parse_chunk_index(topic: str) -> int | None:
    parts = topic.split("/")
    if len(parts) == 6 and parts[2] == "bundles" and parts[4] == "chunks" and parts[5].isdigit():
        return int(parts[5])
    return None
