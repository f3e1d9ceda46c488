"""The fleet simulator against a real mosquitto: many devices on one selector loop, the real protocol
(presence and last will, retained status with tags, telemetry, desired state, chunk delivery verified per
chunk, activation and rejection), and the record it keeps of what every device received."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from fleet_helpers import collect_retained, plain_client, publish_wait, wait_until
from support_bundles import chunked_bundle

from edgefleet.cli import main
from edgefleet.contract import topics
from edgefleet.contract.messages import DesiredState, DeviceEvent, DeviceStatus, Presence
from edgefleet.fleet.broker import MosquittoProcess, free_port
from edgefleet.fleet.session import BrokerSession
from edgefleet.fleet.simulator import Simulator, SimulatorError, read_record
from edgefleet.mqtt import BrokerError

pytestmark = pytest.mark.mqtt


def _put_bundle(
    client, data: bytes, chunk_size: int, profile: str = "rpi4", corrupt: int | None = None
) -> str:
    """Retained chunks (chunk `corrupt` with flipped bytes) and the retained meta, as a deployer would."""
    chunks, meta = chunked_bundle(data, chunk_size, version="7", profile=profile)
    bundle_id = meta.bundle_id
    for index, chunk in enumerate(chunks):
        payload = bytes(b ^ 0xFF for b in chunk) if index == corrupt else chunk
        publish_wait(client, topics.bundle_chunk(bundle_id, index), payload, retain=True)
    publish_wait(client, topics.bundle_meta(bundle_id), meta.to_bytes(), retain=True)
    return bundle_id


def _desire(
    client, device_id: str, bundle_id: str, profile: str = "rpi4", deployment: str = "d-test"
) -> None:
    desired = DesiredState(
        deployment_id=deployment, bundle_id=bundle_id, name="digits", version="7", profile=profile
    )
    publish_wait(client, topics.desired(device_id), desired.to_bytes(), retain=True)


def test_two_hundred_devices_on_one_loop_announce_themselves_and_send_telemetry(
    broker: MosquittoProcess,
) -> None:
    per_device: Counter[str] = Counter()
    lock = threading.Lock()

    def count(message) -> None:
        parsed = topics.parse_device_topic(message.topic)
        if parsed and parsed[1] == "telemetry":
            with lock:
                per_device[parsed[0]] += 1

    observer = BrokerSession(broker.url, "test-observer", on_message=count).open()
    observer.subscribe([topics.ALL_TELEMETRY])
    threads_before = threading.active_count()
    simulator = Simulator(broker.url, 200, "rpi4", telemetry_hz=4.0, tags={"site": "lab", "rack": "r2"})
    with simulator:
        # one loop thread drives every client (paho's loop_start would add one thread per client)
        assert threading.active_count() - threads_before <= 1
        assert simulator.connected_count == 200
        wait_until(
            lambda: all(log.telemetry_sent >= 4 for log in simulator.logs().values()),
            timeout=60,
            what="four telemetry messages from every device",
        )
        retained = collect_retained(broker, [topics.ALL_STATUS, topics.ALL_ONLINE], expect=400)
    logs = simulator.logs()
    sent = {device_id: log.telemetry_sent for device_id, log in logs.items()}
    # the last messages may still be on their way through the broker
    wait_until(lambda: sum(per_device.values()) >= sum(sent.values()), timeout=10, what="the last telemetry")
    observer.close()

    statuses = {
        topics.parse_device_topic(t)[0]: DeviceStatus.model_validate_json(m.payload)
        for t, m in retained.items()
        if t.endswith("/status")
    }
    assert sorted(statuses) == simulator.device_ids
    status = statuses["sim-0042"]
    assert (status.profile, status.tags, status.state) == ("rpi4", {"site": "lab", "rack": "r2"}, "serving")
    assert status.model is not None and status.model.version == "0"
    assert status.backend is not None and status.backend.engine == "litert"
    online = [
        Presence.model_validate_json(m.payload).online for t, m in retained.items() if t.endswith("/online")
    ]
    assert len(online) == 200 and all(online)

    assert all(count >= 4 for count in sent.values())
    assert dict(per_device) == sent  # every telemetry message the simulator sent arrived

    # stop() said goodbye: every device is offline now (retained presence)
    after = collect_retained(broker, [topics.ALL_ONLINE])
    assert not any(Presence.model_validate_json(m.payload).online for m in after.values())


def test_delivery_is_verified_per_chunk_and_refetched(broker: MosquittoProcess) -> None:
    client = plain_client(broker)
    data = bytes(range(256)) * 1000  # 256000 bytes -> 4 chunks of 64 KiB
    with Simulator(broker.url, 3, "rpi4", telemetry_hz=0, activation_s=0.01) as simulator:
        bundle_id = _put_bundle(client, data, 65536, corrupt=2)
        _desire(client, "sim-0001", bundle_id)
        wait_until(
            lambda: simulator.logs()["sim-0001"].fetched.get(bundle_id, None) is not None, what="chunks"
        )
        wait_until(lambda: simulator.logs()["sim-0001"].fetched[bundle_id].chunks_dropped >= 1, what="a drop")
        fetched = simulator.logs()["sim-0001"].fetched[bundle_id]
        assert fetched.chunks_received == 3 and not fetched.complete
        assert simulator.logs()["sim-0001"].active_version == "0"
        # the deployer republishes chunk 2: the device (still subscribed, and asking again after its backoff)
        # takes the good copy and activates
        publish_wait(client, topics.bundle_chunk(bundle_id, 2), data[2 * 65536 : 3 * 65536], retain=True)
        wait_until(
            lambda: simulator.logs()["sim-0001"].active_bundle == bundle_id, timeout=10, what="activation"
        )
        log = simulator.logs()["sim-0001"]
        assert log.fetched[bundle_id].complete and log.fetched[bundle_id].bytes_received == len(data)
        assert log.activated == [bundle_id] and log.desired_seen == [bundle_id]
        # the other devices were never told about it and fetched nothing
        for other in ("sim-0000", "sim-0002"):
            assert not simulator.logs()[other].received_any_of(bundle_id)
    status = collect_retained(broker, [topics.status("sim-0001")])[topics.status("sim-0001")]
    parsed = DeviceStatus.model_validate_json(status.payload)
    assert parsed.model is not None and parsed.model.bundle_id == bundle_id and parsed.swaps == 1
    client.disconnect()


def test_failing_devices_reject_and_other_profiles_are_refused(broker: MosquittoProcess) -> None:
    client = plain_client(broker)
    events: list[tuple[str, DeviceEvent]] = []
    client.on_message = lambda c, u, m: events.append(
        (topics.parse_device_topic(m.topic)[0], DeviceEvent.model_validate_json(m.payload))
    )
    client.subscribe(topics.ALL_EVENTS, qos=1)
    simulator = Simulator(
        broker.url, 4, "rpi4", telemetry_hz=0, fail_fraction=0.5, fail_mode="reject", seed=3
    )
    with simulator:
        failing = sorted(simulator.failing_ids)
        healthy = sorted(set(simulator.device_ids) - simulator.failing_ids)
        assert len(failing) == 2
        bundle_id = _put_bundle(client, b"x" * 1000, 512)
        for device_id in simulator.device_ids:
            _desire(client, device_id, bundle_id)
        wait_until(
            lambda: len([e for _, e in events if e.kind in ("activated", "rejected")]) == 4, what="verdicts"
        )
        logs = simulator.logs()
        for device_id in healthy:
            assert logs[device_id].active_bundle == bundle_id
        for device_id in failing:
            assert logs[device_id].active_version == "0"  # the previous model keeps serving
            assert "health check failed" in logs[device_id].rejected[0]
        verdicts = {d: e for d, e in events if e.kind in ("activated", "rejected")}
        assert all(verdicts[d].kind == "rejected" and verdicts[d].deployment_id == "d-test" for d in failing)

        # a desired state for another profile is refused before anything is fetched
        other_id = _put_bundle(client, b"y" * 1000, 512, profile="jetson-nano")
        _desire(client, healthy[0], other_id, profile="jetson-nano", deployment="d-other")
        wait_until(lambda: any(e.deployment_id == "d-other" for _, e in events), what="the refusal")
        refusal = next(e for _, e in events if e.deployment_id == "d-other")
        assert refusal.kind == "rejected" and "profile 'jetson-nano'" in refusal.detail
        assert other_id not in simulator.logs()[healthy[0]].fetched
    client.disconnect()


def test_a_dropped_device_goes_offline_by_its_will_and_catches_up_on_revival(
    broker: MosquittoProcess,
) -> None:
    client = plain_client(broker)
    with Simulator(broker.url, 2, "rpi4", telemetry_hz=0, activation_s=0.01) as simulator:
        simulator.drop(["sim-0000"])
        wait_until(
            lambda: (
                not Presence.model_validate_json(
                    collect_retained(broker, [topics.online("sim-0000")], 0.2)[
                        topics.online("sim-0000")
                    ].payload
                ).online
            ),
            what="the last will",
        )
        bundle_id = _put_bundle(client, b"z" * 3000, 1024)
        _desire(client, "sim-0000", bundle_id)
        time.sleep(0.5)
        assert not simulator.logs()["sim-0000"].received_any_of(bundle_id)
        simulator.revive(["sim-0000"])
        wait_until(
            lambda: simulator.logs()["sim-0000"].active_bundle == bundle_id, what="catch-up after revival"
        )
        assert simulator.logs()["sim-0000"].connects == 2
    client.disconnect()


def test_python_api_run_returns_a_report(broker: MosquittoProcess) -> None:
    report = Simulator(broker.url, 20, "rpi4", telemetry_hz=5.0, id_prefix="edge").run(1.0)
    assert report.devices == 20 and report.connected == 20
    assert 20 * 3 <= report.telemetry_sent <= 20 * 7
    assert report.profile == "rpi4" and report.duration_s >= 1.0


def test_cli_simulate_records_and_reports(broker: MosquittoProcess, tmp_path: Path, capsys) -> None:
    record = tmp_path / "record.json"
    code = main(
        [
            "simulate", "--broker", broker.url, "--devices", "5", "--profile", "jetson-nano",
            "--tag", "site=lab", "--duration", "0.5", "--record", str(record), "--json",
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{") :])
    assert report["devices"] == 5 and report["profile"] == "jetson-nano"
    logs = read_record(record)
    assert sorted(logs) == [f"sim-{i:04d}" for i in range(5)]
    assert all(log.profile == "jetson-nano" and log.connects == 1 for log in logs.values())


def test_bad_input_gets_a_clear_error(tmp_path: Path, capsys) -> None:
    port = free_port()
    with pytest.raises(BrokerError, match="cannot reach the MQTT broker"):
        Simulator(f"mqtt://127.0.0.1:{port}", 3).run(0.1)
    assert (
        main(["simulate", "--broker", f"mqtt://127.0.0.1:{port}", "--devices", "2", "--duration", "1"]) == 2
    )
    assert "cannot reach the MQTT broker" in capsys.readouterr().err
    with pytest.raises(SimulatorError, match="between 0 and 1"):
        Simulator(f"mqtt://127.0.0.1:{port}", 3, fail_fraction=1.5)
    assert main(["simulate", "--broker", "mqtt://127.0.0.1:1", "--devices", "2", "--profile", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["simulate", "--broker", "mqtt://127.0.0.1:1", "--devices", "2", "--tag", "site"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_a_broker_that_refuses_the_devices_is_a_clear_error(tmp_path: Path, capsys) -> None:
    with MosquittoProcess(tmp_path / "closed", extra_config="allow_anonymous false") as closed:
        assert main(["simulate", "--broker", closed.url, "--devices", "3", "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert "refused simulated device" in err and "Not authorized" in err and "--username" in err


@pytest.mark.mqtt
def test_simulate_without_a_broker_runs_on_a_private_one(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11: `simulate` pointed at a real broker left its devices there forever; without --broker it
    starts its own mosquitto and says where."""
    from edgefleet.cli import main

    assert main(["simulate", "--devices", "2", "--profile", "rpi4", "--duration", "0.5", "--json"]) == 0
    out = capsys.readouterr().out
    private = re.search(r"private broker: (mqtt://127\.0\.0\.1:\d+)", out)
    assert private is not None
    report = json.loads(out[out.index("{") :])
    assert (report["broker"], report["devices"], report["connected"]) == (private.group(1), 2, 2)
