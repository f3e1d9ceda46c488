"""Telemetry history in an embedded SQLite file: one row per telemetry message, written in batches by one
background thread (so MQTT's network thread never waits on disk), pruned to a retention period, and
queried per device and metric by `edgefleet history`.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.messages import Telemetry
from edgefleet.fleet.monitor import telemetry_extra

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_RETENTION_S = 7 * 86400

# metric name (as `history --metric` takes it) -> column
METRICS: dict[str, str] = {
    "p50_ms": "p50_ms",
    "p95_ms": "p95_ms",
    "p99_ms": "p99_ms",
    "rss_mb": "rss_mb",
    "cpu_percent": "cpu_percent",
    "requests": "requests",
    "errors": "errors",
    "interval_requests": "interval_requests",
    "interval_errors": "interval_errors",
    "swaps": "swaps",
    "soc_temp_c": "soc_temp_c",
    "throughput_rps": "throughput_rps",
    "rollbacks": "rollbacks",
}

_COLUMNS = (
    "device_id",
    "at",
    "device_at",
    "model_version",
    "requests",
    "errors",
    "interval_requests",
    "interval_errors",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "samples",
    "rss_mb",
    "cpu_percent",
    "swaps",
    "soc_temp_c",
    "throughput_rps",
    "rollbacks",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS telemetry (
    device_id TEXT NOT NULL,
    at REAL NOT NULL,            -- when the host received it (unix seconds): what --since refers to
    device_at REAL,              -- the device's own timestamp (its clock may be off)
    model_version TEXT,
    requests INTEGER, errors INTEGER,      -- since the agent started
    interval_requests INTEGER, interval_errors INTEGER,  -- in the telemetry interval (newer agents)
    p50_ms REAL, p95_ms REAL, p99_ms REAL, samples INTEGER,
    rss_mb REAL, cpu_percent REAL, swaps INTEGER,
    soc_temp_c REAL, throughput_rps REAL, rollbacks INTEGER
);
CREATE INDEX IF NOT EXISTS telemetry_device_at ON telemetry (device_id, at);
CREATE INDEX IF NOT EXISTS telemetry_at ON telemetry (at);
PRAGMA user_version = {SCHEMA_VERSION};
"""


class HistoryError(EdgefleetError):
    """The history database cannot be opened or queried as asked."""


def default_history_path() -> Path:
    return Path.home() / ".edgefleet" / "telemetry.sqlite"


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """Open the history database (WAL, so readers never block the writer)."""
    if not create and not path.exists():
        raise HistoryError(
            f"no telemetry history at {path}; it is written by `edgefleet exporter` (or `edgefleet watch "
            "--history FILE`) while they run; pass --db to read another file"
        )
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if create:
            db.executescript(_SCHEMA)
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except (OSError, sqlite3.Error) as exc:
        raise HistoryError(f"cannot open the telemetry history {path}: {exc}") from exc
    if version != SCHEMA_VERSION:
        db.close()
        raise HistoryError(
            f"{path} is not an edgefleet telemetry history (schema {version}, expected {SCHEMA_VERSION})"
        )
    return db


def telemetry_row(telemetry: Telemetry, received_at: float) -> tuple[object, ...]:
    latency = telemetry.latency_ms
    rollbacks = telemetry_extra(telemetry, "rollbacks")
    return (
        telemetry.device_id,
        received_at,
        telemetry.at.timestamp(),
        telemetry.model_version,
        telemetry.requests,
        telemetry.errors,
        _optional_int(telemetry_extra(telemetry, "interval_requests")),
        _optional_int(telemetry_extra(telemetry, "interval_errors")),
        latency.p50,
        latency.p95,
        latency.p99,
        latency.samples,
        telemetry.rss_mb,
        telemetry.cpu_percent,
        telemetry.swaps,
        telemetry_extra(telemetry, "soc_temp_c"),
        telemetry_extra(telemetry, "throughput_rps"),
        _optional_int(rollbacks),
    )


def _optional_int(value: float | None) -> int | None:
    return None if value is None else int(value)


class HistoryRecorder:
    """Appends telemetry to the database from a background thread, committing every `flush_s` seconds
    (one transaction per batch keeps 1000 messages/s cheap). `record` never blocks: when the queue is
    full the row is dropped and counted in `dropped`."""

    def __init__(
        self,
        path: Path,
        *,
        retention_s: float | None = DEFAULT_RETENTION_S,
        flush_s: float = 1.0,
        max_queued: int = 200_000,
    ) -> None:
        self.path = path
        self.retention_s = retention_s
        self.flush_s = flush_s
        self._queue: queue.Queue[tuple[object, ...]] = queue.Queue(max_queued)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self.written = 0
        self.dropped = 0
        self.failed: str | None = None

    def start(self) -> HistoryRecorder:
        self._db = connect(self.path, create=True)  # errors surface here, in the caller's thread
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()
        return self

    def record(self, telemetry: Telemetry, received_at: float | None = None) -> None:
        try:
            self._queue.put_nowait(telemetry_row(telemetry, received_at or time.time()))
        except queue.Full:
            self.dropped += 1

    def stop(self) -> None:
        """Write what is queued, then close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        assert self._db is not None
        db, last_prune = self._db, 0.0
        insert = f"INSERT INTO telemetry ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        try:
            while True:
                stopping = self._stop.wait(self.flush_s)
                batch = self._drain()
                if batch:
                    with db:
                        db.executemany(insert, batch)
                    self.written += len(batch)
                now = time.time()
                if self.retention_s is not None and now - last_prune > 600:
                    with db:
                        db.execute("DELETE FROM telemetry WHERE at < ?", (now - self.retention_s,))
                    last_prune = now
                if stopping and self._queue.empty():
                    break
        except sqlite3.Error as exc:
            self.failed = f"writing telemetry history to {self.path} failed: {exc}"
            log.error(self.failed)
        finally:
            db.close()

    def _drain(self) -> list[tuple[object, ...]]:
        batch: list[tuple[object, ...]] = []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return batch


@dataclass(frozen=True)
class Point:
    at: float
    value: float | None
    model_version: str | None


def query_metric(
    path: Path, device_id: str, metric: str, since: float, until: float | None = None
) -> list[Point]:
    """The device's values of `metric` received between `since` and `until` (unix seconds), oldest first."""
    column = METRICS.get(metric)
    if column is None:
        raise HistoryError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    db = connect(path, create=False)
    try:
        rows = db.execute(
            f"SELECT at, {column}, model_version FROM telemetry "
            "WHERE device_id = ? AND at >= ? AND at <= ? ORDER BY at",
            (device_id, since, until if until is not None else float("inf")),
        ).fetchall()
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot read the telemetry history {path}: {exc}") from exc
    finally:
        db.close()
    return [Point(at, None if value is None else float(value), version) for at, value, version in rows]


def known_devices(path: Path) -> dict[str, tuple[float, int]]:
    """device_id -> (newest receive time, row count) of every device in the history."""
    db = connect(path, create=False)
    try:
        rows = db.execute("SELECT device_id, MAX(at), COUNT(*) FROM telemetry GROUP BY device_id").fetchall()
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot read the telemetry history {path}: {exc}") from exc
    finally:
        db.close()
    return {device_id: (newest, count) for device_id, newest, count in rows}
