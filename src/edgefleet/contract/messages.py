"""JSON message schemas of the wire protocol (see docs/protocol.md for topics and flow)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.contract.ids import Sha256Hex, TopicSafeId

DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_CHUNK_SIZE = 64 * 1024**2  # a chunk is one MQTT message: devices refuse packets beyond this (+ headroom)
PACKET_HEADROOM = 64 * 1024  # topic, properties and fixed header of a message around its payload

# MQTT 5 content types used on the wire
CONTENT_JSON = "application/json"
CONTENT_NPY = "application/x-npy"
CONTENT_NPZ = "application/x-npz"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Message(BaseModel):
    # Unknown fields are ignored so that newer peers can add fields without breaking older ones.
    model_config = ConfigDict(extra="ignore")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class Presence(Message):
    online: bool
    at: datetime = Field(default_factory=utc_now)


class ActiveModel(Message):
    name: str
    version: str
    bundle_id: str
    format: str
    precision: str
    input_shapes: dict[str, list[int | None]] = Field(
        default_factory=dict,
        description="each input's float32 shape, what a request sends (null: a dimension of any size); "
        "empty when the agent did not say",
    )


class BackendInfo(Message):
    engine: str = Field(description="'litert', 'tflite_runtime' or 'onnxruntime'")
    engine_version: str
    delegate: str | None = Field(default=None, description="delegate actually applied, e.g. 'edgetpu'")
    providers: list[str] = Field(default_factory=list, description="onnxruntime providers actually used")
    threads: int
    fallbacks: list[str] = Field(
        default_factory=list, description="what the profile asked for but could not be had, and why"
    )
    requested: list[str] = Field(
        default_factory=list, description="the delegates or providers the profile asked for, in order"
    )


class KeptVersion(Message):
    """A verified bundle kept unpacked on the device: what `edgefleet rollback` can return to."""

    name: str
    version: str
    bundle_id: str
    last_active_at: datetime | None = Field(default=None, description="null: installed, never activated")
    failed: bool = Field(default=False, description="rejected or rolled back under its latest deployment")


class ProbationStatus(Message):
    """The model that was just swapped in and is being watched; `previous_*` is what a rollback returns to."""

    bundle_id: str
    version: str
    previous_bundle_id: str | None
    previous_version: str | None
    ends_at: datetime


DeviceState = Literal["idle", "receiving", "activating", "serving", "error"]


class DeviceStatus(Message):
    device_id: str
    profile: str
    agent_version: str
    state: DeviceState
    model: ActiveModel | None = None
    backend: BackendInfo | None = None
    swaps: int = 0
    last_error: str | None = None
    updated_at: datetime = Field(default_factory=utc_now)
    tags: dict[str, str] = Field(
        default_factory=dict, description="labels from the agent config (e.g. site: lab), used by selectors"
    )
    rollbacks: int = Field(default=0, description="swaps that were rollbacks, since the agent started")
    kept: list[KeptVersion] = Field(
        default_factory=list, description="bundles kept on the device, most recently active first"
    )
    probation: ProbationStatus | None = None


class LatencySummary(Message):
    p50: float | None
    p95: float | None
    p99: float | None
    samples: int


class Telemetry(Message):
    device_id: str
    at: datetime = Field(default_factory=utc_now)
    interval_s: float
    model_version: str | None
    requests: int = Field(description="inference requests answered since the agent started")
    errors: int = Field(description="requests answered with an error since the agent started")
    client_errors: int = Field(
        default=0,
        description="of `errors`, those that were the client's: malformed or too large requests, refusals "
        "(overloaded, shutting down, no model); never counted against the model",
    )
    latency_ms: LatencySummary = Field(description="model run time over the last `samples` requests")
    rss_mb: float
    cpu_percent: float = Field(description="process CPU over the last interval, 100 = one core")
    swaps: int
    # optional, so telemetry of older agents still parses
    rollbacks: int = Field(default=0, description="swaps that were rollbacks, since the agent started")
    model_name: str | None = None
    backend: BackendInfo | None = Field(default=None, description="what actually runs the active model")
    interval_requests: int | None = Field(default=None, description="requests answered in the last interval")
    interval_errors: int | None = Field(default=None, description="error replies in the last interval")
    throughput_rps: float | None = Field(
        default=None, description="requests answered per second over the last interval"
    )
    soc_temp_c: float | None = Field(
        default=None, description="SoC temperature from /sys/class/thermal; null where there is none"
    )

    @property
    def model_errors(self) -> int:
        """Requests the model failed (the runtime raised on a valid input): what health is judged on."""
        return self.errors - self.client_errors

    @property
    def served(self) -> int:
        """Requests that reached the model."""
        return self.requests - self.client_errors


class BundleMeta(Message):
    """Retained on bundles/{bundle_id}/meta: how to reassemble the bundle file from its chunks."""

    bundle_id: Sha256Hex = Field(description="sha256 of the whole bundle file")
    size: int = Field(gt=0)
    chunk_size: int = Field(gt=0)
    chunk_sha256: list[str]
    name: str
    version: str
    profile: str


class DesiredState(Message):
    """Retained on devices/{id}/desired: the bundle this device should run."""

    deployment_id: TopicSafeId
    bundle_id: Sha256Hex
    name: str
    version: str
    profile: str
    issued_at: datetime = Field(default_factory=utc_now)


DeviceEventKind = Literal[
    "delivery_started",
    "delivery_progress",
    "delivery_stalled",
    "activated",
    "probation_passed",
    "rolled_back",
    "rejected",
    "warning",
    "error",
]


class DeviceEvent(Message):
    kind: DeviceEventKind
    deployment_id: str | None = None
    version: str | None = None
    detail: str = ""
    chunks_received: int | None = None
    chunks_total: int | None = None
    missing_chunks: list[tuple[int, int]] | None = Field(
        default=None, description="delivery_stalled: the chunks still missing, as [first, last] ranges"
    )
    at: datetime = Field(default_factory=utc_now)


class ErrorReply(Message):
    """Body of an inference reply whose content type is application/json."""

    error: str
