"""The agent's YAML config file, validated by pydantic; relative paths are taken from the file's folder."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.health import DEFAULT_MIN_REQUESTS
from edgefleet.contract.ids import check_device_id
from edgefleet.contract.yaml_files import load_yaml_model
from edgefleet.mqtt import BrokerAddress, BrokerError, BrokerSecurity


class ConfigError(EdgefleetError):
    """The agent config file is missing or invalid."""


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(description="1-64 characters from A-Z a-z 0-9 _ -")
    profile: str = Field(description="device profile name (see `edgefleet profiles list`)")
    broker: str = Field(description="mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)")
    broker_ca: Path | None = Field(
        default=None, description="CA certificate (PEM) the broker's is checked with"
    )
    broker_cert: Path | None = Field(default=None, description="this device's client certificate (PEM)")
    broker_key: Path | None = Field(default=None, description="the private key of broker_cert (PEM)")
    broker_username: str | None = Field(default=None, description="MQTT user name (usually the device id)")
    broker_password_file: Path | None = Field(
        default=None, description="file whose first line is the password"
    )
    mqtt_client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="MQTT client id (default edgefleet-agent-DEVICE; broker-config writes the user name)",
    )
    state_dir: Path = Field(description="bundles, the part files of deliveries and the `active` pointer")
    trusted_key: Path = Field(description="the fleet public key (PEM) bundles must be signed with")
    telemetry_interval_s: float = Field(default=5.0, gt=0)
    tags: dict[str, str] = Field(default_factory=dict)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=3600, ge=0, description="how long the broker keeps our session")
    keep_bundles: int = Field(
        default=3, ge=1, description="unpacked bundles kept on disk (the active one included)"
    )
    probation_s: float = Field(
        default=30.0, ge=0, description="how long a swapped-in model is watched for rollback (0: not watched)"
    )
    probation_min_requests: int = Field(
        default=DEFAULT_MIN_REQUESTS,
        ge=1,
        description="requests a probation needs before it judges error rate and p95",
    )
    anti_rollback: bool = Field(
        default=False,
        description="refuse bundles below the signed version floor of their model (`edgefleet floor`); "
        "off by default because `edgefleet rollback` needs older versions",
    )
    delivery_stall_s: float = Field(
        default=10.0, gt=0, description="no chunk for this long: report the missing ones and ask again"
    )
    inference_workers: int = Field(default=2, ge=1, le=16)
    max_queued_requests: int = Field(default=1000, ge=1)
    latency_window: int = Field(default=1000, ge=10, description="requests the latency percentiles cover")
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    http_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="address the local HTTP API (OIP v2, /metrics) binds to",
    )
    http_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="HTTP API port; null: no HTTP API, 0: any free port (logged)",
    )
    http_max_connections: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="open HTTP connections at most (each holds a thread and a file descriptor); more get 503",
    )
    max_request_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="largest inference request (MQTT payload, HTTP body, or an .npz once unpacked)",
    )
    request_memory_mb: int | None = Field(
        default=None,
        ge=1,
        description="memory the requests in flight may hold, both APIs together (default: a quarter of "
        "the profile's memory_budget_mb); a JSON body needs ~24x its size, a binary one ~3x",
    )

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        return check_device_id(value)

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        try:
            BrokerAddress.parse(value)
        except BrokerError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _broker_security(self) -> AgentConfig:
        try:
            self.broker_address  # noqa: B018 - refuses e.g. a CA file with a plain mqtt:// broker
        except BrokerError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def request_memory_bytes(self, memory_budget_mb: int) -> int:
        """What requests in flight may hold: `request_memory_mb`, or a quarter of the profile's budget."""
        megabytes = self.request_memory_mb or max(16, memory_budget_mb // 4)
        return megabytes * 1024 * 1024

    @property
    def client_id(self) -> str:
        return self.mqtt_client_id or f"edgefleet-agent-{self.device_id}"

    @property
    def broker_address(self) -> BrokerAddress:
        """The broker URL with the TLS files and credentials of this config applied over it."""
        security = BrokerSecurity(
            ca_file=_optional_str(self.broker_ca),
            cert_file=_optional_str(self.broker_cert),
            key_file=_optional_str(self.broker_key),
            username=self.broker_username,
            password_file=_optional_str(self.broker_password_file),
        )
        return BrokerAddress.parse(self.broker).with_security(security)


def _optional_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def load_config(path: Path) -> AgentConfig:
    config = load_yaml_model(path, AgentConfig, "agent config", ConfigError)
    base = path.resolve().parent
    broker_files = {
        name: base / value
        for name in ("broker_ca", "broker_cert", "broker_key", "broker_password_file")
        if (value := getattr(config, name)) is not None
    }
    return config.model_copy(
        update={
            "state_dir": base / config.state_dir,
            "trusted_key": base / config.trusted_key,
            **broker_files,
        }
    )
