"""`edgefleet history DEVICE --metric p95_ms --since 1h`: one device's telemetry over time from the SQLite
history that `exporter` (or `watch --history`) records: a table of values (or buckets with `--step`) and a
summary, or JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgefleet.contract.errors import EdgefleetError
from edgefleet.fleet.telemetry_store import (
    HistoryError,
    Point,
    default_history_path,
    known_devices,
    query_metric,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class NoHistory(EdgefleetError):
    """The history holds nothing for the device and time range asked for."""


def parse_duration(text: str) -> float:
    """'90s', '15m', '1h', '2d', '1w' -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise HistoryError(f"duration {text!r} is not valid; use a number and s, m, h, d or w (e.g. 15m, 1h)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_time(text: str, now: float) -> float:
    """A point in time: a duration back from now ('1h') or an ISO 8601 timestamp."""
    if _DURATION.match(text):
        return now - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise HistoryError(
            f"time {text!r} is not valid; use a duration back from now (30m, 1h, 2d) or an ISO 8601 "
            "timestamp (2026-11-22T06:00:00+00:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a naive timestamp is local time
    return moment.timestamp()


@dataclass(frozen=True)
class Bucket:
    start: float
    count: int
    minimum: float
    mean: float
    maximum: float


def bucketize(points: list[Point], step_s: float) -> list[Bucket]:
    """min/mean/max of the values in each `step_s`-long interval that has any (gaps are skipped)."""
    groups: dict[int, list[float]] = {}
    for point in points:
        if point.value is not None:
            groups.setdefault(math.floor(point.at / step_s), []).append(point.value)
    return [
        Bucket(key * step_s, len(values), min(values), sum(values) / len(values), max(values))
        for key, values in sorted(groups.items())
    ]


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _no_history_message(db: Path, device_id: str, since: float) -> str:
    devices = known_devices(db)
    if device_id not in devices:
        names = sorted(devices)
        listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        return f"no telemetry history for device {device_id!r} in {db}; " + (
            f"devices with history: {listed}" if names else "the history is empty"
        )
    newest, count = devices[device_id]
    return (
        f"device {device_id!r} has no telemetry since {_stamp(since)} in {db} (its newest of {count} "
        f"records is from {_stamp(newest)}); try a longer --since"
    )


def run_history(args: argparse.Namespace) -> int:
    """CLI entry point (edgefleet history)."""
    now = time.time()
    db = Path(args.db) if args.db else default_history_path()
    since = parse_time(args.since, now)
    until = parse_time(args.until, now) if args.until else None
    points = query_metric(db, args.device, args.metric, since, until)
    values = [p.value for p in points if p.value is not None]
    if not points:
        raise NoHistory(_no_history_message(db, args.device, since))
    step = parse_duration(args.step) if args.step else None
    if args.json:
        out: dict[str, object] = {
            "device_id": args.device,
            "metric": args.metric,
            "since": datetime.fromtimestamp(since, timezone.utc).isoformat(),
            "points": [
                {
                    "at": datetime.fromtimestamp(p.at, timezone.utc).isoformat(),
                    "value": p.value,
                    "model_version": p.model_version,
                }
                for p in points
            ],
        }
        if step is not None:
            out["buckets"] = [vars(b) | {"start": _iso(b.start)} for b in bucketize(points, step)]
        print(json.dumps(out, indent=2))
        return 0
    console = Console() if Console().is_terminal else Console(width=160)
    title = f"{args.device} {args.metric} since {_stamp(since)} ({len(points)} records)"
    console.print(title, highlight=False)
    table = Table()
    if step is not None:
        for column in ("from", "records", "min", "mean", "max"):
            table.add_column(column, justify="left" if column == "from" else "right")
        for bucket in bucketize(points, step):
            table.add_row(
                _stamp(bucket.start),
                str(bucket.count),
                _fmt(bucket.minimum),
                _fmt(bucket.mean),
                _fmt(bucket.maximum),
            )
    else:
        for column in ("received", args.metric, "model"):
            table.add_column(column, justify="right" if column == args.metric else "left")
        for point in points:
            table.add_row(_stamp(point.at), _fmt(point.value), point.model_version or "-")
    console.print(table)
    if values:
        console.print(
            f"{args.metric}: min {_fmt(min(values))}  mean {_fmt(sum(values) / len(values))}  "
            f"max {_fmt(max(values))}  last {_fmt(values[-1])}",
            highlight=False,
        )
    else:
        console.print(f"the device reported no {args.metric} in this range (the field was empty)")
    return 0


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat()


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == int(value):
        return str(int(value))
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}".rstrip("0").rstrip(".")
