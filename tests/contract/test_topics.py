from __future__ import annotations

import pytest
from paho.mqtt.client import topic_matches_sub

from edgefleet.contract import topics


def test_device_topics_round_trip() -> None:
    assert topics.parse_device_topic(topics.status("pi-1")) == ("pi-1", "status")
    assert topics.parse_device_topic("edgefleet/v1/bundles/x/meta") is None
    bundle_id = "a" * 64
    assert topics.parse_chunk_index(topics.bundle_chunk(bundle_id, 17)) == 17


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "x" * 65, "dev ice"])
def test_device_ids_that_would_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not valid"):
        topics.status(bad)


def test_a_device_may_write_only_its_own_reports_and_read_only_its_own_orders() -> None:
    grants = topics.device_grants("pi-1")
    writes = {pattern for access, pattern in grants if access == "write"}
    reads = {pattern for access, pattern in grants if access == "read"}
    assert {topics.status("pi-1"), topics.telemetry("pi-1"), topics.events("pi-1")} <= writes
    assert {topics.desired("pi-1"), topics.infer("pi-1")} <= reads
    assert not any("devices/+" in p or (p.endswith("#") and "bundles" not in p) for p in writes | reads)
    assert topics.desired("pi-1") not in writes and topics.status("pi-2") not in writes
    monitor = topics.monitor_grants()
    assert all(access == "read" for access, pattern in monitor if "/devices/" in pattern)


def test_the_wildcards_match_the_topics_they_stand_for_and_no_others() -> None:
    bundle_id = "b" * 64
    meta, chunk = topics.bundle_meta(bundle_id), topics.bundle_chunk(bundle_id, 3)
    assert topic_matches_sub(topics.ALL_BUNDLE_META, meta) and not topic_matches_sub(
        topics.ALL_BUNDLE_META, chunk
    )
    assert topic_matches_sub(topics.ALL_BUNDLE_CHUNKS, chunk) and not topic_matches_sub(
        topics.ALL_BUNDLE_CHUNKS, meta
    )
    assert topic_matches_sub(topics.bundle_chunks(bundle_id), chunk)
    assert topic_matches_sub(topics.ALL_STATUS, topics.status("pi-1"))
    assert not topic_matches_sub(topics.ALL_STATUS, topics.telemetry("pi-1"))
