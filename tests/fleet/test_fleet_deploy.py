"""`edgefleet deploy` against a real mosquitto: what lands on the broker, profile checks, waiting."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from fleet_helpers import collect_retained, device_status, plain_client, publish_wait

from edgefleet.cli import main
from edgefleet.contract import topics
from edgefleet.contract.bundle import sha256_file
from edgefleet.contract.errors import BundleError
from edgefleet.contract.messages import BundleMeta, DesiredState
from edgefleet.fleet.broker import MosquittoProcess, free_port
from edgefleet.fleet.deploy import deploy_bundle
from edgefleet.fleet.errors import DeployError, DeploymentRejected, DeploymentTimeout, ProfileMismatch
from edgefleet.mqtt import BrokerError

pytestmark = pytest.mark.mqtt


def test_deploy_publishes_what_the_protocol_says(broker: MosquittoProcess, make_bundle) -> None:
    bundle = make_bundle(extra_bytes=600_000)  # ~760 KB: 3 chunks of 256 KiB
    result = deploy_bundle(broker.url, bundle, "pi-kitchen")

    bundle_id = sha256_file(bundle)
    assert result.bundle_id == bundle_id
    assert result.chunks == 3 and result.size_bytes == bundle.stat().st_size
    assert not result.device_known and "never reported a status" in result.warnings[0]

    retained = collect_retained(broker, [f"{topics.PREFIX}/bundles/#", topics.desired("pi-kitchen")])
    meta_msg = retained[topics.bundle_meta(bundle_id)]
    meta = BundleMeta.model_validate_json(meta_msg.payload)
    assert meta_msg.retain
    assert meta.bundle_id == bundle_id and meta.size == bundle.stat().st_size
    assert meta.chunk_size == 256 * 1024
    assert (meta.name, meta.version, meta.profile) == ("digits", "1", "rpi4")

    chunks = {topics.parse_chunk_index(t): m for t, m in retained.items() if "/chunks/" in t}
    assert sorted(chunks) == [0, 1, 2]
    assert all(m.retain and m.qos == 1 for m in chunks.values())
    reassembled = b"".join(bytes(chunks[i].payload) for i in range(3))
    assert hashlib.sha256(reassembled).hexdigest() == bundle_id
    assert [hashlib.sha256(bytes(chunks[i].payload)).hexdigest() for i in range(3)] == meta.chunk_sha256

    desired = DesiredState.model_validate_json(retained[topics.desired("pi-kitchen")].payload)
    assert retained[topics.desired("pi-kitchen")].retain
    assert desired.deployment_id == result.deployment_id
    assert (desired.bundle_id, desired.name, desired.version, desired.profile) == (
        bundle_id,
        "digits",
        "1",
        "rpi4",
    )


def test_small_chunks_and_a_large_bundle_reassemble(broker: MosquittoProcess, make_bundle) -> None:
    bundle = make_bundle(extra_bytes=16 * 1024 * 1024)
    result = deploy_bundle(broker.url, bundle, "big-one")
    print(
        f"upload: {result.size_bytes / 1024**2:.1f} MiB in {result.upload_seconds:.3f} s "
        f"= {result.upload_mib_per_s:.0f} MiB/s, {result.chunks} chunks"
    )
    retained = collect_retained(broker, [topics.bundle_chunks(result.bundle_id)])
    assert len(retained) == result.chunks == 65
    whole = hashlib.sha256()
    for i in range(result.chunks):
        whole.update(bytes(retained[topics.bundle_chunk(result.bundle_id, i)].payload))
    assert whole.hexdigest() == result.bundle_id

    small = deploy_bundle(broker.url, make_bundle(version="2"), "big-one", chunk_size=16 * 1024)
    assert small.chunks > 1
    meta = collect_retained(broker, [topics.bundle_meta(small.bundle_id)])
    assert (
        BundleMeta.model_validate_json(meta[topics.bundle_meta(small.bundle_id)].payload).chunk_size == 16384
    )


def test_refuses_a_bundle_for_another_profile(broker: MosquittoProcess, make_bundle, capsys) -> None:
    client = plain_client(broker)
    publish_wait(client, topics.status("jetson-1"), device_status("jetson-1", "rpi5").to_bytes(), retain=True)
    bundle = make_bundle(profile="rpi4")
    with pytest.raises(
        ProfileMismatch, match="built for profile 'rpi4' but device jetson-1 reports profile 'rpi5'"
    ):
        deploy_bundle(broker.url, bundle, "jetson-1")

    assert main(["deploy", str(bundle), "--device", "jetson-1", "--broker", broker.url]) == 2
    err = capsys.readouterr().err
    assert "edgefleet: error:" in err and "profile 'rpi5'" in err
    # Nothing was put on the broker: no desired state and no chunks.
    retained = collect_retained(
        broker, [f"{topics.PREFIX}/bundles/#", topics.desired("jetson-1")], settle_s=0.3
    )
    assert retained == {}
    client.disconnect()


def test_wait_times_out_when_the_device_never_answers(broker: MosquittoProcess, make_bundle, capsys) -> None:
    bundle = make_bundle()
    started = time.monotonic()
    with pytest.raises(DeploymentTimeout, match=r"did not report digits 1 active within 0\.5 s") as info:
        deploy_bundle(broker.url, bundle, "silent", wait=True, timeout=0.5)
    assert time.monotonic() - started < 5
    assert "nothing at all from the device" in info.value.last_seen

    # A known device whose agent is stuck: the message says what it last reported.
    client = plain_client(broker)
    publish_wait(client, topics.status("stuck"), device_status("stuck", "rpi4").to_bytes(), retain=True)
    code = main(
        ["deploy", str(bundle), "--device", "stuck", "--broker", broker.url, "--wait", "--timeout", "0.5"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "did not report digits 1 active within 0.5 s" in err and "state idle, no model" in err
    client.disconnect()


def test_wait_succeeds_when_the_device_activates(
    broker: MosquittoProcess, make_bundle, simulated_device
) -> None:
    device = simulated_device("pi-kitchen", profile="rpi4")
    bundle = make_bundle(version="2", extra_bytes=300_000)
    result = deploy_bundle(broker.url, bundle, "pi-kitchen", wait=True, timeout=10)
    assert result.active and result.device_known
    assert result.status is not None and result.status.model is not None
    assert result.status.model.bundle_id == result.bundle_id == sha256_file(bundle)
    assert device.desired is not None and device.desired.deployment_id == result.deployment_id
    assert result.wait_seconds is not None and result.wait_seconds < 10


def test_cli_wait_prints_the_active_backend(broker, make_bundle, simulated_device, capsys) -> None:
    simulated_device("pi-hall")
    code = main(
        [
            "deploy",
            str(make_bundle(version="2")),
            "--device",
            "pi-hall",
            "--broker",
            broker.url,
            "--wait",
            "--timeout",
            "10",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "device pi-hall: digits 2 active (backend onnxruntime 1.31.1" in out


def test_the_chunk_size_is_a_setting_for_brokers_that_cap_message_size(
    broker, make_bundle, simulated_device, capsys
) -> None:
    """Managed brokers cap payloads (AWS IoT Core: 128 KB): --chunk-kib 96 keeps every chunk under it, and
    the device reassembles the bundle from the smaller chunks."""
    simulated_device("pi-attic")
    bundle = make_bundle(version="3", extra_bytes=300_000)
    argv = ["deploy", str(bundle), "--device", "pi-attic", "--broker", broker.url, "--wait"]
    assert main([*argv, "--chunk-kib", "96"]) == 0, capsys.readouterr().err
    meta_topic = topics.bundle_meta(sha256_file(bundle))
    retained = collect_retained(broker, [meta_topic], expect=1)
    meta = BundleMeta.model_validate_json(retained[meta_topic].payload)
    assert meta.chunk_size == 96 * 1024 and len(meta.chunk_sha256) == -(-meta.size // meta.chunk_size) > 3
    with pytest.raises(SystemExit):
        main([*argv, "--chunk-kib", "0"])
    assert "1 to 65536 KiB" in capsys.readouterr().err


def test_wait_fails_with_the_devices_reason(broker, make_bundle, simulated_device, capsys) -> None:
    reason = "manifest signature does not verify: the bundle was altered after signing"
    simulated_device("pi-garage", reject=reason)
    bundle = make_bundle()
    with pytest.raises(DeploymentRejected) as info:
        deploy_bundle(broker.url, bundle, "pi-garage", wait=True, timeout=10)
    assert info.value.detail == reason
    assert "device pi-garage rejected digits 1" in str(info.value)

    code = main(["deploy", str(bundle), "--device", "pi-garage", "--broker", broker.url, "--wait"])
    assert code == 2
    assert reason in capsys.readouterr().err


def test_unreachable_broker_is_one_clear_line(make_bundle, capsys) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    with pytest.raises(BrokerError, match="cannot reach the MQTT broker"):
        deploy_bundle(url, make_bundle(), "pi-1")
    assert main(["deploy", str(make_bundle()), "--device", "pi-1", "--broker", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgefleet: error: cannot reach the MQTT broker at")


def test_bad_bundle_and_bad_device_id_are_clear_errors(tmp_path: Path, make_bundle, capsys) -> None:
    url = "mqtt://127.0.0.1:1"  # never contacted: the arguments are checked first
    with pytest.raises(BundleError, match="no such file"):
        deploy_bundle(url, tmp_path / "missing.efb", "pi-1")
    garbage = tmp_path / "garbage.efb"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(BundleError, match="not a readable bundle file"):
        deploy_bundle(url, garbage, "pi-1")
    with pytest.raises(DeployError, match="device id 'pi/1' is not valid"):
        deploy_bundle(url, make_bundle(), "pi/1")
    assert main(["deploy", str(tmp_path / "missing.efb"), "--device", "pi-1", "--broker", url]) == 2
    assert "missing.efb: no such file" in capsys.readouterr().err


def test_cli_json_free_output_without_wait(broker, make_bundle, capsys) -> None:
    code = main(["deploy", str(make_bundle()), "--device", "pi-new", "--broker", broker.url])
    captured = capsys.readouterr()
    assert code == 0
    assert "device pi-new: desired state set to digits 1" in captured.out
    assert "never reported a status" in captured.err
    retained = collect_retained(broker, [topics.desired("pi-new")], settle_s=0.3)
    assert json.loads(retained[topics.desired("pi-new")].payload)["version"] == "1"
