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


def test_promtool_refuses_what_the_writer_avoids() -> None:
    """The check the exposition tests rely on can fail: promtool flags a gauge carrying a quantile label
    and a counter without _total."""
    from prometheus_lint import problems

    bad = (
        "# HELP x_latency_seconds p95\n# TYPE x_latency_seconds gauge\n"
        'x_latency_seconds{quantile="0.95"} 0.044000000000000004\n'
        "# HELP x_requests requests\n# TYPE x_requests counter\nx_requests 3\n"
    )
    assert problems(bad) != []
