"""Inference overhead of the agent's serving path, transport excluded, vs the runtime called directly: the
MobileNetV2-style model converted for a profile (rpi4: full-INT8 TFLite), the same model file and thread
count on both sides, measured interleaved in one process so machine load hits both alike.

Agent path (what the MQTT handler does with a request, minus the socket): InferenceService.serve pins the
model and counts the request; inside, compute() decodes the .npy request bytes, to_artifact, LoadedModel.run
(run lock, bookkeeping for the probation), from_artifact, and encode_npz builds the reply body.
Bare path: Interpreter.set_tensor / invoke / get_tensor on an array already in the artifact's form, called on
the very Interpreter object the agent loaded (two Interpreters of one model differ by as much as the
overhead measured; that difference is printed too). Threads: the profile's count, at most the CPU count.

Two request forms: the artifact's own form (int8 NHWC, passed through), and the source model's float form
(float32 NCHW, which the agent transposes and quantizes, and dequantizes on the way back); for the float form
the bare path does the same numpy transpose/quantize/dequantize a direct caller would have to write.
Printed per path: p50 and mean (ms), and the overhead in % (target: at most 5%).

    .venv/bin/python bench/bench_agent_serving.py [--threads N] [--size 224] [--seconds 40] [--work DIR]
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_agent_support import (
    BareRuntime,
    Summary,
    agent_bench_parser,
    artifact_sample,
    convert_reference,
    float_sample,
    machine_load,
    percent,
    prepare_work,
    unpack,
)

from edgefleet.agent.inference import InferenceService
from edgefleet.agent.model_slot import LoadedModel, ModelSlot
from edgefleet.agent.telemetry import RequestMetrics
from edgefleet.contract.messages import CONTENT_NPY
from edgefleet.contract.profiles import load_profile
from edgefleet.contract.tensors import dequantize, encode_npy, encode_npz, quantize

TARGET_PERCENT = 5.0


def agent_path(service: InferenceService, payload: bytes) -> Callable[[], object]:
    """The MQTT handler's work for one request, minus receiving and publishing."""

    def work(model: LoadedModel) -> bytes:
        return encode_npz(service.compute(model, payload, CONTENT_NPY, service.max_request_bytes))

    return lambda: service.serve(work)


def bare_path(bare: BareRuntime, manifest: object, array: np.ndarray, as_float: bool) -> Callable[[], object]:
    """The runtime called directly; with `as_float`, with the caller's own quantize/dequantize around it."""
    if not as_float:
        return lambda: bare.run(array)
    spec_in, spec_out = manifest.inputs[0], manifest.outputs[0]  # type: ignore[attr-defined]

    def run() -> np.ndarray:
        feed = (
            quantize(np.transpose(array, spec_in.perm), spec_in) if spec_in.perm else quantize(array, spec_in)
        )
        return dequantize(bare.run(np.ascontiguousarray(feed)), spec_out)

    return run


def measure(paths: dict[str, Callable[[], object]], seconds: float) -> dict[str, list[float]]:
    """Run the paths one call each in a shuffled order, round after round, for `seconds`: both sides of
    every comparison see the same moments of machine load."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    order = list(paths)
    rng = random.Random(0)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rng.shuffle(order)
        for name in order:
            call = paths[name]
            start = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - start) * 1000)
    return samples


def main() -> None:
    parser = agent_bench_parser(
        __doc__,
        threads_help="runtime threads on both sides (default: the profile's, at most this machine's CPU "
        "count: oversubscribed XNNPACK workers spin against the thread that serves)",
    )
    parser.add_argument("--size", type=int, default=224, choices=[96, 224])
    parser.add_argument("--seconds", type=float, default=40.0, help="measuring time (all paths together)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work, threads, private_key, public_key = prepare_work(
            Path(tmp), args.work, args.profile, args.threads
        )
        bundle = convert_reference(work, "mobilenet", args.profile, "1", private_key, args.size)
        bundle_id, manifest = unpack(bundle, Path(tmp) / "unpacked", public_key)
        profile = load_profile(args.profile)
        model = LoadedModel.load(bundle_id, manifest, Path(tmp) / "unpacked", profile)
        model.warm_up()
        slot = ModelSlot()
        slot.swap(model)
        service = InferenceService(slot, RequestMetrics(), publish=lambda *a, **k: None)
        bare = BareRuntime(Path(tmp) / "unpacked" / manifest.artifact, threads)
        # The same Interpreter object the agent loaded, called directly: two instances of one model differ
        # by +-10-25 us here (weights, arena and thread pool placement), as much as the overhead measured.
        same = BareRuntime.wrapping(model.backend._interpreter)  # a benchmark may look inside

        as_int8, as_float = artifact_sample(manifest), float_sample(manifest)
        # one phase per request form, so the float form's large numpy temporaries do not evict the caches
        # the int8 comparison runs with
        phases = [
            {
                "agent int8": agent_path(service, encode_npy(as_int8)),
                "bare int8": bare_path(same, manifest, as_int8, as_float=False),
            },
            {
                "agent float": agent_path(service, encode_npy(as_float)),
                "bare float": bare_path(same, manifest, as_float, as_float=True),
            },
            {  # context: how much two Interpreters of the same model differ
                "bare int8 (again)": bare_path(same, manifest, as_int8, as_float=False),
                "separate int8": bare_path(bare, manifest, as_int8, as_float=False),
            },
        ]
        for phase in phases:
            for call in phase.values():  # warm-up: first runs allocate and plan
                for _ in range(10):
                    call()
        load_before = machine_load()
        samples = {}
        for phase in phases:
            samples.update(measure(phase, args.seconds / len(phases)))
        load_after = machine_load()
        stats = {name: Summary.of(values) for name, values in samples.items()}

        print(
            f"# {manifest.name} {manifest.format.value} {manifest.precision.value}, input "
            f"{manifest.inputs[0].dtype} {manifest.inputs[0].shape}, profile {args.profile}, {threads} "
            f"threads, backend {model.info.engine} {model.info.engine_version} delegate {model.info.delegate}"
        )
        print(f"# machine: before {load_before}; after {load_after}")
        print(
            "| request form | path | samples | p50 ms | mean ms | overhead p50 | overhead mean "
            "| paired diff p50 us | target | met |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for form in ("int8", "float"):
            agent, base = stats[f"agent {form}"], stats[f"bare {form}"]
            over_p50, over_mean = percent(agent.p50, base.p50), percent(agent.mean, base.mean)
            # each round ran both paths back to back: the median of their differences is the overhead
            # least disturbed by load that changes between rounds
            pairs = np.subtract(samples[f"agent {form}"], samples[f"bare {form}"])
            paired_us = float(np.median(pairs)) * 1000
            met = "met" if over_p50 <= TARGET_PERCENT and over_mean <= TARGET_PERCENT else "missed"
            label = "artifact form (int8 NHWC)" if form == "int8" else "float form (float32 NCHW)"
            print(f"| {label} | bare runtime | {base.samples} | {base.p50:.3f} | {base.mean:.3f} | | | | | |")
            if form == "int8":
                other = stats["separate int8"]
                again = stats["bare int8 (again)"]
                pairs = np.subtract(samples["separate int8"], samples["bare int8 (again)"])
                print(
                    f"| {label} | bare runtime, a second Interpreter (vs the first: {again.p50:.3f} / "
                    f"{again.mean:.3f}) | {other.samples} | {other.p50:.3f} | {other.mean:.3f} "
                    f"| {percent(other.p50, again.p50):+.1f}% | {percent(other.mean, again.mean):+.1f}% "
                    f"| {float(np.median(pairs)) * 1000:+.0f} | | |"
                )
            print(
                f"| {label} | agent serving path | {agent.samples} | {agent.p50:.3f} | {agent.mean:.3f} "
                f"| {over_p50:+.1f}% | {over_mean:+.1f}% | {paired_us:+.0f} | <= {TARGET_PERCENT:g}% "
                f"| {met} |"
            )
        slot.clear()


if __name__ == "__main__":
    main()
