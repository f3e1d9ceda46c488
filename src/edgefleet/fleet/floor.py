"""`edgefleet floor`: sign a model's minimum version for devices (anti-rollback). One floor per device,
bound to its id, signed with the fleet key and published retained on the device's `floor` topic; agents
with `anti_rollback: true` then refuse bundles of that model below it. `--clear` signs a floor without a
minimum (a newer signature is the only way to lower one). See docs/protocol.md, "Anti-rollback".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgefleet.contract import ids, topics
from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.messages import CONTENT_JSON
from edgefleet.contract.signing import PRIVATE_KEY_FILE, default_key_dir, load_private_key
from edgefleet.contract.version_floor import VersionFloor, sign_floor
from edgefleet.fleet.inventory import collect_inventory
from edgefleet.fleet.selectors import Selector, SelectorError
from edgefleet.fleet.session import BrokerSession
from edgefleet.mqtt import publish_properties


class FloorCommandError(EdgefleetError):
    """The floor cannot be set as asked."""


def target_devices(broker_url: str, devices: list[str], selector: str | None) -> list[str]:
    """The devices named, plus those the selector matches in the inventory (in order, once each)."""
    chosen = list(devices)
    for device_id in chosen:
        try:
            ids.check_device_id(device_id)
        except ValueError as exc:
            raise FloorCommandError(str(exc)) from exc
    if selector is not None:
        parsed = Selector.parse(selector)
        inventory, _ = collect_inventory(broker_url, listen_s=0)
        matched = inventory.select(parsed)
        if not matched:
            raise SelectorError(inventory.no_match_message(parsed))
        chosen += [record.device_id for record in matched]
    if not chosen:
        raise FloorCommandError("no devices given; use --device ID (repeatable) or --select profile=rpi4,...")
    return list(dict.fromkeys(chosen))


def publish_floors(broker_url: str, floors: list[VersionFloor], signing_key: Path) -> None:
    key = load_private_key(signing_key)
    with BrokerSession(broker_url, "floor") as session:
        for floor in floors:
            mid = session.publish(
                topics.floor(floor.device_id),
                sign_floor(key, floor),
                qos=1,
                retain=True,
                properties=publish_properties(ContentType=CONTENT_JSON),
            )
            session.wait_published(mid, f"the version floor of device {floor.device_id}")


def run_floor(args: argparse.Namespace) -> int:
    """CLI entry point (edgefleet floor)."""
    if args.clear == (args.min_version is not None):
        raise FloorCommandError("give either --min-version VERSION or --clear")
    devices = target_devices(args.broker, args.device or [], args.select)
    floors = [
        VersionFloor(device_id=device, model=args.model, min_version=None if args.clear else args.min_version)
        for device in devices
    ]
    publish_floors(args.broker, floors, args.signing_key or default_key_dir() / PRIVATE_KEY_FILE)
    if args.json:
        print(json.dumps([floor.model_dump(mode="json") for floor in floors], indent=2))
        return 0
    what = "no minimum" if args.clear else f"minimum version {args.min_version}"
    print(f"signed {what} for model {args.model} on {len(devices)} device(s): {', '.join(devices)}")
    print("devices with anti_rollback: true refuse older bundles of it from now on")
    return 0
