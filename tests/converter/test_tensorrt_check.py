"""TensorRT readiness: the Orin artifact of the digits CNN follows TensorRT's explicit-quantization rules; a
hand-made QDQ graph that breaks each rule gets every violation named by node; ops TensorRT's parser lacks
are named with what happens to them. (TensorRT itself is not on this machine: the rules are checked on the
graph, not by building an engine.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from target_graphs import classifier, opset12_qdq_model, save_with_data, tensorrt_violations_model

from edgefleet.contract.bundle import extract_bundle, verify_bundle
from edgefleet.contract.profiles import Precision
from edgefleet.contract.signing import load_public_key
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import ConversionResult, convert
from edgefleet.converter.steps.tensorrt_check import check_tensorrt_model


def test_orin_artifact_is_ready_for_tensorrt(
    converted: Callable[[str], ConversionResult], key_pair: tuple[Path, Path]
) -> None:
    result = converted("jetson-orin-nano")
    checks = result.target_checks
    assert checks is not None and checks.target == "tensorrt" and checks.passed, checks
    report = checks.tensorrt
    assert report is not None and report.checks_qdq and report.ready
    assert report.opset >= 13 and not report.violations and not checks.unsupported_ops
    assert "Q/DQ ready for explicit quantization" in checks.summary
    manifest = verify_bundle(result.bundle_path, load_public_key(key_pair[1]))
    assert manifest.target_checks == checks


def test_every_violation_is_named_by_node() -> None:
    model = tensorrt_violations_model()
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.zeros((1, 2, 4, 4), np.float32)}
    )  # a valid, runnable graph: only TensorRT's rules are broken
    checks = check_tensorrt_model(model, check_qdq=True)
    report = checks.tensorrt
    assert report is not None and not report.ready and not checks.passed
    found = {(v.rule, v.node) for v in report.violations}
    assert found == {
        ("signed-int8", "/in/Q"),
        ("zero-point", "/in/Q"),
        ("signed-int8", "/in/DQ"),
        ("zero-point", "/in/DQ"),
        ("per-channel-weights", "conv1.w/DQ"),
        ("bias", "conv1.b/DQ"),
        ("per-tensor-activation", "/act/Q"),
        ("per-tensor-activation", "/act/DQ"),
        ("per-channel-weights", "conv2.w/DQ"),
    }
    details = {(v.rule, v.node): v.detail for v in report.violations}
    assert "is [128], not 0" in details[("zero-point", "/in/Q")]
    assert (
        "quantized along axis 1; TensorRT needs the output-channel axis 0"
        in details[("per-channel-weights", "conv2.w/DQ")]
    )
    (hardmax,) = checks.unsupported_ops
    assert (hardmax.op, hardmax.layer, hardmax.consequence) == (
        "Hardmax",
        "/head/Hardmax",
        "runs outside TensorRT",
    )
    assert "next execution provider" in hardmax.reason
    assert "9 TensorRT Q/DQ rule violation(s), first at node '/in/Q'" in checks.summary


def test_opset_below_13_is_a_violation() -> None:
    (violation,) = check_tensorrt_model(opset12_qdq_model(), check_qdq=True).tensorrt.violations  # type: ignore[union-attr]
    assert (violation.rule, violation.node) == ("opset", "(model)") and "opset 12" in violation.detail


def test_float_artifacts_are_checked_for_op_support_only(
    converted: Callable[[str], ConversionResult],
) -> None:
    checks = converted("jetson-nano").target_checks
    assert checks is not None and checks.passed and checks.tensorrt is not None
    assert not checks.tensorrt.checks_qdq and checks.tensorrt.ready


def test_precision_override_on_orin_builds_fp16(
    make_request: Callable[..., ConversionRequest], key_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    result = convert(make_request("jetson-orin-nano", out=tmp_path / "out", eval=None, precision="fp16"))
    assert result.profile.artifact.precision is Precision.FP16
    manifest = extract_bundle(result.bundle_path, tmp_path / "unpacked", load_public_key(key_pair[1]))
    assert manifest.precision is Precision.FP16 and manifest.profile == "jetson-orin-nano"
    weights = onnx.load(str(tmp_path / "unpacked" / manifest.artifact)).graph.initializer
    assert {numpy_helper.to_array(w).dtype for w in weights if len(w.dims) > 1} == {np.dtype(np.float16)}
    checks = result.target_checks
    assert checks is not None and checks.tensorrt is not None and not checks.tensorrt.checks_qdq


def test_orin_names_an_op_tensorrt_cannot_run_and_still_converts(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    model, data = save_with_data(classifier(head="Hardmax"), tmp_path / "hardmax", (24, 1, 8, 8))
    result = convert(
        make_request("jetson-orin-nano", model=model, calib=data, eval=None, out=tmp_path, name="hm")
    )
    checks = result.target_checks
    assert checks is not None and not checks.passed
    (hardmax,) = checks.unsupported_ops
    assert (hardmax.op, hardmax.layer, hardmax.consequence) == (
        "Hardmax",
        "/head/Hardmax",
        "runs outside TensorRT",
    )
    assert checks.tensorrt is not None and not checks.tensorrt.violations  # the Q/DQ form itself is right
    assert any(note.startswith("WARNING: tensorrt: 1 op(s) run outside TensorRT") for note in result.notes)
    assert result.bundle_path.is_file()  # onnxruntime runs it on the next provider: a warning, not a refusal
