"""A rollout's persisted state: the plan (stages of device ids), each device's progress and the model it
ran before (for rolling back), kept as one JSON file per rollout under `<state dir>/rollouts/`, replaced
atomically, so `edgefleet rollout` can be killed and resumed.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.health import HealthPolicy
from edgefleet.contract.messages import ActiveModel, BundleMeta, utc_now

STATE_DIR_ENV = "EDGEFLEET_STATE_DIR"

RolloutStatus = Literal["running", "rolling_back", "halted", "completed", "aborted"]
UNFINISHED: tuple[RolloutStatus, ...] = ("running", "rolling_back")

DeviceState = Literal[
    "planned",  # in a later stage, nothing sent yet
    "deploying",  # desired state published, the new bundle is not active yet
    "active",  # the new bundle is active, health window running
    "healthy",  # active and healthy for the minimum time
    "failed",  # rejected, rolled back on its own, unhealthy, or timed out
    "skipped",  # selected but never sent the bundle (other profile, no status, ...)
    "already",  # was already running this bundle: nothing to do
    "rolled_back",  # halted: back on its previous bundle
    "rollback_sent",  # halted: previous bundle requested, not confirmed (yet)
]
# devices that may have seen this rollout's desired state: a rollback must reach all of them
TOUCHED: tuple[DeviceState, ...] = (
    "deploying",
    "active",
    "healthy",
    "failed",
    "rolled_back",
    "rollback_sent",
)


class RolloutError(EdgefleetError):
    """A rollout cannot start or continue (bad selector, wrong profile, unknown rollout, ...)."""


class RolloutOptions(BaseModel):
    selector: str
    canary: str = Field(description="devices in the first stage: N or P%")
    batch: str = Field(description="devices per later stage: N or P% of the rollout's devices")
    max_failures: int = Field(ge=0, description="the rollout halts when failures exceed this")
    min_healthy_s: float = Field(ge=0, description="how long a device must stay healthy on the new bundle")
    stage_timeout_s: float = Field(gt=0, description="how long an online device may take to become healthy")
    latency_budget_ms: float | None = Field(description="the profile's latency budget (p95 must stay within)")
    max_error_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="errors / requests since activation above this fail a device (0: any error fails it)",
    )

    def health(self) -> HealthPolicy:
        """How each telemetry report since activation is judged (every report counts: min_requests 1)."""
        return HealthPolicy(self.max_error_rate, self.latency_budget_ms, min_requests=1)


class DeviceProgress(BaseModel):
    device_id: str
    profile: str | None = None
    stage: int | None = Field(default=None, description="index into RolloutState.stages; None if skipped")
    state: DeviceState = "planned"
    detail: str = ""
    failure: str | None = Field(default=None, description="why it failed; kept after a rollback")
    previous: ActiveModel | None = Field(default=None, description="what it ran before; the rollback target")
    desired_at: datetime | None = None
    active_at: datetime | None = None
    healthy_at: datetime | None = None
    finished_at: datetime | None = None
    baseline_errors: int | None = Field(
        default=None, description="the model's error counter before activation (telemetry model_errors)"
    )
    baseline_requests: int | None = Field(
        default=None, description="requests served by the model before activation (telemetry served)"
    )
    reported_healthy: bool = Field(
        default=False, description="a telemetry report on the new version arrived after activation"
    )


class RolloutState(BaseModel):
    rollout_id: str
    created_at: datetime = Field(default_factory=utc_now)
    updated_at: datetime = Field(default_factory=utc_now)
    broker: str
    bundle_path: str
    bundle: BundleMeta
    options: RolloutOptions
    status: RolloutStatus = "running"
    stage: int = Field(default=-1, description="index of the stage in progress; -1 before the first")
    stages: list[list[str]]
    devices: dict[str, DeviceProgress]
    halt_reason: str | None = None
    notes: list[str] = Field(default_factory=list)

    @property
    def rollback_deployment_id(self) -> str:
        return f"{self.rollout_id}-rollback"

    def in_state(self, *states: DeviceState) -> list[DeviceProgress]:
        return [d for d in self.devices.values() if d.state in states]

    @property
    def failures(self) -> int:
        return sum(1 for d in self.devices.values() if d.failure is not None)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for device in self.devices.values():
            counts[device.state] = counts.get(device.state, 0) + 1
        return counts

    def stage_name(self, index: int) -> str:
        return "canary" if index == 0 else f"batch {index}"

    def stage_label(self, index: int) -> str:
        if index < 0:
            return "-"
        return f"{self.stage_name(index)} ({index + 1}/{len(self.stages)})"


def new_rollout_id() -> str:
    return f"r-{utc_now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or Path.home() / ".edgefleet")


class RolloutStore:
    """`<state dir>/rollouts/<rollout id>.json`, one file per rollout."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.directory = (state_dir or default_state_dir()) / "rollouts"

    def path(self, rollout_id: str) -> Path:
        return self.directory / f"{rollout_id}.json"

    def save(self, state: RolloutState) -> None:
        """Write to a temporary file, fsync, rename: a crash leaves the old or the new state, never half."""
        state.updated_at = utc_now()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{state.rollout_id}.", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(state.model_dump_json(indent=1).encode())
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path(state.rollout_id))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise RolloutError(
                f"cannot save the rollout state in {self.directory} ({exc.strerror or exc}); "
                "check that the directory is writable or choose another with --state-dir"
            ) from exc

    def load(self, rollout_id: str) -> RolloutState:
        path = self.path(rollout_id)
        if not path.is_file():
            known = ", ".join(self.ids()[-5:]) or "none"
            raise RolloutError(f"no rollout {rollout_id!r} in {self.directory} (latest: {known})")
        try:
            return RolloutState.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise RolloutError(f"rollout state {path} is unreadable: {exc}") from exc

    def ids(self) -> list[str]:
        """Rollout ids, oldest first (ids start with their creation time)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("r-*.json"))

    def latest(self) -> RolloutState:
        ids = self.ids()
        if not ids:
            raise RolloutError(f"no rollouts in {self.directory}; start one with `edgefleet rollout BUNDLE`")
        return self.load(ids[-1])

    def unfinished(self) -> list[RolloutState]:
        found = []
        for rollout_id in self.ids():
            try:
                state = self.load(rollout_id)
            except RolloutError:
                continue
            if state.status in UNFINISHED:
                found.append(state)
        return found
