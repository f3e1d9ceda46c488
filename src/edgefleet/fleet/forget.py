"""`edgefleet forget DEVICE...`: remove devices from the fleet's view. Clears what the broker keeps for
each (the retained presence, status, desired state and version floor), so `devices`, `status` and
`watch` no longer list them. A device that is still running announces itself again when it reconnects;
forget the ones that are gone (decommissioned boards, `simulate` leftovers).
"""

from __future__ import annotations

import argparse
import json

from edgefleet.contract import ids, topics
from edgefleet.contract.errors import EdgefleetError
from edgefleet.fleet.inventory import collect_inventory
from edgefleet.fleet.selectors import explain_unknown_device
from edgefleet.fleet.session import BrokerSession

RETAINED = (topics.online, topics.status, topics.desired, topics.floor)


class ForgetError(EdgefleetError):
    """The devices cannot be forgotten as asked."""


def forget_devices(broker_url: str, device_ids: list[str]) -> None:
    for device_id in device_ids:
        try:
            ids.check_device_id(device_id)
        except ValueError as exc:
            raise ForgetError(str(exc)) from exc
    inventory, _ = collect_inventory(broker_url, listen_s=0)  # the retained presence and status
    unknown = [device_id for device_id in device_ids if device_id not in inventory.devices]
    if unknown:  # a typo would otherwise "forget" nothing and say it did
        raise ForgetError("; ".join(explain_unknown_device(d, inventory.devices) for d in unknown))
    with BrokerSession(broker_url, "forget") as session:
        for device_id in device_ids:
            for topic_of in RETAINED:
                topic = topic_of(device_id)
                session.wait_published(session.publish(topic, b"", qos=1, retain=True), f"clearing {topic}")


def run_forget(args: argparse.Namespace) -> int:
    """CLI entry point (edgefleet forget)."""
    forget_devices(args.broker, args.devices)
    if args.json:
        print(json.dumps({"forgot": args.devices}))
        return 0
    print(f"forgot {len(args.devices)} device(s): {', '.join(args.devices)} (a running device reappears)")
    return 0
