"""Hot-swap under continuous load: a real agent process (behind a private mosquitto) serves v1 of a model
to several client threads (each its own fleet InferenceClient over MQTT, paced to a total request rate);
v2 is deployed with fleet.deploy.deploy_bundle while they keep going, then v3, ...

Printed: failed requests over the whole run (target 0); the steady-state p99 before the deploy; the worst
request latency in the swap window (from the deploy call until the agent reports v2 active, plus 1 s) and
its ratio to the steady-state p99 (target at most 2x); and whether the agent's log shows each version
replacing the one before while the load ran. Several swaps (v2, v3, ...: v1 signed again as new
versions) give several windows.

    .venv/bin/python bench/bench_agent_swap.py [--model mobilenet|digits] [--clients 3] [--rate 40]
        [--steady 15] [--swaps 5] [--threads N] [--work DIR]
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_agent_support import (
    DEVICE,
    Agent,
    Summary,
    agent_bench_parser,
    artifact_sample,
    as_version,
    convert_reference,
    machine_load,
    prepare_work,
    unpack,
)

from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.deploy import deploy_bundle
from edgefleet.fleet.inference import InferenceClient

TARGET_RATIO = 2.0
TAIL_S = 1.0  # the swap window ends this long after the agent reports v2 active


@dataclass(frozen=True)
class Request:
    sent: float  # time.monotonic() when sent
    ms: float
    ok: bool
    error: str


class Load:
    """`clients` threads, each with its own InferenceClient, sending requests at `rate` per second in total
    (each thread waits for its reply, then for its next slot)."""

    def __init__(self, broker_url: str, clients: int, rate: float, image: np.ndarray) -> None:
        self.broker_url = broker_url
        self.period = clients / rate
        self.image = image
        self.results: list[Request] = []
        self.versions: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        with InferenceClient(self.broker_url, default_timeout=10) as client:
            next_at = time.monotonic() + self.period * index / len(self._threads)
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                next_at = max(next_at + self.period, time.monotonic())
                sent = time.monotonic()
                start = time.perf_counter()
                try:
                    client.infer(DEVICE, self.image)
                    ok, error = True, ""
                except Exception as exc:  # every failure counts, whatever its kind
                    ok, error = False, f"{type(exc).__name__}: {exc}"
                ms = (time.perf_counter() - start) * 1000
                with self._lock:
                    self.results.append(Request(sent, ms, ok, error))

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)

    def between(self, start: float, end: float) -> list[Request]:
        with self._lock:
            return [r for r in self.results if start <= r.sent < end]


def main() -> None:
    parser = agent_bench_parser(__doc__)
    parser.add_argument("--model", default="mobilenet", choices=["mobilenet", "digits"])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second, all clients together")
    parser.add_argument("--steady", type=float, default=15.0, help="seconds of load before the first deploy")
    parser.add_argument("--swaps", type=int, default=5, help="deploys under load: v2, v3, ...")
    parser.add_argument("--gap", type=float, default=4.0, help="seconds between one swap and the next deploy")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        tmp_path = Path(tmp)
        work, threads, private_key, public_key = prepare_work(tmp_path, args.work, args.profile, args.threads)
        v1 = convert_reference(work, args.model, args.profile, "1", private_key)
        versions = [
            as_version(v1, str(n), tmp_path / f"v{n}.efb", private_key, public_key)
            for n in range(2, args.swaps + 2)
        ]
        _, manifest = unpack(v1, tmp_path / "unpacked", public_key)
        image = artifact_sample(manifest)

        swaps: list[tuple[float, float, float]] = []  # deploy call, v(n) active, upload seconds
        with MosquittoProcess(tmp_path / "broker") as broker:
            # probation on (the agent's default length): the replaced model stays loaded as the standby,
            # as on a real device
            agent = Agent(tmp_path / "agent", broker.url, public_key, args.profile).start()
            try:
                deploy_bundle(broker.url, v1, DEVICE, wait=True, timeout=120)
                load = Load(broker.url, args.clients, args.rate, image).start()
                time.sleep(2)  # connections made, first requests through: not part of the steady state
                steady_start = time.monotonic()
                time.sleep(args.steady)
                load_during = machine_load()
                for bundle in versions:
                    deploy_start = time.monotonic()
                    result = deploy_bundle(broker.url, bundle, DEVICE, wait=True, timeout=120)
                    swaps.append((deploy_start, time.monotonic(), result.upload_seconds))
                    time.sleep(args.gap)
                load_after = machine_load()
                load.stop()
                log = agent.log()
            finally:
                agent.stop()

        steady = load.between(steady_start, swaps[0][0])
        everything = load.between(0, float("inf"))
        failed = [r for r in everything if not r.ok]
        steady_stats = Summary.of([r.ms for r in steady if r.ok])
        replaced = [
            re.search(rf"event=activated .*version={n} .*replaced={n - 1}\b", log) is not None
            for n in range(2, args.swaps + 2)
        ]
        print(
            f"# {manifest.name} ({args.model}), profile {args.profile}, {threads} runtime threads; "
            f"{args.clients} MQTT clients, {args.rate:g} req/s in total, {image.nbytes}-byte int8 requests; "
            f"v2..v{args.swaps + 1} are v1 signed again as new versions (new bundle ids)"
        )
        print(f"# machine: during the steady state {load_during}; after the swaps {load_after}")
        print(
            f"# agent log shows each version replacing the one before: {all(replaced)}; failed requests "
            f"over the whole run ({len(everything)} requests): {len(failed)} (target 0: "
            f"{'met' if not failed else 'missed'}); steady state before the first deploy "
            f"({steady_stats.samples} requests): p50 {steady_stats.p50:.2f} ms, p99 {steady_stats.p99:.2f} ms"
        )
        print(
            "| swap | upload s | deploy call -> active s | requests in the window | worst ms "
            "| worst / steady p99 | target | met |"
        )
        print("|---|---|---|---|---|---|---|---|")
        ratios = []
        for n, (start, active, upload_s) in enumerate(swaps, start=2):
            window = load.between(start, active + TAIL_S)
            worst = max((r.ms for r in window), default=float("nan"))
            ratio = worst / steady_stats.p99
            ratios.append(ratio)
            print(
                f"| v{n - 1} -> v{n} | {upload_s:.3f} | {active - start:.2f} | {len(window)} | {worst:.2f} "
                f"| {ratio:.2f}x | <= {TARGET_RATIO:g}x | {'met' if ratio <= TARGET_RATIO else 'missed'} |"
            )
        print(f"# worst of all swap windows: {max(ratios):.2f}x the steady-state p99")
        for r in failed[:5]:
            print(f"# failed: {r.error}")


if __name__ == "__main__":
    main()
