"""What converting one model for several profiles at once saves: for each model, in the same run, (a) one
`convert` per profile, summed, and (b) one `convert_many` over all the profiles, which shares the Keras
translation, the calibration ranges and the float-by-rule decisions (SharedWork). Prints their wall times
side by side, how many results (b) took from SharedWork instead of computing them, whether both give every
bundle (and its alternatives) the same accuracy figures, and where the time goes (steps summed over the
profiles, and the TFLite calibration pass inside the TFLite quantize step). Artifact sizes that differ
between the runs are listed too, for information: TFLite tensor names carry Keras's per-process layer-name
counters, so the same model converted later in a process can be a few hundred bytes larger.

    .venv/bin/python bench/bench_convert_profiles.py [--models A.onnx B.onnx] [--profiles rpi4,rpi5]

Models of the architecture corpus (reference_models/corpus/) use its calibration and evaluation sets
(corpus_data.py writes them on first use into a temp folder, from scikit-image's bundled photos); any
other model needs calib.npz and eval.npz next to it (as the digits CNNs have). A small warm-up conversion
of the digits CNN runs first, so TensorFlow's import is charged to neither side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.contract.manifest import ConversionMetrics
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.pipeline import ConversionResult, ProfileFailure, convert, convert_many
from edgefleet.converter.shared_work import SharedWork
from edgefleet.converter.steps.quantize_tflite import QuantizeTflite
from edgefleet.reference_models import reference_model_dir
from edgefleet.reference_models.corpus_data import MODELS as CORPUS_MODELS
from edgefleet.reference_models.corpus_data import corpus_files

CORPUS = reference_model_dir() / "corpus"
DEFAULT_MODELS = [CORPUS / "mobilenetv3_small.onnx", CORPUS / "efficientnet_lite0.onnx"]
DEFAULT_PROFILES = "rpi4,rpi5,coral-usb,jetson-orin-nano,jetson-nano"


@dataclass
class ShareLog:
    """Every SharedWork.once call while installed: the SharedWork objects seen (their `reused` is what the
    pipeline counts), and per kind of result ('keras', 'ranges', 'float-rules') how many were computed,
    how many reused, and the seconds spent computing them."""

    instances: list[SharedWork] = field(default_factory=list)
    computed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    reused: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    compute_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    tflite_calibration_seconds: float = 0.0  # inside "quantize tflite": TFLite's calibrate-only conversion

    @property
    def total_reused(self) -> int:
        return sum(shared.reused for shared in self.instances)


class ShareRecorder:
    """Wraps SharedWork.once (convert_many keeps its SharedWork to itself) and logs into `log`; also times
    QuantizeTflite._calibrate, the calibration pass each TFLite conversion runs (not shared)."""

    def __init__(self) -> None:
        self.log = ShareLog()
        original = SharedWork.once
        recorder = self

        def once(shared: SharedWork, key: str, compute: Callable[[], Any]) -> Any:
            log = recorder.log
            if not any(seen is shared for seen in log.instances):
                log.instances.append(shared)
            kind = key.split(":", 1)[0]
            if key in shared.results:
                log.reused[kind] += 1
                return original(shared, key, compute)
            start = time.perf_counter()
            value = original(shared, key, compute)
            log.compute_seconds[kind] += time.perf_counter() - start
            log.computed[kind] += 1
            return value

        SharedWork.once = once  # type: ignore[method-assign]
        calibrate = QuantizeTflite._calibrate

        def timed_calibrate(step: QuantizeTflite, ctx: Any, method: Any) -> bytes:
            start = time.perf_counter()
            try:
                return calibrate(step, ctx, method)
            finally:
                recorder.log.tflite_calibration_seconds += time.perf_counter() - start

        QuantizeTflite._calibrate = timed_calibrate  # type: ignore[method-assign]

    def start(self) -> ShareLog:
        self.log = ShareLog()
        return self.log


@dataclass
class Run:
    seconds: float
    share: ShareLog
    results: dict[str, ConversionResult]
    failures: dict[str, str]

    def step_seconds(self) -> dict[str, float]:
        total: dict[str, float] = defaultdict(float)
        for result in self.results.values():
            for step, seconds in result.step_seconds.items():
                total[step] += seconds
        return total


def data_for(model: Path) -> tuple[Path, Path]:
    if model.parent.resolve() == CORPUS.resolve() and model.stem in CORPUS_MODELS:
        files = corpus_files(model.stem)
        return files.calib, files.eval
    calib, evals = model.parent / "calib.npz", model.parent / "eval.npz"
    if not (calib.is_file() and evals.is_file()):
        raise SystemExit(f"{model}: not a corpus model and no calib.npz/eval.npz next to it")
    return calib, evals


def make_key(folder: Path) -> Path:
    """`edgefleet keys init --dir FOLDER`, as a user would; returns the private key's path."""
    cli = Path(sys.executable).with_name("edgefleet")
    command = (
        [str(cli)] if cli.is_file() else [sys.executable, "-c", "from edgefleet.cli import main; main()"]
    )
    done = subprocess.run(
        [*command, "keys", "init", "--dir", str(folder), "--json"], check=True, capture_output=True, text=True
    )
    return Path(json.loads(done.stdout)["private_key"])


def request(model: Path, profile: str, calib: Path, evals: Path, out: Path, key: Path) -> ConversionRequest:
    return ConversionRequest(
        model=model, profile=profile, calib=calib, eval=evals, out=out, name=model.stem, key=key
    )


def separate(
    recorder: ShareRecorder, model: Path, profiles: list[str], data: tuple[Path, Path], out: Path, key: Path
) -> Run:
    share = recorder.start()
    results, failures = {}, {}
    start = time.perf_counter()
    for profile in profiles:
        try:
            results[profile] = convert(request(model, profile, *data, out / profile, key))
        except ConversionError as exc:
            failures[profile] = str(exc)
    return Run(time.perf_counter() - start, share, results, failures)


def together(
    recorder: ShareRecorder, model: Path, profiles: list[str], data: tuple[Path, Path], out: Path, key: Path
) -> Run:
    share = recorder.start()
    start = time.perf_counter()
    outcomes = convert_many(request(model, profiles[0], *data, out, key), profiles)
    seconds = time.perf_counter() - start
    results = {o.profile.name: o for o in outcomes if isinstance(o, ConversionResult)}
    failures = {o.profile: str(o.error) for o in outcomes if isinstance(o, ProfileFailure)}
    return Run(seconds, share, results, failures)


def accuracy(metrics: ConversionMetrics | None) -> dict[str, Any] | None:
    """What must not change when work is shared: every accuracy figure (measure, values, SQNR, budget)."""
    return metrics.accuracy.model_dump() if metrics is not None and metrics.accuracy is not None else None


def size(metrics: ConversionMetrics | None) -> int | None:
    return metrics.size_bytes_artifact if metrics is not None else None


def differences(a: Run, b: Run, figure: Callable[[ConversionMetrics | None], Any]) -> list[str]:
    """Profiles (and their alternatives) whose `figure` differs between the runs."""
    found = []
    for profile in sorted(set(a.results) | set(b.results)):
        if profile not in a.results or profile not in b.results:
            found.append(f"{profile}: a bundle in only one of the runs")
            continue
        ra, rb = a.results[profile], b.results[profile]
        if figure(ra.metrics) != figure(rb.metrics):
            found.append(f"{profile}: {figure(ra.metrics)} vs {figure(rb.metrics)}")
        alts_a = {alt.kind: figure(alt.metrics) for alt in ra.alternatives}
        alts_b = {alt.kind: figure(alt.metrics) for alt in rb.alternatives}
        if alts_a != alts_b:
            found.append(f"{profile} alternatives: {alts_a} vs {alts_b}")
    return found


def warm_up(folder: Path, key: Path) -> float:
    """TensorFlow/LiteRT/onnxruntime imports and first-use setup, so neither timed side pays them."""
    digits = reference_model_dir()
    start = time.perf_counter()
    for profile in ("rpi4", "jetson-orin-nano"):
        convert(
            request(
                digits / "digits_cnn_v2.onnx",
                profile,
                digits / "calib.npz",
                digits / "eval.npz",
                folder / profile,
                key,
            )
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", type=Path, default=DEFAULT_MODELS, help="fp32 .onnx files")
    parser.add_argument("--profiles", default=DEFAULT_PROFILES, help=f"comma-separated ({DEFAULT_PROFILES})")
    parser.add_argument("--together-first", action="store_true", help="run convert_many before the singles")
    parser.add_argument("--steps", type=int, default=6, help="steps listed per model in the time table")
    args = parser.parse_args()
    profiles = [name.strip() for name in args.profiles.split(",") if name.strip()]
    recorder = ShareRecorder()
    rows, step_rows, notes = [], [], []
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-convert-profiles-") as tmp:
        work = Path(tmp)
        key = make_key(work / "keys")
        print(
            f"warm-up (digits CNN, rpi4 + jetson-orin-nano): {warm_up(work / 'warm', key):.1f} s", flush=True
        )
        for model in args.models:
            data = data_for(model)
            order = ["together", "separate"] if args.together_first else ["separate", "together"]
            runs: dict[str, Run] = {}
            for side in order:
                go = separate if side == "separate" else together
                runs[side] = go(recorder, model, profiles, data, work / side / model.stem, key)
                print(f"{model.stem}: {side} {runs[side].seconds:.1f} s", flush=True)
            sep, tog = runs["separate"], runs["together"]
            for side, done in runs.items():
                for profile, error in done.failures.items():
                    notes.append(f"{model.stem} {side} {profile} FAILED: {error[:300]}")
            diff = differences(sep, tog, accuracy)
            notes.extend(f"{model.stem} ACCURACY MISMATCH {line}" for line in diff)
            # Informational: TFLite tensor names carry Keras's per-process layer-name counters
            # (functional_1 vs functional_1_1), so a TFLite artifact's size may differ by a few hundred bytes.
            notes.extend(f"{model.stem} artifact size (bytes) {line}" for line in differences(sep, tog, size))
            kinds = sorted(set(tog.share.computed) | set(tog.share.reused))
            reuse = ", ".join(f"{kind} {tog.share.reused[kind]}" for kind in kinds)
            computed = ", ".join(
                f"{kind} {sep.share.computed[kind]} in {sep.share.compute_seconds[kind]:.1f} s -> "
                f"{tog.share.computed[kind]} in {tog.share.compute_seconds[kind]:.1f} s"
                for kind in kinds
            )
            rows.append(
                f"| {model.stem} | {len(tog.results)}/{len(profiles)} | {sep.seconds:.1f} "
                f"| {tog.seconds:.1f} | {tog.seconds / sep.seconds:.2f} | {tog.share.total_reused} ({reuse}) "
                f"| {sep.share.total_reused} | {computed} | {'same' if not diff else f'{len(diff)} differ'} |"
            )
            steps_sep, steps_tog = sep.step_seconds(), tog.step_seconds()
            for step in sorted(steps_sep, key=lambda s: -steps_sep[s])[: args.steps]:
                step_rows.append(
                    f"| {model.stem} | {step} | {steps_sep[step]:.1f} | {steps_tog.get(step, 0.0):.1f} |"
                )
                if step == QuantizeTflite.name:
                    step_rows.append(
                        f"| {model.stem} | - of which TFLite calibration pass "
                        f"| {sep.share.tflite_calibration_seconds:.1f} "
                        f"| {tog.share.tflite_calibration_seconds:.1f} |"
                    )
    print()
    print(
        "| model | bundles | separate s | together s | together/separate | results reused (together) "
        "| reused within singles | computed: separate -> together | accuracy figures |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print(f"Where the time goes (the {args.steps} longest steps of the singles, summed over the profiles):")
    print()
    print("| model | step | separate s | together s |")
    print("|---|---|---|---|")
    print("\n".join(step_rows))
    print()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
