"""`edgefleet rollback`: point a device back at a version it still keeps on disk. The device's retained
status lists its kept versions; the command publishes a retained DesiredState for the chosen bundle under
a new deployment id, and the device re-activates it from disk (re-verified, health-checked), with no
download. See docs/protocol.md, "Rolling back".
"""

from __future__ import annotations

import argparse

from pydantic import BaseModel
from rich.console import Console

from edgefleet.contract import ids
from edgefleet.contract.messages import DesiredState, DeviceStatus, KeptVersion
from edgefleet.fleet.deploy import (
    DeviceWatch,
    _Display,
    new_deployment_id,
    publish_desired,
    wait_until_active,
)
from edgefleet.fleet.errors import DeployError
from edgefleet.fleet.session import BrokerSession


class RollbackError(DeployError):
    """The rollback cannot be made (no status, version not kept, nothing earlier to go back to)."""


class RollbackResult(BaseModel):
    device_id: str
    deployment_id: str | None  # None: the version was already active, nothing was published
    from_version: str | None
    to: KeptVersion
    waited: bool
    active: bool
    wait_seconds: float | None = None
    status: DeviceStatus | None = None


def _describe_kept(kept: list[KeptVersion]) -> str:
    if not kept:
        return "none"
    return ", ".join(f"{k.version} ({k.bundle_id[:12]}{', failed' if k.failed else ''})" for k in kept)


def choose_target(status: DeviceStatus, to_version: str | None) -> KeptVersion:
    """The kept version to go back to: `to_version`, else the most recently active good one that is not
    active now. RollbackError says why there is none."""
    device = status.device_id
    active_id = status.model.bundle_id if status.model else None
    if not status.kept:
        raise RollbackError(
            f"device {device} reports no kept versions (an agent older than rollback support, or nothing "
            "installed yet); deploy the version you want with `edgefleet deploy`"
        )
    if to_version is not None:
        matches = [k for k in status.kept if k.version == to_version]
        if not matches:
            raise RollbackError(
                f"version {to_version} is not kept on device {device} (kept: {_describe_kept(status.kept)}); "
                "deploy it with `edgefleet deploy`"
            )
        good = [k for k in matches if not k.failed]
        return (good or matches)[0]  # the list is most recently active first
    for kept in status.kept:
        if kept.bundle_id != active_id and not kept.failed:
            return kept
    raise RollbackError(
        f"device {device} keeps no earlier good version to roll back to (kept: {_describe_kept(status.kept)})"
    )


def rollback_device(
    broker_url: str,
    device_id: str,
    *,
    to_version: str | None = None,
    wait: bool = False,
    timeout: float = 60.0,
    progress: bool = False,
    console: Console | None = None,
) -> RollbackResult:
    try:
        ids.check_device_id(device_id)
    except ValueError as exc:
        raise RollbackError(str(exc)) from exc
    display = _Display((console or Console(stderr=True)) if progress else None)
    with BrokerSession(broker_url, "rollback") as session:
        watch = DeviceWatch.subscribed(session, device_id)
        if "status" in watch.invalid:
            reason = watch.invalid["status"]
            raise RollbackError(f"device {device_id}: its retained status is unreadable ({reason})")
        status = watch.status
        if status is None:
            raise RollbackError(
                f"device {device_id} has never reported a status on {session.address}; cannot tell which "
                "versions it keeps"
            )
        target = choose_target(status, to_version)
        current = status.model
        if current is not None and current.bundle_id == target.bundle_id:
            display.info(f"device {device_id}: {target.name} {target.version} is already active")
            return RollbackResult(
                device_id=device_id,
                deployment_id=None,
                from_version=current.version,
                to=target,
                waited=wait,
                active=True,
                status=status,
            )
        if target.failed:
            display.warn(
                f"version {target.version} failed on device {device_id} before; trying it again under a new "
                "deployment id"
            )
        desired = DesiredState(
            deployment_id=new_deployment_id(),
            bundle_id=target.bundle_id,
            name=target.name,
            version=target.version,
            profile=status.profile,
        )
        publish_desired(session, device_id, desired)
        display.info(
            f"device {device_id}: rolling back from {current.version if current else 'nothing'} to "
            f"{target.name} {target.version} (bundle {target.bundle_id[:12]}, "
            f"deployment {desired.deployment_id})"
        )
        result = RollbackResult(
            device_id=device_id,
            deployment_id=desired.deployment_id,
            from_version=current.version if current else None,
            to=target,
            waited=wait,
            active=False,
            status=status,
        )
        if not wait:
            return result
        return wait_until_active(result, session, watch, desired, device_id, timeout, display)


def run_rollback(args: argparse.Namespace) -> int:
    """CLI entry point (edgefleet rollback)."""
    result = rollback_device(
        args.broker, args.device, to_version=args.to, wait=args.wait, timeout=args.timeout, progress=True
    )
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    target = result.to
    if result.active:
        print(f"device {result.device_id}: {target.name} {target.version} active")
    else:
        print(
            f"device {result.device_id}: desired state set to {target.name} {target.version} "
            f"(deployment {result.deployment_id}, bundle {target.bundle_id[:12]})"
        )
    return 0
