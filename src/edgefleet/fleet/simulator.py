"""`edgefleet simulate`: N lightweight simulated devices speaking the real protocol, all driven by one
selector loop in one thread (paho's loop_read/loop_write/loop_misc; a `loop_start` thread per client stops
working above ~340 clients, see mqtt-facts.md). Used by the benchmarks and by rollout tests.

    sim = Simulator("mqtt://127.0.0.1:1883", devices=1000, profile="rpi4", telemetry_hz=1.0)
    report = sim.run(60)                      # blocking; or: with sim: ... (loop in a background thread)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import itertools
import logging
import os
import random
import resource
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel, Field, TypeAdapter

from edgefleet.contract import ids, topics
from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.messages import ActiveModel, BundleMeta
from edgefleet.contract.profiles import DeviceProfile, load_profile
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.simulator_device import FailMode, SimDevice, SimDeviceLog, SimOptions
from edgefleet.mqtt import BrokerAddress, BrokerError, connect, refusal_hint

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_BATCH = 50  # new connections per loop pass: keeps the broker's accept queue short
MISC_EVERY_S = 1.0  # keepalive bookkeeping (loop_misc) for every client
STALL_CHECK_EVERY_S = 1.0
MAX_RECONNECT_DELAY_S = 10.0
FDS_PER_DEVICE = 2  # one socket, plus headroom for what paho and Python open


class SimulatorError(EdgefleetError):
    """The simulator cannot run as asked (bad options, too few file descriptors, broker refused)."""


class SimulationReport(BaseModel):
    broker: str
    profile: str
    devices: int
    connected: int = Field(description="devices connected when the report was made")
    failing: list[str] = Field(description="devices that fail their health check on a new bundle")
    duration_s: float
    telemetry_sent: int
    chunks_received: int
    bytes_received: int
    activations: int
    rejections: int
    reconnects: int
    cpu_seconds: float = Field(description="CPU time of this process (all threads) while the loop ran")


def initial_model(profile: DeviceProfile, name: str, version: str) -> ActiveModel:
    """The model simulated devices start with: a made-up bundle id that no real bundle can have."""
    bundle_id = hashlib.sha256(
        f"edgefleet-simulator-initial:{profile.name}:{name}:{version}".encode()
    ).hexdigest()
    return ActiveModel(
        name=name,
        version=version,
        bundle_id=bundle_id,
        format=profile.artifact.format.value,
        precision=profile.artifact.precision.value,
    )


def raise_fd_limit(needed: int) -> None:
    """Raise this process's soft open-files limit toward `needed` (children such as a broker started
    afterwards inherit it); SimulatorError if the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SimulatorError(
            f"{needed} open files are needed but the hard limit is {hard}; raise it (ulimit -Hn, or "
            "LimitNOFILE= in a systemd unit) or simulate fewer devices per process"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Simulator:
    """N simulated devices in one process, one selector loop.

    `run(duration)` drives the loop in the calling thread; `start()`/`stop()` (or `with Simulator(...)`)
    drive it in a background thread. `logs()` is the simulator's own record of what every device was asked
    to run, fetched and activated.
    """

    def __init__(
        self,
        broker_url: str,
        devices: int,
        profile: str = "rpi4",
        *,
        telemetry_hz: float = 1.0,
        fail_fraction: float = 0.0,
        fail_mode: FailMode = "errors",
        tags: dict[str, str] | None = None,
        id_prefix: str = "sim",
        seed: int = 0,
        initial_version: str | None = "0",
        model_name: str = "digits",
        activation_s: float = 0.05,
        probation_s: float = 0.0,
        requests_per_s: float = 5.0,
        keepalive_s: int = 30,
    ) -> None:
        if devices < 1:
            raise SimulatorError("--devices must be at least 1")
        if not 0.0 <= fail_fraction <= 1.0:
            raise SimulatorError(f"the failing fraction must be between 0 and 1, got {fail_fraction}")
        if telemetry_hz < 0:
            raise SimulatorError("the telemetry rate must be >= 0 (0 = no telemetry)")
        self.address = BrokerAddress.parse(broker_url)
        self.profile = load_profile(profile)
        self.options = SimOptions(
            telemetry_interval_s=1.0 / telemetry_hz if telemetry_hz > 0 else None,
            fail_mode=fail_mode,
            activation_s=activation_s,
            probation_s=probation_s,
            requests_per_s=requests_per_s,
            tags=dict(tags or {}),
        )
        self.keepalive_s = keepalive_s
        self.rng = random.Random(seed)
        width = max(4, len(str(devices - 1)))
        self.device_ids = [ids.check_device_id(f"{id_prefix}-{i:0{width}d}") for i in range(devices)]
        failing_count = round(fail_fraction * devices)
        self.failing_ids = set(random.Random(seed).sample(self.device_ids, failing_count))
        initial = initial_model(self.profile, model_name, initial_version) if initial_version else None
        self.initial = initial
        self.devices = {
            device_id: SimDevice(device_id, self, failing=device_id in self.failing_ids, initial=initial)
            for device_id in self.device_ids
        }
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._commands: list[Callable[[], None]] = []
        self._commands_lock = threading.Lock()
        self._to_connect: list[SimDevice] = []
        self._connected_count = 0
        self._all_connected = threading.Event()
        self._fatal: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_thread: threading.Thread | None = None  # the thread running the loop, while it runs
        self._connected_at_stop: int | None = None
        self._verdicts: dict[tuple[str, int, tuple[str, ...]], bool] = {}
        self._collecting: dict[tuple[str, int, tuple[str, ...]], dict[int, bytes]] = {}
        self._reconnects = 0
        self._started_at: float | None = None
        self._cpu_at_start = 0.0
        self._report: SimulationReport | None = None

    # -- SimEnvironment (called by devices, on the loop thread) ------------------------------------
    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), callback))

    def register_socket(self, device: SimDevice, sock: Any) -> None:
        self._selector.register(sock, selectors.EVENT_READ, device)

    def unregister_socket(self, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)

    def want_write(self, device: SimDevice, sock: Any, wanted: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(sock, events, device)

    def whole_file_ok(self, meta: BundleMeta, index: int, data: bytes) -> bool | None:
        # Every device whose chunks all matched the same meta holds the same bytes, so the whole-file
        # sha256 is computed once per meta instead of once per device (1000 x 1 MiB would be 1 GB).
        key = (meta.bundle_id, meta.chunk_size, tuple(meta.chunk_sha256))
        verdict = self._verdicts.get(key)
        if verdict is not None:
            return verdict
        parts = self._collecting.setdefault(key, {})
        parts.setdefault(index, data)
        if len(parts) < len(meta.chunk_sha256):
            return None
        digest = hashlib.sha256()
        for i in range(len(meta.chunk_sha256)):
            digest.update(parts[i])
        verdict = self._verdicts[key] = digest.hexdigest() == meta.bundle_id
        del self._collecting[key]
        return verdict

    def connected(self, device: SimDevice) -> None:
        self._connected_count += 1
        if self._connected_count == len(self.devices):
            self._all_connected.set()
        interval = self.options.telemetry_interval_s
        if interval is not None and device.log.connects == 1:
            # spread the fleet's telemetry evenly over one interval
            self.call_later(self.rng.uniform(0, interval), lambda: self._telemetry_tick(device))

    def refused(self, device: SimDevice, reason: str) -> None:
        self._fatal = (
            f"the MQTT broker at {self.address} refused simulated device {device.device_id}: {reason}"
            f"{refusal_hint(reason)}"
        )
        self._stop.set()

    def disconnected(self, device: SimDevice, reason: str, was_connected: bool) -> None:
        if was_connected:
            self._connected_count -= 1
        if self._stop.is_set() or device.dropped:
            return
        delay = device.reconnect_delay
        device.reconnect_delay = min(MAX_RECONNECT_DELAY_S, delay * 2)
        self.call_later(delay, lambda: self._reconnect(device))

    # -- public API --------------------------------------------------------------------------------
    def start(self) -> Simulator:
        """Check the broker answers, then run the loop in a background thread."""
        self._prepare()
        self._thread = threading.Thread(target=self._loop, name="edgefleet-simulator", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float = 60.0) -> None:
        """Block until every device has connected once; BrokerError if the broker refused them or the
        time ran out."""
        deadline = time.monotonic() + timeout
        while not self._all_connected.wait(0.1):
            if self._fatal:
                raise BrokerError(self._fatal)
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"only {self._connected_count} of {len(self.devices)} simulated devices connected to "
                    f"{self.address} within {timeout:g} s"
                )
        if self._fatal:
            raise BrokerError(self._fatal)

    def stop(self, timeout: float = 10.0) -> SimulationReport:
        """Every device says offline and disconnects; returns the report."""
        if self._thread is not None:
            self._stop.set()
            self._wake()
            self._thread.join(timeout + 5)
            self._thread = None
        if self._report is None:
            self._report = self._make_report()
        if self._fatal:
            raise BrokerError(self._fatal)
        return self._report

    def run(self, duration: float | None = None) -> SimulationReport:
        """Run in this thread until `duration` seconds have passed (None: until `request_stop()`)."""
        self._prepare()
        if duration is not None:
            self.call_later(duration, self._stop.set)
        self._loop()
        if self._fatal:
            raise BrokerError(self._fatal)
        assert self._report is not None
        return self._report

    def request_stop(self) -> None:
        """Thread- and signal-safe: ask the loop to wind down."""
        self._stop.set()
        self._wake()

    def logs(self) -> dict[str, SimDeviceLog]:
        """A copy of every device's record, taken on the loop thread."""
        return self._on_loop(lambda: {d: dev.log.model_copy(deep=True) for d, dev in self.devices.items()})

    def drop(self, device_ids: Iterable[str]) -> None:
        """Cut these devices off abruptly (their last will says offline); they stay off until `revive`."""
        ids = list(device_ids)

        def cut() -> None:
            for device_id in ids:
                device = self.devices[device_id]
                device.dropped = True
                sock = device.client.socket()
                if isinstance(sock, socket.socket):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        self._on_loop(cut)

    def revive(self, device_ids: Iterable[str]) -> None:
        ids = list(device_ids)

        def back() -> None:
            for device_id in ids:
                device = self.devices[device_id]
                device.dropped = False
                self._reconnect(device)

        self._on_loop(back)

    @property
    def connected_count(self) -> int:
        return self._connected_count

    def __enter__(self) -> Simulator:
        self.start()
        self.wait_connected()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop()
        except BrokerError:
            if exc is None:
                raise

    # -- the loop ----------------------------------------------------------------------------------
    def _prepare(self) -> None:
        raise_fd_limit(len(self.devices) * FDS_PER_DEVICE + 256)
        first, *rest = self.devices.values()
        # The first connection is made here, in the caller's thread, so an unreachable broker is one clear
        # BrokerError before anything else happens.
        connect(first.client, self.address, keepalive=self.keepalive_s, clean_start=True)
        self._to_connect = list(reversed(rest))
        self._started_at = time.monotonic()
        self._cpu_at_start = _process_cpu()
        self.call_later(MISC_EVERY_S, self._misc_tick)
        self.call_later(STALL_CHECK_EVERY_S, self._stall_tick)

    def _loop(self) -> None:
        self._loop_thread = threading.current_thread()
        try:
            while not self._stop.is_set():
                self._connect_some()
                self._run_once(self._next_timeout())
            self._connected_at_stop = self._connected_count
            self._wind_down()
        except Exception as exc:  # the loop must not die silently in a background thread
            log.exception("simulator loop failed")
            self._fatal = self._fatal or f"the simulator loop failed: {exc!r}"
        finally:
            with self._commands_lock:
                self._loop_thread = None
                leftover, self._commands = self._commands, []
            for command in leftover:
                command()
            self._report = self._make_report()
            self._close_sockets()

    def _run_once(self, timeout: float) -> None:
        for key, mask in self._selector.select(timeout):
            device: SimDevice | None = key.data
            if device is None:
                self._drain_wake()
                continue
            client = device.client
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()
        self._run_commands()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            try:
                callback()
            except Exception:
                log.exception("simulator timer failed")

    def _next_timeout(self) -> float:
        if self._to_connect:
            return 0.0
        if not self._timers:
            return 0.2
        return max(0.0, min(0.2, self._timers[0][0] - time.monotonic()))

    def _connect_some(self) -> None:
        for _ in range(min(CONNECT_BATCH, len(self._to_connect))):
            device = self._to_connect.pop()
            try:
                connect(device.client, self.address, keepalive=self.keepalive_s, clean_start=True)
            except BrokerError as exc:
                log.warning("simulated device %s: %s", device.device_id, exc)
                self.disconnected(device, str(exc), was_connected=False)

    def _reconnect(self, device: SimDevice) -> None:
        if self._stop.is_set() or device.dropped or device.connected or device.client.socket() is not None:
            return
        self._reconnects += 1
        try:
            device.client.reconnect()
        except OSError as exc:
            log.info("simulated device %s: reconnect failed (%s)", device.device_id, exc)
            self.disconnected(device, str(exc), was_connected=False)

    def _misc_tick(self) -> None:
        for device in self.devices.values():
            if device.client.socket() is not None:
                device.client.loop_misc()
        self.call_later(MISC_EVERY_S, self._misc_tick)

    def _stall_tick(self) -> None:
        for device in self.devices.values():
            device.tick()
        self.call_later(STALL_CHECK_EVERY_S, self._stall_tick)

    def _telemetry_tick(self, device: SimDevice) -> None:
        device.send_telemetry()
        interval = self.options.telemetry_interval_s
        if interval is not None:
            self.call_later(interval, lambda: self._telemetry_tick(device))

    def _wind_down(self, timeout: float = 10.0) -> None:
        """Say offline (retained) and disconnect every device, then flush what is queued."""
        from edgefleet.contract.messages import Presence

        offline = Presence(online=False).to_bytes()
        for device in self.devices.values():
            if device.connected:
                device.client.publish(topics.online(device.device_id), offline, qos=1, retain=True)
                device.client.disconnect()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            d.client.socket() is not None for d in self.devices.values()
        ):
            self._run_once(0.05)

    def _close_sockets(self) -> None:
        for device in self.devices.values():
            sock = device.client.socket()
            if sock is not None:
                self.unregister_socket(sock)
                with contextlib.suppress(OSError):
                    sock.close()

    # -- cross-thread calls ------------------------------------------------------------------------
    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the loop thread (devices are not thread-safe) and return its result."""
        future: Future[T] = Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

        with self._commands_lock:
            queued = self._loop_thread is not None and threading.current_thread() is not self._loop_thread
            if queued:
                self._commands.append(call)
        if not queued:
            return fn()
        self._wake()
        return future.result(timeout=30)

    def _run_commands(self) -> None:
        with self._commands_lock:
            commands, self._commands = self._commands, []
        for command in commands:
            command()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _make_report(self) -> SimulationReport:
        logs = [device.log for device in self.devices.values()]
        started = self._started_at or time.monotonic()
        return SimulationReport(
            broker=str(self.address),
            profile=self.profile.name,
            devices=len(self.devices),
            connected=self._connected_count if self._connected_at_stop is None else self._connected_at_stop,
            failing=sorted(self.failing_ids),
            duration_s=round(time.monotonic() - started, 3),
            telemetry_sent=sum(entry.telemetry_sent for entry in logs),
            chunks_received=sum(f.chunks_received for entry in logs for f in entry.fetched.values()),
            bytes_received=sum(f.bytes_received for entry in logs for f in entry.fetched.values()),
            activations=sum(len(entry.activated) for entry in logs),
            rejections=sum(len(entry.rejected) for entry in logs),
            reconnects=self._reconnects,
            cpu_seconds=round(_process_cpu() - self._cpu_at_start, 3),
        )


_RECORD = TypeAdapter(dict[str, SimDeviceLog])


def write_record(path: Path, logs: dict[str, SimDeviceLog]) -> None:
    """The simulator's record of every device as JSON (what `--record` writes)."""
    path.write_bytes(_RECORD.dump_json(logs, indent=1))


def read_record(path: Path) -> dict[str, SimDeviceLog]:
    return _RECORD.validate_json(path.read_bytes())


def _process_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _parse_tags(pairs: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SimulatorError(f"--tag {pair!r} is not KEY=VALUE (e.g. --tag site=lab)")
        tags[key.strip()] = value.strip()
    return tags


def run_simulate(args: argparse.Namespace) -> int:
    """CLI entry point (edgefleet simulate). Without --broker the devices get a private mosquitto on a free
    loopback port (printed, to point watch/rollout at): simulated devices never land on a real fleet's
    broker by accident, where their retained status would outlive the run."""
    if args.broker is not None:
        return _simulate(args, args.broker)
    with MosquittoProcess() as broker:
        print(f"private broker: {broker.url} (pass --broker to use another)", flush=True)
        return _simulate(args, broker.url)


def _simulate(args: argparse.Namespace, broker_url: str) -> int:
    simulator = Simulator(
        broker_url,
        args.devices,
        args.profile,
        telemetry_hz=args.telemetry_hz,
        fail_fraction=args.fail_fraction,
        fail_mode=args.fail_mode,
        tags=_parse_tags(args.tag or []),
        id_prefix=args.id_prefix,
        seed=args.seed,
        initial_version=args.initial_version or None,
        probation_s=args.probation_seconds,
        requests_per_s=args.requests_per_s,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    failing = len(simulator.failing_ids)
    print(
        f"simulating {args.devices} '{simulator.profile.name}' devices ({simulator.device_ids[0]} .. "
        f"{simulator.device_ids[-1]}, {failing} failing) on {simulator.address}",
        flush=True,
    )
    simulator.start()
    try:
        simulator.wait_connected(timeout=max(60.0, args.devices / 20))
        print(
            f"connected: {args.devices} devices; "
            + (f"running for {args.duration:g} s" if args.duration else "Ctrl-C to stop"),
            flush=True,
        )
        stop.wait(args.duration)
    finally:
        report = simulator.stop()
        if args.record:
            write_record(args.record, simulator.logs())
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(
            f"ran {report.duration_s:.1f} s: {report.telemetry_sent} telemetry messages, "
            f"{report.activations} activations, {report.rejections} rejections, "
            f"{report.chunks_received} chunks ({report.bytes_received / 1024**2:.1f} MiB) received, "
            f"{report.reconnects} reconnects, {report.cpu_seconds:.1f} s CPU"
        )
    return 0
