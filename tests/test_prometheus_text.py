"""The one Prometheus text writer of the agent's /metrics and the exporter: values without float noise."""

from __future__ import annotations

import math

import pytest

from edgefleet.prometheus_text import escape, family, number


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.044000000000000004, "0.044"),  # what the exporter printed for 44 ms
        (0.1 + 0.2, "0.3"),
        (89548390.0, "89548390"),
        (1764795123.456789, "1764795123.45679"),  # a unix time keeps 10 us
        (3, "3"),
        (1.5e-7, "1.5e-07"),
        (None, "NaN"),
        (math.nan, "NaN"),
        (math.inf, "+Inf"),
    ],
)
def test_numbers_carry_no_float_noise(value: float | None, text: str) -> None:
    assert number(value) == text


def test_a_family_escapes_label_values() -> None:
    lines = family("x_total", "counter", "help", [({"device_id": 'a"b\\c'}, 2.0)], {"_sum": 0.5})
    assert lines == [
        "# HELP x_total help",
        "# TYPE x_total counter",
        'x_total{device_id="a\\"b\\\\c"} 2',
        "x_total_sum 0.5",
    ]
    assert escape("line\nbreak") == "line\\nbreak"
