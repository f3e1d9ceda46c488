"""Anti-rollback on the device (optional, `anti_rollback: true`): the newest signed version floor of each
model is kept in the ledger, and a bundle below its model's floor is refused wherever it would come from:
a desired state, a kept bundle (`edgefleet rollback`), a fallback at start, or a probation's rollback.
Off by default, since `edgefleet rollback` needs older versions.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.agent.ledger import Ledger
from edgefleet.agent.log import EventLog
from edgefleet.contract.version_floor import FloorError, below, verify_floor

log = EventLog("anti_rollback")


class AntiRollback:
    def __init__(self, ledger: Ledger, public_key: Ed25519PublicKey, device_id: str) -> None:
        self.ledger = ledger
        self.public_key = public_key
        self.device_id = device_id

    def on_floor(self, payload: bytes) -> None:
        """A retained floor message: kept when the fleet key signed it for this device and it is newer than
        the floor held for its model; anything else is logged and changes nothing."""
        if not payload:
            log.info("floor_cleared_ignored", reason="an empty message lowers nothing; sign a new floor")
            return
        try:
            floor = verify_floor(self.public_key, payload, self.device_id)
        except FloorError as exc:
            log.warning("floor_refused", error=str(exc))
            return
        held = self.ledger.floor(floor.model)
        if held is not None and floor.issued_at <= held.issued_at:
            if floor != held:
                log.warning("floor_stale", model=floor.model, issued_at=floor.issued_at, held=held.issued_at)
            return
        self.ledger.set_floor(floor)
        log.info("floor_set", model=floor.model, min_version=floor.min_version, issued_at=floor.issued_at)

    def refusal(self, model: str, version: str) -> str | None:
        """Why `model` `version` may not run here, or None."""
        floor = self.ledger.floor(model)
        if floor is None or floor.min_version is None or not below(version, floor.min_version):
            return None
        return (
            f"{model} v{version} is below this device's signed minimum version {floor.min_version} "
            f"(anti-rollback, floor issued {floor.issued_at:%Y-%m-%d %H:%M} UTC); deploy "
            f"v{floor.min_version} or newer, or sign a lower floor with `edgefleet floor`"
        )
