"""Memory of the agent vs the bare runtime: VmRSS (from /proc/PID/status) of a real agent process idle
(connected to a private mosquitto, no model) and with a model loaded and serving, next to a separate
bare-runtime process (python + numpy + ai_edge_litert Interpreter with the same model file and thread count,
after the same number of inferences). One fresh agent per model: the digits CNN and the MobileNetV2-style
model, both converted for the profile (full-INT8 TFLite for rpi4).

    .venv/bin/python bench/bench_agent_rss.py [--threads N] [--requests 50] [--work DIR]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench_agent_support import (
    DEVICE,
    Agent,
    agent_bench_parser,
    artifact_sample,
    machine_load,
    prepare_work,
    read_vm_rss_kib,
    reference_bundles,
    unpack,
)

from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.deploy import deploy_bundle
from edgefleet.fleet.inference import InferenceClient

SETTLE_S = 1.5  # after the last request, before reading VmRSS

BARE_RUNTIME = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    model, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    interpreter = Interpreter(model_path=model, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]
    image = np.zeros(detail["shape"], dtype=detail["dtype"])
    for _ in range(runs):
        interpreter.set_tensor(detail["index"], image)
        interpreter.invoke()
        interpreter.get_tensor(output["index"])
    print("ready", flush=True)
    sys.stdin.read()  # stay alive until the parent has read our RSS
    """
)


def bare_runtime_rss_kib(model: Path, threads: int, runs: int) -> int:
    process = subprocess.Popen(
        [sys.executable, "-c", BARE_RUNTIME, str(model), str(threads), str(runs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare runtime process failed")
        time.sleep(SETTLE_S)
        return read_vm_rss_kib(process.pid)
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = agent_bench_parser(__doc__)
    parser.add_argument("--requests", type=int, default=50, help="inferences before RSS is read (both sides)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        tmp_path = Path(tmp)
        work, threads, private_key, public_key = prepare_work(tmp_path, args.work, args.profile, args.threads)
        bundles = reference_bundles(work, args.profile, private_key)
        rows = []
        for index, (label, bundle) in enumerate(bundles.items()):
            # a broker per agent: no retained desired state of the previous one
            with MosquittoProcess(tmp_path / f"broker-{index}") as broker:
                _, manifest = unpack(bundle, tmp_path / f"unpacked-{index}", public_key)
                agent = Agent(
                    tmp_path / f"agent-{index}", broker.url, public_key, args.profile, probation_s=0
                ).start()
                try:
                    agent.wait_log(r"event=connected ")
                    time.sleep(SETTLE_S)
                    idle = read_vm_rss_kib(agent.pid)
                    deploy_bundle(broker.url, bundle, DEVICE, wait=True, timeout=120)
                    image = artifact_sample(manifest)
                    with InferenceClient(broker.url) as client:
                        for _ in range(args.requests):
                            client.infer(DEVICE, image)
                    time.sleep(SETTLE_S)
                    loaded = read_vm_rss_kib(agent.pid)
                finally:
                    agent.stop()
                bare = bare_runtime_rss_kib(
                    tmp_path / f"unpacked-{index}" / manifest.artifact, threads, args.requests
                )
                rows.append((label, manifest, idle, loaded, bare))
        load = machine_load()

        print(
            f"# profile {args.profile}, {threads} runtime threads; VmRSS after {args.requests} inferences "
            f"and {SETTLE_S} s; agent idle = connected, no model"
        )
        print(f"# machine: {load}")
        print(
            "| model (artifact size) | agent idle MiB | agent with the model MiB | bare runtime process MiB "
            "| agent - bare MiB | agent / bare |"
        )
        print("|---|---|---|---|---|---|")
        for label, manifest, idle, loaded, bare in rows:
            size = manifest.metrics.size_bytes_artifact / 1024
            print(
                f"| {label} ({size:.0f} KiB) | {idle / 1024:.1f} | {loaded / 1024:.1f} | {bare / 1024:.1f} "
                f"| {(loaded - bare) / 1024:+.1f} | {loaded / bare:.2f}x |"
            )


if __name__ == "__main__":
    main()
