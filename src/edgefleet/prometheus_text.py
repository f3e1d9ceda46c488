"""The Prometheus text exposition format (0.0.4), written once for the agent's /metrics and the fleet
exporter: escaping, numbers without float noise, and one metric family at a time."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SIGNIFICANT_DIGITS = 15  # what a double holds for sure: drops the noise in the 16th-17th digit (0.1 + 0.2)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float | None) -> str:
    """A sample value: integers as integers, floats rounded to SIGNIFICANT_DIGITS (0.044, not
    0.044000000000000004), NaN for unknown."""
    if value is None or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(f"{value:.{SIGNIFICANT_DIGITS}g}"))


def family(
    name: str,
    kind: str,
    help_text: str,
    samples: Sequence[tuple[Mapping[str, str], float | None]],
    suffixes: Mapping[str, float | None] | None = None,
) -> list[str]:
    """The lines of one metric family: HELP, TYPE, then each sample (`suffixes`: e.g. a summary's _sum
    and _count, unlabelled)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        label_text = ",".join(f'{key}="{escape(str(val))}"' for key, val in labels.items())
        lines.append(f"{name}{{{label_text}}} {number(value)}" if label_text else f"{name} {number(value)}")
    for suffix, value in (suffixes or {}).items():
        lines.append(f"{name}{suffix} {number(value)}")
    return lines
