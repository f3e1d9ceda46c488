"""Following the desired state: fetch the bundle's meta and chunks, verify and unpack it, load, warm up and
health-check its model next to the running one, swap, move the `active` pointer, then watch the new model
on probation and roll back on its own when it fails. Any failure before the swap rejects the bundle and
leaves the running model serving.

Crash safety: the ledger (desired state, verdicts, probation), the part file with its chunk log and the
saved meta let a restarted agent carry on where it stopped; after a broker restart the missing chunks are
asked for again, chunk by chunk, and reported when the broker no longer has them. Runs on the single
control worker, so it needs no locks. The delivery itself (meta, chunks, pull window, backoff, stalls) is
the protocol core's (edgefleet.protocol.delivery); this module carries out what it asks for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import ValidationError

from edgefleet.agent.anti_rollback import AntiRollback
from edgefleet.agent.delivery import ChunkAssembler
from edgefleet.agent.health import HealthCheckFailed, check_health, describe_reference
from edgefleet.agent.ledger import Ledger, ProbationRecord, Verdict
from edgefleet.agent.log import EventLog
from edgefleet.agent.model_slot import LoadedModel, ModelSlot
from edgefleet.agent.session import Envelope, MqttSession
from edgefleet.agent.status import DeploymentFields, EventKind, State, StatusReporter
from edgefleet.agent.store import BundleStore, InstalledBundle
from edgefleet.contract.errors import first_validation_error, is_resource_error
from edgefleet.contract.health import DEFAULT_MIN_REQUESTS, HealthPolicy
from edgefleet.contract.messages import BundleMeta, DesiredState, KeptVersion, ProbationStatus, utc_now
from edgefleet.contract.profiles import DeviceProfile
from edgefleet.protocol.delivery import (
    Action,
    Delivery,
    DeliverySettings,
    Log,
    Reject,
    carry_out,
    wrong_profile,
)
from edgefleet.protocol.probation import ProbationLimits, judge

if TYPE_CHECKING:
    from edgefleet.agent.config import AgentConfig

log = EventLog("deployment")
TICK_EVERY_S = 1.0
MAX_PROBATION_STARTS = 3  # the agent starting this often while a model is on probation rolls it back
RETRY_FIRST_S = 5.0  # a deployment the device itself failed is tried again after this, doubling each time
RETRY_MAX_S = 300.0


@dataclass(frozen=True)
class DeploymentSettings:
    probation_s: float = 30.0
    probation_min_requests: int = DEFAULT_MIN_REQUESTS
    delivery: DeliverySettings = field(default_factory=DeliverySettings)

    @classmethod
    def from_config(cls, config: AgentConfig) -> DeploymentSettings:
        return cls(
            probation_s=config.probation_s,
            probation_min_requests=config.probation_min_requests,
            delivery=DeliverySettings(stall_s=config.delivery_stall_s),
        )


@dataclass(frozen=True)
class RetryPlan:
    """A deployment that failed for the device's sake (disk, descriptors, memory), tried again at `due`."""

    deployment_id: str
    due: float  # clock time
    attempts: int


def device_trouble(exc: BaseException) -> bool:
    """A failure of this device rather than of the bundle (out of descriptors, disk space or memory, as
    the OS says it): worth trying again later. A MemoryError is not: numpy raises it for the absurd shapes
    a bundle may declare, and retrying those would never end."""
    return is_resource_error(exc)


@dataclass(frozen=True)
class ProbationWatch:
    record: ProbationRecord
    started: float  # monotonic
    ends_at: datetime


class Deployer:
    def __init__(
        self,
        store: BundleStore,
        slot: ModelSlot,
        reporter: StatusReporter,
        session: MqttSession,
        profile: DeviceProfile,
        settings: DeploymentSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        anti_rollback: bool = False,
    ) -> None:
        self._clock = clock
        self.store = store
        self.slot = slot
        self.reporter = reporter
        self.session = session
        self.profile = profile
        self.settings = settings or DeploymentSettings()
        self.limits = ProbationLimits(
            window_s=self.settings.probation_s,
            health=HealthPolicy.of(profile, self.settings.probation_min_requests),
        )
        self.ledger = Ledger(store.state_dir)
        self.floors = (
            AntiRollback(self.ledger, store.public_key, reporter.device_id) if anti_rollback else None
        )
        self.delivery: Delivery | None = None
        self.watch: ProbationWatch | None = None
        self._connections = 0
        self._pending_events: list[tuple[EventKind, str, dict[str, object]]] = []
        self._last_tick = self._clock()
        self._kept: list[KeptVersion] = []
        self._retry: RetryPlan | None = None
        reporter.deployment_fields = self.status_fields

    # status --------------------------------------------------------------------------------------
    def status_fields(self) -> DeploymentFields:
        """Called by StatusReporter.build() from any thread: reads only values replaced whole."""
        watch = self.watch
        probation = None
        if watch is not None:
            record = watch.record
            probation = ProbationStatus(
                bundle_id=record.bundle_id,
                version=record.version,
                previous_bundle_id=record.previous_bundle_id,
                previous_version=record.previous_version,
                ends_at=watch.ends_at,
            )
        return {"rollbacks": self.slot.rollbacks, "kept": self._kept, "probation": probation}

    def _ranked(self) -> list[str]:
        """Installed bundles in the order they are worth keeping: good before failed, then the most recently
        active first, then the most recently installed."""

        def key(bundle_id: str) -> tuple[bool, bool, float]:
            active_at = self.ledger.last_active(bundle_id)
            return (
                self.ledger.is_failed(bundle_id),
                active_at is None,
                -(active_at or utc_now()).timestamp(),
            )

        return sorted(self.store.installed_ids(), key=key)

    def _refresh_kept(self) -> None:
        kept = []
        for bundle_id in self._ranked():
            manifest = self.store.read_manifest(bundle_id)
            if manifest is not None:
                kept.append(
                    KeptVersion(
                        name=manifest.name,
                        version=manifest.version,
                        bundle_id=bundle_id,
                        last_active_at=self.ledger.last_active(bundle_id),
                        failed=self.ledger.is_failed(bundle_id),
                    )
                )
        self._kept = kept

    def _set_status(self, state: State | None, last_error: str | None = None, clear: bool = False) -> None:
        if self._connections:
            self.reporter.set(state, last_error=last_error, clear_error=clear)
        elif last_error is not None or clear:  # before the first connection: published on connect
            self.reporter.last_error = last_error

    def _event(self, kind: EventKind, detail: str = "", **fields: object) -> None:
        if self._connections:
            self.reporter.event(kind, detail, **fields)
        else:
            self._pending_events.append((kind, detail, fields))

    # start ---------------------------------------------------------------------------------------
    def restore_active(self) -> None:
        """At start, before connecting: clean up after a crash, then load the bundle the `active` pointer
        names (re-verified), falling back to the newest good kept bundle; resume a probation."""
        desired = self.ledger.desired
        self.store.cleanup_at_start(desired.bundle_id if desired else None)
        active_id = self.store.active_id()
        record = self.ledger.probation
        if record is not None and record.bundle_id != active_id:
            self.ledger.set_probation(None)  # the crash came before the pointer moved
            record = None
        if record is not None:
            record = record.model_copy(update={"starts": record.starts + 1})
            self.ledger.set_probation(record)
            if record.starts >= MAX_PROBATION_STARTS:
                reason = (
                    f"the agent started {record.starts} times while {record.version} was on probation "
                    "(a crash loop)"
                )
                if self._roll_back(record, reason):
                    self._refresh_kept()
                    return
                record = None
        if active_id is not None and record is None and self.ledger.is_failed(active_id):
            # a rollback was interrupted after its verdict: never come back on a failed bundle
            log.warning("active_bundle_failed", bundle_id=active_id[:12])
            model = self._restore_fallback(exclude={active_id})
        elif active_id is not None:
            model = self._restore(active_id) or self._restore_fallback(exclude={active_id})
        else:
            log.info("no_active_bundle")
            model = None
        if record is not None and model is not None and model.bundle_id == record.bundle_id:
            if self.settings.probation_s > 0:
                self._start_watch(record)
                log.info("probation_resumed", version=record.version, starts=record.starts)
            else:
                self.ledger.set_probation(None)
        # restarts must not leave more than keep_bundles behind either (the desired delivery resumes)
        self._prune(resuming=desired.bundle_id if desired else None)

    def _restore(self, bundle_id: str) -> LoadedModel | None:
        try:
            installed = self.store.load_installed(bundle_id)
            model = self._load(installed)
        except Exception as exc:
            reason = f"could not restore the bundle {bundle_id[:12]}: {exc}"
            log.error("restore_failed", error=reason)
            self.reporter.last_error = reason
            self._event("error", reason)
            return None
        self.slot.swap(model)
        log.info("restored", name=model.manifest.name, version=model.version, bundle_id=bundle_id[:12])
        return model

    def _restore_fallback(self, exclude: set[str]) -> LoadedModel | None:
        for bundle_id in self._ranked():
            if bundle_id in exclude or self.ledger.is_failed(bundle_id):
                continue
            manifest = self.store.read_manifest(bundle_id)
            if manifest is not None and self._below_floor(manifest.name, manifest.version):
                continue
            model = self._restore(bundle_id)
            if model is not None:
                self.store.set_active(bundle_id)
                self.ledger.record_activation(bundle_id, model.manifest.name, model.version)
                self._event(
                    "warning", f"came back on the kept version {model.version} instead", version=model.version
                )
                return model
        return None

    def announce_fallbacks(self) -> None:
        model = self.slot.current
        for fallback in model.info.fallbacks if model else []:
            self.reporter.event("warning", fallback, version=model.version if model else None)

    # messages ------------------------------------------------------------------------------------
    def handle(self, envelope: Envelope) -> None:
        if envelope.route == "desired":
            self.on_desired(envelope)
        elif envelope.route == "meta":
            self.on_meta(envelope)
        elif envelope.route == "chunk":
            self.on_chunk(envelope)
        elif envelope.route == "connected":
            self.on_connected()
        elif envelope.route == "floor" and self.floors is not None:
            self.floors.on_floor(envelope.payload)
        if self._clock() - self._last_tick >= TICK_EVERY_S:  # the idle tick does not run while busy
            self.tick()

    def on_connected(self) -> None:
        """Every (re)connection: publish what happened offline; on the first, resume the desired state we
        remember (the broker may have lost it); on later ones, ask again for what a delivery lacks."""
        self._connections += 1
        pending, self._pending_events = self._pending_events, []
        for kind, detail, fields in pending:
            self.reporter.event(kind, detail, **fields)
        if self._connections == 1:
            desired = self.ledger.desired
            if desired is not None and self.delivery is None:
                self._pursue(desired)
            return
        delivery = self.delivery
        if delivery is None:
            return
        self._carry_out(delivery, delivery.on_reconnected())

    def on_desired(self, envelope: Envelope) -> None:
        if not envelope.payload:
            log.info("desired_cleared")
            self.ledger.set_desired(None)
            self._end_delivery()
            return
        try:
            desired = DesiredState.model_validate_json(envelope.payload)
        except ValidationError as exc:
            problem = first_validation_error(exc, "(top)")
            log.warning("desired_invalid", error=problem, bytes=len(envelope.payload))
            return
        log.info(
            "desired",
            deployment_id=desired.deployment_id,
            version=desired.version,
            bundle_id=desired.bundle_id[:12],
        )
        self._pursue(desired)

    def _pursue(self, desired: DesiredState, retrying: bool = False) -> None:
        retry = self._retry
        if retry is not None and retry.deployment_id != desired.deployment_id:
            self._retry = retry = None  # another deployment: its own attempts
        if retry is not None and not retrying and self._clock() < retry.due and self.delivery is None:
            self.ledger.set_desired(desired)
            log.info(
                "desired_deferred", deployment_id=desired.deployment_id, in_s=round(retry.due - self._clock())
            )
            return
        self.ledger.set_desired(desired)
        active = self.slot.current
        if active is not None and active.bundle_id == desired.bundle_id:
            self._end_delivery()
            self.reporter.publish()
            return
        verdict = self.ledger.verdict_for(desired.deployment_id, desired.bundle_id)
        if verdict is not None:
            log.info("desired_already_failed", deployment_id=desired.deployment_id, verdict=verdict.kind)
            self._end_delivery()
            self.reporter.last_error = (
                f"deployment {desired.deployment_id} ({desired.version}) was "
                f"{verdict.kind.replace('_', ' ')}: {verdict.reason}"
            )
            self.reporter.publish()
            return
        if self.delivery is not None and self.delivery.bundle_id == desired.bundle_id:
            self.delivery.desired = desired
            return
        self._end_delivery()
        refusal = wrong_profile(desired, self.profile.name) or self._below_floor(
            desired.name, desired.version
        )
        if refusal is not None:
            self._reject(desired, refusal)
            return
        if self.store.is_installed(desired.bundle_id) and self._activate_installed(desired):
            return
        delivery = self.delivery = Delivery(
            desired, self._open_chunk_store, self._clock, self.settings.delivery, self.profile.name
        )
        self._set_status("receiving")
        self._carry_out(delivery, delivery.start(saved_meta=self.store.load_meta(desired.bundle_id)))

    def on_meta(self, envelope: Envelope) -> None:
        if self.delivery is not None:
            self._carry_out(self.delivery, self.delivery.on_meta(envelope.topic, envelope.payload))

    def on_chunk(self, envelope: Envelope) -> None:
        if self.delivery is not None:
            actions = self.delivery.on_chunk(envelope.topic, envelope.payload, envelope.retain)
            self._carry_out(self.delivery, actions)

    def tick(self) -> None:
        """Once a second: judge the probation, try again a deployment the device failed (when its backoff
        is over), and let the delivery re-request chunks that failed their hash (after their backoff) and
        report and re-request what stalled."""
        self._last_tick = self._clock()
        self._check_probation()
        retry = self._retry
        if retry is not None and self.delivery is None and self._clock() >= retry.due:
            desired = self.ledger.desired
            if desired is None or desired.deployment_id != retry.deployment_id:
                self._retry = None
            else:
                log.info("deployment_retry", deployment_id=retry.deployment_id, attempt=retry.attempts + 1)
                self._pursue(desired, retrying=True)
        if self.delivery is not None:
            self._carry_out(self.delivery, self.delivery.tick())

    # delivery ------------------------------------------------------------------------------------
    def _open_chunk_store(self, meta: BundleMeta, fresh: bool) -> ChunkAssembler:
        """The part file (and chunk log) a delivery writes into; a saved meta lets a restart resume."""
        bundle_id = meta.bundle_id
        if fresh:  # another chunking of the same bundle: the old chunk log names the wrong chunks
            self.store.chunk_log_path(bundle_id).unlink(missing_ok=True)
        self.store.check_space(meta)  # before the first byte: a full disk is tried again later
        try:
            self.store.save_meta(meta)
        except OSError as exc:  # only costs the resume after a broker loss; the delivery goes on
            log.warning("meta_not_saved", error=str(exc))
        return ChunkAssembler(meta, self.store.part_path(bundle_id), self.store.chunk_log_path(bundle_id))

    def _carry_out(self, delivery: Delivery, actions: list[Action]) -> None:
        """Do what the delivery asked, in order; a rejection or the last chunk ends it."""
        end = carry_out(actions, delivery.desired, self)
        if isinstance(end, Reject) and end.transient:
            self._retry_later(delivery.desired, end.reason)
        elif isinstance(end, Reject):
            self._reject(delivery.desired, end.reason)
        elif end is not None:
            assert isinstance(end.store, ChunkAssembler)
            self._finish(delivery, end.store)

    # DeliveryIO
    def subscribe(self, topic_filter: str) -> None:
        self.session.subscribe(topic_filter, resend_retained=True)

    def unsubscribe(self, topic_filter: str) -> None:
        self.session.unsubscribe(topic_filter)

    def report(self, kind: EventKind, detail: str, fields: dict[str, object]) -> None:
        self._event(kind, detail, **fields)

    def note(self, entry: Log) -> None:
        (log.warning if entry.level == "warning" else log.info)(entry.event, **entry.fields)

    def _finish(self, delivery: Delivery, assembler: ChunkAssembler) -> None:
        self._set_status("activating")
        try:
            bundle_file = assembler.finish()
            installed = self.store.install(bundle_file, delivery.bundle_id, file_sha256=assembler.file_sha256)
        except Exception as exc:
            self.store.discard_part(delivery.bundle_id)
            self._fail(delivery.desired, str(exc), exc)
            return
        self.store.discard_part(delivery.bundle_id)
        self._activate(installed, delivery.desired)

    def _end_delivery(self) -> None:
        delivery, self.delivery = self.delivery, None
        if delivery is not None:
            self._carry_out(delivery, delivery.close())

    # activation ----------------------------------------------------------------------------------
    def _activate_installed(self, desired: DesiredState) -> bool:
        """A kept bundle (e.g. `edgefleet rollback`): re-verified from disk, nothing is downloaded. False
        when the kept copy no longer verifies: it is removed and the caller fetches the bundle again."""
        self._set_status("activating")
        try:
            installed = self.store.load_installed(desired.bundle_id)
        except Exception as exc:
            log.warning("kept_bundle_damaged", bundle_id=desired.bundle_id[:12], error=str(exc))
            self.store.remove(desired.bundle_id)
            self._refresh_kept()
            return False
        log.info(
            "activating_kept_bundle", bundle_id=desired.bundle_id[:12], version=installed.manifest.version
        )
        self._activate(installed, desired)
        return True

    def _load(self, installed: InstalledBundle) -> LoadedModel:
        model = LoadedModel.load(installed.bundle_id, installed.manifest, installed.path, self.profile)
        try:
            warm_ms = model.warm_up()
        except Exception:
            model.close()
            raise
        log.info(
            "model_loaded",
            version=model.version,
            engine=model.info.engine,
            warmup_ms=round(warm_ms, 3),
            fallbacks=len(model.info.fallbacks),
        )
        return model

    def _activate(self, installed: InstalledBundle, desired: DesiredState) -> None:
        signed = installed.manifest  # the desired state's name and version are not signed; these are
        refusal = self._below_floor(signed.name, signed.version)
        if refusal is not None:
            self._reject(desired, refusal)
            return
        try:
            model = self._load(installed)
        except Exception as exc:
            self._fail(desired, f"cannot load the model of bundle {installed.bundle_id[:12]}: {exc}", exc)
            return
        try:
            report = check_health(model, installed.path, self.profile.latency_budget_ms)
        except Exception as exc:
            model.close()
            why = str(exc) if isinstance(exc, HealthCheckFailed) else f"{type(exc).__name__}: {exc}"
            self._fail(desired, f"health check failed: {why}", exc)
            return
        log.info(
            "health_check_passed",
            version=model.version,
            source=report.source,
            samples=report.samples,
            median_ms=round(report.median_ms, 3),
            max_ms=round(report.max_ms, 3),
        )
        self._end_watch()  # a model still on probation is simply replaced
        previous = self.slot.current
        watched = self.settings.probation_s > 0 and previous is not None
        record = None
        if previous is not None and watched:
            record = ProbationRecord(
                deployment_id=desired.deployment_id,
                bundle_id=installed.bundle_id,
                version=model.version,
                previous_bundle_id=previous.bundle_id,
                previous_version=previous.version,
            )
            self.ledger.set_probation(record)  # before the pointer: a crash in between leaves it stale
        try:
            self.store.set_active(installed.bundle_id)
        except OSError as exc:
            model.close()
            self.ledger.set_probation(None)
            self._fail(desired, f"cannot write the active pointer in {self.store.state_dir}: {exc}", exc)
            return
        self.ledger.record_activation(installed.bundle_id, model.manifest.name, model.version)
        self._retry = None
        old = self.slot.swap(model, keep_previous=watched)
        self._end_delivery()
        if record is not None:
            self._start_watch(record)
        log.info(
            "activated",
            deployment_id=desired.deployment_id,
            version=model.version,
            bundle_id=installed.bundle_id[:12],
            replaced=old.version if old else None,
            probation_s=self.settings.probation_s if watched else None,
        )
        # at every activation, probation or not (the watch protects the version it would fall back to):
        # deployments arriving faster than probations end must not pile bundles up on the disk. Before the
        # status goes out, so its `kept` list is what is on the disk.
        self._prune()
        self._set_status(None, clear=True)
        detail = f"{model.manifest.name} v{model.version} is serving{describe_reference(report)}"
        if watched and old is not None:
            detail += f" (on probation for {self.settings.probation_s:g} s; v{old.version} on standby)"
        self._event("activated", detail, deployment_id=desired.deployment_id, version=model.version)
        for fallback in model.info.fallbacks:
            self._event("warning", fallback, deployment_id=desired.deployment_id, version=model.version)

    def _below_floor(self, model: str, version: str) -> str | None:
        """Why anti-rollback refuses this version (None when it is off or the version is allowed)."""
        return self.floors.refusal(model, version) if self.floors is not None else None

    def _fail(self, desired: DesiredState, reason: str, exc: BaseException) -> None:
        """A deployment failed: for the bundle's sake (final verdict) or the device's (tried again)."""
        if device_trouble(exc):
            self._retry_later(desired, reason)
        else:
            self._reject(desired, reason)

    def _retry_later(self, desired: DesiredState, reason: str) -> None:
        """No verdict: the device (disk, descriptors, memory) failed, not the bundle. The desired state is
        pursued again after a backoff (5 s, doubling up to 5 min), and the host hears an `error` event."""
        previous = self._retry
        attempts = (
            previous.attempts + 1 if previous and previous.deployment_id == desired.deployment_id else 1
        )
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempts - 1))
        self._retry = RetryPlan(desired.deployment_id, self._clock() + delay, attempts)
        log.warning(
            "deployment_deferred",
            deployment_id=desired.deployment_id,
            version=desired.version,
            reason=reason,
            retry_in_s=delay,
            attempt=attempts,
        )
        self._end_delivery()
        self._prune()
        message = f"{reason}; trying again in {delay:g} s (attempt {attempts})"
        self._set_status(None, last_error=message)
        self._event("error", message, deployment_id=desired.deployment_id, version=desired.version)

    def _reject(self, desired: DesiredState, reason: str) -> None:
        log.warning(
            "bundle_rejected", deployment_id=desired.deployment_id, version=desired.version, reason=reason
        )
        verdict = Verdict(
            deployment_id=desired.deployment_id,
            bundle_id=desired.bundle_id,
            version=desired.version,
            kind="rejected",
            reason=reason,
        )
        try:
            self.ledger.add_verdict(verdict)
        except OSError as exc:  # e.g. out of descriptors or disk: the host still hears the verdict
            log.error("verdict_not_saved", deployment_id=desired.deployment_id, error=str(exc))
        self._end_delivery()
        self._prune()
        self._set_status(None, last_error=reason)
        self._event("rejected", reason, deployment_id=desired.deployment_id, version=desired.version)

    def _prune(self, resuming: str | None = None) -> None:
        """Keep at most keep_bundles installed (the active one and a probation's fallback always), and
        drop the part files of deliveries given up; `resuming`: the delivery a restart will pick up again."""
        protect = set()
        if self.watch is not None and self.watch.record.previous_bundle_id is not None:
            protect.add(self.watch.record.previous_bundle_id)
        try:
            self.store.prune(
                ranked=self._ranked(),
                protect=protect,
                delivery_in_progress=self.delivery.bundle_id if self.delivery else resuming,
            )
        except OSError as exc:
            log.warning("prune_failed", error=str(exc))
        self._refresh_kept()

    # probation -----------------------------------------------------------------------------------
    def _start_watch(self, record: ProbationRecord) -> None:
        ends_at = utc_now() + timedelta(seconds=self.settings.probation_s)
        self.watch = ProbationWatch(record=record, started=self._clock(), ends_at=ends_at)

    def _end_watch(self) -> None:
        if self.watch is not None:
            self.watch = None
            self.slot.release_standby()
            self.ledger.set_probation(None)

    def _check_probation(self) -> None:
        watch = self.watch
        if watch is None:
            return
        model = self.slot.current
        if model is None or model.bundle_id != watch.record.bundle_id:
            self._end_watch()
            return
        stats = model.stats()
        judgement = judge(stats, self._clock() - watch.started, self.limits)
        if judgement.outcome == "watching":
            return
        record = watch.record
        if judgement.outcome == "failed":
            self._roll_back(record, judgement.reason)
            return
        drift = self._golden_drift(model)
        if drift is not None:
            self._roll_back(record, drift)
            return
        self._end_watch()
        log.info("probation_passed", version=record.version, runs=stats.runs, detail=judgement.reason)
        self._event(
            "probation_passed",
            f"v{record.version} passed its probation: {judgement.reason}",
            deployment_id=record.deployment_id,
            version=record.version,
        )
        self._prune()
        self.reporter.publish()

    def _golden_drift(self, model: LoadedModel) -> str | None:
        """Before a probation passes: the health samples again, against the converter's reference outputs,
        now that the model has served real traffic (a kernel or delegate that goes wrong after warm-up).
        Latency is the probation's p95 business, not judged here."""
        if model.manifest.health_reference is None:
            return None
        try:
            check_health(model, self.store.bundle_dir(model.bundle_id), math.inf)
        except HealthCheckFailed as exc:
            return f"at the end of its probation its outputs were no longer the converter's: {exc}"
        return None

    def _roll_back(self, record: ProbationRecord, reason: str) -> bool:
        """Return to the previous version (the standby, else re-verified from disk); False if impossible."""
        self.watch = None
        previous_id = record.previous_bundle_id
        standby = self.slot.standby
        target: LoadedModel | None = None
        previous = self.store.read_manifest(previous_id) if previous_id is not None else None
        floor_refusal = self._below_floor(previous.name, previous.version) if previous is not None else None
        if floor_refusal is not None:
            reason = f"{reason}; rolling back is not allowed ({floor_refusal})"
        elif standby is not None and standby.bundle_id == previous_id:
            target = standby
        elif previous_id is not None:
            try:
                target = self._load(self.store.load_installed(previous_id))
            except Exception as exc:
                log.error("rollback_impossible", error=str(exc))
                reason = f"{reason}; rolling back failed ({exc})"
        if target is None or previous_id is None:
            self.ledger.set_probation(None)
            self.slot.release_standby()
            message = f"v{record.version} failed its probation but cannot be rolled back: {reason}"
            self._set_status(None, last_error=message)
            self._event("error", message, deployment_id=record.deployment_id, version=record.version)
            return False
        try:
            self.store.set_active(previous_id)
        except OSError as exc:  # the swap below still protects the requests; a restart would retry
            log.error("active_pointer_not_written", error=str(exc))
        self.ledger.add_verdict(
            Verdict(
                deployment_id=record.deployment_id,
                bundle_id=record.bundle_id,
                version=record.version,
                kind="rolled_back",
                reason=reason,
            )
        )
        self.ledger.set_probation(None)
        self.ledger.record_activation(previous_id, target.manifest.name, target.version)
        if target is standby:
            self.slot.swap_back()
        else:
            self.slot.swap(target, rollback=True)
        message = f"v{record.version} was rolled back to v{target.version}: {reason}"
        log.warning(
            "rolled_back",
            deployment_id=record.deployment_id,
            version=record.version,
            to=target.version,
            reason=reason,
        )
        self._prune()
        self._set_status(None, last_error=message)
        self._event("rolled_back", message, deployment_id=record.deployment_id, version=record.version)
        return True
