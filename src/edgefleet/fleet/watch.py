"""`edgefleet watch`: a live terminal view of the fleet (online, version, latency p50/p95/p99, RSS, CPU,
temperature, errors, last seen) redrawn as telemetry arrives. Devices that need attention (garbage,
offline or silent, errors, over their profile's budgets) are listed first, so a big fleet fits on a
screen; garbage is shown as garbage and never stops the view.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.health import HealthPolicy
from edgefleet.contract.messages import LatencySummary
from edgefleet.contract.profiles import DeviceProfile, load_profile
from edgefleet.fleet.consoles import stdout_console
from edgefleet.fleet.fleet_feed import FleetFeed
from edgefleet.fleet.inventory import short_age
from edgefleet.fleet.monitor import DeviceHealth, FleetMonitor, FleetSnapshot, telemetry_extra
from edgefleet.fleet.stop_signals import stop_on_signals
from edgefleet.fleet.telemetry_store import HistoryRecorder

_COLUMNS: list[tuple[str, str]] = [
    ("device", "left"),
    ("online", "center"),
    ("profile", "left"),
    ("version", "left"),
    ("p50 ms", "right"),
    ("p95 ms", "right"),
    ("p99 ms", "right"),
    ("RSS MB", "right"),
    ("CPU %", "right"),
    ("temp °C", "right"),
    ("requests", "right"),
    ("errors", "right"),
    ("last seen", "right"),
    ("notes", "left"),
]


@functools.lru_cache(maxsize=64)
def _budgets(profile: str) -> DeviceProfile | None:
    try:
        return load_profile(profile)
    except EdgefleetError:
        return None  # a profile this host does not know: no budgets to compare with


@dataclass(frozen=True)
class Attention:
    """Why a device is listed early (rank 0 = most urgent) and what to say about it."""

    rank: int
    notes: list[str]


def assess(device: DeviceHealth, now: float) -> Attention:
    notes: list[str] = []
    rank = 9
    for leaf, reason in device.invalid.items():
        notes.append(f"[red]garbage on {escape(leaf)}:[/] {escape(reason)}")
        rank = 0
    if device.online is False:
        notes.append("[red]offline[/]")
        rank = min(rank, 1)
    elif device.stale(now):
        notes.append("[yellow]telemetry stopped[/]")
        rank = min(rank, 1)
    status = device.status
    if status is not None:
        if status.state == "error" or status.last_error:
            notes.append(f"[red]{escape(status.last_error or 'state error')}[/]")
            rank = min(rank, 2)
        elif status.state != "serving":
            notes.append(f"state {status.state}")
            rank = min(rank, 4)
    tele, profile = device.telemetry, _budgets(device.profile) if device.profile else None
    if device.new_errors:
        notes.append(f"[red]+{device.new_errors} errors[/]")
        rank = min(rank, 2)
        interval_requests = telemetry_extra(tele, "interval_requests") if tele is not None else None
        if profile is not None and interval_requests is not None:
            problem = HealthPolicy.of(profile).problem(int(interval_requests), device.new_errors, None)
            if problem is not None:  # what the agent's probation would roll a new model back for
                notes.append(f"[red]unhealthy: {escape(problem)}[/]")
    if tele is not None and profile is not None:
        if tele.latency_ms.p95 is not None and tele.latency_ms.p95 > profile.latency_budget_ms:
            notes.append(f"[yellow]p95 over the {profile.latency_budget_ms:g} ms budget[/]")
            rank = min(rank, 3)
        if tele.rss_mb > profile.memory_budget_mb:
            notes.append(f"[yellow]RSS over the {profile.memory_budget_mb} MB budget[/]")
            rank = min(rank, 3)
    return Attention(rank, notes)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _optional(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


# Columns a narrower terminal drops, widest need first; below NOTES_INLINE_WIDTH the notes leave the table
# for lines of their own under it, so no number is ever cut to "0...".
NOTES_INLINE_WIDTH = 150
RATE_WINDOW_S = 10.0
_DROPPED_BELOW: dict[str, int] = {"p50 ms": 110, "temp °C": 110, "profile": 90, "requests": 90}
_NARROW_HEADERS = {"version": "ver", "last seen": "seen", "requests": "reqs"}


def _columns(width: int | None) -> list[tuple[str, str]]:
    if width is None or width >= NOTES_INLINE_WIDTH:
        return _COLUMNS
    return [
        (name, justify)
        for name, justify in _COLUMNS
        if name != "notes" and width >= _DROPPED_BELOW.get(name, 0)
    ]


def _row(device: DeviceHealth, attention: Attention, now: float) -> dict[str, str]:
    stale = device.stale(now)
    online = {True: "[green]yes[/]", False: "[red]no[/]", None: "?"}[device.online]
    if device.online and stale:
        online = "[yellow]silent[/]"
    tele = device.telemetry
    cells = {
        "device": escape(device.device_id),
        "online": online,
        "profile": escape(device.profile or "-"),
        "version": escape(device.model_version or "-"),
    }
    if tele is not None:
        latency = tele.latency_ms
        cells |= {
            "p50 ms": _ms(latency.p50),
            "p95 ms": _ms(latency.p95),
            "p99 ms": _ms(latency.p99),
            "RSS MB": f"{tele.rss_mb:.0f}",
            "CPU %": f"{tele.cpu_percent:.0f}",
            "temp °C": _optional(telemetry_extra(tele, "soc_temp_c"), ".0f"),
            "requests": str(tele.requests),
            "errors": f"[red]{tele.errors}[/]" if device.new_errors else str(tele.errors),
        }
    age = None if device.last_seen is None else now - device.last_seen
    cells["last seen"] = short_age(age)
    cells["notes"] = "; ".join(attention.notes)
    return cells


def _count(value: int, label: str, colour: str) -> str:
    """A header count, coloured only when it is not zero: "0 offline" is good news."""
    return f"[{colour}]{value} {label}[/]" if value else f"{value} {label}"


def render_watch(
    snapshot: FleetSnapshot,
    broker: str,
    *,
    max_rows: int | None = None,
    telemetry_rate: float | None = None,
    width: int | None = None,
) -> Group:
    """The view: a one-line fleet summary, then devices needing attention first, then the rest by id.
    `width`: the terminal's; narrower than NOTES_INLINE_WIDTH, columns are dropped and notes get lines of
    their own, so the view fits (80 columns included) without cutting a number."""
    now = snapshot.taken_at
    ranked = sorted(
        ((assess(device, now), device) for device in snapshot.devices),
        key=lambda pair: (pair[0].rank, pair[1].device_id),
    )
    needing = sum(1 for attention, _ in ranked if attention.rank < 9)
    shown = ranked if max_rows is None else ranked[: max(1, max_rows)]
    columns = _columns(width)
    narrow = width is not None and width < NOTES_INLINE_WIDTH
    table = Table(expand=False, pad_edge=False, box=None if narrow else box.HEAVY_HEAD, show_edge=not narrow)
    for name, justify in columns:
        # narrow: short headers, and a long device id wraps rather than a number being cut
        title = _NARROW_HEADERS.get(name, name) if narrow else name
        wraps = name == "notes" or (narrow and name == "device")
        table.add_column(title, justify=justify, no_wrap=not wraps, overflow="fold")  # type: ignore[arg-type]
    notes: list[Text] = []
    for attention, device in shown:
        cells = _row(device, attention, now)
        table.add_row(*(cells.get(name, "-") for name, _ in columns))
        if narrow and cells["notes"]:
            notes.append(Text.from_markup(f"  {escape(device.device_id)}: {cells['notes']}"))
    stale = sum(1 for d in snapshot.devices if d.online and d.stale(now))
    rate = "" if telemetry_rate is None else f"{telemetry_rate:.0f} telemetry/s"
    garbage = "garbage" if narrow else "sending garbage"
    total = len(snapshot.devices)
    counts = (
        f"{total} device{'' if total == 1 else 's'}: "
        f"{_count(snapshot.online, 'online', 'green')}, {_count(snapshot.offline, 'offline', 'red')}, "
        f"{_count(stale, 'silent', 'yellow')}, {_count(snapshot.with_garbage, garbage, 'red')}; "
        f"{needing} need attention"
    )
    title = f"[bold]edgefleet watch[/] {escape(broker)}"
    clock = f"({datetime.fromtimestamp(now).strftime('%H:%M:%S')})"
    # narrow: the broker and the counts on lines of their own, so neither wraps at 80 columns
    if narrow:
        lines = [f"{title}  {rate + '  ' if rate else ''}{clock}", counts]
    else:
        lines = [f"{title}  {counts}{', ' + rate if rate else ''}  {clock}"]
    parts: list[Text | Table] = [*(Text.from_markup(line) for line in lines), table, *notes]
    hidden = len(ranked) - len(shown)
    if hidden:
        hidden_needing = max(0, needing - len(shown))
        parts.append(
            Text(
                f"... and {hidden} more devices ({hidden_needing} of them need attention); "
                "widen the terminal or pass --rows"
            )
        )
    if not snapshot.devices:
        parts.append(Text("no device has reported yet"))
    return Group(*parts)


def summary_line(snapshot: FleetSnapshot) -> str:
    elapsed = snapshot.taken_at - snapshot.started_at
    return (
        f"watch: {snapshot.telemetry_messages} telemetry messages from {len(snapshot.devices)} devices in "
        f"{elapsed:.1f} s ({snapshot.invalid_messages} not understood)"
    )


def _default_rows(console: Console) -> int | None:
    if not console.is_terminal:
        return None
    return max(5, console.size.height - 8)


class WatchedDevice(BaseModel):
    """One row of the view, for scripts (`watch --once --json`)."""

    device_id: str
    state: Literal["online", "offline", "silent", "unknown"]
    profile: str | None
    version: str | None
    latency_ms: LatencySummary | None = Field(description="model run time, from the last telemetry")
    rss_mb: float | None
    cpu_percent: float | None
    soc_temp_c: float | None
    requests: int | None
    errors: int | None
    new_errors: int = Field(description="errors reported since the telemetry before the last")
    last_seen_s: float | None = Field(description="seconds since the device's newest message; null: never")
    attention: int = Field(description="0 most urgent ... 9 nothing to say; the view's order")
    notes: list[str]


class WatchView(BaseModel):
    broker: str
    taken_at: datetime
    devices_total: int
    online: int
    offline: int
    silent: int
    sending_garbage: int
    need_attention: int
    devices: list[WatchedDevice]


def watch_view(snapshot: FleetSnapshot, broker: str) -> WatchView:
    """What render_watch shows, as data: the same counts, order and notes (without colour)."""
    now = snapshot.taken_at
    ranked = sorted(
        ((assess(device, now), device) for device in snapshot.devices),
        key=lambda pair: (pair[0].rank, pair[1].device_id),
    )
    devices = []
    for attention, device in ranked:
        tele = device.telemetry
        state: Literal["online", "offline", "silent", "unknown"] = "unknown"
        if device.online is not None:
            state = ("silent" if device.stale(now) else "online") if device.online else "offline"
        extra_temp = telemetry_extra(tele, "soc_temp_c") if tele is not None else None
        devices.append(
            WatchedDevice(
                device_id=device.device_id,
                state=state,
                profile=device.profile,
                version=device.model_version,
                latency_ms=tele.latency_ms if tele is not None else None,
                rss_mb=tele.rss_mb if tele is not None else None,
                cpu_percent=tele.cpu_percent if tele is not None else None,
                soc_temp_c=float(extra_temp) if extra_temp is not None else None,
                requests=tele.requests if tele is not None else None,
                errors=tele.errors if tele is not None else None,
                new_errors=device.new_errors,
                last_seen_s=None if device.last_seen is None else round(max(0.0, now - device.last_seen), 3),
                attention=attention.rank,
                notes=[Text.from_markup(note).plain for note in attention.notes],
            )
        )
    return WatchView(
        broker=broker,
        taken_at=datetime.fromtimestamp(now, tz=timezone.utc),
        devices_total=len(devices),
        online=snapshot.online,
        offline=snapshot.offline,
        silent=sum(1 for d in devices if d.state == "silent"),
        sending_garbage=snapshot.with_garbage,
        need_attention=sum(1 for d in devices if d.attention < 9),
        devices=devices,
    )


def run_watch(args: argparse.Namespace) -> int:
    """CLI entry point (edgefleet watch)."""
    if args.refresh <= 0:
        raise EdgefleetError(f"--refresh must be a positive number of seconds, not {args.refresh}")
    if args.json and not args.once:
        raise EdgefleetError("--json prints one view: add --once (a live view is for a terminal)")
    console = stdout_console(pipe_width=200)
    monitor = FleetMonitor()
    recorder = HistoryRecorder(Path(args.history)).start() if args.history else None
    stop = threading.Event()
    try:
        with stop_on_signals(stop), FleetFeed(args.broker, "watch", monitor, recorder=recorder) as feed:
            if args.once:
                feed.session.sync()  # every retained presence/status is in
                stop.wait(max(0.0, args.listen))
                rows = args.rows if args.rows else None
                if args.json:
                    print(watch_view(monitor.snapshot(), feed.address).model_dump_json(indent=2))
                    return 0
                console.print(
                    render_watch(monitor.snapshot(), feed.address, max_rows=rows, width=console.width)
                )
                return 0
            if console.is_terminal:
                _live(console, monitor, feed, args, stop)
            else:
                # Not a terminal: redrawing in place is impossible; print the view once, when it ends.
                _wait(stop, args.duration)
                snapshot = monitor.snapshot()
                console.print(render_watch(snapshot, feed.address, max_rows=args.rows, width=console.width))
    finally:
        if recorder is not None:
            recorder.stop()
    console.print(summary_line(monitor.snapshot()), highlight=False)
    return 0


def _wait(stop: threading.Event, duration: float | None) -> None:
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the view normally
        stop.wait(duration)


def _live(
    console: Console, monitor: FleetMonitor, feed: FleetFeed, args: argparse.Namespace, stop: threading.Event
) -> None:
    deadline = None if args.duration is None else time.monotonic() + args.duration
    # the rate over the last RATE_WINDOW_S, not the last refresh: devices report every few seconds, so a
    # one-second rate jumps between 0 and the whole fleet
    counts: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])
    rate: float | None = None

    def view() -> Group:
        rows = args.rows or _default_rows(console)
        snapshot = monitor.snapshot()
        return render_watch(snapshot, feed.address, max_rows=rows, telemetry_rate=rate, width=console.width)

    with contextlib.suppress(KeyboardInterrupt), Live(view(), console=console, auto_refresh=False) as live:
        while not stop.wait(args.refresh):
            now = time.monotonic()
            counts.append((now, monitor.telemetry_messages))
            while len(counts) > 2 and now - counts[1][0] >= RATE_WINDOW_S:
                counts.popleft()
            (first_at, first_count), (_, count) = counts[0], counts[-1]
            rate = (count - first_count) / max(1e-6, now - first_at)
            live.update(view(), refresh=True)
            if deadline is not None and now >= deadline:
                break
