"""`edgefleet broker-config` run for real: a mosquitto started with exactly the generated configuration
(TLS, passwords or client certificates, ACL) refuses strangers, keeps each device to its own topics, and
a real agent plus `edgefleet deploy`/`status`/`exporter` work over TLS with credentials."""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fleet_helpers import ONNX_PROFILE, digits_for_a_real_agent

from edgefleet.cli import main
from edgefleet.contract import topics
from edgefleet.fleet.broker import find_mosquitto, free_port
from edgefleet.fleet.broker_config import BrokerConfigFiles, BrokerConfigSpec, write_broker_config
from edgefleet.fleet.exporter import Exporter
from edgefleet.fleet.local_agent import LocalAgent
from edgefleet.fleet.passwords import hash_password, verify_password
from edgefleet.fleet.session import BrokerSession
from edgefleet.mqtt import BrokerAddress, BrokerError, BrokerSecurity, connect, new_client

pytestmark = pytest.mark.mqtt

DEVICES = ["dev-a", "dev-b"]
BUNDLE_META = f"{topics.PREFIX}/bundles/{'b' * 64}/meta"


class SecureBroker:
    """mosquitto running the configuration `broker-config` wrote, unchanged."""

    def __init__(self, out: Path, auth: str) -> None:
        self.port = free_port()  # devices
        self.operator_port = free_port()  # admin and monitor
        data = out / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.spec = BrokerConfigSpec(
            out_dir=out / "config",
            devices=DEVICES,
            auth=auth,  # type: ignore[arg-type]
            hostnames=["localhost", "127.0.0.1"],
            port=self.port,
            operator_port=self.operator_port,
            bind="127.0.0.1",
            data_dir=data,
            # As root, mosquitto would switch to the `mosquitto` account, which cannot read pytest's
            # private temporary directory.
            run_as="root" if os.geteuid() == 0 else None,
        )
        self.files: BrokerConfigFiles = write_broker_config(self.spec)
        self.log_path = out / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> SecureBroker:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [find_mosquitto(), "-c", str(self.files.mosquitto_conf)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        waiting = {self.port, self.operator_port}
        while waiting and time.monotonic() < deadline:
            assert self._process.poll() is None, self.log_path.read_text()
            for port in sorted(waiting):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        waiting.discard(port)
                except OSError:
                    time.sleep(0.05)
        if waiting:
            raise AssertionError(f"mosquitto did not open its TLS ports: {self.log_path.read_text()}")
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)

    def port_of(self, identity: str | None) -> int:
        """The listener `identity` belongs on: operators' or devices'."""
        return self.port if identity in DEVICES else self.operator_port

    def url(
        self, identity: str | None, *, host: str = "127.0.0.1", port: int | None = None, **override: str
    ) -> str:
        """The broker URL carrying `identity`'s credentials from the generated folders (on its own
        listener unless `port` says otherwise)."""
        folder = self.files.clients[identity] if identity else self.files.clients["edgefleet-admin"]
        if identity is None:
            security = BrokerSecurity(ca_file=str(folder / "ca.crt"))
        elif self.spec.auth == "password":
            security = BrokerSecurity(
                ca_file=str(folder / "ca.crt"), username=identity, password_file=str(folder / "password")
            )
        else:
            security = BrokerSecurity(
                ca_file=str(folder / "ca.crt"),
                cert_file=str(folder / "client.crt"),
                key_file=str(folder / "client.key"),
            )
        security = security.merged(BrokerSecurity(**override))
        port = self.port_of(identity) if port is None else port
        return BrokerAddress.parse(f"mqtts://{host}:{port}").with_security(security).url

    def session(self, identity: str | None, port: int | None = None, **override: str) -> BrokerSession:
        """A session as `identity` (not opened yet: use it in a `with` block or call `open()`)."""
        return BrokerSession(
            self.url(identity, port=port, **override), identity or "anonymous", connect_timeout=5
        )


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    broker = SecureBroker(tmp_path_factory.mktemp("secure-broker"), "password").start()
    yield broker
    broker.stop()


def _drain(session: BrokerSession, settle_s: float = 0.4) -> list[tuple[str, bytes]]:
    got, deadline = [], time.monotonic() + settle_s
    while True:
        try:
            message = session.messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return got
        got.append((message.topic, bytes(message.payload)))


def test_password_file_entries_are_what_mosquitto_passwd_makes(tmp_path: Path) -> None:
    line = hash_password("s3cret pass")
    assert line.startswith("$7$101$") and verify_password("s3cret pass", line)
    assert not verify_password("s3cret pasS", line)
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed; the broker tests below still check our hashes")
    path = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(path), "alice", "s3cret pass"], check=True, capture_output=True)
    theirs = path.read_text().strip().split(":", 1)[1]
    assert verify_password("s3cret pass", theirs)
    _, _, iterations, salt, _ = theirs.split("$")
    assert hash_password("s3cret pass", base64.b64decode(salt), int(iterations)) == theirs


def test_generated_files_are_private_and_complete(secure_broker: SecureBroker) -> None:
    files = secure_broker.files
    for secret in (files.password_file, files.server_key, files.ca_key):
        assert secret is not None and secret.stat().st_mode & 0o077 == 0, secret
    acl = files.acl.read_text()
    assert "user dev-a\ntopic write edgefleet/v1/devices/dev-a/online" in acl
    assert "topic read edgefleet/v1/devices/dev-b/desired" in acl
    assert files.password_file is not None and files.operator_password_file is not None
    assert files.operator_password_file.stat().st_mode & 0o077 == 0
    # devices and operators log in on different listeners, each with its own password file
    devices_passwd = files.password_file.read_text().splitlines()
    assert sorted(line.split(":")[0] for line in devices_passwd) == DEVICES
    operators_passwd = files.operator_password_file.read_text().splitlines()
    assert sorted(line.split(":")[0] for line in operators_passwd) == ["edgefleet-admin", "edgefleet-monitor"]
    snippet = yaml.safe_load((files.clients["dev-a"] / "broker.yaml").read_text())
    assert snippet["broker_username"] == "dev-a" and snippet["mqtt_client_id"] == "dev-a"
    assert snippet["broker"] == f"mqtts://localhost:{secure_broker.port}"


def test_unauthenticated_and_wrong_credentials_are_refused(
    secure_broker: SecureBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(BrokerError, match="refused the connection: Not authorized"):
        secure_broker.session(None).open()  # TLS, but no user name
    wrong = secure_broker.files.clients["dev-b"] / "password"
    with pytest.raises(BrokerError, match="refused the connection"):
        secure_broker.session("dev-a", password_file=str(wrong)).open()
    # A client that does not trust our CA stops at the TLS handshake, before any credentials are sent.
    other_ca = secure_broker.files.clients["dev-a"] / "client-that-trusts-nobody.crt"
    other_ca.write_bytes((secure_broker.files.server_cert).read_bytes())  # a leaf, not the CA
    with pytest.raises(BrokerError, match=r"TLS handshake .* failed"):
        secure_broker.session("dev-a", ca_file=str(other_ca)).open()
    # The CLI says the same in one line and exits non-zero.
    admin = secure_broker.files.clients["edgefleet-admin"]
    code = main(
        [
            "status",
            "--broker",
            f"mqtts://127.0.0.1:{secure_broker.operator_port}",
            "--ca",
            str(admin / "ca.crt"),
            "--username",
            "edgefleet-admin",
            "--password-file",
            str(secure_broker.files.clients["dev-a"] / "password"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "refused the connection" in err and "--password-file" in err


def test_device_cannot_publish_as_another_device(secure_broker: SecureBroker) -> None:
    with secure_broker.session("edgefleet-admin") as admin, secure_broker.session("dev-a") as dev_a:
        admin.subscribe([topics.ALL_STATUS, topics.ALL_TELEMETRY])
        admin.sync()
        for leaf_topic in (topics.status("dev-b"), topics.telemetry("dev-b"), topics.desired("dev-b")):
            mid = dev_a.publish(leaf_topic, b"forged by dev-a")
            with pytest.raises(BrokerError, match="Not authorized"):
                dev_a.wait_published(mid, f"a publish to {leaf_topic}")
        # No device may write a bundle either (bundles are read-only for devices).
        with pytest.raises(BrokerError, match="Not authorized"):
            dev_a.wait_published(dev_a.publish(BUNDLE_META, b"forged", retain=True), "a bundle")
        dev_a.wait_published(dev_a.publish(topics.status("dev-a"), b"own status"), "its own status")
        admin.sync()
        got = _drain(admin, 0.2)
    assert got == [(topics.status("dev-a"), b"own status")]


def test_device_reads_only_its_own_commands_and_the_bundles(secure_broker: SecureBroker) -> None:
    with secure_broker.session("edgefleet-admin") as admin, secure_broker.session("dev-a") as dev_a:
        for device in DEVICES:
            admin.wait_published(
                admin.publish(topics.desired(device), f"desired {device}".encode(), retain=True), "desired"
            )
        admin.wait_published(admin.publish(BUNDLE_META, b"meta", retain=True), "bundle meta")
        # mosquitto accepts the subscriptions but never delivers what the ACL does not let dev-a read.
        dev_a.subscribe([f"{topics.PREFIX}/devices/+/desired", topics.infer("dev-b"), topics.infer("dev-a")])
        dev_a.subscribe([f"{topics.PREFIX}/bundles/+/meta"])
        admin.wait_published(admin.publish(topics.infer("dev-b"), b"request for b"), "request for b")
        admin.wait_published(admin.publish(topics.infer("dev-a"), b"request for a"), "request for a")
        got = _drain(dev_a, 0.6)
    assert sorted(got) == sorted(
        [
            (topics.desired("dev-a"), b"desired dev-a"),
            (topics.infer("dev-a"), b"request for a"),
            (BUNDLE_META, b"meta"),
        ]
    )


class RawDevice:
    """A device's own MQTT connection with a chosen client id, recording every disconnect."""

    def __init__(self, broker: SecureBroker, identity: str, client_id: str) -> None:
        self.connected = threading.Event()
        self.disconnects: list[str] = []
        self.client = new_client(client_id)
        self.client.on_connect = lambda *args: self.connected.set()
        self.client.on_disconnect = lambda _c, _u, _f, reason, _p: self.disconnects.append(str(reason))
        self.published = threading.Event()
        self.client.on_publish = lambda *args: self.published.set()
        connect(self.client, BrokerAddress.parse(broker.url(identity)))
        self.client.loop_start()
        assert self.connected.wait(10), f"{identity} did not connect"

    def round_trip(self, topic: str) -> bool:
        """A QoS 1 publish acknowledged by the broker (False when the connection is gone)."""
        self.published.clear()
        self.client.publish(topic, b"still here", qos=1)
        return self.published.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_device_cannot_take_over_another_devices_session(secure_broker: SecureBroker) -> None:
    """Issue 10 item 2: dev-a, with its own valid password, connects with dev-b's client id. The device
    listener makes every user name its client id, so dev-b stays connected."""
    victim = RawDevice(secure_broker, "dev-b", "edgefleet-agent-dev-b")
    try:
        for forged in ("edgefleet-agent-dev-b", "dev-b"):
            attacker = RawDevice(secure_broker, "dev-a", forged)
            # The broker ends a taken-over session while it handles the new CONNECT, before the CONNACK:
            # once the attacker is connected, a taken-over victim could no longer publish.
            assert victim.round_trip(topics.status("dev-b")), forged
            attacker.close()
        assert victim.disconnects == []
    finally:
        victim.close()


def test_operators_and_devices_each_log_in_on_their_own_listener(secure_broker: SecureBroker) -> None:
    with pytest.raises(BrokerError, match="refused the connection: Not authorized"):
        secure_broker.session("dev-a", port=secure_broker.operator_port).open()
    with pytest.raises(BrokerError, match="refused the connection: Not authorized"):
        secure_broker.session("edgefleet-admin", port=secure_broker.port).open()
    # Operators keep free client ids: two admin tools at once both stay connected.
    admin = "edgefleet-admin"
    with secure_broker.session(admin) as first, secure_broker.session(admin) as second:
        first.sync()
        second.sync()
        first.sync()


def test_monitor_identity_reads_reports_through_a_shared_subscription_and_writes_nothing(
    secure_broker: SecureBroker,
) -> None:
    with secure_broker.session("edgefleet-monitor") as monitor, secure_broker.session("dev-b") as dev_b:
        monitor.subscribe([f"$share/exporters/{topics.ALL_TELEMETRY}"])
        monitor.sync()
        dev_b.wait_published(dev_b.publish(topics.telemetry("dev-b"), b"t"), "telemetry")
        with pytest.raises(BrokerError, match="Not authorized"):
            monitor.wait_published(monitor.publish(topics.desired("dev-b"), b"x", retain=True), "desired")
        assert _drain(monitor, 0.4) == [(topics.telemetry("dev-b"), b"t")]


def test_certificate_mode_uses_the_certificate_as_identity(tmp_path: Path) -> None:
    broker = SecureBroker(tmp_path, "certificate").start()
    try:
        assert broker.files.password_file is None
        with broker.session("dev-a") as dev_a:
            dev_a.wait_published(dev_a.publish(topics.status("dev-a"), b"own"), "own status")
            with pytest.raises(BrokerError, match="Not authorized"):
                dev_a.wait_published(dev_a.publish(topics.status("dev-b"), b"forged"), "dev-b's status")
        # Without a client certificate the broker ends the TLS session before MQTT starts.
        with pytest.raises(BrokerError, match=r"closed the connection before accepting it.*--cert/--key"):
            broker.session(None).open()
        # The operator listener trusts only the operators' CA: a device certificate does not open it.
        with pytest.raises(BrokerError):
            broker.session("dev-a", port=broker.operator_port).open()
        with broker.session("edgefleet-admin") as admin:
            admin.sync()
    finally:
        broker.stop()


@pytest.mark.slow
def test_agent_deploy_status_and_exporter_over_tls(
    secure_broker: SecureBroker,
    tmp_path: Path,
    reference_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle, public, env = digits_for_a_real_agent(tmp_path, reference_dir, monkeypatch)
    # The device gets exactly what broker-config made for it: its folder next to agent.yaml.
    agent_dir = tmp_path / "agent"
    shutil.copytree(secure_broker.files.clients["dev-a"], agent_dir)
    agent = LocalAgent(
        agent_dir,
        device_id="dev-a",
        profile=ONNX_PROFILE,
        broker_url="mqtt://placeholder",
        trusted_key=public,
        telemetry_interval_s=0.5,
        env=env,
    )
    config = yaml.safe_load(agent.config_path.read_text())
    config.update(yaml.safe_load((agent_dir / "broker.yaml").read_text()))
    config["broker"] = f"mqtts://localhost:{secure_broker.port}"
    agent.config_path.write_text(yaml.safe_dump(config))
    admin = secure_broker.files.clients["edgefleet-admin"]
    admin_flags = [
        "--broker",
        f"mqtts://localhost:{secure_broker.operator_port}",
        "--ca",
        str(admin / "ca.crt"),
        "--username",
        "edgefleet-admin",
        "--password-file",
        str(admin / "password"),
    ]
    with agent:
        code = main(["deploy", str(bundle), "--device", "dev-a", *admin_flags, "--wait", "--timeout", "60"])
        assert code == 0, agent.log_tail(40) + capsys.readouterr().err
        capsys.readouterr()
        assert main(["status", *admin_flags, "--json", "--listen", "1.5"]) == 0
        fleet = json.loads(capsys.readouterr().out)
        (view,) = [d for d in fleet["devices"] if d["device_id"] == "dev-a"]
        assert view["online"] is True and view["status"]["model"]["version"] == "1"
        assert view["telemetry"]["device_id"] == "dev-a" and not view["invalid"]
        # The exporter runs with the read-only monitoring identity through a shared subscription.
        with Exporter(
            secure_broker.url("edgefleet-monitor", host="localhost"), bind="127.0.0.1:0", share_group="tls"
        ) as exporter:
            deadline = time.monotonic() + 10
            while exporter.monitor.snapshot().telemetry_messages < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            with urllib.request.urlopen(exporter.url, timeout=5) as response:
                text = response.read().decode()
    assert 'edgefleet_device_online{device_id="dev-a"} 1' in text
    assert (
        'edgefleet_device_info{device_id="dev-a",profile="fleet-test-onnx",model="digits",model_version="1"'
        in text
    )
    assert 'edgefleet_device_telemetry_messages_total{device_id="dev-a"}' in text


def test_bad_security_settings_are_refused_before_connecting() -> None:
    with pytest.raises(BrokerError, match="not a TLS address"):
        BrokerAddress.parse("mqtt://broker:1883?ca=/etc/ca.crt")
    with pytest.raises(BrokerError, match="password"):
        BrokerAddress.parse("mqtts://dev:secret@broker")
    with pytest.raises(BrokerError, match="without a user name"):
        BrokerAddress.parse("mqtts://broker").with_security(BrokerSecurity(password_file="/p"))
    address = BrokerAddress.parse("mqtts://dev-a@broker?ca=/etc/edgefleet/ca.crt&password_file=/etc/pw")
    assert address.port == 8883 and address.security.username == "dev-a"
    assert BrokerAddress.parse(address.url) == address and str(address) == "mqtts://broker:8883"
    with pytest.raises(BrokerError, match=r"cannot load the CA file /etc/edgefleet/ca\.crt"):
        BrokerSession(address.url, "x").open()
    with pytest.raises(BrokerError, match="cannot read the MQTT password file /nonexistent/pw"):
        BrokerSession("mqtts://dev-a@127.0.0.1?password_file=/nonexistent/pw", "x").open()


def test_agent_config_takes_broker_credentials_relative_to_its_folder(tmp_path: Path) -> None:
    from edgefleet.agent.config import ConfigError, load_config

    config_path = tmp_path / "agent.yaml"
    base = {
        "device_id": "dev-a",
        "profile": "rpi4",
        "state_dir": "state",
        "trusted_key": "fleet.pub",
    }
    config_path.write_text(
        yaml.safe_dump(
            {
                **base,
                "broker": "mqtts://broker:8883",
                "broker_ca": "ca.crt",
                "broker_username": "dev-a",
                "broker_password_file": "password",
            }
        )
    )
    address = load_config(config_path).broker_address
    assert address.tls and address.security.ca_file == str(tmp_path / "ca.crt")
    assert address.security.password_file == str(tmp_path / "password")
    config_path.write_text(yaml.safe_dump({**base, "broker": "mqtt://broker:1883", "broker_ca": "ca.crt"}))
    with pytest.raises(ConfigError, match="mqtts://"):
        load_config(config_path)


def test_running_again_adds_devices_and_keeps_existing_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cfg"
    assert (
        main(["broker-config", "--out", str(out), "--devices", "pi-1,pi-2", "--data-dir", str(tmp_path)]) == 0
    )
    ca, password = (out / "ca.crt").read_bytes(), (out / "clients" / "pi-1" / "password").read_text()
    assert main(["broker-config", "--out", str(out), "--devices", "pi-1,pi-2", "--devices", "pi-3"]) == 0
    assert (out / "ca.crt").read_bytes() == ca
    assert (out / "clients" / "pi-1" / "password").read_text() == password
    assert "user pi-3\n" in (out / "acl").read_text()
    capsys.readouterr()
    assert main(["broker-config", "--out", str(out), "--devices", "pi-1", "--json"]) == 0
    assert "user pi-3\n" not in (out / "acl").read_text()  # dropped from the list: no rights at all
    written = json.loads(capsys.readouterr().out)  # --json: where everything went, for a script
    assert Path(written["acl"]) == out / "acl" and set(written["clients"]) >= {"pi-1"}
    assert main(["broker-config", "--out", str(out), "--devices", "pi-1,pi 2"]) == 2
    assert "device id 'pi 2' is not valid" in capsys.readouterr().err
    assert main(["broker-config", "--out", str(out), "--devices", "edgefleet-admin"]) == 2
    assert "also the admin or monitor identity" in capsys.readouterr().err
