"""The deployment ledger: what the agent must remember across restarts besides the bundles themselves -
the desired state it follows, when each bundle was last activated, the deployments that failed (so a
retained desired state does not make it retry them forever), a probation in progress, and the version
floors it verified (anti-rollback).

One JSON file in the state directory, replaced atomically; a damaged file is set aside, never fatal.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.agent.log import EventLog
from edgefleet.agent.store import write_atomic
from edgefleet.contract.messages import DesiredState, utc_now
from edgefleet.contract.version_floor import VersionFloor

log = EventLog("ledger")
LEDGER_FILE = "deployments.json"
MAX_ACTIVATIONS = 32
MAX_VERDICTS = 64


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Activation(_Record):
    bundle_id: str
    name: str
    version: str
    at: datetime = Field(default_factory=utc_now)


class Verdict(_Record):
    """A deployment that must not be retried under the same deployment id."""

    deployment_id: str
    bundle_id: str
    version: str
    kind: Literal["rejected", "rolled_back"]
    reason: str
    at: datetime = Field(default_factory=utc_now)


class ProbationRecord(_Record):
    deployment_id: str
    bundle_id: str
    version: str
    previous_bundle_id: str | None
    previous_version: str | None
    started_at: datetime = Field(default_factory=utc_now)
    starts: int = Field(default=0, description="agent starts since the swap (a crash loop shows up here)")


class LedgerData(_Record):
    desired: DesiredState | None = None
    activations: list[Activation] = Field(default_factory=list)
    verdicts: list[Verdict] = Field(default_factory=list)
    probation: ProbationRecord | None = None
    floors: dict[str, VersionFloor] = Field(
        default_factory=dict, description="model name -> the newest verified version floor (anti-rollback)"
    )


class Ledger:
    """Read once at start, written through on every change (changes are rare: deployments)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LEDGER_FILE
        self.data = self._load()

    def _load(self) -> LedgerData:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return LedgerData()
        except OSError as exc:
            log.error("ledger_unreadable", path=self.path, error=str(exc))
            return LedgerData()
        try:
            return LedgerData.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            # A damaged ledger must not stop the agent: the bundles and the `active` pointer still stand.
            aside = self.path.with_name(self.path.name + ".damaged")
            try:
                self.path.replace(aside)
            except OSError as move_error:
                log.error("ledger_not_moved", path=self.path, error=str(move_error))
            log.error("ledger_damaged", path=self.path, moved_to=aside, error=str(exc).splitlines()[0])
            return LedgerData()

    def save(self) -> None:
        try:
            write_atomic(self.path, self.data.model_dump_json(indent=1).encode())
        except OSError as exc:
            log.error("ledger_not_saved", path=self.path, error=str(exc))

    # desired state -------------------------------------------------------------------------------
    @property
    def desired(self) -> DesiredState | None:
        return self.data.desired

    def set_desired(self, desired: DesiredState | None) -> None:
        if self.data.desired != desired:
            self.data.desired = desired
            self.save()

    # activations ---------------------------------------------------------------------------------
    def record_activation(self, bundle_id: str, name: str, version: str) -> None:
        kept = [a for a in self.data.activations if a.bundle_id != bundle_id]
        kept.append(Activation(bundle_id=bundle_id, name=name, version=version))
        self.data.activations = kept[-MAX_ACTIVATIONS:]
        self.save()

    def last_active(self, bundle_id: str) -> datetime | None:
        for activation in reversed(self.data.activations):
            if activation.bundle_id == bundle_id:
                return activation.at
        return None

    # verdicts ------------------------------------------------------------------------------------
    def add_verdict(self, verdict: Verdict) -> None:
        self.data.verdicts = [*self.data.verdicts, verdict][-MAX_VERDICTS:]
        self.save()

    def verdict_for(self, deployment_id: str, bundle_id: str) -> Verdict | None:
        for verdict in reversed(self.data.verdicts):
            if verdict.deployment_id == deployment_id and verdict.bundle_id == bundle_id:
                return verdict
        return None

    def is_failed(self, bundle_id: str) -> bool:
        """True when the bundle's latest verdict is newer than its latest activation."""
        failed_at = max((v.at for v in self.data.verdicts if v.bundle_id == bundle_id), default=None)
        if failed_at is None:
            return False
        active_at = self.last_active(bundle_id)
        return active_at is None or failed_at >= active_at

    # probation -----------------------------------------------------------------------------------
    @property
    def probation(self) -> ProbationRecord | None:
        return self.data.probation

    def set_probation(self, record: ProbationRecord | None) -> None:
        self.data.probation = record
        self.save()

    # version floors (anti-rollback) --------------------------------------------------------------
    def floor(self, model: str) -> VersionFloor | None:
        return self.data.floors.get(model)

    def set_floor(self, floor: VersionFloor) -> None:
        self.data.floors = {**self.data.floors, floor.model: floor}
        self.save()
