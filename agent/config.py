"""The agent's YAML config file, validated by pydantic; relative paths are taken from the file's folder."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.topics import check_device_id
from edgefleet.contract.yaml_files import load_yaml_model
from edgefleet.mqtt import BrokerAddress, BrokerError


class ConfigError(EdgefleetError):
    """The agent config file is missing or invalid."""


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(description="1-64 characters from A-Z a-z 0-9 _ -")
    profile: str = Field(description="device profile name (see `edgefleet profiles list`)")
    broker: str = Field(description="mqtt://HOST[:PORT]")
    state_dir: Path = Field(description="bundles, the part files of deliveries and the `active` pointer")
    trusted_key: Path = Field(description="the fleet public key (PEM) bundles must be signed with")
    telemetry_interval_s: float = Field(default=5.0, gt=0)
    tags: dict[str, str] = Field(default_factory=dict)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=3600, ge=0, description="how long the broker keeps our session")
    keep_bundles: int = Field(
        default=3, ge=1, description="unpacked bundles kept on disk (the active one included)"
    )
    inference_workers: int = Field(default=2, ge=1, le=16)
    max_queued_requests: int = Field(default=1000, ge=1)
    latency_window: int = Field(default=1000, ge=10, description="requests the latency percentiles cover")
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")

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

    @property
    def broker_address(self) -> BrokerAddress:
        return BrokerAddress.parse(self.broker)


def load_config(path: Path) -> AgentConfig:
    config = load_yaml_model(path, AgentConfig, "agent config", ConfigError)
    base = path.resolve().parent
    return config.model_copy(
        update={"state_dir": base / config.state_dir, "trusted_key": base / config.trusted_key}
    )
