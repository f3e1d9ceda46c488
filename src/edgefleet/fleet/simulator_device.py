"""One simulated device: the device side of docs/protocol.md (presence with a last will, retained status,
telemetry, desired state, chunked delivery verified per chunk, activation and rejection events) on a paho
client that the simulator's selector loop drives. Inference is synthetic: telemetry reports made-up request
counts and latencies around the profile's budget; a device marked failing reports errors and latencies over
budget after activating a new bundle (or rejects it, `fail_mode="reject"`, or rolls back on its own during
its probation like an agent, `fail_mode="rollback"`). With `fail_mode="client_errors"` the model is fine
but half the requests are bad ones a hostile client sent: errors that are the client's, not the model's.
"""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, Field, ValidationError

from edgefleet import __version__
from edgefleet.contract import topics
from edgefleet.contract.health import HealthPolicy
from edgefleet.contract.messages import (
    ActiveModel,
    BackendInfo,
    BundleMeta,
    DesiredState,
    DeviceEvent,
    DeviceState,
    DeviceStatus,
    KeptVersion,
    LatencySummary,
    Presence,
    ProbationStatus,
    Telemetry,
    utc_now,
)
from edgefleet.contract.profiles import DeviceProfile
from edgefleet.mqtt import new_client, publish_properties
from edgefleet.protocol.delivery import (
    Action,
    ChunkStore,
    Delivery,
    DeliverySettings,
    Log,
    Reject,
    carry_out,
    wrong_profile,
)
from edgefleet.protocol.probation import ProbationLimits, RunStats, judge

log = logging.getLogger(__name__)

FailMode = Literal["errors", "reject", "rollback", "client_errors"]
State = DeviceState  # the contract's states, shared with the real agent

KEEP_BUNDLES = 3  # like the agent's default keep_bundles: the previous versions stay installed
DELIVERY = DeliverySettings()  # the agent's defaults: stall after 10 s, pull window 16, backoff, ...
ROLLBACK_PROBATION_S = 1.0  # fail_mode "rollback" without a probation window: watch at least this long
PROBATION_CHECK_S = 0.2  # how often the simulated runs of a model on probation are judged
TELEMETRY_EXPIRY_S = 60


class FetchRecord(BaseModel):
    """What a simulated device received of one bundle."""

    chunks_received: int = Field(default=0, description="chunks that passed their sha256 check")
    bytes_received: int = 0
    chunks_dropped: int = Field(default=0, description="chunks that failed their sha256 check")
    complete: bool = False


class SimDeviceLog(BaseModel):
    """The simulator's own record of one device: what it was asked to run, what it fetched, what it did."""

    device_id: str
    profile: str
    failing: bool
    connects: int = 0
    desired_seen: list[str] = Field(default_factory=list, description="bundle ids of desired states received")
    fetched: dict[str, FetchRecord] = Field(default_factory=dict, description="bundle id -> what arrived")
    activated: list[str] = Field(default_factory=list, description="bundle ids activated, in order")
    rejected: list[str] = Field(default_factory=list, description="'<bundle id>: <reason>'")
    telemetry_sent: int = 0
    rollbacks: int = Field(default=0, description="times it went back to its previous bundle on its own")
    rollback_reasons: list[str] = Field(default_factory=list, description="the probation judge's, in order")
    active_bundle: str | None = None
    active_version: str | None = None

    def received_any_of(self, bundle_id: str) -> bool:
        """True when this device saw a desired state for, or any chunk of, the bundle."""
        return bundle_id in self.desired_seen or bundle_id in self.fetched


@dataclass(frozen=True)
class SimOptions:
    telemetry_interval_s: float | None
    fail_mode: FailMode
    activation_s: float
    probation_s: float
    requests_per_s: float
    tags: dict[str, str]


class SimEnvironment(Protocol):
    """What the simulator's loop provides to its devices."""

    profile: DeviceProfile
    options: SimOptions
    rng: random.Random

    def call_later(self, delay: float, callback: Callable[[], None]) -> None: ...

    def register_socket(self, device: SimDevice, sock: Any) -> None: ...

    def unregister_socket(self, sock: Any) -> None: ...

    def want_write(self, device: SimDevice, sock: Any, wanted: bool) -> None: ...

    def whole_file_ok(self, meta: BundleMeta, index: int, data: bytes) -> bool | None: ...

    def connected(self, device: SimDevice) -> None: ...

    def refused(self, device: SimDevice, reason: str) -> None: ...

    def disconnected(self, device: SimDevice, reason: str, was_connected: bool) -> None: ...


class _MemoryChunks:
    """A simulated device's chunk store: each chunk checked against its sha256 like the agent's, nothing
    written. The whole-file hash is the environment's, computed once per meta for the whole fleet."""

    def __init__(self, meta: BundleMeta, env: SimEnvironment, record: FetchRecord) -> None:
        self.meta = meta
        self.total = len(meta.chunk_sha256)
        self.received: set[int] = set()
        self.resumed = 0
        self.whole_file_ok: bool | None = None
        self._env = env
        self._record = record

    @property
    def complete(self) -> bool:
        return len(self.received) == self.total

    def accept(self, index: int, data: bytes) -> str | None:
        if index in self.received:
            return None
        meta = self.meta
        expected = min(meta.chunk_size, meta.size - index * meta.chunk_size)
        if len(data) != expected or hashlib.sha256(data).hexdigest() != meta.chunk_sha256[index]:
            self._record.chunks_dropped += 1
            return f"chunk {index} does not match its sha256 in the bundle meta"
        self.received.add(index)
        self._record.chunks_received += 1
        self._record.bytes_received += len(data)
        self.whole_file_ok = self._env.whole_file_ok(meta, index, data)
        self._record.complete = self.complete
        return None

    def missing(self) -> list[int]:
        return [i for i in range(self.total) if i not in self.received]

    def close(self) -> None:
        pass


class SimDevice:
    def __init__(
        self, device_id: str, env: SimEnvironment, *, failing: bool, initial: ActiveModel | None
    ) -> None:
        self.device_id = device_id
        self.env = env
        self.profile = env.profile
        self.failing = failing
        self.log = SimDeviceLog(device_id=device_id, profile=env.profile.name, failing=failing)
        self.model: ActiveModel | None = initial
        # installed bundles, oldest first; the initial one counts as installed (and as known to be good)
        self.installed: dict[str, ActiveModel] = {initial.bundle_id: initial} if initial else {}
        self.known_good: set[str] = {initial.bundle_id} if initial else set()
        self.state: State = "serving" if initial else "idle"
        self.swaps = 0
        self.rollbacks = 0
        self.probation: ProbationStatus | None = None
        self.last_error: str | None = None
        self.delivery: Delivery | None = None
        self._activation: object | None = None  # token of the activation in progress
        self.rejected: set[tuple[str, str]] = set()
        self.requests = 0
        self.errors = 0
        self.client_errors = 0
        self.connected = False
        self.dropped = False  # dropped on purpose (simulated power cut): do not reconnect on our own
        self.reconnect_delay = 1.0
        if initial:
            self.log.active_bundle, self.log.active_version = initial.bundle_id, initial.version
        client = self.client = new_client(f"edgefleet-sim-{device_id}")
        client.will_set(topics.online(device_id), Presence(online=False).to_bytes(), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._backend = BackendInfo(
            engine=self.profile.runtime.engine.value,
            engine_version="simulated",
            providers=list(self.profile.runtime.providers),
            threads=self.profile.runtime.threads,
        )
        self._telemetry_props = publish_properties(MessageExpiryInterval=TELEMETRY_EXPIRY_S)

    # -- socket plumbing for the selector loop (paho's external event loop callbacks) --------------
    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.env.register_socket(self, sock)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.env.unregister_socket(sock)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.env.want_write(self, sock, True)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.env.want_write(self, sock, False)

    # -- connection --------------------------------------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        try:
            if reason.is_failure:
                self.env.refused(self, str(reason))
                return
            self.connected = True
            self.reconnect_delay = 1.0
            self.log.connects += 1
            client.subscribe(topics.desired(self.device_id), qos=1)
            self._publish(topics.online(self.device_id), Presence(online=True).to_bytes(), retain=True)
            self.publish_status()
            # a clean start lost the delivery's subscriptions: ask again for what it lacks, as the agent does
            if self.delivery is not None:
                self._carry_out(self.delivery, self.delivery.on_reconnected())
            self.env.connected(self)
        except Exception:
            log.exception("simulated device %s: on_connect failed", self.device_id)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        was = self.connected
        self.connected = False
        self.env.disconnected(self, str(reason), was)

    # -- messages ----------------------------------------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # paho re-raises callback exceptions out of loop_read: one bad message must not stop the simulator
        try:
            topic, delivery = message.topic, self.delivery
            if topic == topics.desired(self.device_id):
                self._on_desired(bytes(message.payload))
            elif delivery is not None and topic.endswith("/meta"):
                self._carry_out(delivery, delivery.on_meta(topic, bytes(message.payload)))
            elif delivery is not None and "/chunks/" in topic:
                self._carry_out(delivery, delivery.on_chunk(topic, bytes(message.payload), message.retain))
        except Exception:
            log.exception("simulated device %s: message on %s failed", self.device_id, message.topic)

    def _on_desired(self, payload: bytes) -> None:
        if not payload:
            self._end_delivery()
            return
        try:
            desired = DesiredState.model_validate_json(payload)
        except ValidationError:
            self.event("warning", "desired state is not a valid DesiredState; ignored")
            return
        self.log.desired_seen.append(desired.bundle_id)
        if self.model is not None and self.model.bundle_id == desired.bundle_id:
            self._activation = None
            self._end_delivery()
            self.publish_status()
            return
        if self.delivery is not None and self.delivery.desired.bundle_id == desired.bundle_id:
            self.delivery.desired = desired
            return
        if (desired.deployment_id, desired.bundle_id) in self.rejected:
            return
        self._activation = None
        self._end_delivery()
        refusal = wrong_profile(desired, self.profile.name)
        if refusal is not None:
            self._reject(desired, refusal)
            return
        if desired.bundle_id in self.installed:
            self._start_activation(desired, self.installed[desired.bundle_id])
            return
        delivery = self.delivery = Delivery(
            desired, self._open_chunks, time.monotonic, DELIVERY, profile=self.profile.name
        )
        self._set_state("receiving")
        self._carry_out(delivery, delivery.start())

    def _open_chunks(self, meta: BundleMeta, fresh: bool) -> _MemoryChunks:
        return _MemoryChunks(meta, self.env, self.log.fetched.setdefault(meta.bundle_id, FetchRecord()))

    def _carry_out(self, delivery: Delivery, actions: list[Action]) -> None:
        """Do what the delivery asked (the agent's protocol core), in order; a rejection or the last chunk
        ends it."""
        end = carry_out(actions, delivery.desired, self)
        if isinstance(end, Reject):
            self._reject(delivery.desired, end.reason)
        elif end is not None:
            self._assembled(delivery.desired, end.store)

    # DeliveryIO
    def subscribe(self, topic_filter: str) -> None:
        if self.connected:
            self.client.subscribe(topic_filter, qos=1)

    def unsubscribe(self, topic_filter: str) -> None:
        if self.connected:
            self.client.unsubscribe(topic_filter)

    def report(self, kind: str, detail: str, fields: dict[str, object]) -> None:
        self.event(kind, detail, **fields)

    def note(self, entry: Log) -> None:
        log.debug("simulated device %s: %s %s", self.device_id, entry.event, entry.fields)

    def _assembled(self, desired: DesiredState, store: ChunkStore) -> None:
        assert isinstance(store, _MemoryChunks)
        meta = store.meta
        if store.whole_file_ok is not True:
            self._reject(
                desired,
                f"bundle {meta.bundle_id[:12]}: every chunk matched the meta but the file does not hash to "
                "the bundle id; the bundle meta is wrong - redeploy the bundle",
            )
            return
        model = ActiveModel(
            name=desired.name,
            version=desired.version,
            bundle_id=meta.bundle_id,
            format=self.profile.artifact.format.value,
            precision=self.profile.artifact.precision.value,
        )
        self._start_activation(desired, model)

    # -- activation --------------------------------------------------------------------------------
    def _start_activation(self, desired: DesiredState, model: ActiveModel) -> None:
        self._set_state("activating")
        token = self._activation = object()

        def activate() -> None:
            if self._activation is not token:  # a newer desired state replaced this one meanwhile
                return
            self._activation = None
            self._activate(desired, model)

        self.env.call_later(self.env.options.activation_s, activate)

    def _activate(self, desired: DesiredState, model: ActiveModel) -> None:
        bad = self.failing and model.bundle_id not in self.known_good
        if bad and self.env.options.fail_mode == "reject":
            self._reject(
                desired,
                f"health check failed for {model.name} {model.version} (simulated): outputs are not finite",
            )
            return
        self._end_delivery()
        self.installed.pop(model.bundle_id, None)
        self.installed[model.bundle_id] = model
        while len(self.installed) > KEEP_BUNDLES:
            del self.installed[next(iter(self.installed))]
        previous, self.model = self.model, model
        self.swaps += 1
        self.last_error = None
        self.log.activated.append(model.bundle_id)
        self.log.active_bundle, self.log.active_version = model.bundle_id, model.version
        self.probation = None
        limits = self._probation_limits(rolls_back=bad and self.env.options.fail_mode == "rollback")
        if previous is not None and limits.window_s > 0:
            # like the agent: a model that replaced another is watched, the previous one kept on standby
            probation = self.probation = ProbationStatus(
                bundle_id=model.bundle_id,
                version=model.version,
                previous_bundle_id=previous.bundle_id,
                previous_version=previous.version,
                ends_at=utc_now() + timedelta(seconds=limits.window_s),
            )
            started = time.monotonic()
            self.env.call_later(
                PROBATION_CHECK_S, lambda: self._watch(probation, desired, previous, limits, started, bad)
            )
        self._set_state("serving")
        self.event(
            "activated",
            f"{model.name} v{model.version} is serving",
            deployment_id=desired.deployment_id,
            version=model.version,
        )

    def _probation_limits(self, rolls_back: bool) -> ProbationLimits:
        """The agent's limits: the profile's health policy over the probation window. In "rollback" mode
        without a window, one long enough for the judge to see enough runs."""
        options = self.env.options
        health = HealthPolicy.of(self.profile)
        window = options.probation_s
        if not window and rolls_back:
            window = max(ROLLBACK_PROBATION_S, health.min_requests / max(options.requests_per_s, 1e-3))
        return ProbationLimits(window_s=window, health=health)

    def _simulated_runs(self, elapsed_s: float, bad: bool) -> RunStats:
        """The runs the model on probation did in `elapsed_s`: NaN outputs in "rollback" mode, half of them
        raising in "errors" mode (with latency over budget), none failing otherwise (a hostile client's
        bad requests never reach the model)."""
        options, budget = self.env.options, self.profile.latency_budget_ms
        runs = int(options.requests_per_s * elapsed_s)
        nan_outputs = bad and options.fail_mode == "rollback"
        raising = bad and options.fail_mode == "errors"
        return RunStats(
            runs=runs,
            failures=runs // 2 if raising else 0,
            bad_outputs=runs if nan_outputs else 0,
            p95_ms=budget * (3.0 if raising else 0.35),
        )

    def _watch(
        self,
        probation: ProbationStatus,
        desired: DesiredState,
        previous: ActiveModel,
        limits: ProbationLimits,
        started: float,
        bad: bool,
    ) -> None:
        """Judge the model on probation as the agent judges its own (protocol.probation.judge), until it
        passes or is rolled back."""
        if (
            self.probation is not probation
            or self.model is None
            or self.model.bundle_id != probation.bundle_id
        ):
            return
        elapsed = time.monotonic() - started
        verdict = judge(self._simulated_runs(elapsed, bad), elapsed, limits)
        if verdict.outcome == "failed":
            self._probation_failed(probation, desired, previous, verdict.reason)
        elif verdict.outcome == "passed":
            self._probation_passed(probation, desired, verdict.reason)
        else:
            self.env.call_later(
                PROBATION_CHECK_S, lambda: self._watch(probation, desired, previous, limits, started, bad)
            )

    def _probation_passed(self, probation: ProbationStatus, desired: DesiredState, reason: str) -> None:
        self.probation = None
        self.publish_status()
        self.event(
            "probation_passed",
            f"v{probation.version} passed its probation (simulated runs): {reason}",
            deployment_id=desired.deployment_id,
            version=probation.version,
        )

    def _probation_failed(
        self, probation: ProbationStatus, desired: DesiredState, previous: ActiveModel, reason: str
    ) -> None:
        self.probation = None
        self.model = previous
        self.swaps += 1
        self.rollbacks += 1
        self.log.rollbacks += 1
        self.log.rollback_reasons.append(reason)
        self.log.active_bundle, self.log.active_version = previous.bundle_id, previous.version
        self.rejected.add((desired.deployment_id, desired.bundle_id))  # like the agent: never retried
        self.last_error = (
            f"v{probation.version} was rolled back to v{previous.version}: {reason} (simulated runs)"
        )
        self.publish_status()
        self.event(
            "rolled_back", self.last_error, deployment_id=desired.deployment_id, version=probation.version
        )

    def _reject(self, desired: DesiredState, reason: str) -> None:
        self.rejected.add((desired.deployment_id, desired.bundle_id))
        self.log.rejected.append(f"{desired.bundle_id}: {reason}")
        self._end_delivery()
        self.last_error = reason
        self._set_state("serving" if self.model else "idle")
        self.event("rejected", reason, deployment_id=desired.deployment_id, version=desired.version)

    def _end_delivery(self) -> None:
        delivery, self.delivery = self.delivery, None
        if delivery is not None:
            self._carry_out(delivery, delivery.close())

    # -- periodic work (called by the loop) --------------------------------------------------------
    def tick(self) -> None:
        """About once a second, like the agent: backoff refetches and stall reports of the delivery."""
        if self.delivery is not None and self.connected:
            self._carry_out(self.delivery, self.delivery.tick())

    def send_telemetry(self) -> None:
        interval = self.env.options.telemetry_interval_s
        if not self.connected or interval is None:
            return
        budget = self.profile.latency_budget_ms
        # in "rollback" mode the device's own probation finds the problem (NaN outputs are answered as
        # replies, not counted as errors), so its telemetry looks normal until it rolls back
        unhealthy = (
            self.failing
            and self.env.options.fail_mode == "errors"
            and self.model is not None
            and self.model.bundle_id not in self.known_good
        )
        served = max(1, round(self.env.options.requests_per_s * interval)) if self.model else 0
        self.requests += served
        jitter = self.env.rng.uniform(0.9, 1.1)
        failed = max(1, served // 2) if unhealthy else 0
        hostile = self.failing and self.env.options.fail_mode == "client_errors" and self.model is not None
        refused = max(1, served // 2) if hostile else 0
        self.client_errors += refused
        failed += refused
        self.errors += failed
        if unhealthy:
            latency = LatencySummary(
                p50=round(budget * 1.5 * jitter, 3),
                p95=round(budget * 3.0 * jitter, 3),
                p99=round(budget * 4.0 * jitter, 3),
                samples=min(1000, self.requests),
            )
        elif self.model is not None:
            latency = LatencySummary(
                p50=round(budget * 0.2 * jitter, 3),
                p95=round(budget * 0.35 * jitter, 3),
                p99=round(budget * 0.45 * jitter, 3),
                samples=min(1000, self.requests),
            )
        else:
            latency = LatencySummary(p50=None, p95=None, p99=None, samples=0)
        telemetry = Telemetry(
            device_id=self.device_id,
            interval_s=interval,
            model_version=self.model.version if self.model else None,
            requests=self.requests,
            errors=self.errors,
            client_errors=self.client_errors,
            latency_ms=latency,
            rss_mb=round(48.0 * jitter, 1),
            cpu_percent=round(4.0 * jitter, 1),
            swaps=self.swaps,
            rollbacks=self.rollbacks,
            model_name=self.model.name if self.model else None,
            backend=self._backend if self.model else None,
            interval_requests=served,
            interval_errors=failed,
            throughput_rps=round(served / interval, 3),
            soc_temp_c=round(45.0 * jitter, 1),
        )
        self._publish(
            topics.telemetry(self.device_id),
            telemetry.to_bytes(),
            qos=0,
            retain=True,  # as the agent: the latest report waits for late subscribers, then expires
            props=self._telemetry_props,
        )
        self.log.telemetry_sent += 1

    # -- publishing --------------------------------------------------------------------------------
    def _set_state(self, state: State) -> None:
        self.state = state
        self.publish_status()

    def publish_status(self) -> None:
        status = DeviceStatus(
            device_id=self.device_id,
            profile=self.profile.name,
            agent_version=f"sim-{__version__}",
            state=self.state,
            model=self.model,
            backend=self._backend if self.model else None,
            swaps=self.swaps,
            last_error=self.last_error,
            tags=self.env.options.tags,
            rollbacks=self.rollbacks,
            kept=[
                KeptVersion(name=m.name, version=m.version, bundle_id=m.bundle_id)
                for m in reversed(self.installed.values())
            ],
            probation=self.probation,
        )
        self._publish(topics.status(self.device_id), status.to_bytes(), retain=True)

    def event(self, kind: str, detail: str = "", **fields: Any) -> None:
        event = DeviceEvent.model_validate({"kind": kind, "detail": detail, **fields})
        self._publish(topics.events(self.device_id), event.to_bytes())

    def _publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        props: Properties | None = None,
    ) -> None:
        if self.connected:
            self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
