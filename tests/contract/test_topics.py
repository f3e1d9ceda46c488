from __future__ import annotations

import pytest

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
