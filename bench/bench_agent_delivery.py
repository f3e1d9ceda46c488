"""Delivery of a 20 MiB bundle to an agent that is serving a model, over a private loopback mosquitto, vs
`mosquitto_pub -f` of the same file in the same run, and recovery after the broker is killed with -9 in the
middle of a delivery.

The bundle is the digits CNN converted for the profile, signed again as a new version with random bytes as
an extra listed file so the whole bundle is 20 MiB. Printed, as MiB/s of that file:
- `mosquitto_pub -f FILE -q 1` to a `mosquitto_sub -C 1` subscriber (start of the publisher to the
  subscriber's exit with the whole message), median of 3;
- the agent delivery, end to end (deploy call to "new version active", upload included), from the desired
  state published to active (what the device does: fetch, verify every chunk and the file, unpack, load,
  health check, swap), and the chunk transfer alone (status "receiving" to status "activating", both as
  the device publishes them). Target: at least 1x mosquitto_pub.
Then one more version is uploaded (and left 2 s for the broker's 1 s autosave to hold it), its desired state
published, and the broker killed with -9 once the device has part of it; the broker is restarted on the
same port and persistence. Printed: how many chunks the device had at the kill, and the time from the
restart to the new version active (time to recover), next to the undisturbed delivery time.

    .venv/bin/python bench/bench_agent_delivery.py [--mib 20] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench_agent_support import (
    DEVICE,
    Agent,
    DeviceWatcher,
    as_version,
    convert_reference,
    keys,
    machine_load,
)

from edgefleet.contract.messages import DesiredState
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.deploy import deploy_bundle, new_deployment_id, publish_desired
from edgefleet.fleet.session import BrokerSession
from edgefleet.fleet.upload import prepare_bundle, upload_bundle

MIB = 1024**2
CHUNK_LOG_HEADER, CHUNK_LOG_ENTRY = 12, 4  # agent.delivery: magic + chunk size, then a u32 per chunk


def padded_version(
    v1: Path, version: str, out: Path, size: int, private_key: Path, public_key: Path, work: Path
) -> Path:
    """v1 signed again as `version` with a random padding file making the bundle `size` bytes."""
    padding = work / f"padding-{version}.bin"
    padding.write_bytes(b"")
    probe = as_version(v1, version, out, private_key, public_key, {"padding.bin": padding})
    padding.write_bytes(os.urandom(max(0, size - probe.stat().st_size)))
    return as_version(v1, version, out, private_key, public_key, {"padding.bin": padding})


def mosquitto_pub_mib_s(broker: MosquittoProcess, bundle: Path, runs: int = 3) -> tuple[float, list[float]]:
    """Median MiB/s of `mosquitto_pub -f` (QoS 1) to a `mosquitto_sub -C 1` subscriber, and each run's."""
    rates = []
    for run in range(runs):
        topic = f"bench/file/{run}"
        sub = subprocess.Popen(
            ["mosquitto_sub", "-p", str(broker.port), "-h", "127.0.0.1", "-t", topic, "-q", "1", "-C", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)  # subscribed
        start = time.perf_counter()
        subprocess.run(
            [
                "mosquitto_pub",
                "-p",
                str(broker.port),
                "-h",
                "127.0.0.1",
                "-t",
                topic,
                "-q",
                "1",
                "-f",
                str(bundle),
            ],
            check=True,
        )
        sub.wait(60)
        seconds = time.perf_counter() - start
        if sub.returncode != 0:
            raise RuntimeError(f"mosquitto_sub failed: {sub.stderr.read() if sub.stderr else ''}")
        rates.append(bundle.stat().st_size / MIB / seconds)
    return statistics.median(rates), rates


def chunks_had(state_dir: Path, bundle_id: str) -> int:
    log = state_dir / "incoming" / f"{bundle_id}.chunks"
    return max(0, (log.stat().st_size - CHUNK_LOG_HEADER) // CHUNK_LOG_ENTRY) if log.exists() else 0


def log_time(log: str, event: str, version: str) -> datetime:
    """When the agent logged `event` for `version` (its first such line)."""
    found = re.search(rf"^ts=(\S+) .*event={event} .*version={version}\b", log, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"the agent did not log {event} for version {version}")
    return datetime.fromisoformat(found.group(1))


def device_steps(log: str, version: str) -> dict[str, float]:
    """Seconds from the agent's `desired` line for `version` to its later steps, from its own log."""
    start = log_time(log, "desired", version)
    return {
        event: (log_time(log, event, version) - start).total_seconds()
        for event in ("model_loaded", "health_check_passed", "activated")
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="rpi4")
    parser.add_argument("--mib", type=float, default=20.0, help="bundle size in MiB")
    parser.add_argument(
        "--kill-at",
        type=float,
        default=0.3,
        help="kill the broker once the device has this share of the chunks",
    )
    parser.add_argument("--repeats", type=int, default=3, help="undisturbed deliveries (medians printed)")
    parser.add_argument("--work", type=Path, default=None, help="keep converted bundles here (reused)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        tmp_path = Path(tmp)
        work = args.work or tmp_path
        work.mkdir(parents=True, exist_ok=True)
        private_key, public_key = keys(work)
        v1 = convert_reference(work, "digits", args.profile, "1", private_key)
        size = int(args.mib * MIB)
        # v2..: undisturbed deliveries (medians are printed); the last one: the broker kill
        numbers = [str(n) for n in range(2, args.repeats + 3)]
        bundles = {
            n: padded_version(v1, n, tmp_path / f"v{n}.efb", size, private_key, public_key, tmp_path)
            for n in numbers
        }
        killed_version = numbers[-1]
        load_before = machine_load()

        broker = MosquittoProcess(tmp_path / "broker").start()
        agent = Agent(tmp_path / "agent", broker.url, public_key, args.profile, probation_s=0).start()
        watcher = DeviceWatcher(broker.url)
        try:
            deploy_bundle(broker.url, v1, DEVICE, wait=True, timeout=120)

            pub_rate, pub_runs = mosquitto_pub_mib_s(broker, bundles[numbers[0]])

            # the agent delivery, undisturbed
            end_to_end, device_s, transfer, all_steps = [], [], [], []
            for n in numbers[:-1]:
                start = time.monotonic()
                deploy_bundle(broker.url, bundles[n], DEVICE, wait=True, timeout=120)
                active = watcher.wait_version(n, 30, since=start)
                receiving = watcher.wait("status", lambda s: s.get("state") == "receiving", 30, since=start)
                activating = watcher.wait(
                    "status", lambda s: s.get("state") == "activating", 30, since=receiving
                )
                steps = device_steps(agent.log(), n)
                end_to_end.append(active - start)
                device_s.append(steps["activated"])
                transfer.append(activating - receiving)
                all_steps.append(steps)
            mib = bundles[numbers[0]].stat().st_size / MIB
            rates = {
                "end to end (deploy call -> active, upload included)": mib / statistics.median(end_to_end),
                "desired state received -> active (device log)": mib / statistics.median(device_s),
                "chunk transfer alone (receiving -> activating)": mib / statistics.median(transfer),
            }
            undisturbed_s = statistics.median(device_s)
            transfer_s = statistics.median(transfer)
            steps = {key: statistics.median(s[key] for s in all_steps) for key in all_steps[0]}

            # the broker killed with -9 mid-delivery
            prepared = prepare_bundle(bundles[killed_version])
            with BrokerSession(broker.url, "bench-upload") as session:
                upload_bundle(session, prepared)
            time.sleep(2.0)  # the broker's autosave (1 s) has the retained chunks and meta on disk
            desired = DesiredState(
                deployment_id=new_deployment_id(),
                bundle_id=prepared.meta.bundle_id,
                name=prepared.meta.name,
                version=prepared.meta.version,
                profile=prepared.meta.profile,
            )
            since = time.monotonic()
            with BrokerSession(broker.url, "bench-desired") as session:
                publish_desired(session, DEVICE, desired)
            total = len(prepared.meta.chunk_sha256)
            state_dir = tmp_path / "agent" / "state"
            deadline = time.monotonic() + 30
            while chunks_had(state_dir, prepared.meta.bundle_id) < total * args.kill_at:
                if time.monotonic() > deadline:
                    raise RuntimeError("the device did not start receiving the third version")
                time.sleep(0.0005)
            broker.kill()
            killed_at = time.monotonic()
            had = chunks_had(state_dir, prepared.meta.bundle_id)
            broker.start()
            restarted = time.monotonic()
            recovered = watcher.wait_version(killed_version, 120, since=since)
            log = agent.log()
            load_after = machine_load()
        finally:
            watcher.close()
            agent.stop()
            broker.stop()

        print(
            f"# bundle {mib:.1f} MiB ({size // MIB} MiB target; digits CNN + random padding), chunks of "
            f"{prepared.meta.chunk_size // 1024} KiB, profile {args.profile}, agent serving v1 throughout"
        )
        print(f"# machine: before {load_before}; after {load_after}")
        runs = ", ".join(f"{r:.0f}" for r in pub_runs)
        print(f"# mosquitto_pub -f -q 1 -> mosquitto_sub: runs {runs} MiB/s")
        print(
            f"# agent deliveries: medians of {len(device_s)} undisturbed deliveries "
            f"(versions 2..{numbers[-2]})"
        )
        print("| path | MiB/s | vs mosquitto_pub -f | target | met |")
        print("|---|---|---|---|---|")
        print(
            f"| mosquitto_pub -f (QoS 1) -> mosquitto_sub, median of {len(pub_runs)} | {pub_rate:.0f} "
            "| 1.00x | | |"
        )
        for label, rate in rates.items():
            ratio = rate / pub_rate
            met = "met" if ratio >= 1 else "missed"
            target = ">= 1x" if not label.startswith("end to end") else "(context)"
            print(
                f"| agent delivery: {label} | {rate:.0f} | {ratio:.2f}x | {target} | "
                f"{met if target != '(context)' else ''} |"
            )
        print()
        print(
            f"# where the undisturbed delivery's {undisturbed_s:.3f} s went (device log): chunk transfer "
            f"~{transfer_s:.3f} s, then whole-file and per-file sha256, unpack and fsync until model_loaded "
            "at "
            f"{steps['model_loaded']:.3f} s, health check passed at {steps['health_check_passed']:.3f} s, "
            f"swapped in at {steps['activated']:.3f} s"
        )
        reconnected = re.findall(r"^ts=\S+ .*event=connected .*n=(\d+)", log, re.MULTILINE)
        print()
        print("| broker kill -9 mid-delivery | value |")
        print("|---|---|")
        print(f"| chunks the device had when the broker was killed | {had} of {total} |")
        print(f"| broker down (kill -9 to port open again) | {restarted - killed_at:.2f} s |")
        print(
            f"| time to recover: broker restart -> v{killed_version} active | {recovered - restarted:.2f} s |"
        )
        print(f"| agent connections over the run (1 = never reconnected) | {max(map(int, reconnected))} |")
        print(f"| for comparison: undisturbed desired -> active (median) | {undisturbed_s:.2f} s |")


if __name__ == "__main__":
    main()
