"""Following the desired state: fetch the bundle's meta and chunks, verify and unpack it, load and warm up
its model next to the running one, swap, and move the `active` pointer. Any failure rejects the bundle
and leaves the running model serving. Runs on the single control worker, so it needs no locks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import ValidationError

from edgefleet.agent.delivery import ChunkAssembler, check_meta
from edgefleet.agent.log import EventLog
from edgefleet.agent.model_slot import LoadedModel, ModelSlot
from edgefleet.agent.session import Envelope, MqttSession
from edgefleet.agent.status import StatusReporter
from edgefleet.agent.store import BundleStore, InstalledBundle
from edgefleet.contract import topics
from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.messages import BundleMeta, DesiredState
from edgefleet.contract.profiles import DeviceProfile

log = EventLog("deployment")
MAX_BAD_CHUNK_ATTEMPTS = 5  # a chunk failing its sha256 this often rejects the bundle
STALL_S = 10.0  # no progress this long: ask the broker for the retained meta/chunks again
PROGRESS_EVERY_S = 1.0
REFETCH_SINGLY = 32  # up to this many missing chunks are re-requested one by one, beyond it all at once


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"


def _bundle_of(topic: str) -> str | None:
    parts = topic.split("/")
    return parts[3] if len(parts) >= 5 and parts[2] == "bundles" else None


@dataclass
class Delivery:
    desired: DesiredState
    assembler: ChunkAssembler | None = None
    subscriptions: set[str] = field(default_factory=set)
    bad_attempts: dict[int, int] = field(default_factory=dict)
    refetch_at: dict[int, float] = field(default_factory=dict)
    last_progress: float = field(default_factory=time.monotonic)
    last_event: float = 0.0

    @property
    def bundle_id(self) -> str:
        return self.desired.bundle_id


class Deployer:
    def __init__(
        self,
        store: BundleStore,
        slot: ModelSlot,
        reporter: StatusReporter,
        session: MqttSession,
        profile: DeviceProfile,
    ) -> None:
        self.store = store
        self.slot = slot
        self.reporter = reporter
        self.session = session
        self.profile = profile
        self.delivery: Delivery | None = None
        self._rejected: set[tuple[str, str]] = set()

    # start ---------------------------------------------------------------------------------------
    def restore_active(self) -> None:
        """Load the bundle the `active` pointer names, re-verified; stay idle if there is none or it fails."""
        bundle_id = self.store.active_id()
        if bundle_id is None:
            log.info("no_active_bundle")
            return
        try:
            installed = self.store.load_installed(bundle_id)
            model = self._load(installed)
        except Exception as exc:
            reason = f"could not restore the active bundle {bundle_id[:12]}: {exc}"
            log.error("restore_failed", error=reason)
            self.reporter.last_error = reason
            return
        self.slot.swap(model)
        log.info("restored", name=model.manifest.name, version=model.version, bundle_id=bundle_id[:12])

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

    def on_desired(self, envelope: Envelope) -> None:
        if not envelope.payload:
            log.info("desired_cleared")
            self._end_delivery()
            return
        try:
            desired = DesiredState.model_validate_json(envelope.payload)
        except ValidationError as exc:
            log.warning("desired_invalid", error=_first_error(exc), bytes=len(envelope.payload))
            return
        log.info(
            "desired",
            deployment_id=desired.deployment_id,
            version=desired.version,
            bundle_id=desired.bundle_id[:12],
        )
        active = self.slot.current
        if active is not None and active.bundle_id == desired.bundle_id:
            self._end_delivery()
            self.reporter.publish()
            return
        if self.delivery is not None and self.delivery.bundle_id == desired.bundle_id:
            self.delivery.desired = desired
            return
        if (desired.deployment_id, desired.bundle_id) in self._rejected:
            log.info("desired_already_rejected", deployment_id=desired.deployment_id)
            return
        self._end_delivery()
        if desired.profile != self.profile.name:
            self._reject(
                desired,
                f"deployment is for profile '{desired.profile}', this device runs profile "
                f"'{self.profile.name}'",
            )
            return
        if self.store.is_installed(desired.bundle_id):
            self._activate_installed(desired)
            return
        self.delivery = Delivery(desired)
        self._subscribe(topics.bundle_meta(desired.bundle_id))
        self.reporter.set("receiving")
        self.reporter.event("delivery_started", deployment_id=desired.deployment_id, version=desired.version)

    def on_meta(self, envelope: Envelope) -> None:
        delivery = self.delivery
        if delivery is None or _bundle_of(envelope.topic) != delivery.bundle_id or not envelope.payload:
            return
        try:
            meta = BundleMeta.model_validate_json(envelope.payload)
            check_meta(meta, delivery.bundle_id)
        except ValidationError as exc:
            detail = (
                f"bundle meta for {delivery.bundle_id[:12]} is invalid ({_first_error(exc)}); "
                "waiting for a valid one"
            )
            log.warning("meta_invalid", error=detail)
            self.reporter.event("warning", detail, deployment_id=delivery.desired.deployment_id)
            return
        except EdgefleetError as exc:
            self._reject(delivery.desired, str(exc))
            return
        if delivery.assembler is not None:
            if delivery.assembler.meta == meta:
                return
            delivery.assembler.close()  # the meta changed under us: start over with the new one
        delivery.assembler = ChunkAssembler(meta, self.store.part_path(delivery.bundle_id))
        delivery.last_progress = time.monotonic()
        log.info(
            "meta",
            bundle_id=delivery.bundle_id[:12],
            size=meta.size,
            chunks=delivery.assembler.total,
            resumed=delivery.assembler.resumed,
        )
        self.reporter.event(
            "delivery_progress",
            deployment_id=delivery.desired.deployment_id,
            version=delivery.desired.version,
            chunks_received=delivery.assembler.resumed,
            chunks_total=delivery.assembler.total,
        )
        if delivery.assembler.complete:
            self._finish(delivery)
        else:
            self._subscribe(topics.bundle_chunks(delivery.bundle_id))

    def on_chunk(self, envelope: Envelope) -> None:
        delivery = self.delivery
        if delivery is None or delivery.assembler is None or _bundle_of(envelope.topic) != delivery.bundle_id:
            return
        index = topics.parse_chunk_index(envelope.topic)
        if index is None or not envelope.payload:  # an empty retained payload is a cleared chunk
            return
        assembler = delivery.assembler
        problem = assembler.accept(index, envelope.payload)
        if problem is not None:
            self._bad_chunk(delivery, index, problem)
            return
        delivery.refetch_at.pop(index, None)
        now = time.monotonic()
        delivery.last_progress = now
        if assembler.complete:
            self._finish(delivery)
        elif now - delivery.last_event >= PROGRESS_EVERY_S:
            delivery.last_event = now
            self.reporter.event(
                "delivery_progress",
                deployment_id=delivery.desired.deployment_id,
                version=delivery.desired.version,
                chunks_received=len(assembler.received),
                chunks_total=assembler.total,
            )

    def tick(self) -> None:
        """Re-request chunks that failed their hash (with backoff) and whatever stalled."""
        delivery = self.delivery
        if delivery is None:
            return
        now = time.monotonic()
        for index, due in list(delivery.refetch_at.items()):
            if now >= due:
                del delivery.refetch_at[index]
                log.info("chunk_refetch", bundle_id=delivery.bundle_id[:12], chunk=index)
                self._subscribe(topics.bundle_chunk(delivery.bundle_id, index))
        if now - delivery.last_progress > STALL_S:
            delivery.last_progress = now
            bundle_id = delivery.bundle_id
            if delivery.assembler is None:
                log.warning("delivery_stalled", bundle_id=bundle_id[:12], waiting_for="meta")
                self._subscribe(topics.bundle_meta(bundle_id))
                return
            missing = delivery.assembler.missing()
            log.warning("delivery_stalled", bundle_id=bundle_id[:12], missing=len(missing))
            # ask the broker for the retained chunks again: just the holes when there are few
            if len(missing) <= REFETCH_SINGLY:
                for index in missing:
                    self._subscribe(topics.bundle_chunk(bundle_id, index))
            else:
                self._subscribe(topics.bundle_chunks(bundle_id))

    # steps ---------------------------------------------------------------------------------------
    def _subscribe(self, topic_filter: str) -> None:
        assert self.delivery is not None
        self.delivery.subscriptions.add(topic_filter)
        self.session.subscribe(topic_filter, resend_retained=True)

    def _bad_chunk(self, delivery: Delivery, index: int, problem: str) -> None:
        attempts = delivery.bad_attempts[index] = delivery.bad_attempts.get(index, 0) + 1
        if attempts >= MAX_BAD_CHUNK_ATTEMPTS:
            self._reject(delivery.desired, f"bundle {delivery.bundle_id[:12]}: {problem} ({attempts} times)")
            return
        delay = float(2 ** (attempts - 1))
        delivery.refetch_at[index] = time.monotonic() + delay
        log.warning(
            "chunk_dropped",
            bundle_id=delivery.bundle_id[:12],
            chunk=index,
            reason=problem,
            attempt=attempts,
            refetch_in_s=delay,
        )
        self.reporter.event(
            "warning",
            f"{problem}; dropped, fetching it again in {delay:.0f} s",
            deployment_id=delivery.desired.deployment_id,
            version=delivery.desired.version,
        )

    def _finish(self, delivery: Delivery) -> None:
        assert delivery.assembler is not None
        self.reporter.set("activating")
        try:
            bundle_file = delivery.assembler.finish()
            installed = self.store.install(bundle_file, delivery.bundle_id)
        except Exception as exc:
            self.store.discard_part(delivery.bundle_id)
            self._reject(delivery.desired, str(exc))
            return
        self.store.discard_part(delivery.bundle_id)
        self._activate(installed, delivery.desired)

    def _activate_installed(self, desired: DesiredState) -> None:
        self.reporter.set("activating")
        try:
            installed = self.store.load_installed(desired.bundle_id)
        except Exception as exc:
            self._reject(desired, str(exc))
            return
        self._activate(installed, desired)

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
        try:
            model = self._load(installed)
        except Exception as exc:
            self._reject(desired, f"cannot load the model of bundle {installed.bundle_id[:12]}: {exc}")
            return
        try:
            self.store.set_active(installed.bundle_id)
        except OSError as exc:
            model.close()
            self._reject(desired, f"cannot write the active pointer in {self.store.state_dir}: {exc}")
            return
        old = self.slot.swap(model)
        self._end_delivery()
        log.info(
            "activated",
            deployment_id=desired.deployment_id,
            version=model.version,
            bundle_id=installed.bundle_id[:12],
            replaced=old.version if old else None,
        )
        self.reporter.set(None, clear_error=True)
        self.reporter.event(
            "activated",
            f"{model.manifest.name} v{model.version} is serving",
            deployment_id=desired.deployment_id,
            version=model.version,
        )
        for fallback in model.info.fallbacks:
            self.reporter.event(
                "warning", fallback, deployment_id=desired.deployment_id, version=model.version
            )
        self.store.prune()

    def _reject(self, desired: DesiredState, reason: str) -> None:
        log.warning(
            "bundle_rejected", deployment_id=desired.deployment_id, version=desired.version, reason=reason
        )
        self._rejected.add((desired.deployment_id, desired.bundle_id))
        self._end_delivery()
        self.reporter.set(None, last_error=reason)
        self.reporter.event("rejected", reason, deployment_id=desired.deployment_id, version=desired.version)

    def _end_delivery(self) -> None:
        delivery, self.delivery = self.delivery, None
        if delivery is None:
            return
        if delivery.assembler is not None:
            delivery.assembler.close()
        for topic_filter in delivery.subscriptions:
            self.session.unsubscribe(topic_filter)
