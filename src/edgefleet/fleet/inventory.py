"""The fleet inventory: every device that announced itself (retained presence and status: id, profile, tags,
versions, backend), folded from MQTT messages into one record per device. `edgefleet devices` prints it;
rollouts feed the same fold live.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta

from pydantic import BaseModel, Field, TypeAdapter
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgefleet.contract.messages import DeviceStatus, utc_now
from edgefleet.fleet.describe import describe_backend
from edgefleet.fleet.fleet_view import FleetView, KnownDevice
from edgefleet.fleet.selectors import Selector, SelectorError, explain_no_match
from edgefleet.fleet.session import collect_device_messages


class DeviceRecord(BaseModel):
    """What the inventory knows of one device (the JSON shape of `edgefleet devices --json`)."""

    device_id: str
    online: bool | None = Field(default=None, description="None: the device never published its presence")
    last_seen: datetime | None = Field(
        default=None, description="the newest timestamp on anything the device published that we received"
    )
    profile: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    state: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    bundle_id: str | None = None
    agent_version: str | None = None
    backend: str | None = None
    last_error: str | None = None
    invalid: dict[str, str] = Field(
        default_factory=dict, description="topic leaf -> why its last message was not understood"
    )
    status: DeviceStatus | None = None

    @property
    def announced(self) -> bool:
        """True once the device published a readable status (we know its profile)."""
        return self.status is not None


class Inventory(FleetView):
    """The fleet view plus what `devices` and rollouts ask of it: records and selection."""

    def record(self, device_id: str) -> DeviceRecord:
        device = self.get(device_id) or KnownDevice(device_id)
        status = device.status
        model = status.model if status else None
        return DeviceRecord(
            device_id=device_id,
            online=device.online,
            last_seen=device.last_seen(),
            profile=status.profile if status else None,
            tags=dict(status.tags) if status else {},
            state=status.state if status else None,
            model_name=model.name if model else None,
            model_version=model.version if model else None,
            bundle_id=model.bundle_id if model else None,
            agent_version=status.agent_version if status else None,
            backend=describe_backend(status.backend, with_fallbacks=False)
            if status and status.backend
            else None,
            last_error=status.last_error if status else None,
            invalid=dict(device.invalid),
            status=status,
        )

    def records(self) -> list[DeviceRecord]:
        return [self.record(device_id) for device_id in sorted(self.devices)]

    def select(self, selector: Selector) -> list[DeviceRecord]:
        """Devices the selector matches, in id order. Devices that never announced a status are matched on
        their id alone (profile and tags unknown), so `id=...` still finds them."""
        return [r for r in self.records() if selector.matches(r.device_id, r.profile, r.tags)]

    def no_match_message(self, selector: Selector) -> str:
        return explain_no_match(selector, [(r.device_id, r.profile, r.tags) for r in self.records()])


def collect_inventory(broker_url: str, listen_s: float = 2.0) -> tuple[Inventory, str]:
    """Every device's retained presence and status, plus `listen_s` seconds of live telemetry (which makes
    last-seen current). Returns the inventory and the broker address."""
    inventory = Inventory()
    address = collect_device_messages(broker_url, "devices", listen_s, inventory)
    return inventory, address


def short_age(seconds: float | None) -> str:
    """An age in the largest unit that keeps it short: 5s, 10m, 3h, 2d; "never" for None."""
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def format_age(then: datetime | None, now: datetime | None = None) -> str:
    """How long ago `then` was: "5s ago", ..., "never"."""
    if then is None:
        return "never"
    return short_age(((now or utc_now()) - then) / timedelta(seconds=1)) + " ago"


def render_devices(records: list[DeviceRecord], broker: str) -> Table:
    online_count = sum(1 for r in records if r.online)
    table = Table(title=f"{len(records)} devices on {broker} ({online_count} online)")
    for column in ("device", "online", "last seen", "profile", "tags", "model", "agent", "backend", "notes"):
        table.add_column(column)
    now = utc_now()
    for record in records:
        notes = []
        if record.state and record.state != "serving":
            notes.append(f"state {record.state}")
        if record.last_error:
            notes.append(f"last error: {escape(record.last_error)}")
        if not record.announced and "status" not in record.invalid:
            notes.append("no status yet")
        notes.extend(f"[red]garbage on {leaf}:[/] {escape(why)}" for leaf, why in record.invalid.items())
        table.add_row(
            escape(record.device_id),
            {True: "[green]online[/]", False: "[red]offline[/]", None: "?"}[record.online],
            format_age(record.last_seen, now),
            escape(record.profile or "-"),
            escape(",".join(f"{k}={v}" for k, v in sorted(record.tags.items())) or "-"),
            escape(f"{record.model_name} v{record.model_version}" if record.model_version else "-"),
            escape(record.agent_version or "-"),
            escape(record.backend or "-"),
            "\n".join(notes),
        )
    return table


_RECORDS = TypeAdapter(list[DeviceRecord])


def run_devices(args: argparse.Namespace) -> int:
    """CLI entry point (edgefleet devices)."""
    selector = Selector.parse(args.select) if args.select else None
    inventory, address = collect_inventory(args.broker, args.listen)
    records = inventory.select(selector) if selector else inventory.records()
    if selector is not None and not records:
        raise SelectorError(inventory.no_match_message(selector))
    if args.json:
        print(_RECORDS.dump_json(records, indent=2).decode())
        return 0
    console = Console() if Console().is_terminal else Console(width=200)
    if not records:
        console.print(f"no devices have announced themselves on {address}", highlight=False)
        return 0
    console.print(render_devices(records, address))
    return 0
