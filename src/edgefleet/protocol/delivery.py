"""The device side of a bundle delivery (docs/protocol.md), free of I/O: from a desired state to every chunk
of the bundle checked and stored. A `Delivery` is fed the meta and chunk messages, reconnections and clock
ticks, and returns what its driver must do: subscribe, unsubscribe, report an event, log, reject the bundle,
or install it once every chunk is in.

The agent (edgefleet.agent.deployment) and the fleet simulator (edgefleet.fleet.simulator_device) both drive
this one implementation, so the simulator's rollout figures measure the agent's protocol. Where chunks are
kept is the driver's: the agent writes a part file that survives a crash (agent/delivery.py), the simulator
only checks the hashes.

How chunks are fetched: up to `flood_max_bytes` a delivery subscribes to every chunk at once (fastest);
beyond it, and whenever a delivery resumes, it pulls the chunks it lacks through per-chunk subscriptions,
`pull_window` at a time, which bounds what is queued in the broker and in the device's memory. A chunk that
fails its hash is fetched again after a backoff; a *retained* copy failing `max_bad_attempts` times rejects
the bundle (a bad live message may be junk from anyone). No progress for `stall_s` (then 2x, 4x, ... up to
`max_stall_backoff` x) reports the stall with the missing chunks and asks the broker again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import ValidationError

from edgefleet.contract import topics
from edgefleet.contract.errors import BundleError, first_validation_error
from edgefleet.contract.ids import is_sha256_hex
from edgefleet.contract.messages import BundleMeta, DesiredState, DeviceEventKind

MAX_BUNDLE_BYTES = 2 * 1024**3


# -- what the driver is asked to do -------------------------------------------------------------------
@dataclass(frozen=True)
class Subscribe:
    topic_filter: str  # subscribing (again) makes the broker send its retained copies


@dataclass(frozen=True)
class Unsubscribe:
    topic_filter: str


@dataclass(frozen=True)
class Report:
    """Publish a device event (the driver adds the deployment id and version of the desired state)."""

    kind: DeviceEventKind
    detail: str = ""
    fields: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Log:
    level: Literal["info", "warning"]
    event: str
    fields: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Reject:
    """Give up on the bundle: the driver records the verdict and ends the delivery. `transient`: the
    device, not the bundle, failed (a full disk, no file descriptors): no verdict, the driver tries the
    desired state again later."""

    reason: str
    transient: bool = False


@dataclass(frozen=True)
class Assembled:
    """Every chunk is in `store`: the driver checks the whole file and installs it."""

    store: ChunkStore


Action = Subscribe | Unsubscribe | Report | Log | Reject | Assembled


class DeliveryIO(Protocol):
    """What a driver does for a delivery: the transport and the device's event and log streams."""

    def subscribe(self, topic_filter: str) -> None: ...

    def unsubscribe(self, topic_filter: str) -> None: ...

    def report(self, kind: DeviceEventKind, detail: str, fields: dict[str, object]) -> None: ...

    def note(self, entry: Log) -> None: ...


def carry_out(actions: list[Action], desired: DesiredState, io: DeliveryIO) -> Reject | Assembled | None:
    """Do the actions in order (reports carry the desired state's deployment id and version); stop at a
    rejection or at the assembled bundle and return it: what follows is the driver's."""
    for action in actions:
        if isinstance(action, Subscribe):
            io.subscribe(action.topic_filter)
        elif isinstance(action, Unsubscribe):
            io.unsubscribe(action.topic_filter)
        elif isinstance(action, Report):
            fields = {"deployment_id": desired.deployment_id, "version": desired.version, **action.fields}
            io.report(action.kind, action.detail, fields)
        elif isinstance(action, Log):
            io.note(action)
        else:
            return action
    return None


# -- where chunks go ----------------------------------------------------------------------------------
class ChunkStore(Protocol):
    """The chunks of one bundle, each checked against its sha256 in the meta before it counts."""

    meta: BundleMeta
    total: int
    received: set[int]
    resumed: int  # chunks that were already there when the store was opened (a resumed delivery)

    @property
    def complete(self) -> bool: ...

    def accept(self, index: int, data: bytes) -> str | None:
        """Store chunk `index`; None when it was good (or already there), else why it was dropped.
        May raise OSError (e.g. a full disk), which rejects the bundle."""
        ...

    def missing(self) -> list[int]: ...

    def close(self) -> None: ...


# (meta, fresh) -> a store for the meta; fresh: the meta replaced another one for the same bundle, so
# nothing kept from the earlier chunking may be reused. May raise OSError.
OpenStore = Callable[[BundleMeta, bool], ChunkStore]


def ranges(indices: Iterable[int]) -> list[tuple[int, int]]:
    """[0, 1, 2, 5, 7, 8] -> [(0, 2), (5, 5), (7, 8)]: chunk lists stay short on the wire."""
    out: list[tuple[int, int]] = []
    for index in sorted(indices):
        if out and index == out[-1][1] + 1:
            out[-1] = (out[-1][0], index)
        else:
            out.append((index, index))
    return out


def check_meta(meta: BundleMeta, bundle_id: str, profile: str | None = None) -> None:
    """Raise BundleError when a BundleMeta cannot describe the bundle `bundle_id` (for a device running
    `profile`, when given)."""
    if meta.bundle_id != bundle_id:
        raise BundleError(f"bundle meta names bundle {meta.bundle_id[:12]}, expected {bundle_id[:12]}")
    if meta.size > MAX_BUNDLE_BYTES:
        raise BundleError(
            f"bundle {bundle_id[:12]} is {meta.size} bytes, more than the {MAX_BUNDLE_BYTES} allowed"
        )
    expected = -(-meta.size // meta.chunk_size)
    if len(meta.chunk_sha256) != expected:
        raise BundleError(
            f"bundle meta lists {len(meta.chunk_sha256)} chunk hashes; {meta.size} bytes in chunks of "
            f"{meta.chunk_size} make {expected}"
        )
    if not all(is_sha256_hex(h) for h in meta.chunk_sha256):
        raise BundleError("bundle meta: a chunk_sha256 entry is not a lowercase sha256 hex digest")
    if profile is not None and meta.profile != profile:
        raise BundleError(
            f"bundle {bundle_id[:12]} was built for profile '{meta.profile}', this device runs '{profile}'"
        )


def wrong_profile(desired: DesiredState, profile: str) -> str | None:
    """Why a device running `profile` refuses this desired state before fetching anything, or None."""
    if desired.profile == profile:
        return None
    return f"deployment is for profile '{desired.profile}', this device runs profile '{profile}'"


def bundle_of(topic: str) -> str | None:
    parts = topic.split("/")
    return parts[3] if len(parts) >= 5 and parts[2] == "bundles" else None


@dataclass(frozen=True)
class DeliverySettings:
    stall_s: float = 10.0
    pull_window: int = 16
    flood_max_bytes: int = 64 * 1024**2
    max_bad_attempts: int = 5
    max_stall_backoff: int = 8
    progress_every_s: float = 1.0
    warning_every_s: float = 1.0  # bad-chunk and bad-meta warnings at most this often
    max_reported_ranges: int = 64


class Delivery:
    """One desired bundle on its way in. Every method returns the actions to carry out, in order."""

    def __init__(
        self,
        desired: DesiredState,
        open_store: OpenStore,
        clock: Callable[[], float],
        settings: DeliverySettings | None = None,
        profile: str | None = None,
    ) -> None:
        self.desired = desired
        self.settings = settings or DeliverySettings()
        self.profile = profile
        self.store: ChunkStore | None = None
        self.pulling = False  # False: one wildcard subscription; True: per-chunk subscriptions in a window
        self.subscriptions: set[str] = set()
        self.requested: set[int] = set()  # chunks with their own subscription
        self.pull_queue: deque[int] = deque()
        self.bad_attempts: dict[int, int] = {}
        self.refetch_at: dict[int, float] = {}
        self.stalls = 0
        self._open_store = open_store
        self._clock = clock
        self.last_progress = clock()
        self._last_event = -math.inf
        self._last_warning = -math.inf

    @property
    def bundle_id(self) -> str:
        return self.desired.bundle_id

    # -- inputs ---------------------------------------------------------------------------------------
    def start(self, saved_meta: BundleMeta | None = None) -> list[Action]:
        """Ask for the meta; with a meta saved by an earlier run, start on it at once (a meta republished
        for this bundle, e.g. with another chunk size, still replaces it)."""
        actions: list[Action] = [
            Report("delivery_started"),
            self._subscribe(topics.bundle_meta(self.bundle_id)),
        ]
        if saved_meta is not None:
            actions += self._start_store(saved_meta)
        return actions

    def on_meta(self, topic: str, payload: bytes) -> list[Action]:
        if bundle_of(topic) != self.bundle_id or not payload:
            return []
        try:
            meta = BundleMeta.model_validate_json(payload)
            check_meta(meta, self.bundle_id, self.profile)
        except (ValidationError, BundleError) as exc:
            # Anyone allowed to publish there may send junk: a meta that contradicts the desired state is
            # ignored, never fatal (the retained one is asked for again when the delivery stalls).
            problem = first_validation_error(exc, "(top)") if isinstance(exc, ValidationError) else str(exc)
            detail = f"bundle meta for {self.bundle_id[:12]} ignored ({problem}); waiting for a valid one"
            return [Log("warning", "meta_invalid", {"error": detail}), *self._warn(detail)]
        return self._start_store(meta)

    def on_chunk(self, topic: str, payload: bytes, retained: bool) -> list[Action]:
        store = self.store
        index = topics.parse_chunk_index(topic)
        if store is None or bundle_of(topic) != self.bundle_id or index is None or not payload:
            return []  # an empty retained payload is a cleared chunk
        if not 0 <= index < store.total:
            return [Log("warning", "chunk_out_of_range", {"bundle_id": self.bundle_id[:12], "chunk": index})]
        try:
            problem = store.accept(index, payload)
        except OSError as exc:  # e.g. the disk is full: retrying every chunk would not help
            return [
                Reject(f"cannot store chunk {index} of bundle {self.bundle_id[:12]}: {exc}", transient=True)
            ]
        if problem is not None:
            return self._bad_chunk(index, problem, retained)
        actions: list[Action] = []
        if index in self.requested:
            actions += self._unrequest(index)
        self.refetch_at.pop(index, None)
        now = self.last_progress = self._clock()
        self.stalls = 0
        if store.complete:
            return [*actions, Assembled(store)]
        if self.pulling:
            actions += self._top_up()
        if now - self._last_event >= self.settings.progress_every_s:
            self._last_event = now
            actions.append(self._progress(store))
        return actions

    def on_reconnected(self) -> list[Action]:
        """After a reconnection nothing queued for us can be trusted: ask again for what is missing."""
        self.last_progress = self._clock()
        log = Log("info", "delivery_reasking", {"bundle_id": self.bundle_id[:12], "reason": "reconnected"})
        if self.store is None:
            return [log, self._subscribe(topics.bundle_meta(self.bundle_id))]
        return [log, *self._enter_pull()]

    def tick(self) -> list[Action]:
        """About once a second: fetch again the chunks whose backoff is over; report and re-ask a stall."""
        now = self._clock()
        actions: list[Action] = []
        for index, due in sorted(self.refetch_at.items()):
            if now >= due:
                del self.refetch_at[index]
                actions.append(
                    Log("info", "chunk_refetch", {"bundle_id": self.bundle_id[:12], "chunk": index})
                )
                actions += self._request(index)
        period = self.settings.stall_s * min(2**self.stalls, self.settings.max_stall_backoff)
        if now - self.last_progress > period:
            actions += self._stalled()
        return actions

    def close(self) -> list[Action]:
        """The delivery ends (installed, rejected or replaced): drop its subscriptions and its store."""
        if self.store is not None:
            self.store.close()
        actions: list[Action] = [Unsubscribe(t) for t in sorted(self.subscriptions)]
        self.subscriptions.clear()
        return actions

    # -- steps ----------------------------------------------------------------------------------------
    def _start_store(self, meta: BundleMeta) -> list[Action]:
        actions: list[Action] = []
        fresh = False
        if self.store is not None:
            if self.store.meta == meta:
                return []
            actions.append(Log("info", "meta_changed", {"bundle_id": self.bundle_id[:12]}))
            self.store.close()  # another chunking of the same file: start over with the new one
            self.store = None
            actions += self._leave_pull()
            fresh = True
        try:
            store = self.store = self._open_store(meta, fresh)
        except OSError as exc:
            return [*actions, Reject(f"cannot store bundle {self.bundle_id[:12]}: {exc}", transient=True)]
        self.last_progress = self._clock()
        actions.append(
            Log(
                "info",
                "meta",
                {
                    "bundle_id": self.bundle_id[:12],
                    "size": meta.size,
                    "chunks": store.total,
                    "resumed": store.resumed,
                },
            )
        )
        actions.append(
            Report(
                "delivery_progress", fields={"chunks_received": store.resumed, "chunks_total": store.total}
            )
        )
        if store.complete:
            actions.append(Assembled(store))
        elif store.resumed or meta.size > self.settings.flood_max_bytes:
            actions += self._enter_pull()
        else:
            actions.append(self._subscribe(topics.bundle_chunks(self.bundle_id)))
        return actions

    def _subscribe(self, topic_filter: str) -> Subscribe:
        self.subscriptions.add(topic_filter)
        return Subscribe(topic_filter)

    def _unsubscribe(self, topic_filter: str) -> list[Action]:
        if topic_filter not in self.subscriptions:
            return []
        self.subscriptions.discard(topic_filter)
        return [Unsubscribe(topic_filter)]

    def _request(self, index: int) -> list[Action]:
        """Subscribe to one chunk's topic, which makes the broker send its retained copy (again)."""
        self.requested.add(index)
        return [self._subscribe(topics.bundle_chunk(self.bundle_id, index))]

    def _unrequest(self, index: int) -> list[Action]:
        self.requested.discard(index)
        return self._unsubscribe(topics.bundle_chunk(self.bundle_id, index))

    def _enter_pull(self) -> list[Action]:
        """Switch to per-chunk requests for exactly the chunks still missing, and ask again for those
        already requested (after a broker restart nothing that was queued for us can be trusted)."""
        assert self.store is not None
        actions: list[Action] = []
        if not self.pulling:
            self.pulling = True
            actions += self._unsubscribe(topics.bundle_chunks(self.bundle_id))
        self.pull_queue = deque(i for i in self.store.missing() if i not in self.requested)
        for index in sorted(self.requested):
            actions += self._request(index)
        return actions + self._top_up()

    def _leave_pull(self) -> list[Action]:
        actions: list[Action] = []
        for index in sorted(self.requested):
            actions += self._unrequest(index)
        self.pulling = False
        self.pull_queue.clear()
        return actions

    def _top_up(self) -> list[Action]:
        assert self.store is not None
        received, actions = self.store.received, []
        while len(self.requested) < self.settings.pull_window and self.pull_queue:
            index = self.pull_queue.popleft()
            if index not in received and index not in self.requested:
                actions += self._request(index)
        return actions

    def _progress(self, store: ChunkStore) -> Report:
        return Report(
            "delivery_progress", fields={"chunks_received": len(store.received), "chunks_total": store.total}
        )

    def _stalled(self) -> list[Action]:
        self.stalls += 1
        self.last_progress = self._clock()
        if self.store is None:
            meta_topic = topics.bundle_meta(self.bundle_id)
            return [
                Log("warning", "delivery_stalled", {"bundle_id": self.bundle_id[:12], "waiting_for": "meta"}),
                Report(
                    "delivery_stalled",
                    f"no bundle meta on {meta_topic}; asked again. If the broker lost it, publish the bundle "
                    "again (edgefleet deploy)",
                ),
                self._subscribe(meta_topic),
            ]
        store = self.store
        count = store.total - len(store.received)
        quiet_s = self.settings.stall_s * min(2 ** (self.stalls - 1), self.settings.max_stall_backoff)
        return [
            Log(
                "warning",
                "delivery_stalled",
                {"bundle_id": self.bundle_id[:12], "missing": count, "stalls": self.stalls},
            ),
            Report(
                "delivery_stalled",
                f"{count} of {store.total} chunks missing and none arrived for {quiet_s:g} s; asked the "
                "broker again. If it lost them (e.g. restarted without saving), publish them again "
                "(edgefleet deploy)",
                {
                    "chunks_received": len(store.received),
                    "chunks_total": store.total,
                    "missing_chunks": ranges(store.missing())[: self.settings.max_reported_ranges],
                },
            ),
            *self._enter_pull(),
        ]

    def _warn(self, detail: str) -> list[Action]:
        now = self._clock()
        if now - self._last_warning < self.settings.warning_every_s:
            return []
        self._last_warning = now
        return [Report("warning", detail)]

    def _bad_chunk(self, index: int, problem: str, retained: bool) -> list[Action]:
        # Only a bad *retained* copy counts towards giving up: that is what the broker holds. A bad live
        # message may be junk from anyone; the retained copy is fetched to check.
        attempts = self.bad_attempts.get(index, 0)
        actions: list[Action] = []
        if retained:
            attempts = self.bad_attempts[index] = attempts + 1
            if attempts >= self.settings.max_bad_attempts:
                return [Reject(f"bundle {self.bundle_id[:12]}: {problem} ({attempts} times)")]
            # the meta we hold may be the junk (a live one that was never retained): ask for the retained
            # meta again; a different one replaces ours and the delivery starts over with it
            actions.append(self._subscribe(topics.bundle_meta(self.bundle_id)))
        # backoff from a tenth of the stall time (1 s by default): 1, 1, 2, 4 s before giving up
        delay = self.settings.stall_s / 10 * 2 ** max(attempts - 1, 0)
        self.refetch_at.setdefault(index, self._clock() + delay)
        log = Log(
            "warning",
            "chunk_dropped",
            {
                "bundle_id": self.bundle_id[:12],
                "chunk": index,
                "reason": problem,
                "retained": retained,
                "attempt": attempts,
                "refetch_in_s": round(delay, 2),
            },
        )
        return [log, *actions, *self._warn(f"{problem}; dropped, fetching it again in {delay:.1f} s")]
