"""`edgefleet deploy`: put a bundle on the broker, set a device's desired state, and optionally follow the
device until it reports the bundle active (docs/protocol.md, "Deploying a bundle").
"""

from __future__ import annotations

import argparse
import queue
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt
from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from edgefleet.contract import ids, topics
from edgefleet.contract.messages import (
    CONTENT_JSON,
    DEFAULT_CHUNK_SIZE,
    DesiredState,
    DeviceEvent,
    DeviceStatus,
    utc_now,
)
from edgefleet.fleet.describe import describe_backend, describe_event, describe_status
from edgefleet.fleet.errors import DeployError, DeploymentRejected, DeploymentTimeout, ProfileMismatch
from edgefleet.fleet.fleet_view import FleetView, KnownDevice
from edgefleet.fleet.session import BrokerSession
from edgefleet.fleet.upload import DEFAULT_WINDOW, PreparedBundle, prepare_bundle, upload_bundle
from edgefleet.mqtt import publish_properties


class DeployResult(BaseModel):
    device_id: str
    deployment_id: str
    bundle_id: str
    name: str
    version: str
    profile: str
    size_bytes: int
    chunks: int
    upload_seconds: float
    upload_mib_per_s: float
    device_known: bool
    warnings: list[str]
    waited: bool
    active: bool
    wait_seconds: float | None = None
    status: DeviceStatus | None = None


def new_deployment_id(now: datetime | None = None) -> str:
    now = now or utc_now()
    return f"d-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


class DeviceWatch:
    """What one device has told us so far (the fleet view of that one device), fed from the session's
    queue."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self._view = FleetView(device_ids=(device_id,))

    @classmethod
    def subscribed(cls, session: BrokerSession, device_id: str) -> DeviceWatch:
        """Subscribe to the device's status, online and event topics (before anything is published, so no
        event of what follows can be missed) and take in what the broker holds for it."""
        session.subscribe([topics.status(device_id), topics.online(device_id), topics.events(device_id)])
        session.sync()
        watch = cls(device_id)
        watch.drain(session.messages)
        return watch

    @property
    def _device(self) -> KnownDevice:
        return self._view.get(self.device_id) or KnownDevice(self.device_id)

    @property
    def status(self) -> DeviceStatus | None:
        return self._device.status

    @property
    def invalid(self) -> dict[str, str]:
        return self._device.invalid

    def feed(self, message: mqtt.MQTTMessage) -> DeviceEvent | None:
        """Record a message; returns it when it is an event (events are not retained: act on them now)."""
        received = self._view.feed(message.topic, bytes(message.payload))
        event = received.message if received is not None else None
        return event if isinstance(event, DeviceEvent) else None

    def drain(self, messages: queue.Queue[mqtt.MQTTMessage]) -> None:
        while True:
            try:
                self.feed(messages.get_nowait())
            except queue.Empty:
                return

    def last_seen(self) -> str:
        device, parts = self._device, []
        if device.online is not None:
            parts.append("online" if device.online else "offline (its last will or a clean shutdown)")
        if device.status is not None:
            parts.append(f"status: {describe_status(device.status)}")
        if device.last_event is not None:
            parts.append(f"last event: {describe_event(device.last_event)}")
        parts.extend(f"invalid {leaf}: {reason}" for leaf, reason in device.invalid.items())
        if not parts:
            return "nothing at all from the device (is it running and connected to this broker?)"
        return "; ".join(parts)


class _AverageSpeedColumn(ProgressColumn):
    """Bytes per second since the task started (rich's own estimate is erratic on fast links)."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0 or not task.completed:
            return Text("?", style="progress.data.speed")
        return Text(f"{task.completed / elapsed / 1024**2:.0f} MiB/s", style="progress.data.speed")


class _Display:
    """Rich progress output for the CLI; does nothing when progress is off (the Python API)."""

    def __init__(self, console: Console | None) -> None:
        self.console = console

    def warn(self, text: str) -> None:
        if self.console is not None:
            self.console.print(f"[yellow]warning:[/] {text}", highlight=False)

    def info(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)

    @contextmanager
    def upload(self, bundle: PreparedBundle) -> Iterator[Progress | None]:
        if self.console is None:
            yield None
            return
        with Progress(
            TextColumn("upload {task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _AverageSpeedColumn(),
            TimeElapsedColumn(),
            console=self.console,
        ) as progress:
            yield progress

    @contextmanager
    def delivery(self) -> Iterator[Progress | None]:
        if self.console is None:
            yield None
            return
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("chunks"),
            TimeElapsedColumn(),
            console=self.console,
        ) as progress:
            yield progress


def deploy_bundle(
    broker_url: str,
    bundle_path: Path | str,
    device_id: str,
    *,
    wait: bool = False,
    timeout: float = 120.0,
    progress: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    window: int = DEFAULT_WINDOW,
    console: Console | None = None,
) -> DeployResult:
    """Deploy a bundle to one device; with `wait`, return only once the device reports it active.

    Raises DeployError (ProfileMismatch, DeploymentRejected, DeploymentTimeout), BundleError for an
    unreadable bundle and BrokerError when the broker cannot be reached.
    """
    try:
        ids.check_device_id(device_id)
    except ValueError as exc:
        raise DeployError(str(exc)) from exc
    display = _Display((console or Console(stderr=True)) if progress else None)
    bundle = prepare_bundle(Path(bundle_path), chunk_size)
    manifest, meta = bundle.manifest, bundle.meta
    warnings: list[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        display.warn(text)

    with BrokerSession(broker_url, "deploy") as session:
        watch = DeviceWatch.subscribed(session, device_id)
        if "status" in watch.invalid:
            warn(
                f"device {device_id}: its retained status is unreadable ({watch.invalid['status']}); "
                "cannot check its profile"
            )
        elif watch.status is None:
            warn(
                f"device {device_id} has never reported a status on {session.address}; the desired state "
                "is published anyway and the device will pick it up when it comes online"
            )
        elif watch.status.profile != manifest.profile:
            device_profile = watch.status.profile
            raise ProfileMismatch(
                f"bundle {bundle.path.name} was built for profile '{manifest.profile}' but device "
                f"{device_id} reports profile '{device_profile}'; convert the model for that profile "
                f"(edgefleet convert --profile {device_profile}) and deploy the new bundle"
            )

        with display.upload(bundle) as bar:
            task = bar.add_task(f"{meta.name} {meta.version}", total=meta.size) if bar else None

            def advance(n_bytes: int) -> None:
                if bar is not None and task is not None:
                    bar.advance(task, n_bytes)

            stats = upload_bundle(session, bundle, window=window, on_progress=advance)

        deployment_id = new_deployment_id()
        desired = DesiredState(
            deployment_id=deployment_id,
            bundle_id=meta.bundle_id,
            name=meta.name,
            version=meta.version,
            profile=meta.profile,
        )
        publish_desired(session, device_id, desired)
        chunks = f"{stats.chunks} chunk{'s' if stats.chunks != 1 else ''}"
        display.info(
            f"bundle {meta.bundle_id[:12]} ({meta.size} bytes, {chunks}) uploaded in "
            f"{stats.seconds:.2f} s ({stats.mib_per_s:.0f} MiB/s)"
        )
        display.info(
            f"device {device_id} should now run {meta.name} {meta.version} (deployment {deployment_id})"
        )
        result = DeployResult(
            device_id=device_id,
            deployment_id=deployment_id,
            bundle_id=meta.bundle_id,
            name=meta.name,
            version=meta.version,
            profile=meta.profile,
            size_bytes=meta.size,
            chunks=stats.chunks,
            upload_seconds=stats.seconds,
            upload_mib_per_s=stats.mib_per_s,
            device_known=watch.status is not None,
            warnings=warnings,
            waited=wait,
            active=False,
            status=watch.status,
        )
        if not wait:
            return result
        return wait_until_active(result, session, watch, desired, device_id, timeout, display)


def publish_desired(session: BrokerSession, device_id: str, desired: DesiredState) -> None:
    """Publish `desired` as the device's retained desired state and wait until the broker has it."""
    mid = session.publish(
        topics.desired(device_id),
        desired.to_bytes(),
        qos=1,
        retain=True,
        properties=publish_properties(ContentType=CONTENT_JSON),
    )
    session.wait_published(mid, f"the desired state of device {device_id}")


_ResultT = TypeVar("_ResultT", bound=BaseModel)


def wait_until_active(
    result: _ResultT,
    session: BrokerSession,
    watch: DeviceWatch,
    desired: DesiredState,
    device_id: str,
    timeout: float,
    display: _Display,
) -> _ResultT:
    """Wait for the device to report `desired` active and return `result` updated with that status and
    the seconds waited (`result` has the fields active, status and wait_seconds). Raises
    DeploymentRejected when the device rejects this deployment, DeploymentTimeout after `timeout` s."""
    started = time.monotonic()
    deadline = started + timeout
    with display.delivery() as bar:
        task: TaskID | None = bar.add_task(f"device {device_id}: waiting", total=None) if bar else None
        while True:
            status = watch.status
            if (
                status is not None
                and status.model is not None
                and status.model.bundle_id == desired.bundle_id
            ):
                if bar is not None and task is not None:  # a full bar: kept bundles need no download
                    total = next(t.total for t in bar.tasks if t.id == task) or 1
                    bar.update(task, total=total, completed=total, description=f"device {device_id}: active")
                return result.model_copy(
                    update={"active": True, "status": status, "wait_seconds": time.monotonic() - started}
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                last_seen = watch.last_seen()
                raise DeploymentTimeout(
                    f"device {device_id} did not report {desired.name} {desired.version} active within "
                    f"{timeout:g} s (deployment {desired.deployment_id}); last seen: {last_seen}",
                    last_seen,
                )
            try:
                message = session.messages.get(timeout=min(remaining, 0.25))
            except queue.Empty:
                continue
            event = watch.feed(message)
            if event is None or event.deployment_id not in (desired.deployment_id, None):
                if bar is not None and task is not None and watch.status is not None:
                    bar.update(task, description=f"device {device_id}: {watch.status.state}")
                continue
            if event.kind == "rejected" and event.deployment_id == desired.deployment_id:
                raise DeploymentRejected(
                    f"device {device_id} rejected {desired.name} {desired.version} "
                    f"(deployment {desired.deployment_id}): {event.detail or 'no reason given'}",
                    event.detail,
                )
            if bar is not None and task is not None:
                update: dict[str, object] = {"description": f"device {device_id}: {event.kind}"}
                if event.chunks_total:
                    update |= {"total": event.chunks_total, "completed": event.chunks_received or 0}
                bar.update(task, **update)  # type: ignore[arg-type]
            if event.kind == "warning":
                display.warn(f"device {device_id}: {event.detail}")


def run_deploy(args: argparse.Namespace) -> int:
    """CLI entry point (edgefleet deploy)."""
    result = deploy_bundle(
        args.broker,
        args.bundle,
        args.device,
        wait=args.wait,
        timeout=args.timeout,
        progress=True,
        chunk_size=args.chunk_kib * 1024,
    )
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    if result.active and result.status is not None:
        backend = result.status.backend
        print(
            f"device {result.device_id}: {result.name} {result.version} active "
            f"(backend {describe_backend(backend)})"
        )
    else:
        print(
            f"device {result.device_id}: desired state set to {result.name} {result.version} "
            f"(deployment {result.deployment_id}, bundle {result.bundle_id[:12]})"
        )
    return 0
