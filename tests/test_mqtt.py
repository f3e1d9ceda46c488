"""edgefleet.mqtt's PUBLISH properties: the fast path packs exactly what paho's checked assignment packs."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MQTTException, Properties

from edgefleet.mqtt import publish_properties


def _checked(**fields: object) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in fields.items():
        setattr(props, name, value)
    return props


@pytest.mark.parametrize(
    "fields",
    [
        {"ContentType": "application/x-npz", "CorrelationData": b"\x00\x01", "ResponseTopic": "a/b"},
        {"UserProperty": [("status", "ok"), ("model_version", "2")], "ContentType": "application/json"},
        {"MessageExpiryInterval": 60},
        {"UserProperty": ("one", "pair")},  # not a list: paho's own assignment wraps it
        {"PayloadFormatIndicator": 1, "CorrelationData": b"x"},
    ],
)
def test_fast_publish_properties_pack_like_pahos(fields: dict[str, object]) -> None:
    assert publish_properties(**fields).pack() == _checked(**fields).pack()


def test_properties_from_the_template_are_independent() -> None:
    first = publish_properties(CorrelationData=b"first")
    publish_properties(CorrelationData=b"second")
    assert getattr(first, "CorrelationData") == b"first"  # noqa: B009 - paho sets it dynamically
    assert not hasattr(publish_properties(), "CorrelationData")


def test_names_and_values_paho_checks_are_still_checked() -> None:
    with pytest.raises(MQTTException):
        publish_properties(NoSuchProperty=1)
    with pytest.raises(MQTTException):
        publish_properties(PayloadFormatIndicator=7)
