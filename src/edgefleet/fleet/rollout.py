"""Staged rollouts: put a bundle on the broker, then set the desired state of a canary set of devices, wait
until they run it healthily for a minimum time, then do the same batch by batch. When failures exceed the
threshold the rollout halts and every device it touched is sent back to its previous bundle. The plan and
each device's progress are persisted after every change (rollout_state.py), so a killed host command
resumes where it stopped. Devices that are offline get the bundle when they return (retained desired state).
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from rich.console import Console

from edgefleet.contract import topics
from edgefleet.contract.errors import ProfileError
from edgefleet.contract.messages import (
    CONTENT_JSON,
    DEFAULT_CHUNK_SIZE,
    DesiredState,
    DeviceEvent,
    DeviceEventKind,
    DeviceStatus,
    Presence,
    Telemetry,
    utc_now,
)
from edgefleet.contract.profiles import load_profile
from edgefleet.fleet.inventory import Inventory
from edgefleet.fleet.rollout_state import (
    TOUCHED,
    DeviceProgress,
    RolloutError,
    RolloutOptions,
    RolloutState,
    RolloutStore,
    new_rollout_id,
)
from edgefleet.fleet.selectors import Selector
from edgefleet.fleet.session import BrokerSession
from edgefleet.fleet.upload import PreparedBundle, prepare_bundle, upload_bundle
from edgefleet.mqtt import publish_properties

DEFAULT_CANARY = "10%"
DEFAULT_BATCH = "25%"
DEFAULT_MIN_HEALTHY_S = 30.0
DEFAULT_STAGE_TIMEOUT_S = 300.0
DEFAULT_ROLLBACK_WAIT_S = 60.0
SAVE_EVERY_S = 0.5  # progress is saved at most this often (stage starts and the end are saved at once)
SUMMARY_EVERY_S = 2.0
PER_DEVICE_LINES_UP_TO = 50  # larger rollouts print a summary line instead of one line per device
# Device events that fail a device when they name this rollout's deployment id (kinds the contract defines;
# `rolled_back` is what an agent whose probation failed reports).
FAILURE_EVENTS: frozenset[DeviceEventKind] = frozenset({"rejected", "rolled_back", "error"})


def parse_count(text: str, total: int, what: str) -> int:
    """'N' or 'P%' of `total` (rounded up), at least 1 and at most `total`."""
    raw = text.strip()
    try:
        if raw.endswith("%"):
            percent = float(raw[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            count = math.ceil(total * percent / 100)
        else:
            count = int(raw)
            if count < 1:
                raise ValueError
    except ValueError:
        raise RolloutError(
            f"{what} {text!r} is not a device count or a percentage; use e.g. 5 or 10%"
        ) from None
    return max(1, min(total, count))


@dataclass
class Plan:
    stages: list[list[str]]
    devices: dict[str, DeviceProgress]
    skipped_profiles: dict[str, list[str]]  # profile -> device ids skipped because of it


def plan_rollout(
    inventory: Inventory, selector: Selector, bundle: PreparedBundle, canary: str, batch: str
) -> Plan:
    """Which devices get the bundle, in which stage. Raises RolloutError when nothing can be rolled out."""
    matched = inventory.select(selector)
    if not matched:
        raise RolloutError(inventory.no_match_message(selector))
    profile = bundle.manifest.profile
    devices: dict[str, DeviceProgress] = {}
    eligible: list[tuple[bool, str]] = []
    skipped_profiles: dict[str, list[str]] = {}
    for record in matched:
        progress = DeviceProgress(device_id=record.device_id, profile=record.profile)
        devices[record.device_id] = progress
        status = record.status
        if status is None:
            reason = record.invalid.get("status", "it never published a status")
            progress.state, progress.detail = "skipped", f"profile unknown: {reason}"
        elif status.profile != profile:
            progress.state = "skipped"
            progress.detail = f"runs profile '{status.profile}', the bundle is for '{profile}'"
            skipped_profiles.setdefault(status.profile, []).append(record.device_id)
        elif status.model is not None and status.model.bundle_id == bundle.bundle_id:
            progress.state, progress.detail = "already", "already runs this bundle"
        else:
            progress.previous = status.model
            eligible.append((not record.online, record.device_id))  # online devices first
    if not eligible and skipped_profiles and not any(d.state == "already" for d in devices.values()):
        found = "; ".join(f"{p}: {len(ids)}" for p, ids in sorted(skipped_profiles.items()))
        raise RolloutError(
            f"bundle {bundle.path.name} was built for profile '{profile}' but the {len(matched)} devices "
            f"selected by '{selector}' run other profiles ({found}); convert the model for their profile "
            f"(edgefleet convert --profile ...) or select '{profile}' devices"
        )
    if not eligible and not any(d.state == "already" for d in devices.values()):
        raise RolloutError(
            f"none of the {len(matched)} devices selected by '{selector}' can take the bundle: "
            + "; ".join(f"{d.device_id}: {d.detail}" for d in list(devices.values())[:5])
        )
    order = [device_id for _, device_id in sorted(eligible)]
    stages: list[list[str]] = []
    if order:
        first = parse_count(canary, len(order), "--canary")
        step = parse_count(batch, len(order), "--batch")
        stages.append(order[:first])
        stages.extend(order[i : i + step] for i in range(first, len(order), step))
    for index, stage in enumerate(stages):
        for device_id in stage:
            devices[device_id].stage = index
    return Plan(stages, devices, skipped_profiles)


class RolloutDisplay:
    """Human-friendly progress on a rich console (stderr); silent without one (the Python API)."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self._last_summary = ""
        self._last_summary_at = 0.0

    def say(self, text: str, style: str | None = None) -> None:
        if self.console is not None:
            self.console.print(text, style=style, highlight=False, markup=False)

    def summary(self, state: RolloutState, force: bool = False) -> None:
        if self.console is None:
            return
        counts = state.counts()
        order = (
            "planned",
            "deploying",
            "active",
            "healthy",
            "failed",
            "rollback_sent",
            "rolled_back",
            "already",
            "skipped",
        )
        parts = [f"{counts[k]} {k}" for k in order if counts.get(k)]
        text = f"stage {state.stage_label(state.stage)}: " + ", ".join(parts)
        now = time.monotonic()
        if force or (text != self._last_summary and now - self._last_summary_at >= SUMMARY_EVERY_S):
            self._last_summary, self._last_summary_at = text, now
            self.say(text)


@dataclass
class RolloutRunner:
    """Drives one rollout to its end (completed or halted) over one broker session."""

    state: RolloutState
    store: RolloutStore
    session: BrokerSession
    inventory: Inventory
    display: RolloutDisplay
    _: KW_ONLY
    rollback_wait_s: float = DEFAULT_ROLLBACK_WAIT_S
    on_tick: Callable[[RolloutState], None] | None = None
    _dirty: bool = field(default=False, init=False)
    _saved_at: float = field(default=0.0, init=False)
    # host clock (monotonic) at which each device's stage timer started; reset on resume
    _clock: dict[str, float] = field(default_factory=dict, init=False)
    _online_since: dict[str, float] = field(default_factory=dict, init=False)

    @property
    def _verbose(self) -> bool:
        return len(self.state.devices) <= PER_DEVICE_LINES_UP_TO

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> RolloutState:
        state = self.state
        now = time.monotonic()
        for device_id in state.devices:
            if self.inventory.online(device_id):
                self._online_since[device_id] = now
            if state.devices[device_id].state in ("deploying", "active"):
                self._clock[device_id] = now
        if state.status == "rolling_back":
            self._rollback()
            return self.state
        if state.stage >= 0:
            self.display.say(f"resuming at stage {state.stage_label(state.stage)}")
            # Republishing is idempotent (same deployment id and bundle) and covers a kill between saving
            # a stage and publishing it.
            self._publish_desired([d.device_id for d in state.in_state("deploying", "active")])
        while state.status == "running":
            self._drain(0.2)
            self._tick()
            if self.on_tick is not None:
                self.on_tick(state)
        self._save(force=True)
        return state

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                message = self.session.messages.get(timeout=max(0.0, remaining))
            except queue.Empty:
                return
            self._on_message(message)
            if remaining <= 0:
                # keep draining what is already queued without waiting, but never forever
                while True:
                    try:
                        self._on_message(self.session.messages.get_nowait())
                    except queue.Empty:
                        return

    def _tick(self) -> None:
        state = self.state
        now = time.monotonic()
        for progress in state.in_state("deploying", "active"):
            self._check_time(progress, now)
        if state.failures > state.options.max_failures:
            failed = [d.device_id for d in state.devices.values() if d.failure][:5]
            self._halt(
                f"{state.failures} device(s) failed, more than --max-failures {state.options.max_failures} "
                f"(first: {', '.join(failed)})"
            )
            return
        if state.stage < 0 or self._stage_settled():
            if state.stage + 1 < len(state.stages):
                self._start_stage(state.stage + 1)
            else:
                self._complete()
                return
        self.display.summary(state)
        self._save()

    # -- stages ------------------------------------------------------------------------------------
    def _start_stage(self, index: int) -> None:
        state = self.state
        device_ids = state.stages[index]
        now, wall = time.monotonic(), utc_now()
        for device_id in device_ids:
            progress = state.devices[device_id]
            progress.state, progress.desired_at, progress.detail = "deploying", wall, ""
            if not self.inventory.online(device_id):
                progress.detail = "offline: it gets the bundle when it returns"
            self._clock[device_id] = now
        state.stage = index
        # Write-ahead: the state names these devices as touched before any of them is told anything, so a
        # rollback after a crash reaches every device that may have received the desired state.
        self._save(force=True)
        offline = sum(1 for d in device_ids if not self.inventory.online(d))
        self.display.say(
            f"stage {state.stage_label(index)}: {len(device_ids)} devices"
            + (f" ({offline} offline: they get it when they return)" if offline else "")
        )
        self._publish_desired(device_ids)

    def _stage_settled(self) -> bool:
        """Every device sent the bundle so far is healthy or failed, or offline (it catches up later); and
        at least one canary device confirmed the bundle, so a canary of offline devices proves nothing."""
        state = self.state
        for progress in state.devices.values():
            if progress.stage is None or progress.stage > state.stage:
                continue
            if progress.state in ("deploying", "active") and self.inventory.online(progress.device_id):
                return False
        canary = [state.devices[d] for d in state.stages[0]]
        if any(d.state == "healthy" for d in canary):
            return True
        if all(d.failure for d in canary):
            self._halt(f"every canary device failed ({len(canary)})")
            return False
        started = min((d.desired_at for d in canary if d.desired_at), default=utc_now())
        timeout = state.options.stage_timeout_s
        if (utc_now() - started) / timedelta(seconds=1) > timeout:
            self._halt(
                f"no canary device confirmed the bundle within --stage-timeout {timeout:g} s (offline)"
            )
        return False

    def _complete(self) -> None:
        state = self.state
        state.status = "completed"
        pending = state.in_state("deploying", "active")
        for progress in pending:
            progress.detail = (
                "offline: it gets the bundle when it returns"
                if progress.state == "deploying"
                else "went offline before its health was confirmed"
            )
        healthy = len(state.in_state("healthy"))
        state.notes.append(
            f"completed: {healthy} healthy, {state.failures} failed, {len(pending)} pending (offline)"
        )
        self._save(force=True)
        self.display.summary(state, force=True)
        self.display.say(state.notes[-1])

    # -- observations ------------------------------------------------------------------------------
    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        received = self.inventory.feed(message.topic, bytes(message.payload))
        if received is None:
            return
        progress = self.state.devices.get(received.device_id)
        if received.leaf == "online" and isinstance(received.message, Presence):
            if received.message.online:
                self._online_since[received.device_id] = received.received_at
            else:
                self._online_since.pop(received.device_id, None)
        if progress is None or progress.state not in ("deploying", "active", "healthy"):
            return
        if isinstance(received.message, DeviceStatus):
            self._on_status(progress, received.message)
        elif isinstance(received.message, Telemetry):
            self._on_telemetry(progress, received.message)
        elif isinstance(received.message, DeviceEvent):
            self._on_event(progress, received.message)

    def _on_status(self, progress: DeviceProgress, status: DeviceStatus) -> None:
        bundle = self.state.bundle
        model = status.model
        runs_bundle = model is not None and model.bundle_id == bundle.bundle_id
        if progress.state == "deploying" and runs_bundle:
            progress.state, progress.active_at, progress.detail = "active", utc_now(), ""
            self._changed(progress, "active")
        elif progress.state in ("active", "healthy") and not runs_bundle:
            if model is None:
                self._fail(progress, "no model is active any more")
            elif progress.previous is not None and model.bundle_id == progress.previous.bundle_id:
                self._fail(progress, f"went back to {model.name} {model.version} on its own")
            else:
                self._fail(progress, f"now runs {model.name} {model.version} (bundle {model.bundle_id[:12]})")

    def _on_telemetry(self, progress: DeviceProgress, telemetry: Telemetry) -> None:
        # judged on what the model did: a client's malformed or refused requests are not the model's errors
        errors, served = telemetry.model_errors, telemetry.served
        if progress.baseline_errors is not None and errors < progress.baseline_errors:
            # the agent restarted: its counters start again at zero
            progress.baseline_errors, progress.baseline_requests = 0, 0
        baseline_errors, baseline_requests = progress.baseline_errors, progress.baseline_requests
        if (
            progress.state == "deploying"
            or telemetry.model_version != self.state.bundle.version
            or baseline_errors is None  # nothing known from before the activation: this report is the
            or baseline_requests is None  # baseline, the next one counts
        ):
            progress.baseline_errors, progress.baseline_requests = errors, served
            return
        problem = self.state.options.health().problem(
            served - baseline_requests, errors - baseline_errors, telemetry.latency_ms.p95
        )
        if problem is not None:
            self._fail(progress, f"inference errors or latency since activation: {problem}")
            return
        if not progress.reported_healthy:
            progress.reported_healthy = True
            self._dirty = True

    def _on_event(self, progress: DeviceProgress, event: DeviceEvent) -> None:
        if event.kind in FAILURE_EVENTS and event.deployment_id == self.state.rollout_id:
            self._fail(progress, f"{event.kind}: {event.detail or 'no reason given'}")

    def _check_time(self, progress: DeviceProgress, now: float) -> None:
        options = self.state.options
        device_id = progress.device_id
        if progress.state == "active" and progress.active_at is not None:
            healthy_for = (utc_now() - progress.active_at) / timedelta(seconds=1)
            if (
                healthy_for >= options.min_healthy_s
                and progress.reported_healthy
                and not self._on_probation(device_id)
            ):
                progress.state, progress.healthy_at, progress.finished_at = "healthy", utc_now(), utc_now()
                self._changed(progress, "healthy")
                return
        online_since = self._online_since.get(device_id)
        if online_since is None:
            return  # offline: no clock runs; it catches up when it returns
        started = max(self._clock.get(device_id, now), online_since)
        if now - started > options.stage_timeout_s:
            if progress.state == "deploying":
                what = f"{self.state.bundle.name} {self.state.bundle.version} not active"
            elif not progress.reported_healthy:
                what = "no healthy telemetry report on the new version"
            else:
                what = "not healthy for long enough"
            self._fail(progress, f"{what} within --stage-timeout {options.stage_timeout_s:g} s")

    def _on_probation(self, device_id: str) -> bool:
        """True while the device itself still watches the new bundle (agents with probation report it in
        their status); the device's own verdict comes before ours."""
        status = self.inventory.status(device_id)
        probation = status.probation if status else None
        return probation is not None and probation.bundle_id == self.state.bundle.bundle_id

    def _fail(self, progress: DeviceProgress, reason: str) -> None:
        """Count the failure and send this device back to its previous bundle at once, whether or not the
        rollout halts: a device must not stay on (or retry after a restart) a bundle that failed on it."""
        if progress.failure is not None:
            return
        progress.state, progress.failure, progress.finished_at = "failed", reason, utc_now()
        previous = progress.previous
        back = f"{previous.name} {previous.version}" if previous else "no model (desired state cleared)"
        progress.detail = f"{reason}; sent back to {back}"
        mid, device_id = self._send_back(progress)
        self.session.wait_published(mid, f"the rollback desired state of device {device_id}")
        self._dirty = True
        self.display.say(f"{progress.device_id}: FAILED: {reason}", style="red")

    def _changed(self, progress: DeviceProgress, what: str) -> None:
        self._dirty = True
        if self._verbose:
            self.display.say(f"{progress.device_id}: {what}")

    # -- halting and rolling back ------------------------------------------------------------------
    def _halt(self, reason: str) -> None:
        state = self.state
        state.halt_reason = reason
        state.status = "rolling_back"
        self.display.say(f"halting: {reason}; rolling back every device this rollout touched", style="red")
        self._save(force=True)
        self._rollback()

    def _send_back(self, progress: DeviceProgress) -> tuple[int, str]:
        """Publish the retained desired state that returns this device to its previous bundle."""
        previous = progress.previous
        if previous is None:
            # nothing to go back to: clearing the desired state stops a pending delivery (an agent has no
            # "unload"; a device that already switched keeps the new model until given another)
            return self._publish(topics.desired(progress.device_id), b"", progress.device_id)
        desired = DesiredState(
            deployment_id=self.state.rollback_deployment_id,
            bundle_id=previous.bundle_id,
            name=previous.name,
            version=previous.version,
            profile=self.state.bundle.profile,
        )
        return self._publish(topics.desired(progress.device_id), desired.to_bytes(), progress.device_id)

    def _rollback(self) -> None:
        """Set every touched device's desired state back to its previous bundle and wait (bounded) for the
        online ones to report it; devices offline now get it when they return."""
        state = self.state
        touched = [d for d in state.devices.values() if d.state in TOUCHED]
        mids = [self._send_back(progress) for progress in touched]
        for progress in touched:
            if progress.state != "rolled_back":
                progress.state = "rollback_sent"
        for mid, device_id in mids:
            self.session.wait_published(mid, f"the rollback desired state of device {device_id}")
        state.status = "halted"
        self._save(force=True)
        deadline = time.monotonic() + self.rollback_wait_s
        while time.monotonic() < deadline:
            self._confirm_rollbacks()
            waiting = [
                d
                for d in state.in_state("rollback_sent")
                if self.inventory.online(d.device_id) and d.previous
            ]
            if not waiting:
                break
            self._drain(0.2)
        self._confirm_rollbacks()
        for progress in state.in_state("rollback_sent"):
            if progress.previous is None:
                progress.detail = (progress.failure or "") + "; had no model before: desired state cleared"
            elif not self.inventory.online(progress.device_id):
                progress.detail = (progress.failure or "") + "; offline: goes back when it returns"
        back = len(state.in_state("rolled_back"))
        state.notes.append(
            f"halted: {state.halt_reason}; {back} of {len(touched)} touched devices confirmed back on their "
            "previous bundle"
        )
        self._save(force=True)
        self.display.summary(state, force=True)
        self.display.say(state.notes[-1], style="red")

    def _confirm_rollbacks(self) -> None:
        for progress in self.state.in_state("rollback_sent"):
            status = self.inventory.status(progress.device_id)
            previous = progress.previous
            if previous and status and status.model and status.model.bundle_id == previous.bundle_id:
                progress.state = "rolled_back"
                progress.finished_at = utc_now()
                if self._verbose:
                    self.display.say(f"{progress.device_id}: back on {previous.name} {previous.version}")

    # -- publishing --------------------------------------------------------------------------------
    def _publish_desired(self, device_ids: Iterable[str]) -> None:
        state = self.state
        desired = DesiredState(
            deployment_id=state.rollout_id,
            bundle_id=state.bundle.bundle_id,
            name=state.bundle.name,
            version=state.bundle.version,
            profile=state.bundle.profile,
        ).to_bytes()
        pending = [(self._publish(topics.desired(d), desired, d)) for d in device_ids]
        for mid, device_id in pending:
            self.session.wait_published(mid, f"the desired state of device {device_id}")

    def _publish(self, topic: str, payload: bytes, device_id: str) -> tuple[int, str]:
        props = publish_properties(ContentType=CONTENT_JSON) if payload else None
        return self.session.publish(topic, payload, qos=1, retain=True, properties=props), device_id

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or (self._dirty and now - self._saved_at >= SAVE_EVERY_S):
            self.store.save(self.state)
            self._dirty = False
            self._saved_at = now


# -- entry points (Python API) --------------------------------------------------------------------
def latency_budget(profile: str) -> float:
    try:
        return load_profile(profile).latency_budget_ms
    except ProfileError as exc:
        raise RolloutError(
            f"the bundle's profile '{profile}' is not known on this host ({exc}); add its YAML file to a "
            "folder in EDGEFLEET_PROFILES_PATH so the rollout can check latency against its budget"
        ) from exc


def _open_session(broker_url: str) -> tuple[BrokerSession, Inventory]:
    session = BrokerSession(broker_url, "rollout").open()
    inventory = Inventory()
    try:
        session.subscribe(list(Inventory.TOPICS))
        session.sync()  # every retained presence and status is in the queue now
        while True:
            try:
                message = session.messages.get_nowait()
                inventory.feed(message.topic, bytes(message.payload))
            except queue.Empty:
                break
    except BaseException:
        session.close()
        raise
    return session, inventory


def start_rollout(
    broker_url: str,
    bundle_path: Path | str,
    selector: str,
    *,
    canary: str = DEFAULT_CANARY,
    batch: str = DEFAULT_BATCH,
    max_failures: int = 0,
    min_healthy_s: float = DEFAULT_MIN_HEALTHY_S,
    stage_timeout_s: float = DEFAULT_STAGE_TIMEOUT_S,
    max_error_rate: float = 0.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rollback_wait_s: float = DEFAULT_ROLLBACK_WAIT_S,
    state_dir: Path | None = None,
    console: Console | None = None,
    on_tick: Callable[[RolloutState], None] | None = None,
) -> RolloutState:
    """Plan and run a rollout to its end; returns the final state (status `completed` or `halted`).

    An unfinished rollout of the same bundle and selector in `state_dir` is resumed instead of started
    again; an unfinished rollout of anything else is an error (resume or abort it first).
    """
    parsed = Selector.parse(selector)
    if stage_timeout_s <= min_healthy_s:
        raise RolloutError(
            f"--stage-timeout ({stage_timeout_s:g} s) must be longer than --min-healthy-seconds "
            f"({min_healthy_s:g} s): it covers the delivery and the health window"
        )
    if max_failures < 0:
        raise RolloutError("--max-failures must be 0 or more")
    if not 0.0 <= max_error_rate <= 1.0:
        raise RolloutError("--max-error-rate must be between 0 and 1")
    parse_count(canary, 1, "--canary")  # syntax errors now, before anything connects
    parse_count(batch, 1, "--batch")
    bundle = prepare_bundle(Path(bundle_path), chunk_size)
    store = RolloutStore(state_dir)
    for unfinished in store.unfinished():
        if unfinished.bundle.bundle_id == bundle.bundle_id and unfinished.options.selector == str(parsed):
            return resume_rollout(
                unfinished.rollout_id,
                state_dir=state_dir,
                broker_url=broker_url,
                console=console,
                rollback_wait_s=rollback_wait_s,
                on_tick=on_tick,
            )
        raise RolloutError(
            f"rollout {unfinished.rollout_id} ({unfinished.bundle.name} {unfinished.bundle.version} to "
            f"'{unfinished.options.selector}') is not finished; resume it with `edgefleet rollout resume "
            f"{unfinished.rollout_id}` or abort it with `edgefleet rollout abort {unfinished.rollout_id}`"
        )
    budget = latency_budget(bundle.manifest.profile)
    display = RolloutDisplay(console)
    session, inventory = _open_session(broker_url)
    with session:
        plan = plan_rollout(inventory, parsed, bundle, canary, batch)
        state = RolloutState(
            rollout_id=new_rollout_id(),
            broker=session.address.url,
            bundle_path=str(Path(bundle_path).resolve()),
            bundle=bundle.meta,
            options=RolloutOptions(
                selector=str(parsed),
                canary=canary,
                batch=batch,
                max_failures=max_failures,
                min_healthy_s=min_healthy_s,
                stage_timeout_s=stage_timeout_s,
                latency_budget_ms=budget,
                max_error_rate=max_error_rate,
            ),
            stages=plan.stages,
            devices=plan.devices,
        )
        sizes = [len(s) for s in plan.stages]
        display.say(
            f"rollout {state.rollout_id}: {bundle.meta.name} {bundle.meta.version} (profile "
            f"{bundle.meta.profile}, bundle {bundle.bundle_id[:12]}) to {sum(sizes)} devices selected by "
            f"'{parsed}': "
            + (f"canary {sizes[0]}, then {len(sizes) - 1} batch(es)" if sizes else "nothing to do")
        )
        for profile, ids in sorted(plan.skipped_profiles.items()):
            shown = ", ".join(ids[:5]) + (f" (+{len(ids) - 5})" if len(ids) > 5 else "")
            display.say(f"skipped {len(ids)} device(s) of profile '{profile}': {shown}", style="yellow")
        for progress in state.devices.values():
            if progress.state == "skipped" and progress.profile is None:
                display.say(f"skipped {progress.device_id}: {progress.detail}", style="yellow")
        store.save(state)
        display.say(f"state: {store.path(state.rollout_id)}")
        stats = upload_bundle(session, bundle)
        display.say(
            f"bundle on the broker: {stats.bytes} bytes in {stats.chunks} chunks ({stats.seconds:.2f} s)"
        )
        return RolloutRunner(
            state, store, session, inventory, display, rollback_wait_s=rollback_wait_s, on_tick=on_tick
        ).run()


def resume_rollout(
    rollout_id: str | None = None,
    *,
    state_dir: Path | None = None,
    broker_url: str | None = None,
    console: Console | None = None,
    rollback_wait_s: float = DEFAULT_ROLLBACK_WAIT_S,
    on_tick: Callable[[RolloutState], None] | None = None,
) -> RolloutState:
    """Continue an unfinished rollout (the latest unfinished one without an id)."""
    store = RolloutStore(state_dir)
    if rollout_id is None:
        unfinished = store.unfinished()
        if not unfinished:
            raise RolloutError(f"no unfinished rollout in {store.directory}")
        state = unfinished[-1]
    else:
        state = store.load(rollout_id)
    display = RolloutDisplay(console)
    if state.status not in ("running", "rolling_back"):
        display.say(f"rollout {state.rollout_id} is {state.status}; nothing to resume")
        return state
    display.say(f"resuming rollout {state.rollout_id} ({state.bundle.name} {state.bundle.version})")
    session, inventory = _open_session(broker_url or state.broker)
    with session:
        bundle_file = Path(state.bundle_path)
        if state.status == "running" and bundle_file.is_file():
            # mosquitto persists retained messages only periodically: put the bundle back in case the broker
            # lost it (publishing the same retained chunks again is harmless)
            bundle = prepare_bundle(bundle_file, state.bundle.chunk_size)
            if bundle.bundle_id != state.bundle.bundle_id:
                raise RolloutError(
                    f"{bundle_file} changed since rollout {state.rollout_id} started (its sha256 differs); "
                    "restore the original file or abort the rollout"
                )
            upload_bundle(session, bundle)
        elif state.status == "running":
            display.say(f"{bundle_file} is gone; relying on the copy retained on the broker", style="yellow")
        return RolloutRunner(
            state, store, session, inventory, display, rollback_wait_s=rollback_wait_s, on_tick=on_tick
        ).run()


def abort_rollout(
    rollout_id: str | None = None,
    *,
    state_dir: Path | None = None,
    rollback: bool = False,
    broker_url: str | None = None,
    console: Console | None = None,
    rollback_wait_s: float = DEFAULT_ROLLBACK_WAIT_S,
) -> RolloutState:
    """Stop an unfinished rollout here; with `rollback`, send its touched devices back first."""
    store = RolloutStore(state_dir)
    state = store.load(rollout_id) if rollout_id else store.latest()
    if state.status not in ("running", "rolling_back"):
        raise RolloutError(f"rollout {state.rollout_id} is already {state.status}")
    display = RolloutDisplay(console)
    if rollback:
        session, inventory = _open_session(broker_url or state.broker)
        with session:
            state.halt_reason = "aborted by the operator"
            state.status = "rolling_back"
            store.save(state)
            RolloutRunner(state, store, session, inventory, display, rollback_wait_s=rollback_wait_s).run()
    state.status = "aborted"
    state.notes.append("aborted by the operator" + (" after rolling back" if rollback else ""))
    store.save(state)
    display.say(f"rollout {state.rollout_id} aborted")
    return state


def refresh_from_broker(state: RolloutState, broker_url: str | None = None) -> RolloutState:
    """Update devices still pending (offline during the rollout) from their retained status now."""
    session, inventory = _open_session(broker_url or state.broker)
    with session:
        for progress in state.devices.values():
            status = inventory.status(progress.device_id)
            model = status.model if status else None
            if model is None:
                continue
            if progress.state == "deploying" and model.bundle_id == state.bundle.bundle_id:
                progress.state, progress.active_at = "active", utc_now()
                progress.detail = "active (reported after the rollout ended; health not watched)"
            elif (
                progress.state == "rollback_sent"
                and progress.previous is not None
                and model.bundle_id == progress.previous.bundle_id
            ):
                progress.state, progress.finished_at = "rolled_back", utc_now()
    return state
