"""Fleet rollout benchmarks on one loopback mosquitto, with the fleet simulator in its own process:

1. a 1 MiB bundle rolled out to N simulated devices in one stage: time until every device reports it
   active (target < 60 s for 1000 devices), time until the rollout confirmed them healthy, broker peak RSS;
2. a staged rollout (canary 10%, batches of 25%) with 5% of the devices failing their health check: the
   rollout must halt at the canary stage, and no device outside the canary may have received the bundle
   (checked against the simulator's own record of what every device was sent and fetched).

    .venv/bin/python bench/bench_fleet_rollout.py [--devices 1000] [--bundle-mib 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from edgefleet.contract.signing import create_key_pair
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.inventory import collect_inventory
from edgefleet.fleet.rollout import start_rollout
from edgefleet.fleet.rollout_state import RolloutState
from edgefleet.fleet.simulator import raise_fd_limit, read_record
from edgefleet.reference_models import reference_model_dir

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the one test-bundle factory: a signed fp32 bundle of the digits CNN
from support_bundles import make_fp32_bundle  # noqa: E402

PROFILE = "rpi4"


def peak_rss_mb(config_path: Path) -> float | None:
    """VmHWM (peak resident set) of the mosquitto started with this config file."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if str(config_path).encode() not in cmdline:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            continue
    return None


def make_bundle(work: Path, size_mib: float, version: str) -> Path:
    private_key, _ = create_key_pair(work / f"keys-{version}")
    model = reference_model_dir() / "digits_cnn_v1.onnx"
    padding = work / f"padding-{version}.bin"
    padding.write_bytes(os.urandom(max(0, int(size_mib * 1024**2) - model.stat().st_size - 4096)))
    return make_fp32_bundle(
        work / f"digits-{version}.efb",
        model,
        private_key,
        version=version,
        profile=PROFILE,
        extra_files={"padding.bin": padding},
    )


class SimulatorProcess:
    """`edgefleet simulate` as a child process, so its CPU is not the rollout host's."""

    def __init__(self, broker_url: str, devices: int, work: Path, name: str, *extra: str) -> None:
        self.record = work / f"{name}-sim-record.json"
        self.log = work / f"{name}-sim.log"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgefleet.cli",
                "simulate",
                "--broker",
                broker_url,
                "--devices",
                str(devices),
                "--profile",
                PROFILE,
                "--tag",
                "site=bench",
                "--record",
                str(self.record),
                *extra,
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def wait_online(self, broker_url: str, devices: int, timeout: float = 120.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the simulator exited: {self.log.read_text()[-2000:]}")
            inventory, _ = collect_inventory(broker_url, listen_s=0)
            online = sum(1 for r in inventory.records() if r.online and r.announced)
            if online >= devices:
                return time.monotonic() - started
            time.sleep(0.5)
        raise RuntimeError(f"only {online} of {devices} simulated devices came online in {timeout:g} s")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def seconds(delta: timedelta) -> float:
    return delta / timedelta(seconds=1)


def time_to_active(state: RolloutState) -> tuple[float, float]:
    """(seconds from the first desired state to the last device active, to the last device healthy)."""
    devices = [d for d in state.devices.values() if d.desired_at is not None]
    first = min(d.desired_at for d in devices if d.desired_at)
    active = [d.active_at for d in devices if d.active_at]
    healthy = [d.healthy_at for d in devices if d.healthy_at]
    return seconds(max(active) - first), seconds(max(healthy) - first) if healthy else float("nan")


def bench_full_rollout(work: Path, devices: int, bundle_mib: float) -> None:
    bundle = make_bundle(work, bundle_mib, "2")
    with MosquittoProcess(work / "broker-full") as broker:
        sim = SimulatorProcess(broker.url, devices, work, "full", "--telemetry-hz", "1")
        try:
            connect_s = sim.wait_online(broker.url, devices)
            rss_before = peak_rss_mb(broker.config_path)
            started = time.monotonic()
            cpu_before = os.times()
            state = start_rollout(
                broker.url,
                bundle,
                "site=bench",
                canary="100%",
                batch="100%",
                min_healthy_s=0,
                stage_timeout_s=300,
                state_dir=work / "state-full",
            )
            wall = time.monotonic() - started
            cpu_after = os.times()
            rss_after = peak_rss_mb(broker.config_path)
        finally:
            sim.stop()
    active_s, healthy_s = time_to_active(state)
    counts = state.counts()
    host_cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    size = bundle.stat().st_size
    print(f"## 1. Rollout of a {size / 1024**2:.2f} MiB bundle to {devices} simulated devices (one stage)")
    print("| figure | value |")
    print("|---|---|")
    print(f"| devices online before the rollout (simulator start to all announced) | {connect_s:.1f} s |")
    print(f"| first desired state -> every device reports the bundle active | {active_s:.1f} s |")
    print(f"| first desired state -> every device confirmed healthy (telemetry on it) | {healthy_s:.1f} s |")
    print(f"| whole `rollout` call (upload, plan, stage, health) | {wall:.1f} s |")
    print(f"| devices per minute (active) | {devices / active_s * 60:.0f} |")
    print(f"| bytes delivered by the broker (bundle x devices) | {size * devices / 1024**3:.2f} GiB |")
    print(f"| broker peak RSS (VmHWM) before / after | {rss_before or 0:.1f} / {rss_after or 0:.1f} MiB |")
    print(f"| rollout host CPU (this process) | {host_cpu:.1f} s |")
    print(f"| result | {state.status}: {counts} |")
    print()


def bench_staged_halt(work: Path, devices: int) -> None:
    bundle = make_bundle(work, 0.25, "3")
    with MosquittoProcess(work / "broker-staged") as broker:
        sim = SimulatorProcess(
            broker.url, devices, work, "staged", "--telemetry-hz", "1", "--fail-fraction", "0.05"
        )
        try:
            sim.wait_online(broker.url, devices)
            started = time.monotonic()
            state = start_rollout(
                broker.url,
                bundle,
                "site=bench",
                canary="10%",
                batch="25%",
                max_failures=0,
                min_healthy_s=5,
                stage_timeout_s=120,
                rollback_wait_s=60,
                state_dir=work / "state-staged",
            )
            wall = time.monotonic() - started
        finally:
            sim.stop()
    record = read_record(sim.record)
    canary = set(state.stages[0])
    bundle_id = state.bundle.bundle_id
    outside = [d for d, log in record.items() if d not in canary and log.received_any_of(bundle_id)]
    failing = {d for d, log in record.items() if log.failing}
    failed = [d.device_id for d in state.devices.values() if d.failure]
    rolled_back = [d for d in canary if record[d].active_bundle != bundle_id]
    print(
        f"## 2. Staged rollout to {devices} simulated devices, {len(failing)} ({len(failing) / devices:.0%}) "
        "failing"
    )
    print("| figure | value |")
    print("|---|---|")
    print(f"| stages planned | canary {len(state.stages[0])}, then {len(state.stages) - 1} batches |")
    print(f"| failing devices inside the canary | {len(canary & failing)} |")
    print(f"| halted at | {state.stage_name(state.stage)} (status {state.status}) |")
    print(f"| devices the rollout saw fail | {len(failed)} ({', '.join(sorted(failed)[:5])}) |")
    print(f"| time from start to halted and rolled back | {wall:.1f} s |")
    print(
        f"| canary devices back on their previous bundle (simulator's record) | {len(rolled_back)} of "
        f"{len(canary)} |"
    )
    print(f"| devices outside the canary that received any of the bundle (target 0) | {len(outside)} |")
    print()
    if outside or state.status != "halted" or state.stage != 0:
        raise SystemExit("FAILED: the staged rollout did not halt cleanly at the canary stage")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--bundle-mib", type=float, default=1.0)
    parser.add_argument("--only", choices=["full", "staged"], help="run one of the two benchmarks")
    args = parser.parse_args()
    # every simulated device holds a socket in the simulator and one in the broker (a child of this process)
    raise_fd_limit(2 * args.devices + 512)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-fleet-") as tmp:
        work = Path(tmp)
        if args.only in (None, "full"):
            bench_full_rollout(work, args.devices, args.bundle_mib)
        if args.only in (None, "staged"):
            bench_staged_halt(work, args.devices)


if __name__ == "__main__":
    main()
