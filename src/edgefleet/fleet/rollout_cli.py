"""`edgefleet rollout BUNDLE --select ...` and `edgefleet rollout status|resume|abort [ID]`: argument
handling and the per-device progress table."""

from __future__ import annotations

import argparse

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from edgefleet.fleet.inventory import format_age
from edgefleet.fleet.rollout import abort_rollout, refresh_from_broker, resume_rollout, start_rollout
from edgefleet.fleet.rollout_state import RolloutError, RolloutState, RolloutStore

TABLE_ALL_UP_TO = 100  # larger rollouts list only the devices that are not done and healthy
STATE_STYLE = {
    "healthy": "green",
    "already": "green",
    "active": "cyan",
    "deploying": "cyan",
    "failed": "red",
    "rolled_back": "yellow",
    "rollback_sent": "yellow",
    "skipped": "dim",
    "planned": "dim",
}


def exit_code(state: RolloutState) -> int:
    """0 when the rollout completed (or was aborted on request), 1 when it halted."""
    return 1 if state.status == "halted" else 0


def render_rollout(state: RolloutState) -> Group:
    bundle, options = state.bundle, state.options
    counts = state.counts()
    header = Text()
    header.append(f"rollout {state.rollout_id}: ", style="bold")
    header.append(
        f"{bundle.name} {bundle.version} (profile {bundle.profile}, bundle {bundle.bundle_id[:12]})\n"
    )
    header.append(f"selector '{options.selector}', canary {options.canary}, batch {options.batch}, ")
    header.append(
        f"max failures {options.max_failures}, max error rate {options.max_error_rate:.0%}, "
        f"min healthy {options.min_healthy_s:g} s, "
        f"stage timeout {options.stage_timeout_s:g} s\n"
    )
    status_style = {"completed": "green", "halted": "red", "rolling_back": "red"}.get(state.status, "cyan")
    header.append("status: ")
    header.append(state.status, style=status_style)
    header.append(
        f", stage {state.stage_label(state.stage)}, failures {state.failures}, updated "
        f"{format_age(state.updated_at)}\n"
    )
    header.append(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if state.halt_reason:
        header.append(f"\nhalted: {state.halt_reason}", style="red")
    devices = sorted(
        state.devices.values(), key=lambda d: (d.stage if d.stage is not None else 1 << 30, d.device_id)
    )
    if len(devices) > TABLE_ALL_UP_TO:
        devices = [d for d in devices if d.state not in ("healthy", "already", "planned")]
    table = Table(show_edge=False)
    for column in ("device", "stage", "state", "previous", "detail"):
        table.add_column(column)
    for device in devices:
        previous = f"{device.previous.name} {device.previous.version}" if device.previous else "-"
        style = STATE_STYLE.get(device.state, "")
        table.add_row(
            escape(device.device_id),
            state.stage_name(device.stage) if device.stage is not None else "-",
            f"[{style}]{device.state}[/]" if style else device.state,
            escape(previous),
            escape(device.detail),
        )
    parts: list[Text | Table] = [header]
    if devices:
        parts.append(table)
    parts.extend(Text(note, style="dim") for note in state.notes[-3:])
    return Group(*parts)


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _show(state: RolloutState, as_json: bool) -> None:
    if as_json:
        print(state.model_dump_json(indent=2))
    else:
        _console().print(render_rollout(state))


def run_start(args: argparse.Namespace) -> int:
    """edgefleet rollout start BUNDLE (or rollout BUNDLE)."""
    if not args.select:
        raise RolloutError("--select is required to start a rollout (e.g. --select profile=rpi4,site=lab)")
    if not args.broker:
        raise RolloutError("--broker is required to start a rollout (mqtt://HOST[:PORT])")
    state = start_rollout(
        args.broker,
        args.bundle,
        args.select,
        canary=args.canary,
        batch=args.batch,
        max_failures=args.max_failures,
        min_healthy_s=args.min_healthy_seconds,
        stage_timeout_s=args.stage_timeout,
        max_error_rate=args.max_error_rate,
        chunk_size=args.chunk_kib * 1024,
        state_dir=args.state_dir,
        console=Console(stderr=True),
    )
    _show(state, args.json)
    return exit_code(state)


def run_status(args: argparse.Namespace) -> int:
    """edgefleet rollout status [ID]: the stored state, refreshed from the broker when one is given."""
    store = RolloutStore(args.state_dir)
    state = store.load(args.rollout_id) if args.rollout_id else store.latest()
    if args.broker:
        state = refresh_from_broker(state, args.broker)
        store.save(state)
    _show(state, args.json)
    return 0


def run_resume(args: argparse.Namespace) -> int:
    """edgefleet rollout resume [ID]."""
    state = resume_rollout(
        args.rollout_id, state_dir=args.state_dir, broker_url=args.broker, console=Console(stderr=True)
    )
    _show(state, args.json)
    return exit_code(state)


def run_abort(args: argparse.Namespace) -> int:
    """edgefleet rollout abort [ID] [--rollback]."""
    state = abort_rollout(
        args.rollout_id,
        state_dir=args.state_dir,
        rollback=args.rollback,
        broker_url=args.broker,
        console=Console(stderr=True),
    )
    _show(state, args.json)
    return exit_code(state)
