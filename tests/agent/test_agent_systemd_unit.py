"""The systemd unit, checked by systemd's own tools, and the sd_notify client over real datagram sockets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.sdnotify import SystemdNotifier, socket_address, watchdog_interval_s

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edgefleet-agent.service"
SHIPPED_EXEC = "/opt/edgefleet/venv/bin/edgefleet"


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze") or (
        "/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None
    )
    if found is None:
        pytest.fail("systemd-analyze is missing: scripts/setup.sh installs it (apt package systemd)")
    return found


@pytest.fixture
def checkable_unit(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at this checkout's agent (verify checks it exists)."""
    executable = Path(sys.executable).with_name("edgefleet")
    text = UNIT.read_text()
    assert SHIPPED_EXEC in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(SHIPPED_EXEC, str(executable if executable.exists() else sys.executable)))
    return unit


def test_unit_passes_systemd_analyze_verify(checkable_unit: Path) -> None:
    result = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(checkable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 even for unknown keys or bad values (it ignores them with a message): both must be clean
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unit_hardening_scores_ok_in_systemd_analyze_security(checkable_unit: Path) -> None:
    result = subprocess.run(
        [
            _systemd_analyze(),
            "security",
            "--offline=yes",
            "--threshold=20",
            "--no-pager",
            str(checkable_unit),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    assert result.returncode == 0, result.stdout[-3000:]  # exposure 2.0 or below ("OK")
    assert "Overall exposure level" in result.stdout


def test_unit_declares_notify_watchdog_restart_user_and_state() -> None:
    settings = [
        line.strip() for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#")
    ]
    for expected in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=edgefleet-agent",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "KillSignal=SIGTERM",
    ):
        assert expected in settings, expected


def test_watchdog_interval_comes_from_the_environment() -> None:
    pid = os.getpid()
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, pid) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(pid)}, pid) == 0.2
    assert watchdog_interval_s({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(pid + 1)}, pid) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}, pid) is None
    assert watchdog_interval_s({}, pid) is None
    assert socket_address("@edgefleet") == b"\0edgefleet"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("vsock:2:1234") is None


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"edgefleet-test-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(b"\0" + name.encode())
    receiver.settimeout(2)
    yield "@" + name, receiver
    receiver.close()


def test_notifier_speaks_the_protocol_on_abstract_and_path_sockets(
    abstract_socket: tuple[str, socket.socket], tmp_path: Path
) -> None:
    name, receiver = abstract_socket
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000"})
    assert notifier.enabled and notifier.watchdog_s == 1.0
    assert notifier.ready("serving digits v1")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=serving digits v1"
    assert notifier.watchdog()
    assert receiver.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert receiver.recv(4096) == b"STOPPING=1"
    notifier.close()

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as by_path:
        by_path.bind(str(path))
        by_path.settimeout(2)
        plain = SystemdNotifier.from_env({"NOTIFY_SOCKET": str(path)})
        assert plain.watchdog_s is None and not plain.watchdog()  # no WATCHDOG_USEC: no pings
        assert plain.status("idle")
        assert by_path.recv(4096) == b"STATUS=idle"
        plain.close()
    # the socket is gone now: a failed notification is reported, never raised
    assert not SystemdNotifier.from_env({"NOTIFY_SOCKET": str(path)}).ready()
    assert not SystemdNotifier.from_env({}).ready()
