"""JSON message schemas of the wire protocol (see docs/protocol.md for topics and flow)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_CHUNK_SIZE = 256 * 1024

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


class BackendInfo(Message):
    engine: str = Field(description="'litert', 'tflite_runtime' or 'onnxruntime'")
    engine_version: str
    delegate: str | None = Field(default=None, description="delegate actually applied, e.g. 'edgetpu'")
    providers: list[str] = Field(default_factory=list, description="onnxruntime providers actually used")
    threads: int
    fallbacks: list[str] = Field(
        default_factory=list, description="what the profile asked for but could not be had, and why"
    )


class DeviceStatus(Message):
    device_id: str
    profile: str
    agent_version: str
    state: Literal["idle", "receiving", "activating", "serving", "error"]
    model: ActiveModel | None = None
    backend: BackendInfo | None = None
    swaps: int = 0
    last_error: str | None = None
    updated_at: datetime = Field(default_factory=utc_now)


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
    latency_ms: LatencySummary = Field(description="model run time over the last `samples` requests")
    rss_mb: float
    cpu_percent: float = Field(description="process CPU over the last interval, 100 = one core")
    swaps: int


class BundleMeta(Message):
    """Retained on bundles/{bundle_id}/meta: how to reassemble the bundle file from its chunks."""

    bundle_id: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the whole bundle file")
    size: int = Field(gt=0)
    chunk_size: int = Field(gt=0)
    chunk_sha256: list[str]
    name: str
    version: str
    profile: str


class DesiredState(Message):
    """Retained on devices/{id}/desired: the bundle this device should run."""

    deployment_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    bundle_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str
    version: str
    profile: str
    issued_at: datetime = Field(default_factory=utc_now)


class DeviceEvent(Message):
    kind: Literal["delivery_started", "delivery_progress", "activated", "rejected", "warning", "error"]
    deployment_id: str | None = None
    version: str | None = None
    detail: str = ""
    chunks_received: int | None = None
    chunks_total: int | None = None
    at: datetime = Field(default_factory=utc_now)


class ErrorReply(Message):
    """Body of an inference reply whose content type is application/json."""

    error: str
