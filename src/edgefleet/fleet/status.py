"""`edgefleet status`: the devices on a broker (retained presence and status, plus the telemetry heard
while listening) as a table or one JSON object. A device publishing garbage is shown as such.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from pydantic import BaseModel, Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgefleet.contract.messages import DeviceStatus, Telemetry, utc_now
from edgefleet.fleet.describe import describe_backend
from edgefleet.fleet.fleet_view import FleetView, KnownDevice
from edgefleet.fleet.session import collect_device_messages


class DeviceView(BaseModel):
    device_id: str
    online: bool | None = Field(default=None, description="None: the device never published its presence")
    online_since: datetime | None = None
    status: DeviceStatus | None = None
    telemetry: Telemetry | None = Field(
        default=None, description="the latest telemetry heard while listening"
    )
    invalid: dict[str, str] = Field(
        default_factory=dict, description="topic leaf -> why its last message was not understood"
    )

    @property
    def has_fallback(self) -> bool:
        return bool(self.status and self.status.backend and self.status.backend.fallbacks)


class FleetStatus(BaseModel):
    broker: str
    collected_at: datetime
    listen_s: float
    devices: list[DeviceView]

    def device(self, device_id: str) -> DeviceView:
        for view in self.devices:
            if view.device_id == device_id:
                return view
        raise KeyError(device_id)


def _view(device: KnownDevice) -> DeviceView:
    return DeviceView(
        device_id=device.device_id,
        online=device.online,
        online_since=device.presence.at if device.presence else None,
        status=device.status,
        telemetry=device.telemetry,
        invalid=dict(device.invalid),
    )


def collect_fleet_status(broker_url: str, listen_s: float = 2.0) -> FleetStatus:
    """Read every device's retained presence and status, then listen `listen_s` seconds for telemetry."""
    view = FleetView()
    address = collect_device_messages(broker_url, "status", listen_s, view)
    devices = [_view(device) for device in view.sorted()]
    return FleetStatus(broker=address, collected_at=utc_now(), listen_s=listen_s, devices=devices)


def _cell(value: str | None) -> str:
    return "-" if value is None else escape(value)


def render_table(fleet: FleetStatus) -> Table:
    table = Table(title=f"edgefleet devices on {fleet.broker} (listened {fleet.listen_s:g} s)")
    for column, justify in [
        ("device", "left"),
        ("online", "center"),
        ("profile", "left"),
        ("model", "left"),
        ("backend", "left"),
        ("p50/p95 ms", "right"),
        ("RSS MB", "right"),
        ("req/err", "right"),
        ("notes", "left"),
    ]:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for view in fleet.devices:
        status, tele = view.status, view.telemetry
        online = {True: "[green]yes[/]", False: "[red]no[/]", None: "?"}[view.online]
        model = backend = profile = None
        notes: list[str] = []
        if status is not None:
            profile = status.profile
            model = f"{status.model.name} v{status.model.version}" if status.model else "none"
            backend = describe_backend(status.backend, with_fallbacks=False) if status.backend else None
            if status.state != "serving":
                notes.append(f"state {status.state}")
            if status.last_error:
                notes.append(f"last error: {escape(status.last_error)}")
        backend_cell = _cell(backend)
        if view.has_fallback and status is not None and status.backend is not None:
            backend_cell += " [yellow](fallback)[/]"
            notes.extend(f"[yellow]fallback:[/] {escape(f)}" for f in status.backend.fallbacks)
        latency = rss = counts = None
        if tele is not None:
            p50, p95 = tele.latency_ms.p50, tele.latency_ms.p95
            latency = f"{_num(p50)}/{_num(p95)}"
            rss = f"{tele.rss_mb:.0f}"
            counts = f"{tele.requests}/{tele.errors}"
        notes.extend(f"[red]garbage on {leaf}:[/] {escape(reason)}" for leaf, reason in view.invalid.items())
        table.add_row(
            escape(view.device_id),
            online,
            _cell(profile),
            _cell(model),
            backend_cell,
            _cell(latency),
            _cell(rss),
            _cell(counts),
            "\n".join(notes),
        )
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_status(args: argparse.Namespace) -> int:
    """CLI entry point (edgefleet status)."""
    fleet = collect_fleet_status(args.broker, args.listen)
    if args.json:
        print(fleet.model_dump_json(indent=2))
        return 0
    console = Console()
    if not console.is_terminal:
        # Piped into a file or another program: do not wrap rows at a guessed 80 columns.
        console = Console(width=200)
    if not fleet.devices:
        console.print(f"no devices have reported on {fleet.broker}", highlight=False)
        return 0
    console.print(render_table(fleet))
    return 0
