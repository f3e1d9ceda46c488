"""The inventory (`edgefleet devices`) and selectors: devices announce themselves with a retained status
(id, profile, tags, versions, backend) and presence; selectors pick them by id, profile and tag."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from fleet_helpers import plain_client, publish_wait

from edgefleet.cli import main
from edgefleet.contract import topics
from edgefleet.contract.messages import utc_now
from edgefleet.fleet.broker import MosquittoProcess, free_port
from edgefleet.fleet.inventory import collect_inventory, format_age
from edgefleet.fleet.selectors import Selector, SelectorError
from edgefleet.fleet.simulator import Simulator

# -- selectors (no broker) ---------------------------------------------------------------------------------


def test_selector_terms_are_anded_and_values_may_be_alternatives_or_wildcards() -> None:
    selector = Selector.parse("profile=rpi4, site=lab|office ,id=pi-*")
    assert str(selector) == "profile=rpi4,site=lab|office,id=pi-*"
    assert selector.matches("pi-7", "rpi4", {"site": "office"})
    assert not selector.matches("pi-7", "rpi5", {"site": "office"})  # profile differs
    assert not selector.matches("pi-7", "rpi4", {"site": "home"})  # tag value differs
    assert not selector.matches("pi-7", "rpi4", {})  # tag missing
    assert not selector.matches("jn-1", "rpi4", {"site": "lab"})  # id pattern differs
    assert not Selector.parse("profile=rpi4").matches("x", None, {})  # unknown profile never matches
    assert Selector.parse("id=*").matches("anything", None, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the selector is empty"),
        ("profile", "is not KEY=VALUE"),
        ("=rpi4", "is not KEY=VALUE"),
        ("site=", "is not KEY=VALUE"),
        ("site=lab,site=office", "appears twice; list alternatives as site=a|b"),
        ("si te=lab", "may only use"),
        ("site=lab|", "an alternative in 'site=lab|' is empty"),
    ],
)
def test_bad_selectors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match=message.replace("|", r"\|")):
        Selector.parse(text)


def test_format_age() -> None:
    now = utc_now()
    assert format_age(None) == "never"
    assert format_age(now - timedelta(seconds=5), now) == "5s ago"
    assert format_age(now - timedelta(minutes=10), now) == "10m ago"
    assert format_age(now - timedelta(hours=3), now) == "3h ago"


# -- `edgefleet devices` against a real broker ------------------------------------------------------------


def _wait_inventory(broker: MosquittoProcess, predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate(collect_inventory(broker.url, listen_s=0)[0]):
        assert time.monotonic() < deadline, "the inventory did not reach the expected state"
        time.sleep(0.1)


@pytest.fixture
def fleet(broker: MosquittoProcess):
    """3 rpi4 devices at the lab (one of them cut off), 2 jetson-nano devices at the office, one garbage."""
    lab = Simulator(broker.url, 3, "rpi4", telemetry_hz=5, tags={"site": "lab"}, id_prefix="pi").start()
    office = Simulator(
        broker.url,
        2,
        "jetson-nano",
        telemetry_hz=5,
        tags={"site": "office"},
        id_prefix="jn",
        initial_version=None,
    ).start()
    lab.wait_connected()
    office.wait_connected()
    _wait_inventory(broker, lambda inv: sum(r.announced for r in inv.records()) == 5)
    lab.drop(["pi-0002"])
    _wait_inventory(broker, lambda inv: inv.online("pi-0002") is False)
    client = plain_client(broker)
    publish_wait(client, topics.status("junk-1"), b"{not json", retain=True)
    yield broker
    client.disconnect()
    lab.stop()
    office.stop()


@pytest.mark.mqtt
def test_devices_json_lists_every_announced_device(fleet: MosquittoProcess, capsys) -> None:
    assert main(["devices", "--broker", fleet.url, "--json", "--listen", "0.5"]) == 0
    records = {r["device_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(records) == ["jn-0000", "jn-0001", "junk-1", "pi-0000", "pi-0001", "pi-0002"]
    pi = records["pi-0000"]
    assert (pi["online"], pi["profile"], pi["tags"], pi["state"]) == (
        True,
        "rpi4",
        {"site": "lab"},
        "serving",
    )
    assert (pi["model_name"], pi["model_version"]) == ("digits", "0")
    assert pi["agent_version"].startswith("sim-") and pi["backend"].startswith("litert simulated")
    assert records["pi-0002"]["online"] is False  # its last will
    jn = records["jn-0000"]
    assert (jn["profile"], jn["tags"], jn["model_version"], jn["state"]) == (
        "jetson-nano",
        {"site": "office"},
        None,
        "idle",
    )
    assert records["junk-1"]["online"] is None and "not valid JSON" in records["junk-1"]["invalid"]["status"]

    inventory, _ = collect_inventory(fleet.url, listen_s=0.5)
    record = inventory.record("pi-0001")
    assert record.last_seen is not None and utc_now() - record.last_seen < timedelta(seconds=5)


@pytest.mark.mqtt
def test_devices_select_and_table(fleet: MosquittoProcess, capsys) -> None:
    assert (
        main(
            ["devices", "--broker", fleet.url, "--json", "--listen", "0", "--select", "profile=rpi4,site=lab"]
        )
        == 0
    )
    assert [r["device_id"] for r in json.loads(capsys.readouterr().out)] == ["pi-0000", "pi-0001", "pi-0002"]
    assert (
        main(["devices", "--broker", fleet.url, "--json", "--listen", "0", "--select", "id=jn-*|junk-?"]) == 0
    )
    assert [r["device_id"] for r in json.loads(capsys.readouterr().out)] == ["jn-0000", "jn-0001", "junk-1"]

    assert main(["devices", "--broker", fleet.url, "--listen", "0"]) == 0
    table = capsys.readouterr().out
    assert "6 devices" in table and "(4 online)" in table
    row = next(line for line in table.splitlines() if "pi-0002" in line)
    assert "offline" in row and "site=lab" in row and "rpi4" in row
    assert "garbage on status" in table


@pytest.mark.mqtt
def test_a_selector_that_matches_nothing_is_an_error(fleet: MosquittoProcess, capsys) -> None:
    assert main(["devices", "--broker", fleet.url, "--listen", "0", "--select", "site=mars"]) == 2
    err = capsys.readouterr().err
    assert "selector 'site=mars' matches none of the 6 known devices" in err
    assert "site: lab, office" in err  # what there is to choose from
    assert main(["devices", "--broker", fleet.url, "--listen", "0", "--select", "site"]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err


@pytest.mark.mqtt
def test_unreachable_broker_is_a_clear_error(capsys) -> None:
    assert main(["devices", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--listen", "0"]) == 2
    assert "cannot reach the MQTT broker" in capsys.readouterr().err


@pytest.mark.mqtt
def test_forget_removes_gone_devices_from_the_inventory(fleet: MosquittoProcess, capsys) -> None:
    """A device cut off for good (pi-0002) and a garbage status (junk-1) stay listed forever; `forget`
    clears what the broker keeps for them."""
    assert main(["forget", "pi-0002", "--broker", fleet.url]) == 0
    assert "forgot 1 device(s)" in capsys.readouterr().out
    assert main(["forget", "junk-1", "--broker", fleet.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"forgot": ["junk-1"]}
    inventory, _ = collect_inventory(fleet.url, listen_s=0)
    assert sorted(r.device_id for r in inventory.records()) == ["jn-0000", "jn-0001", "pi-0000", "pi-0001"]
    assert main(["forget", "bad id", "--broker", fleet.url]) == 2
    assert "device id 'bad id' is not valid" in capsys.readouterr().err
    assert main(["forget", "pi-00001", "--broker", fleet.url]) == 2  # a typo forgets nothing
    assert "device 'pi-00001' is not known on this broker (did you mean 'pi-0001'?" in capsys.readouterr().err
    inventory, _ = collect_inventory(fleet.url, listen_s=0)
    assert "pi-0001" in inventory.devices
