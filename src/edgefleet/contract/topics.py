"""MQTT topic names: the only place they are built or parsed. See docs/protocol.md."""

from __future__ import annotations

from typing import Literal

from edgefleet.contract.ids import check_bundle_id, check_device_id, is_topic_safe_id

PREFIX = "edgefleet/v1"


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


def floor(device_id: str) -> str:
    """Retained SignedFloor: the lowest model version this device may run (anti-rollback, optional)."""
    return _device(device_id, "floor")


# bundles, shared by every device that runs them (retained)
def bundle_meta(bundle_id: str) -> str:
    return f"{PREFIX}/bundles/{check_bundle_id(bundle_id)}/meta"


def bundle_chunk(bundle_id: str, index: int) -> str:
    return f"{PREFIX}/bundles/{check_bundle_id(bundle_id)}/chunks/{index}"


def bundle_chunks(bundle_id: str) -> str:
    """Wildcard matching every chunk of a bundle."""
    return f"{PREFIX}/bundles/{check_bundle_id(bundle_id)}/chunks/+"


def replies(client_id: str) -> str:
    """Where a host client asks for its inference replies."""
    return f"{PREFIX}/clients/{check_device_id(client_id)}/replies"


def sync(client_id: str) -> str:
    """A host client's own round-trip topic (a publish it waits to receive back: the broker has delivered
    everything retained before it)."""
    return f"{PREFIX}/clients/{check_device_id(client_id)}/sync"


# what devices publish, and what the agent listens to
DEVICE_PUBLISHES = ("online", "status", "telemetry", "events")
DEVICE_RECEIVES = ("desired", "infer", "floor")
ALL_STATUS = f"{PREFIX}/devices/+/status"
ALL_ONLINE = f"{PREFIX}/devices/+/online"
ALL_TELEMETRY = f"{PREFIX}/devices/+/telemetry"
ALL_EVENTS = f"{PREFIX}/devices/+/events"
ALL_BUNDLE_META = f"{PREFIX}/bundles/+/meta"
ALL_BUNDLE_CHUNKS = f"{PREFIX}/bundles/+/chunks/+"
_ALL_BUNDLES = f"{PREFIX}/bundles/#"
_ALL_REPLIES = f"{PREFIX}/clients/+/replies"
_ALL_SYNC = f"{PREFIX}/clients/+/sync"

# Who may touch what (a broker's ACL renders these; fleet/broker_config.py writes mosquitto's form).
Access = Literal["read", "write", "readwrite"]
Grant = tuple[Access, str]


def device_grants(device_id: str) -> list[Grant]:
    """A device publishes only its own reports and inference replies (to wherever the requester asked, under
    clients/+/replies), reads only its own desired state and requests, and reads every bundle: bundles are
    shared and content-addressed, so a static rule cannot know which one it will be told to fetch."""
    own = f"{PREFIX}/devices/{check_device_id(device_id)}"
    return [
        *(("write", f"{own}/{leaf}") for leaf in DEVICE_PUBLISHES),
        *(("read", f"{own}/{leaf}") for leaf in DEVICE_RECEIVES),
        ("read", _ALL_BUNDLES),
        ("write", _ALL_REPLIES),
    ]


def monitor_grants() -> list[Grant]:
    """The monitoring identity (watch, exporter, status) reads what devices report; its own sync topic."""
    return [
        *(("read", f"{PREFIX}/devices/+/{leaf}") for leaf in DEVICE_PUBLISHES),
        ("readwrite", _ALL_SYNC),
    ]


def admin_grants() -> list[Grant]:
    """The host/admin identity: everything (deploy, rollout, inference requests, bundle upload)."""
    return [("readwrite", "#")]


def parse_device_topic(topic: str) -> tuple[str, str] | None:
    """(device_id, leaf) for a device topic, None for anything else."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{PREFIX}/devices":
        return None
    if is_topic_safe_id(parts[3]):
        return parts[3], parts[4]
    return None


def parse_chunk_index(topic: str) -> int | None:
    parts = topic.split("/")
    if len(parts) == 6 and parts[2] == "bundles" and parts[4] == "chunks" and parts[5].isdigit():
        return int(parts[5])
    return None
