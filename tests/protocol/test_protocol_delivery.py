"""The device side of a bundle delivery (protocol/delivery.py), in-process with an injected clock: every
transition and failure path, with the agent's real chunk store (a part file under tmp_path)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from support_bundles import chunked_bundle

from edgefleet.agent.delivery import ChunkAssembler
from edgefleet.contract import topics
from edgefleet.contract.messages import BundleMeta, DesiredState
from edgefleet.protocol.delivery import (
    Action,
    Assembled,
    ChunkStore,
    Delivery,
    DeliverySettings,
    Reject,
    Report,
    Subscribe,
    Unsubscribe,
)

CHUNK = 64


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_bundle(chunks: int, profile: str = "rpi4") -> tuple[bytes, BundleMeta]:
    data = bytes((i * 7 + i // CHUNK) % 251 for i in range(chunks * CHUNK - 10))
    _, meta = chunked_bundle(data, CHUNK, version="2", profile=profile)
    return data, meta


def desired_for(meta: BundleMeta) -> DesiredState:
    return DesiredState(
        deployment_id="d-1", bundle_id=meta.bundle_id, name=meta.name, version=meta.version, profile="rpi4"
    )


def chunk(data: bytes, index: int) -> bytes:
    return data[index * CHUNK : (index + 1) * CHUNK]


def kinds(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions if isinstance(a, Report)]


def subscribed(actions: list[Action]) -> list[str]:
    return [a.topic_filter for a in actions if isinstance(a, Subscribe)]


def unsubscribed(actions: list[Action]) -> list[str]:
    return [a.topic_filter for a in actions if isinstance(a, Unsubscribe)]


@pytest.fixture
def opener(tmp_path: Path) -> Callable[[BundleMeta, bool], ChunkStore]:
    def open_store(meta: BundleMeta, fresh: bool) -> ChunkStore:
        log = tmp_path / f"{meta.bundle_id}.chunks"
        if fresh:
            log.unlink(missing_ok=True)
        return ChunkAssembler(meta, tmp_path / f"{meta.bundle_id}.part", log)

    return open_store


def started(
    meta: BundleMeta, opener: Callable[[BundleMeta, bool], ChunkStore], clock: Clock, **settings: float
) -> Delivery:
    delivery = Delivery(desired_for(meta), opener, clock, DeliverySettings(**settings), profile="rpi4")
    first = delivery.start()
    assert kinds(first) == ["delivery_started"] and subscribed(first) == [topics.bundle_meta(meta.bundle_id)]
    return delivery


def test_a_small_bundle_floods_then_is_assembled_with_throttled_progress(opener, tmp_path: Path) -> None:
    clock = Clock()
    data, meta = make_bundle(5)
    delivery = started(meta, opener, clock)
    on_meta = delivery.on_meta(topics.bundle_meta(meta.bundle_id), meta.to_bytes())
    assert kinds(on_meta) == ["delivery_progress"] and subscribed(on_meta) == [
        topics.bundle_chunks(meta.bundle_id)
    ]
    clock.now += 5
    assert kinds(delivery.on_chunk(topics.bundle_chunk(meta.bundle_id, 0), chunk(data, 0), True)) == [
        "delivery_progress"
    ]
    assert delivery.on_chunk(topics.bundle_chunk(meta.bundle_id, 1), chunk(data, 1), True) == []  # within 1 s
    assert (
        delivery.on_chunk(topics.bundle_chunk(meta.bundle_id, 1), chunk(data, 1), True) == []
    )  # a duplicate
    for index in (2, 3):
        delivery.on_chunk(topics.bundle_chunk(meta.bundle_id, index), chunk(data, index), True)
    last = delivery.on_chunk(topics.bundle_chunk(meta.bundle_id, 4), chunk(data, 4), True)
    assert isinstance(last[-1], Assembled)
    assembler = last[-1].store
    assert isinstance(assembler, ChunkAssembler) and assembler.finish().read_bytes() == data
    closing = delivery.close()
    assert unsubscribed(closing) == sorted(
        [topics.bundle_meta(meta.bundle_id), topics.bundle_chunks(meta.bundle_id)]
    )
    assert delivery.close() == []


def test_a_large_bundle_is_pulled_a_window_of_chunks_at_a_time(opener) -> None:
    clock = Clock()
    data, meta = make_bundle(10)
    delivery = started(meta, opener, clock, flood_max_bytes=CHUNK, pull_window=3)
    on_meta = delivery.on_meta(topics.bundle_meta(meta.bundle_id), meta.to_bytes())
    assert subscribed(on_meta)[-3:] == [topics.bundle_chunk(meta.bundle_id, i) for i in range(3)]
    assert topics.bundle_chunks(meta.bundle_id) not in subscribed(on_meta)
    got = delivery.on_chunk(topics.bundle_chunk(meta.bundle_id, 1), chunk(data, 1), True)
    assert unsubscribed(got) == [topics.bundle_chunk(meta.bundle_id, 1)]
    assert subscribed(got) == [topics.bundle_chunk(meta.bundle_id, 3)] and len(delivery.requested) == 3
    for index in [0, 2, *range(3, 10)]:
        actions = delivery.on_chunk(topics.bundle_chunk(meta.bundle_id, index), chunk(data, index), True)
        assert len(delivery.requested) <= 3
    assert isinstance(actions[-1], Assembled)


def test_a_bad_retained_chunk_is_fetched_again_after_a_backoff_and_rejects_the_bundle_at_last(opener) -> None:
    clock = Clock()
    _, meta = make_bundle(3)
    delivery = started(meta, opener, clock, stall_s=10.0, max_bad_attempts=3)
    delivery.on_meta(topics.bundle_meta(meta.bundle_id), meta.to_bytes())
    topic = topics.bundle_chunk(meta.bundle_id, 1)
    live_junk = delivery.on_chunk(topic, b"x" * CHUNK, False)  # junk from anyone: refetched, not counted
    assert kinds(live_junk) == ["warning"] and delivery.bad_attempts == {}
    clock.now += 0.5
    retained_bad = delivery.on_chunk(topic, b"y" * CHUNK, True)
    assert kinds(retained_bad) == [] and delivery.bad_attempts == {1: 1}  # warnings at most once a second
    assert delivery.tick() == []  # the backoff (1 s from the first drop) is not over
    clock.now += 0.5
    assert subscribed(delivery.tick()) == [topic]
    delivery.on_chunk(topic, b"y" * CHUNK, True)
    rejected = delivery.on_chunk(topic, b"y" * CHUNK, True)
    assert isinstance(rejected[-1], Reject) and "(3 times)" in rejected[-1].reason


def test_a_stall_is_reported_with_the_missing_chunks_and_backs_off(opener) -> None:
    clock = Clock()
    data, meta = make_bundle(6)
    delivery = started(meta, opener, clock, stall_s=10.0, pull_window=16)
    clock.now += 10.5
    no_meta = delivery.tick()
    assert kinds(no_meta) == ["delivery_stalled"] and subscribed(no_meta) == [
        topics.bundle_meta(meta.bundle_id)
    ]
    delivery.on_meta(topics.bundle_meta(meta.bundle_id), meta.to_bytes())
    for index in (0, 1, 4):
        delivery.on_chunk(topics.bundle_chunk(meta.bundle_id, index), chunk(data, index), True)
    clock.now += 10.5
    stalled = delivery.tick()
    report = next(a for a in stalled if isinstance(a, Report))
    assert report.fields["missing_chunks"] == [(2, 3), (5, 5)] and "3 of 6 chunks missing" in report.detail
    assert topics.bundle_chunks(meta.bundle_id) in unsubscribed(stalled)
    assert set(subscribed(stalled)) == {topics.bundle_chunk(meta.bundle_id, i) for i in (2, 3, 5)}
    clock.now += 15.0
    assert delivery.tick() == []  # the second report waits twice as long
    clock.now += 6.0
    assert kinds(delivery.tick()) == ["delivery_stalled"]


def test_junk_metas_are_ignored_and_a_changed_meta_starts_over(opener) -> None:
    """A meta that contradicts the desired state (unparseable, another bundle or profile, a hash list that
    does not fit its size) is junk anyone may publish: a warning, never the end of the deployment."""
    clock = Clock()
    data, meta = make_bundle(4)
    delivery = started(meta, opener, clock)
    topic = topics.bundle_meta(meta.bundle_id)
    assert delivery.on_meta(topics.bundle_meta("f" * 64), meta.to_bytes()) == []  # another bundle's
    assert kinds(delivery.on_meta(topic, b"{not json")) == ["warning"]
    clock.now += 2
    short = meta.model_copy(update={"chunk_sha256": meta.chunk_sha256[:-1]})
    ignored = delivery.on_meta(topic, short.to_bytes())
    assert kinds(ignored) == ["warning"] and "ignored (bundle meta lists 3 chunk hashes" in ignored[-1].detail
    jetson = meta.model_copy(update={"profile": "jetson-nano"})
    assert not any(isinstance(a, Reject) for a in delivery.on_meta(topic, jetson.to_bytes()))
    assert delivery.store is None
    assert kinds(delivery.on_meta(topic, meta.to_bytes())) == ["delivery_progress"]  # the real one

    third = started(meta, opener, Clock())
    third.on_meta(topic, meta.to_bytes())
    third.on_chunk(topics.bundle_chunk(meta.bundle_id, 0), chunk(data, 0), True)
    assert third.on_meta(topic, meta.to_bytes()) == []  # the same meta again changes nothing
    rechunked = meta.model_copy(update={"chunk_size": CHUNK * 2})
    rechunked = rechunked.model_copy(
        update={
            "chunk_sha256": [
                hashlib.sha256(data[i : i + 2 * CHUNK]).hexdigest() for i in range(0, len(data), 2 * CHUNK)
            ]
        }
    )
    again = third.on_meta(topic, rechunked.to_bytes())
    assert third.store is not None and third.store.meta == rechunked and kinds(again) == ["delivery_progress"]


def test_chunks_failing_against_a_junk_meta_make_the_device_ask_for_the_retained_meta(opener) -> None:
    """A live junk meta with the right count but wrong hashes: the retained chunks fail against it, the
    device asks for the retained meta again, and the real meta replaces the junk and completes."""
    clock = Clock()
    data, meta = make_bundle(3)
    delivery = started(meta, opener, clock)
    junk = meta.model_copy(update={"chunk_sha256": ["0" * 64] * 3})
    topic = topics.bundle_meta(meta.bundle_id)
    delivery.on_meta(topic, junk.to_bytes())
    dropped = delivery.on_chunk(topics.bundle_chunk(meta.bundle_id, 0), chunk(data, 0), True)
    assert topic in subscribed(dropped) and not any(isinstance(a, Reject) for a in dropped)
    delivery.on_meta(topic, meta.to_bytes())  # the broker resends the retained meta
    for index in range(3):
        actions = delivery.on_chunk(topics.bundle_chunk(meta.bundle_id, index), chunk(data, index), True)
    assert isinstance(actions[-1], Assembled)


def test_a_reconnection_asks_again_for_the_meta_or_the_missing_chunks(opener) -> None:
    clock = Clock()
    data, meta = make_bundle(4)
    delivery = started(meta, opener, clock)
    assert subscribed(delivery.on_reconnected()) == [topics.bundle_meta(meta.bundle_id)]
    delivery.on_meta(topics.bundle_meta(meta.bundle_id), meta.to_bytes())
    delivery.on_chunk(topics.bundle_chunk(meta.bundle_id, 2), chunk(data, 2), True)
    asked = delivery.on_reconnected()
    assert set(subscribed(asked)) == {topics.bundle_chunk(meta.bundle_id, i) for i in (0, 1, 3)}


def test_a_store_that_cannot_write_rejects_the_bundle(opener) -> None:
    _, meta = make_bundle(2)

    def full_disk(meta: BundleMeta, fresh: bool) -> ChunkStore:
        raise OSError(28, "No space left on device")

    delivery = Delivery(desired_for(meta), full_disk, Clock())
    delivery.start()
    rejected = delivery.on_meta(topics.bundle_meta(meta.bundle_id), meta.to_bytes())
    assert isinstance(rejected[-1], Reject) and "No space left on device" in rejected[-1].reason
