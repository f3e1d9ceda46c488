"""Raspberry Pi targets: the bundle carries the preferred full-INT8 TFLite and the INT8 ONNX alternative the
profile asks for, each measured; XNNPACK's op coverage is measured; ops XNNPACK does not take are named and
run on the CPU. Also: what `--precision` may choose per profile, and the profile fields behind it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from target_graphs import classifier, save_with_data

from edgefleet.contract.bundle import extract_bundle
from edgefleet.contract.errors import ProfileError
from edgefleet.contract.profiles import PROFILES_PATH_ENV, Precision, load_profile
from edgefleet.contract.signing import load_public_key
from edgefleet.contract.tensors import from_artifact, to_artifact
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import UnsupportedTargetError
from edgefleet.converter.pipeline import ConversionResult, convert
from edgefleet.converter.targets import allowed_precisions

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow


def test_pi_bundle_carries_the_onnx_alternative(
    converted: Callable[[str], ConversionResult],
    key_pair: tuple[Path, Path],
    tmp_path: Path,
    eval_set: tuple[np.ndarray, np.ndarray],
) -> None:
    result = converted("rpi4")
    assert load_profile("rpi4").alternatives == ("onnx-int8",)
    manifest = extract_bundle(result.bundle_path, tmp_path / "b", load_public_key(key_pair[1]))
    assert manifest.artifact == "model.tflite"  # the profile's preferred artifact, what the agent loads
    (alternative,) = manifest.alternatives
    assert alternative == result.alternatives[0]
    assert (alternative.kind, alternative.path, alternative.format.value, alternative.precision.value) == (
        "onnx-int8",
        "model-onnx-int8.onnx",
        "onnx",
        "int8",
    )
    assert alternative.path in [f.path for f in manifest.files] and alternative.requires_delegate is None
    (spec,), (out_spec,) = alternative.inputs, alternative.outputs
    assert (spec.dtype, spec.shape, spec.float_shape) == ("float32", [1, 1, 8, 8], [None, 1, 8, 8])  # batch 1
    # run the alternative as a client of the bundle would, and compare with its recorded metrics
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")  # exact int8 semantics, as measured
    session = ort.InferenceSession(
        str(tmp_path / "b" / alternative.path), options, providers=["CPUExecutionProvider"]
    )
    images, labels = eval_set
    logits = [
        from_artifact(out_spec, session.run(None, {spec.name: to_artifact(spec, image[None])[0]})[0], True)
        for image in images
    ]
    accuracy = float((np.concatenate(logits).argmax(1) == labels).mean() * 100)
    metrics = alternative.metrics
    assert metrics is not None and metrics.accuracy is not None and metrics.accuracy.fp32 is not None
    assert accuracy == pytest.approx(metrics.accuracy.artifact, abs=0.01)
    assert metrics.accuracy.fp32 - accuracy <= 1.0
    assert metrics.size_bytes_artifact == manifest.file(alternative.path).size < metrics.size_bytes_fp32


def test_xnnpack_takes_every_op_of_the_digits_cnn(converted: Callable[[str], ConversionResult]) -> None:
    checks = converted("rpi4").target_checks
    assert checks is not None and checks.target == "xnnpack" and checks.passed
    assert checks.xnnpack is not None and checks.xnnpack.ops == checks.xnnpack.delegated_ops > 0


def test_an_op_xnnpack_does_not_take_runs_on_the_cpu_and_is_named(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    model, data = save_with_data(classifier("HardSwish", opset=14), tmp_path / "hswish", (24, 1, 8, 8))
    result = convert(
        make_request("rpi5", model=model, calib=data, eval=None, out=tmp_path / "out", name="hs")
    )
    checks = result.target_checks
    assert checks is not None and checks.target == "xnnpack" and not checks.passed
    (hard_swish,) = checks.unsupported_ops  # int8 HARD_SWISH has no XNNPACK kernel in this LiteRT
    assert (hard_swish.op, hard_swish.consequence) == ("HARD_SWISH", "runs on the CPU")
    assert checks.xnnpack is not None and checks.xnnpack.delegated_ops == checks.xnnpack.ops - 1
    assert any(note.startswith("xnnpack: 1 of") and "HARD_SWISH" in note for note in result.notes)
    assert result.bundle_path.is_file()  # a CPU fallback on the Pi is a slowdown, not a refusal


def test_precision_choices_per_profile() -> None:
    assert allowed_precisions(load_profile("rpi4")) == [Precision.INT8]
    assert allowed_precisions(load_profile("jetson-nano")) == [Precision.FP16, Precision.FP32]
    assert allowed_precisions(load_profile("jetson-orin-nano")) == [
        Precision.INT8,
        Precision.FP16,
        Precision.FP32,
    ]


@pytest.mark.parametrize(
    ("profile", "precision", "message"),
    [
        (
            "jetson-nano",
            "int8",
            r"--precision int8: profile 'jetson-nano' refuses it: TensorRT has no INT8 path on sm_53 "
            r"\(Maxwell\); FP16 is this target's ceiling \(allowed: fp16, fp32\)",
        ),
        ("rpi4", "fp16", r"--precision fp16: profile 'rpi4' builds tflite artifacts, which are int8 only"),
    ],
)
def test_refused_precision_says_why_before_any_work(
    make_request: Callable[..., ConversionRequest], tmp_path: Path, profile: str, precision: str, message: str
) -> None:
    ran: list[str] = []
    request = make_request(profile, out=tmp_path / "out", precision=precision)
    with pytest.raises(UnsupportedTargetError, match=message):
        convert(request, progress=lambda i, n, name, s: ran.append(name))
    assert not ran and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"refused_precisions": {"int8": "no"}}, "artifact precision int8 is in refused_precisions"),
        ({"alternatives": ["onnx-int8", "onnx-int8"]}, "alternatives lists a kind twice"),
        ({"alternatives": ["tflite-int8"]}, "alternatives.0"),
        ({"artifact": {"format": "tflite", "precision": "int8", "io_dtype": "int8", "batch": 2}}, "batch"),
    ],
)
def test_profile_fields_are_validated(
    change: dict[str, object], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = load_profile("rpi4").model_dump(mode="json") | {"name": "odd"} | change
    (tmp_path / "odd.yaml").write_text(yaml.safe_dump(fields))
    monkeypatch.setenv(PROFILES_PATH_ENV, str(tmp_path))
    with pytest.raises(ProfileError, match=message):
        load_profile("odd")
