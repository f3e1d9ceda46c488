"""Telemetry ingestion: N simulated devices (default 1000) each sending telemetry once a second for S seconds
(default 60) through one loopback mosquitto into the host-side consumers, each its own process:

- `edgefleet watch` on a pseudo-terminal (200x50), redrawing every second (what a user at a terminal runs);
- `edgefleet exporter` serving /metrics (scraped every 5 s, as Prometheus would) and writing the SQLite
  history.

Printed: the delivered fraction of the telemetry the simulator sent, per consumer (watch, exporter, history
rows), target 100%; and each consumer's CPU over the steady-state window, target < 25% of one core.
The simulator (`edgefleet simulate`) and the broker run as their own processes; their CPU is printed for
context.

    .venv/bin/python bench/bench_telemetry_ingest.py [--devices 1000] [--seconds 60] [--hz 1]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.request
from pathlib import Path

from edgefleet.fleet.broker import MosquittoProcess, free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pid_of(config_path: Path) -> int | None:
    """The process started with this config file (the broker), found through /proc."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(config_path).encode() in (proc / "cmdline").read_bytes().split(b"\0"):
                    return int(proc.name)
            except OSError:
                continue
    return None


def edgefleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgefleet.cli", *args]


class TerminalProcess:
    """A child whose stdout is a pseudo-terminal (so rich redraws in place, as for a user); its output is
    read continuously so it never blocks on a full terminal buffer."""

    def __init__(self, argv: list[str], rows: int = 50, columns: int = 200) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(rows)}
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self._master = master
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self._master], [], [], 0.5)
            if not ready:
                if self.process.poll() is not None:
                    return
                continue
            try:
                data = os.read(self._master, 1 << 16)
            except OSError:
                return
            if not data:
                return
            self._chunks.append(data)

    def output(self) -> str:
        text = b"".join(self._chunks).decode("utf-8", "replace")
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r", "", text)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        self._reader.join(10)
        os.close(self._master)


def scrape_total(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise RuntimeError(f"{name} is not in {url}")


def wait_for_line(path: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        match = re.search(pattern, text)
        if match:
            return match.group(0)
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited: {text[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"{pattern!r} did not appear in {path} within {timeout:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="steady-state window (default 60)")
    parser.add_argument("--hz", type=float, default=1.0, help="telemetry messages per device per second")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgefleet-ingest-") as tmp:
        work = Path(tmp)
        db = work / "history.sqlite"
        metrics_port = free_port()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        with MosquittoProcess(work / "broker") as broker:
            broker_pid = pid_of(broker.config_path)
            exporter_log = work / "exporter.log"
            exporter = subprocess.Popen(
                edgefleet(
                    "exporter",
                    "--broker",
                    broker.url,
                    "--bind",
                    f"127.0.0.1:{metrics_port}",
                    "--history",
                    str(db),
                ),
                stdout=exporter_log.open("wb"),
                stderr=subprocess.STDOUT,
            )
            watch = TerminalProcess(edgefleet("watch", "--broker", broker.url, "--refresh", "1"))
            wait_for_line(exporter_log, r"exporter: serving", exporter, 60)
            sim_log = work / "simulator.log"
            # The simulator runs for the window plus its own start-up; the window starts once all are in.
            simulator = subprocess.Popen(
                edgefleet(
                    "simulate",
                    "--broker",
                    broker.url,
                    "--devices",
                    str(args.devices),
                    "--telemetry-hz",
                    str(args.hz),
                    "--duration",
                    str(args.seconds),
                    "--json",
                ),
                stdout=sim_log.open("wb"),
                stderr=subprocess.STDOUT,
            )
            wait_for_line(sim_log, r"connected: \d+ devices", simulator, max(120.0, args.devices / 10))
            pids = {"watch": watch.process.pid, "exporter": exporter.pid, "simulator": simulator.pid}
            if broker_pid is not None:
                pids["broker"] = broker_pid
            cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
            window_start = time.monotonic()
            scrapes = 0
            while time.monotonic() - window_start < args.seconds - 1.0:
                time.sleep(5.0)
                scrape_total(
                    metrics_url, "edgefleet_exporter_telemetry_messages_total"
                )  # a Prometheus scrape
                scrapes += 1
            cpu_end = {name: cpu_seconds(pid) for name, pid in pids.items() if name != "simulator"}
            window = time.monotonic() - window_start
            simulator.wait(120)
            cpu_end["simulator"] = float("nan")
            report = json.loads(sim_log.read_text()[sim_log.read_text().index("{") :])
            time.sleep(2.0)  # let the last messages drain to the consumers
            exporter_received = scrape_total(metrics_url, "edgefleet_exporter_telemetry_messages_total")
            exporter.send_signal(signal.SIGTERM)
            exporter.wait(60)
            watch.stop()
        watch_match = re.search(r"watch: (\d+) telemetry messages from (\d+) devices", watch.output())
        if not watch_match:
            raise RuntimeError(f"watch printed no summary: {watch.output()[-3000:]}")
        watch_received = int(watch_match.group(1))
        with sqlite3.connect(db) as conn:
            history_rows = conn.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
            history_devices = conn.execute("SELECT COUNT(DISTINCT device_id) FROM telemetry").fetchone()[0]

    sent = report["telemetry_sent"]
    figures = {
        "devices": args.devices,
        "rate_per_device_hz": args.hz,
        "window_s": round(window, 1),
        "telemetry_sent": sent,
        "delivered": {
            "watch": watch_received / sent,
            "exporter": exporter_received / sent,
            "history_rows": history_rows / sent,
        },
        "history_devices": history_devices,
        "cpu_percent_of_one_core": {
            name: round(100 * (cpu_end[name] - cpu_start[name]) / window, 1)
            for name in ("watch", "exporter", "broker")
            if name in cpu_end
        },
        "simulator_cpu_s": report.get("cpu_seconds"),
        "prometheus_scrapes": scrapes,
    }
    print(
        f"## Telemetry ingestion: {args.devices} simulated devices x {args.hz:g} msg/s, {window:.0f} s window"
    )
    print("| consumer | received | delivered (target 100%) | CPU, % of one core (target < 25%) |")
    print("|---|---|---|---|")
    cpu = figures["cpu_percent_of_one_core"]
    rows = [
        ("`edgefleet watch` (pty, 1 redraw/s)", str(watch_received), watch_received, cpu["watch"]),
        (
            "`edgefleet exporter` (+ SQLite history, scraped every 5 s)",
            f"{exporter_received:.0f}",
            exporter_received,
            cpu["exporter"],
        ),
        (
            "history rows written",
            f"{history_rows} ({history_devices} devices)",
            history_rows,
            "(in exporter)",
        ),
    ]
    for name, received, count, cpu_text in rows:
        print(f"| {name} | {received} | {100 * count / sent:.2f}% | {cpu_text} |")
    print(f"\nsent by the simulator: {sent} telemetry messages")
    print(f"broker CPU: {cpu.get('broker', 'n/a')}% of one core")
    print(f"simulator CPU over its whole run: {report.get('cpu_seconds', 0):.1f} s")
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
