"""Telemetry history in SQLite: the recorder writes what it is given (batched, from its own thread), prunes
old rows, and `edgefleet history` answers per device and metric, with clear errors for bad input."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edgefleet.cli import main
from edgefleet.contract.messages import LatencySummary, Telemetry
from edgefleet.fleet.history import bucketize, parse_duration, parse_time
from edgefleet.fleet.telemetry_store import HistoryError, HistoryRecorder, Point, query_metric


def telemetry(device_id: str, p95: float, **extra: object) -> Telemetry:
    return Telemetry(
        device_id=device_id,
        interval_s=5.0,
        model_version="2",
        requests=100,
        errors=1,
        latency_ms=LatencySummary(p50=p95 / 2, p95=p95, p99=p95 * 1.5, samples=100),
        rss_mb=80.0,
        cpu_percent=10.0,
        swaps=0,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """Two devices: pi-1 with 30 min of p95 values (one per minute, 1.0 .. 30.0 ms), pi-2 with one old row."""
    db = tmp_path / "telemetry.sqlite"
    recorder = HistoryRecorder(db, retention_s=None, flush_s=0.05).start()
    now = time.time()
    for minute in range(30):
        recorder.record(
            telemetry("pi-1", float(minute + 1), soc_temp_c=40.0 + minute), now - (29 - minute) * 60
        )
    recorder.record(telemetry("pi-2", 9.0), now - 3 * 3600)
    recorder.stop()
    assert recorder.written == 31 and recorder.dropped == 0 and recorder.failed is None
    return db


def test_query_returns_the_metric_in_time_order(history: Path) -> None:
    points = query_metric(history, "pi-1", "p95_ms", since=time.time() - 10.5 * 60)
    assert [p.value for p in points] == [float(v) for v in range(20, 31)]
    temps = query_metric(history, "pi-1", "soc_temp_c", since=time.time() - 90)
    assert [p.value for p in temps] == [68.0, 69.0]
    with pytest.raises(HistoryError, match="unknown metric 'p96_ms'; choose one of: p50_ms, p95_ms"):
        query_metric(history, "pi-1", "p96_ms", since=0)


def test_history_command_prints_values_and_a_summary(
    history: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", "pi-1", "--metric", "p95_ms", "--since", "5m", "--db", str(history)]) == 0
    out = capsys.readouterr().out
    assert "pi-1 p95_ms since" in out and "(5 records)" in out
    assert "p95_ms: min 26  mean 28  max 30  last 30" in out

    assert main(["history", "pi-1", "--since", "1h", "--step", "10m", "--db", str(history), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["points"]) == 30 and data["metric"] == "p95_ms"
    buckets = data["buckets"]
    assert sum(b["count"] for b in buckets) == 30
    assert min(b["minimum"] for b in buckets) == 1.0 and max(b["maximum"] for b in buckets) == 30.0


def test_history_explains_what_is_missing(
    history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", "pi-9", "--db", str(history)]) == 2
    assert "no telemetry history for device 'pi-9'" in capsys.readouterr().err
    assert main(["history", "pi-2", "--since", "1h", "--db", str(history)]) == 2
    err = capsys.readouterr().err
    assert "device 'pi-2' has no telemetry since" in err and "try a longer --since" in err
    assert main(["history", "pi-1", "--since", "yesterday", "--db", str(history)]) == 2
    assert "time 'yesterday' is not valid" in capsys.readouterr().err
    assert main(["history", "pi-1", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no telemetry history at" in capsys.readouterr().err
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("hello, this is not SQLite\n" * 100)
    assert main(["history", "pi-1", "--db", str(not_a_db)]) == 2
    assert "cannot open the telemetry history" in capsys.readouterr().err


def test_recorder_prunes_rows_older_than_the_retention(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    recorder = HistoryRecorder(db, retention_s=3600, flush_s=0.05).start()
    recorder.record(telemetry("old", 1.0), time.time() - 7200)
    recorder.record(telemetry("new", 1.0), time.time())
    recorder.stop()
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT device_id FROM telemetry")] == ["new"]


def test_time_parsing_and_buckets() -> None:
    assert parse_duration("90s") == 90 and parse_duration("1.5h") == 5400 and parse_duration("2w") == 1209600
    now = 1_800_000_000.0
    assert parse_time("15m", now) == now - 900
    moment = datetime(2026, 11, 22, 6, 0, tzinfo=timezone.utc)
    assert parse_time(moment.isoformat(), now) == moment.timestamp()
    naive_local = (moment - timedelta(hours=1)).astimezone().replace(tzinfo=None)
    assert parse_time(naive_local.isoformat(), now) == pytest.approx(moment.timestamp() - 3600)
    with pytest.raises(HistoryError):
        parse_duration("5 minutes")
    points = [Point(0, 1.0, None), Point(30, 3.0, None), Point(60, None, None), Point(61, 10.0, None)]
    buckets = bucketize(points, 60)
    assert [(b.start, b.count, b.minimum, b.mean, b.maximum) for b in buckets] == [
        (0, 2, 1.0, 2.0, 3.0),
        (60, 1, 10.0, 10.0, 10.0),
    ]
