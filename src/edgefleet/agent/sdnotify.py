"""The systemd notify protocol (sd_notify(3)) without libsystemd: newline-separated KEY=VALUE datagrams sent
to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or '@name' for an abstract socket), and the
watchdog interval from $WATCHDOG_USEC/$WATCHDOG_PID. Outside systemd every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping

from edgefleet.agent.log import EventLog

log = EventLog("systemd")


def socket_address(value: str) -> str | bytes | None:
    """The address to send to: a filesystem path, or the bytes of an abstract name ('@' -> NUL)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # e.g. vsock: addresses (VMs); not used on the devices we target


def watchdog_interval_s(env: Mapping[str, str], pid: int) -> float | None:
    """How often to ping: half of WATCHDOG_USEC (as sd_watchdog_enabled(3) advises), or None when the
    watchdog is off or meant for another process (WATCHDOG_PID)."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2 / 1_000_000


class SystemdNotifier:
    def __init__(self, notify_socket: str | None, watchdog_s: float | None) -> None:
        self.address = socket_address(notify_socket) if notify_socket else None
        self.watchdog_s = watchdog_s if self.address is not None else None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False
        if notify_socket and self.address is None:
            log.warning("notify_socket_unsupported", notify_socket=notify_socket)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_interval_s(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send KEY=VALUE lines in one datagram; False (logged once) when systemd cannot be told."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.sendto(message, self.address)
            except OSError as exc:
                if not self._warned:  # a watchdog ping every few seconds must not flood the log
                    self._warned = True
                    log.warning("notify_failed", error=str(exc), what=assignments[0] if assignments else "")
                return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1") if self.watchdog_s is not None else False

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
