"""`edgefleet watch`: the view rendered from real device messages (devices needing attention first, garbage
shown as garbage), and the command itself against a real mosquitto (`--once` and a short live run)."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_helpers import device_status, plain_client, publish_wait, repeating
from rich.console import Console
from rich.text import Text

from edgefleet.cli import main
from edgefleet.contract import topics
from edgefleet.contract.messages import ActiveModel, LatencySummary, Presence, Telemetry
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.monitor import FleetMonitor
from edgefleet.fleet.watch import render_watch, summary_line

MODEL = ActiveModel(name="digits", version="2", bundle_id="a" * 64, format="tflite", precision="int8")


def telemetry(
    device_id: str, *, requests: int = 100, errors: int = 0, p95: float = 0.35, **extra: object
) -> bytes:
    return Telemetry(
        device_id=device_id,
        interval_s=1.0,
        model_version="2",
        requests=requests,
        errors=errors,
        latency_ms=LatencySummary(p50=0.21, p95=p95, p99=0.52, samples=100),
        rss_mb=61.2,
        cpu_percent=12.5,
        swaps=1,
        **extra,  # type: ignore[arg-type]
    ).to_bytes()


def _render(monitor: FleetMonitor, width: int = 250, **kwargs: object) -> str:
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    view = render_watch(monitor.snapshot(), "mqtt://test:1883", width=width, **kwargs)  # type: ignore[arg-type]
    console.print(view)
    return console.export_text()


def _lines_by_device(text: str) -> list[str]:
    return [line.split("│")[1].strip() for line in text.splitlines() if line.count("│") > 5]


def _mixed_fleet() -> FleetMonitor:
    monitor = FleetMonitor()
    for device in ("a-healthy", "b-healthy"):
        monitor.feed(topics.online(device), Presence(online=True).to_bytes())
        monitor.feed(topics.status(device), device_status(device, "rpi4", MODEL).to_bytes())
        monitor.feed(topics.telemetry(device), telemetry(device, soc_temp_c=48.5))
    monitor.feed(topics.online("c-slow"), Presence(online=True).to_bytes())
    monitor.feed(topics.status("c-slow"), device_status("c-slow", "rpi4", MODEL).to_bytes())
    monitor.feed(topics.telemetry("c-slow"), telemetry("c-slow", p95=80.0))  # rpi4 budget: 50 ms
    monitor.feed(topics.telemetry("d-erring"), telemetry("d-erring", requests=10, errors=1))
    monitor.feed(topics.telemetry("d-erring"), telemetry("d-erring", requests=20, errors=4))
    monitor.feed(topics.online("e-gone"), Presence(online=False).to_bytes())
    monitor.feed(topics.online("f-broken"), Presence(online=True).to_bytes())
    monitor.feed(topics.telemetry("f-broken"), b"\x00{not json")
    monitor.feed(topics.telemetry("g-liar"), telemetry("someone-else"))
    return monitor


def test_view_lists_devices_needing_attention_first_and_shows_garbage_as_garbage() -> None:
    monitor = _mixed_fleet()
    text = _render(monitor)

    order = _lines_by_device(text)
    assert order[:2] == ["f-broken", "g-liar"]  # garbage first
    assert order[2] == "e-gone" and order[3] == "d-erring" and order[4] == "c-slow"
    assert order[5:] == ["a-healthy", "b-healthy"]
    assert "garbage on telemetry: not valid JSON" in text
    assert "payload says device_id 'someone-else'" in text
    assert "+3 errors" in text and "p95 over the 50 ms budget" in text and "offline" in text
    assert "48" in next(line for line in text.splitlines() if "a-healthy" in line)  # temperature column
    assert "7 devices" in text and "2 sending garbage" in text and "5 need attention" in text
    snapshot = monitor.snapshot()
    assert snapshot.telemetry_messages == 7 and snapshot.invalid_messages == 2

    limited = _render(monitor, max_rows=3)
    assert _lines_by_device(limited) == ["f-broken", "g-liar", "e-gone"]
    assert "... and 4 more devices (2 of them need attention)" in limited


def test_a_device_whose_telemetry_stopped_is_shown_silent() -> None:
    now = [1000.0]
    monitor = FleetMonitor(clock=lambda: now[0])
    monitor.feed(topics.online("quiet"), Presence(online=True).to_bytes())
    monitor.feed(topics.telemetry("quiet"), telemetry("quiet"))
    assert "silent" not in _render(monitor).split("need attention")[1]
    now[0] += 16.0  # more than 3 intervals and at least 15 s
    text = _render(monitor)
    assert "telemetry stopped" in text and "1 silent" in text


def test_an_interval_error_rate_over_the_profiles_limit_is_called_unhealthy() -> None:
    """The same rule the agent's probation applies (contract/health.py): 20 requests with 4 errors is 20%,
    over rpi4's 5%; 1 error in 20 is within it and is only counted."""
    monitor = FleetMonitor()
    for device, errors in (("a-within", 1), ("b-over", 4)):
        monitor.feed(topics.status(device), device_status(device, "rpi4", MODEL).to_bytes())
        monitor.feed(
            topics.telemetry(device),
            telemetry(device, requests=20, errors=errors, interval_requests=20, interval_errors=errors),
        )
    text = _render(monitor)
    within = next(line for line in text.splitlines() if "a-within" in line)
    assert "+1 errors" in within and "unhealthy" not in text.split("b-over")[0]
    assert "unhealthy: 4 of 20 requests failed (20%; at most 5% allowed)" in " ".join(text.split())


@pytest.fixture
def reporting_fleet(broker: MosquittoProcess) -> Iterator[MosquittoProcess]:
    """Two devices with retained presence/status sending telemetry every 50 ms, and one sending garbage."""
    client = plain_client(broker)
    for device in ("pi-1", "pi-2"):
        publish_wait(client, topics.online(device), Presence(online=True).to_bytes(), retain=True)
        publish_wait(
            client, topics.status(device), device_status(device, "rpi4", MODEL).to_bytes(), retain=True
        )
    publish_wait(client, topics.online("bad-1"), Presence(online=True).to_bytes(), retain=True)

    def send(n: int) -> None:
        for device in ("pi-1", "pi-2"):
            client.publish(topics.telemetry(device), telemetry(device, requests=n), qos=0)
        client.publish(topics.telemetry("bad-1"), b'{"device_id": "bad-1", "latency_ms": 3}', qos=0)

    with repeating(send):
        yield broker
    client.disconnect()
    client.loop_stop()


@pytest.mark.mqtt
def test_watch_once_prints_the_fleet(
    reporting_fleet: MosquittoProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["watch", "--broker", reporting_fleet.url, "--once", "--listen", "0.5"]) == 0
    out = capsys.readouterr().out
    assert _lines_by_device(out) == ["bad-1", "pi-1", "pi-2"]
    assert "garbage on telemetry: not a valid Telemetry" in out
    pi_line = next(line for line in out.splitlines() if "pi-1" in line)
    assert "rpi4" in pi_line and "0.21" in pi_line and "0.35" in pi_line and "61" in pi_line

    # --json: the same view as data, in the same order, notes without colour markup
    assert main(["watch", "--broker", reporting_fleet.url, "--once", "--listen", "0.5", "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert [d["device_id"] for d in view["devices"]] == ["bad-1", "pi-1", "pi-2"]
    assert view["devices_total"] == 3 and view["sending_garbage"] == 1 and view["need_attention"] >= 1
    pi_1 = view["devices"][1]
    assert (pi_1["profile"], pi_1["latency_ms"]["p50"], pi_1["rss_mb"]) == ("rpi4", 0.21, 61.2)
    assert view["devices"][0]["notes"][0].startswith("garbage on telemetry: not a valid Telemetry")
    assert main(["watch", "--broker", reporting_fleet.url, "--json"]) == 2  # a live view is not JSON
    assert "add --once" in capsys.readouterr().err


@pytest.mark.mqtt
def test_live_watch_runs_records_history_and_reports_what_it_received(
    reporting_fleet: MosquittoProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "history.sqlite"
    code = main(
        [
            "watch",
            "--broker",
            reporting_fleet.url,
            "--duration",
            "1.0",
            "--refresh",
            "0.25",
            "--history",
            str(db),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "pi-2" in out and "edgefleet watch" in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("watch: ") and "from 3 devices" in summary
    received = int(summary.split()[1])
    assert received >= 20  # 3 devices x 20/s for 1 s, minus start-up
    assert main(["history", "pi-1", "--metric", "p95_ms", "--since", "5m", "--db", str(db), "--json"]) == 0
    assert '"value": 0.35' in capsys.readouterr().out


def _run_in_terminal(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run a command with a pseudo-terminal (200x40) as its stdout, as a user's shell would; returns its exit
    code and what it wrote, ANSI escapes removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "40"}
    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(master)
    code = process.wait(5)
    text = b"".join(chunks).decode("utf-8", "replace")
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r", "", text)


@pytest.mark.mqtt
@pytest.mark.slow
def test_live_view_redraws_in_a_terminal(reporting_fleet: MosquittoProcess) -> None:
    argv = [sys.executable, "-m", "edgefleet.cli", "watch", "--broker", reporting_fleet.url]
    code, out = _run_in_terminal([*argv, "--duration", "2", "--refresh", "0.25"], timeout=30)
    assert code == 0, out
    assert out.count("edgefleet watch") >= 3  # redrawn several times while telemetry arrived
    assert "pi-1" in out and "garbage on telemetry" in out
    assert re.search(r"\d+ telemetry/s", out)
    assert re.search(r"watch: \d+ telemetry messages from 3 devices", out)


def test_summary_line_counts_messages() -> None:
    monitor = FleetMonitor()
    monitor.feed(topics.telemetry("x"), telemetry("x"))
    monitor.feed(topics.telemetry("x"), b"garbage")
    assert "2 telemetry messages from 1 devices" in summary_line(monitor.snapshot())
    assert "(1 not understood)" in summary_line(monitor.snapshot())


@pytest.mark.parametrize("width", [80, 100, 120])
def test_the_view_fits_the_terminal_without_cutting_a_number(width: int) -> None:
    """Issue 11: at 80x24 every number read `0...` and the notes column had no width. Narrow terminals
    drop columns (p50, temperature, then profile and requests) and give the notes lines of their own."""
    text = _render(_mixed_fleet(), width=width, telemetry_rate=12.0)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width and "…" not in text
    # the header is never wrapped mid-sentence: the counts read whole on one line
    assert any(re.search(r"\d+ devices: .*; \d+ need attention", line) for line in lines)
    assert any(
        line.startswith("edgefleet watch mqtt://test:1883") and "12 telemetry/s" in line for line in lines
    )
    healthy = next(line for line in lines if line.lstrip().startswith("a-healthy"))
    assert "0.35" in healthy and "0.52" in healthy and "61" in healthy  # p95, p99, RSS whole
    assert any(line.strip().startswith("c-slow: p95 over the 50 ms budget") for line in lines)
    assert "+3 errors" in text and "garbage on telemetry: not valid JSON" in text
    assert ("48" in healthy) == (width >= 110)  # the temperature column needs room


def test_zero_counts_are_not_red() -> None:
    view = render_watch(FleetMonitor().snapshot(), "mqtt://test:1883")
    header = view.renderables[0]
    assert isinstance(header, Text)
    red = [header.plain[span.start : span.end] for span in header.spans if "red" in str(span.style)]
    assert red == []  # "0 offline" and "0 sending garbage" are good news


def test_watch_once_on_a_pipe_takes_the_width_columns_gives(
    reporting_fleet: MosquittoProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`COLUMNS=80 edgefleet watch --once | less`: the 80-column layout, not the wide one pipes get."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["watch", "--broker", reporting_fleet.url, "--once", "--listen", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(re.search(r"^\d+ devices: .*; \d+ need attention$", line) for line in lines)
