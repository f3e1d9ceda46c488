"""What the device tells the host: the retained DeviceStatus, and DeviceEvents."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypedDict

from edgefleet import __version__
from edgefleet.agent.log import EventLog
from edgefleet.agent.model_slot import ModelSlot
from edgefleet.contract import topics
from edgefleet.contract.messages import (
    DeviceEvent,
    DeviceEventKind,
    DeviceState,
    DeviceStatus,
    KeptVersion,
    ProbationStatus,
)

State = DeviceState  # the schema's own names, so the agent cannot drift from the contract
EventKind = DeviceEventKind
Publish = Callable[[str, bytes, int, bool], None]

log = EventLog("status")


class DeploymentFields(TypedDict):
    """The part of DeviceStatus the Deployer owns."""

    rollbacks: int
    kept: list[KeptVersion]
    probation: ProbationStatus | None


def _no_deployment() -> DeploymentFields:
    return {"rollbacks": 0, "kept": [], "probation": None}


class StatusReporter:
    def __init__(
        self,
        device_id: str,
        profile: str,
        slot: ModelSlot,
        publish: Publish,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.device_id = device_id
        self.profile = profile
        self.tags = dict(tags or {})  # the config's labels, announced so host selectors can match them
        self.slot = slot
        self._publish = publish
        self._lock = threading.Lock()
        self._state: State | None = None
        self.last_error: str | None = None
        # set by the Deployer: rollbacks, kept versions and the probation in progress
        self.deployment_fields: Callable[[], DeploymentFields] = _no_deployment

    @property
    def state(self) -> State:
        if self._state is not None:
            return self._state
        return "serving" if self.slot.current is not None else "idle"

    def build(self) -> DeviceStatus:
        model = self.slot.current
        return DeviceStatus(
            device_id=self.device_id,
            profile=self.profile,
            agent_version=__version__,
            state=self.state,
            model=model.describe() if model else None,
            backend=model.info if model else None,
            swaps=self.slot.swaps,
            last_error=self.last_error,
            tags=self.tags,
            **self.deployment_fields(),
        )

    def set(self, state: State | None, last_error: str | None = None, clear_error: bool = False) -> None:
        """Change the state (None: derived from whether a model is active) and publish the status."""
        with self._lock:
            self._state = state
            if last_error is not None or clear_error:
                self.last_error = last_error
        self.publish()

    def publish(self) -> None:
        self._publish(topics.status(self.device_id), self.build().to_bytes(), 1, True)

    def event(self, kind: EventKind, detail: str = "", **fields: object) -> None:
        event = DeviceEvent.model_validate({"kind": kind, "detail": detail, **fields})
        self._publish(topics.events(self.device_id), event.to_bytes(), 1, False)
