"""`edgefleet status`: retained presence/status plus live telemetry, garbage shown as garbage."""

from __future__ import annotations

import json

import pytest
from fleet_helpers import device_status, plain_client, publish_wait, repeating

from edgefleet.cli import main
from edgefleet.contract import topics
from edgefleet.contract.messages import ActiveModel, BackendInfo, LatencySummary, Presence, Telemetry
from edgefleet.fleet.broker import MosquittoProcess, free_port
from edgefleet.fleet.status import collect_fleet_status

pytestmark = pytest.mark.mqtt

MODEL = ActiveModel(name="digits", version="2", bundle_id="a" * 64, format="tflite", precision="int8")


def _telemetry(device_id: str, requests: int) -> bytes:
    return Telemetry(
        device_id=device_id,
        interval_s=0.1,
        model_version="2",
        requests=requests,
        errors=1,
        latency_ms=LatencySummary(p50=0.21, p95=0.35, p99=0.52, samples=100),
        rss_mb=61.2,
        cpu_percent=12.5,
        swaps=1,
    ).to_bytes()


@pytest.fixture
def fleet(broker: MosquittoProcess):
    """Three devices: a healthy one sending telemetry, one with an accelerator fallback that went offline,
    and one that publishes garbage on its status topic."""
    client = plain_client(broker)
    publish_wait(client, topics.online("pi-kitchen"), Presence(online=True).to_bytes(), retain=True)
    publish_wait(
        client,
        topics.status("pi-kitchen"),
        device_status("pi-kitchen", "rpi4", MODEL).to_bytes(),
        retain=True,
    )
    coral_backend = BackendInfo(
        engine="litert",
        engine_version="2.3.0",
        threads=4,
        fallbacks=["edgetpu delegate requested but libedgetpu.so.1 is not installed; running on CPU"],
    )
    publish_wait(client, topics.online("coral-1"), Presence(online=False).to_bytes(), retain=True)
    publish_wait(
        client,
        topics.status("coral-1"),
        device_status("coral-1", "coral-usb", MODEL, backend=coral_backend).to_bytes(),
        retain=True,
    )
    publish_wait(client, topics.online("broken-1"), Presence(online=True).to_bytes(), retain=True)
    publish_wait(client, topics.status("broken-1"), b"\x00{not json at all", retain=True)
    publish_wait(client, topics.telemetry("broken-1"), b"[1, 2, 3]", retain=False, qos=0)

    def send_telemetry(n: int) -> None:
        client.publish(topics.telemetry("pi-kitchen"), _telemetry("pi-kitchen", 10 * n), qos=0)
        client.publish(topics.telemetry("broken-1"), b"{{{", qos=0)

    with repeating(send_telemetry):
        yield broker
    client.disconnect()
    client.loop_stop()


def test_collects_status_and_telemetry(fleet: MosquittoProcess) -> None:
    status = collect_fleet_status(fleet.url, listen_s=0.5)
    assert [d.device_id for d in status.devices] == ["broken-1", "coral-1", "pi-kitchen"]

    kitchen = status.device("pi-kitchen")
    assert kitchen.online is True and kitchen.invalid == {}
    assert kitchen.status is not None and kitchen.status.profile == "rpi4"
    assert kitchen.telemetry is not None and kitchen.telemetry.requests > 0
    assert kitchen.telemetry.latency_ms.p95 == 0.35

    coral = status.device("coral-1")
    assert coral.online is False and coral.has_fallback and coral.telemetry is None

    broken = status.device("broken-1")
    assert broken.online is True and broken.status is None
    assert "not valid JSON" in broken.invalid["status"]
    assert "not valid JSON" in broken.invalid["telemetry"]


def test_cli_table_shows_fallback_and_garbage(fleet: MosquittoProcess, capsys) -> None:
    assert main(["status", "--broker", fleet.url, "--listen", "0.3"]) == 0
    out = capsys.readouterr().out
    for expected in [
        "pi-kitchen",
        "rpi4",
        "digits v2",
        "0.21/0.35",
        "(fallback)",
        "garbage on status",
        "not valid",
    ]:
        assert expected in out, (expected, out)


def test_cli_json_is_one_object(fleet: MosquittoProcess, capsys) -> None:
    assert main(["status", "--broker", fleet.url, "--listen", "0.3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    devices = {d["device_id"]: d for d in data["devices"]}
    assert devices["pi-kitchen"]["status"]["model"]["version"] == "2"
    assert devices["coral-1"]["status"]["backend"]["fallbacks"]
    assert "not valid JSON" in devices["broken-1"]["invalid"]["status"]


def test_empty_broker_and_unreachable_broker(broker: MosquittoProcess, capsys) -> None:
    assert collect_fleet_status(broker.url, listen_s=0).devices == []
    assert main(["status", "--broker", broker.url, "--listen", "0"]) == 0
    assert "no devices have reported" in capsys.readouterr().out
    assert main(["status", "--broker", f"mqtt://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the MQTT broker" in err[0]
