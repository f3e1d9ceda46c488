"""Uploading a bundle: a chunk whose PUBACK never comes while the connection is up is published once more
(retained chunks are idempotent) instead of failing the deploy or rollout. The lost acknowledgement is made
by dropping it in the session's callback; broker, client and upload are real."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fleet_helpers import collect_retained

from edgefleet.contract import topics
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.session import BrokerSession
from edgefleet.fleet.upload import prepare_bundle, upload_bundle


def test_a_chunk_whose_ack_is_lost_is_published_again(
    broker: MosquittoProcess, make_bundle: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = prepare_bundle(Path(make_bundle(extra_bytes=300_000)), chunk_size=64 * 1024)
    assert bundle.chunk_count >= 3
    session = BrokerSession(broker.url, "test-upload").open()
    session.ack_timeout = 1.0
    deliver = session._handle_publish
    dropped: list[int] = []

    def lose_the_first_ack(client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if not dropped:
            dropped.append(mid)
            return
        deliver(client, userdata, mid, reason, properties)

    session._client.on_publish = lose_the_first_ack
    try:
        with caplog.at_level(logging.WARNING, logger="edgefleet.fleet.upload"):
            stats = upload_bundle(session, bundle)
    finally:
        session.close()
    assert dropped and stats.chunks == bundle.chunk_count
    assert "chunk 0 of bundle" in caplog.text and "publishing it again" in caplog.text
    retained = collect_retained(
        broker,
        [topics.bundle_chunks(bundle.bundle_id), topics.bundle_meta(bundle.bundle_id)],
        expect=bundle.chunk_count + 1,
    )
    assert len(retained) == bundle.chunk_count + 1
