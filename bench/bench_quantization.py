"""Quantization benchmark on the reference models, every figure measured side by side in one run:

1. calibration methods (minmax / entropy / percentile): accuracy drop of each INT8 artifact vs fp32, pure
   int8 (mixed precision off), on the digits CNNs and the MobileNetV2-style model at 96x96 - the numbers
   behind the converter's default method;
2. edgefleet's default conversion (with the accuracy budget, mixed precision where needed) vs onnxruntime's
   quantize_static with default settings on the same calibration data: accuracy drop and size ratio;
3. wall time of the whole `edgefleet convert` (a fresh process, as a user runs it) for the 224x224 model;
4. host latency fp32 vs INT8 per runtime (onnxruntime, ai-edge-litert), MobileNetV2-style at 224x224.

    .venv/bin/python bench/bench_quantization.py [--quick]   (--quick: part 1 on the 96x96 model only)

Prints markdown tables. Accuracy is top-1 on the held-out digits (360 samples; one sample = 0.28 points);
QDQ ONNX models are scored with exact int8 semantics (QDQ fusion off), as the converter does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.contract.bundle import extract_bundle
from edgefleet.contract.signing import create_key_pair, load_public_key
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import ConversionResult, convert
from edgefleet.converter.steps.calibration import OnnxCalibrationReader, TensorSet
from edgefleet.converter.steps.calibration_ranges import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD
from edgefleet.converter.steps.evaluate import median_latency_ms
from edgefleet.converter.steps.runners import OnnxRunner, TfliteRunner
from edgefleet.reference_models import reference_model_dir
from edgefleet.reference_models.mobilenet_digits import (
    LATENCY_SIZE,
    MODEL_FILES,
    TRAIN_SIZE,
    upscaled_digits_sets,
)

INT8_PROFILES = ("rpi4", "coral-usb", "jetson-orin-nano")  # rpi4 also carries the onnx-int8 alternative
ALL_PROFILES = (*INT8_PROFILES, "jetson-nano", "rpi5", "coral-devboard")
DONE_WHEN_DROP_POINTS = 0.5


@dataclass(frozen=True)
class Model:
    label: str
    onnx: Path
    calib: Path
    eval: Path
    max_drop: float | None = None  # None: each profile's own budget


def reference_models(data_dir: Path, quick: bool) -> list[Model]:
    models = reference_model_dir()
    calib96, eval96 = upscaled_digits_sets(data_dir, TRAIN_SIZE)
    mbv2 = Model("MBv2-style 96x96", models / MODEL_FILES[TRAIN_SIZE], calib96, eval96, DONE_WHEN_DROP_POINTS)
    if quick:
        return [mbv2]
    digits = [
        Model(f"digits CNN {v}", models / f"digits_cnn_{v}.onnx", models / "calib.npz", models / "eval.npz")
        for v in ("v1", "v2")
    ]
    return [*digits, mbv2]


def run_convert(model: Model, profile: str, out: Path, key: Path, **options: object) -> ConversionResult:
    request = ConversionRequest(
        model=model.onnx,
        profile=profile,
        calib=model.calib,
        eval=model.eval,
        out=out,
        name=model.onnx.stem,
        key=key,
        **options,  # type: ignore[arg-type]
    )
    return convert(request)


def artifact_drops(result: ConversionResult) -> dict[str, tuple[float, float | None]]:
    """artifact kind -> (accuracy drop in points, output SQNR in dB) for the preferred artifact and every
    alternative (the report has the SQNR of the preferred one only)."""
    spec = result.profile.artifact
    kind = f"{result.profile.name} {spec.format.value}-{spec.precision.value}"
    sqnr = result.report.outputs[0].sqnr_db if result.report and result.report.outputs else None
    drops = {kind: (result.metrics.accuracy.drop_points, sqnr)}  # type: ignore[union-attr]
    for alternative in result.alternatives:
        if alternative.metrics is not None and alternative.metrics.accuracy is not None:
            drops[f"{result.profile.name} {alternative.kind}"] = (
                alternative.metrics.accuracy.drop_points,
                None,
            )
    return drops


def calibration_table(models: list[Model], work: Path, key: Path) -> None:
    print(
        "\n### 1. Calibration method: accuracy drop vs fp32 in points (output SQNR vs fp32, dB), pure int8 "
        "(mixed precision off)\n"
    )
    print("| model | artifact | fp32 top-1 | " + " | ".join(CALIBRATION_METHODS) + " |")
    print("|---|---|---|" + "---|" * len(CALIBRATION_METHODS))
    totals = dict.fromkeys(CALIBRATION_METHODS, 0.0)
    sqnr_totals = dict.fromkeys(CALIBRATION_METHODS, 0.0)
    for model in models:
        rows: dict[str, dict[str, tuple[float, float | None]]] = {}
        fp32 = 0.0
        for method in CALIBRATION_METHODS:
            for profile in INT8_PROFILES:
                result = run_convert(model, profile, work / "calib", key, calib_method=method, max_drop=100.0)
                fp32 = result.metrics.accuracy.fp32  # type: ignore[union-attr,assignment]
                for kind, (drop, sqnr) in artifact_drops(result).items():
                    rows.setdefault(kind, {})[method] = (drop, sqnr)
                    totals[method] += drop
                    sqnr_totals[method] += sqnr or 0.0
        for kind, by_method in rows.items():
            cells = " | ".join(
                f"{by_method[m][0]:+.2f}"
                + (f" ({by_method[m][1]:.1f} dB)" if by_method[m][1] is not None else "")
                for m in CALIBRATION_METHODS
            )
            print(f"| {model.label} | {kind} | {fp32:.2f} | {cells} |")
    cells = " | ".join(f"{totals[m]:+.2f} ({sqnr_totals[m]:.1f} dB)" for m in CALIBRATION_METHODS)
    print(f"| **sum** | | | {cells} |")
    best = min(CALIBRATION_METHODS, key=lambda m: (totals[m], -sqnr_totals[m]))
    print(f"\nlowest total drop (then highest SQNR): {best}; converter default: {DEFAULT_CALIBRATION_METHOD}")


def ort_default_quantize(model: Model, out: Path) -> Path:
    """onnxruntime's quantize_static with default settings (QDQ, per-tensor, MinMax, u8/s8)."""
    from onnxruntime.quantization import quantize_static

    with np.load(model.calib) as data:
        calib = TensorSet(model.calib, {name: data[name] for name in data.files}, None)
    logging.disable(logging.WARNING)
    try:
        quantize_static(str(model.onnx), str(out), OnnxCalibrationReader(calib, 32))
    finally:
        logging.disable(logging.NOTSET)
    return out


def top1(runner: OnnxRunner, images: np.ndarray) -> np.ndarray:
    batch = runner.max_batch or 64
    return np.concatenate(
        [runner.run([images[i : i + batch]])[0] for i in range(0, len(images), batch)]
    ).argmax(1)


def comparison_table(models: list[Model], work: Path, key: Path) -> None:
    print(
        f"\n### 2. edgefleet defaults (calibration {DEFAULT_CALIBRATION_METHOD}; budget: the profile's, "
        f"{DONE_WHEN_DROP_POINTS} points for the MBv2-style model; mixed precision where needed) vs "
        "onnxruntime quantize_static defaults\n"
    )
    header = "| model | artifact | fp32 top-1 | drop (points) | budget | size fp32/artifact | float layers |"
    print(header + " convert s |")
    print("|---|---|---|---|---|---|---|---|")
    for model in models:
        with np.load(model.eval) as data:
            images, labels = data["image"], data["y"]
        fp32_acc = float((top1(OnnxRunner(model.onnx), images) == labels).mean() * 100)
        for profile in ALL_PROFILES:
            start = time.perf_counter()
            try:
                result = run_convert(model, profile, work / "default", key, max_drop=model.max_drop)
            except Exception as exc:  # a missed budget is a result too
                print(f"| {model.label} | {profile} | {fp32_acc:.2f} | FAILED: {str(exc)[:160]} | | | | |")
                continue
            budget = result.report.budget.max_drop_points if result.report and result.report.budget else None
            seconds = time.perf_counter() - start
            metrics, spec = result.metrics, result.profile.artifact
            floats = len(result.report.budget.float_layers) if result.report and result.report.budget else 0
            print(
                f"| {model.label} | {profile} {spec.format.value}-{spec.precision.value} | {fp32_acc:.2f} "
                f"| {metrics.accuracy.drop_points:+.2f} | {budget} "  # type: ignore[union-attr]
                f"| {metrics.size_bytes_fp32 / metrics.size_bytes_artifact:.2f} | {floats} | {seconds:.1f} |"
            )
            for alternative in result.alternatives:
                if alternative.metrics is None or alternative.metrics.accuracy is None:
                    continue
                m = alternative.metrics
                print(
                    f"| {model.label} | {profile} {alternative.kind} (alternative) | {fp32_acc:.2f} "
                    f"| {m.accuracy.drop_points:+.2f} | - | {m.size_bytes_fp32 / m.size_bytes_artifact:.2f} "  # type: ignore[union-attr]
                    f"| {floats} | |"
                )
        ort_path = ort_default_quantize(model, work / f"{model.onnx.stem}-ort-default.onnx")
        exact = float((top1(OnnxRunner(ort_path, exact_qdq=True), images) == labels).mean() * 100)
        fused = float((top1(OnnxRunner(ort_path), images) == labels).mean() * 100)
        ratio = model.onnx.stat().st_size / ort_path.stat().st_size
        print(
            f"| {model.label} | onnxruntime quantize_static defaults | {fp32_acc:.2f} "
            f"| {fp32_acc - exact:+.2f} (fused host kernels: {fp32_acc - fused:+.2f}) | - | {ratio:.2f} "
            "| - | |"
        )


def float_tflite(onnx_path: Path, out: Path) -> Path:
    """The fp32 TFLite of the model (the Keras twin, unquantized): LiteRT's fp32 baseline."""
    import onnx
    import tensorflow as tf

    from edgefleet.converter.steps.onnx_to_keras import translate_onnx_to_keras

    translation = translate_onnx_to_keras(onnx.load(str(onnx_path)))
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its SavedModel export
        out.write_bytes(tf.lite.TFLiteConverter.from_keras_model(translation.model).convert())
    return out


def latency_and_wall_time(work: Path, key: Path) -> None:
    model_224 = reference_model_dir() / MODEL_FILES[LATENCY_SIZE]
    calib, evaluation = upscaled_digits_sets(work / "data224", LATENCY_SIZE)
    out = work / "cli224"
    print(f"\n### 3. Wall time of `edgefleet convert`, {LATENCY_SIZE}x{LATENCY_SIZE} model (fresh process)\n")
    print("| profile | wall s | result |")
    print("|---|---|---|")
    executable = Path(sys.executable).with_name("edgefleet")
    for profile in ("rpi4", "coral-usb", "jetson-orin-nano"):
        start = time.perf_counter()
        done = subprocess.run(
            [
                str(executable),
                "convert",
                str(model_224),
                "--profile",
                profile,
                "--calib",
                str(calib),
                "--eval",
                str(evaluation),
                "--out",
                str(out),
                "--key",
                str(key),
                "--name",
                "mbv2-224",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        seconds = time.perf_counter() - start
        last = (done.stdout.strip().splitlines() or ["(no output)"])[0 if done.returncode == 0 else -1]
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-200:]}"
        print(f"| {profile} | {seconds:.1f} | {status}; {last[:80]} |")
    bundle = out / "mbv2-224-1-rpi4.efb"
    unpacked = work / "unpacked224"
    manifest = extract_bundle(bundle, unpacked, load_public_key(key.with_suffix(".pub")))
    tflite_int8 = unpacked / manifest.artifact
    onnx_int8 = unpacked / next(a.path for a in manifest.alternatives if a.kind == "onnx-int8")
    tflite_fp32 = float_tflite(model_224, work / "mbv2-224-fp32.tflite")
    with np.load(evaluation) as data:
        sample = data["image"][:1]
    nhwc = np.ascontiguousarray(np.transpose(sample, (0, 2, 3, 1)))
    (in_spec,) = manifest.inputs
    from edgefleet.contract.tensors import to_artifact

    print(
        f"\n### 4. Host latency, MBv2-style {LATENCY_SIZE}x{LATENCY_SIZE}, batch 1, one thread (median ms)\n"
    )
    print("| runtime | fp32 ms | int8 ms | fp32/int8 |")
    print("|---|---|---|---|")
    ort_fp32 = median_latency_ms(OnnxRunner(model_224), [sample])
    ort_int8 = median_latency_ms(OnnxRunner(onnx_int8), [sample])
    print(f"| onnxruntime (CPU EP) | {ort_fp32:.3f} | {ort_int8:.3f} | {ort_fp32 / ort_int8:.2f} |")
    lite_fp32 = median_latency_ms(TfliteRunner(tflite_fp32, []), [nhwc])
    lite_int8 = median_latency_ms(
        TfliteRunner(tflite_int8, manifest.inputs), [to_artifact(in_spec, sample)[0]]
    )
    print(f"| ai-edge-litert (XNNPACK) | {lite_fp32:.3f} | {lite_int8:.3f} | {lite_fp32 / lite_int8:.2f} |")
    sizes = {
        "onnx fp32": model_224.stat().st_size,
        "onnx int8 (QDQ)": onnx_int8.stat().st_size,
        "tflite fp32": tflite_fp32.stat().st_size,
        "tflite int8": tflite_int8.stat().st_size,
    }
    print("\n| file | KiB |\n|---|---|")
    for name, size in sizes.items():
        print(f"| {name} | {size / 1024:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="calibration methods on the 96x96 model only")
    parser.add_argument("--skip", nargs="*", default=[], choices=["methods", "compare", "latency"])
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        work = Path(tmp)
        key, _ = create_key_pair(work / "keys")
        models = reference_models(work / "data", args.quick)
        if "methods" not in args.skip:
            calibration_table(models, work, key)
        if "compare" not in args.skip:
            comparison_table(models, work, key)
        if "latency" not in args.skip:
            latency_and_wall_time(work, key)


if __name__ == "__main__":
    main()
