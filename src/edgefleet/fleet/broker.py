"""A private mosquitto broker on a free loopback port, with a config file we write: used by the demo
and tests.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edgefleet.contract.errors import EdgefleetError
from edgefleet.fleet.lifecycle import Started

INSTALL_HINT = "install it with `sudo apt-get install mosquitto` (Debian/Ubuntu/Raspberry Pi OS)"


class MosquittoMissing(EdgefleetError):
    pass


# Debian installs the broker in sbin, which is often not on a normal user's PATH.
SEARCH_PATHS: tuple[str, ...] = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), *SEARCH_PATHS):
        if candidate and Path(candidate).is_file():
            return candidate
    raise MosquittoMissing(f"the mosquitto broker is not installed; {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# What the broker queues for one client beyond the messages in flight to it; mosquitto drops the rest
# silently (default 1000). A device's requests in flight, summed over all its clients, must stay under it
# (docs/protocol.md, "Requests in flight"): the agent answers every request it receives, but it never
# sees one the broker dropped. broker-config writes the same figure.
QUEUED_MESSAGES_PER_CLIENT = 100_000


class MosquittoProcess(Started):
    """Start with `start()` (or as a context manager); `kill()` is kill -9, `start()` again restarts it
    on the same port with the same persistence file."""

    def __init__(
        self,
        workdir: Path | None = None,
        port: int | None = None,
        extra_config: str = "",
        autosave_interval: int = 1,
    ) -> None:
        self.binary = find_mosquitto()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edgefleet-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.config_path.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    "set_tcp_nodelay true",
                    # Started as root, mosquitto drops to user `mosquitto`, which cannot write our
                    # persistence folder: stay the user we are, so snapshots are really saved.
                    f"user {getpass.getuser()}",
                    "persistence true",
                    f"persistence_location {self.workdir}/",
                    f"autosave_interval {autosave_interval}",
                    f"max_queued_messages {QUEUED_MESSAGES_PER_CLIENT}",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    extra_config,
                ]
            )
            + "\n"
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> MosquittoProcess:
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EdgefleetError(
                    f"mosquitto exited at start (code {self._process.returncode}); see {self.log_path}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EdgefleetError(
            f"mosquitto did not open port {self.port} within {timeout:.0f} s; see {self.log_path}"
        )

    def kill(self) -> None:
        """kill -9: no goodbye, no final persistence save."""
        if self._process and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
